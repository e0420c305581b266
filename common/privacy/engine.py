"""Wrap model, optimizer and loader with Opacus, continuing the site's accountant history."""

from __future__ import annotations

import copy
import importlib.util
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader

from common.config import PrivacyConfig
from common.errors import ConfigError
from common.privacy.mixed_ghost import (
    LOSS_WRAPPER_MODES,
    MIXED_GHOST,
    MixedGhostPrivacyEngine,
    opacus_grad_sample_mode,
)

__all__ = ["PrivateTraining", "grad_sample_mode_guard", "make_private", "make_private_training", "new_privacy_engine"]

logger = logging.getLogger(__name__)


def new_privacy_engine(accountant: str, *, secure_mode: bool = False, grad_sample_mode: str = "hooks") -> PrivacyEngine:
    """A ``PrivacyEngine``; by default seeded (``secure_mode=False``) without Opacus' secure-RNG warning.

    Secure mode draws noise and Poisson samples from ``torchcsprng`` (robust to floating-point attacks) but
    forbids seeding. This project defaults to seeded, reproducible pseudo-randomness; the choice is logged
    once per engine instead of warned about on every round. For ``grad_sample_mode='mixed_ghost'`` it is a
    `MixedGhostPrivacyEngine` (same accountant and noise; its ``make_private`` takes Opacus' mode ``'ghost'``).

    Raises
    ------
    ConfigError
        If ``secure_mode`` is requested and ``torchcsprng`` is not installed (Opacus would raise ImportError).
    """
    engine_class = MixedGhostPrivacyEngine if grad_sample_mode == MIXED_GHOST else PrivacyEngine
    if secure_mode:
        if importlib.util.find_spec("torchcsprng") is None:
            raise ConfigError(
                "config key 'privacy.secure_mode' = True needs the 'torchcsprng' package, which is not installed: "
                "Opacus draws secure noise from it; install torchcsprng on every site or set privacy.secure_mode=false"
            )
        return engine_class(accountant=accountant, secure_mode=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
        engine = engine_class(accountant=accountant, secure_mode=False)
    logger.debug("Opacus PrivacyEngine(accountant=%s, secure_mode=False): noise from a seeded PRNG", accountant)
    return engine


@dataclass
class PrivateTraining:
    """The Opacus-wrapped objects of one round; train with ``criterion(module(x), y).backward()``."""

    module: GradSampleModule
    """Shares its parameters with the plain model; ``module.to_standard_module()`` removes Opacus from it."""
    optimizer: DPOptimizer
    data_loader: DataLoader
    engine: PrivacyEngine
    criterion: Callable[[torch.Tensor, torch.Tensor], Any]
    """The loss given (cross-entropy by default); in ``ghost`` and ``mixed_ghost`` modes Opacus'
    ``DPLossFastGradientClipping`` (or `MixedGhostLoss`) around it: its ``.backward()`` clips."""


@contextmanager
def grad_sample_mode_guard(mode: str, model: nn.Module) -> Iterator[None]:
    """Turn an Opacus failure of a per-sample gradient mode on this model into a `ConfigError` naming both.

    Modes other than ``hooks`` support fewer layers (``ew`` fails at the first forward on a layer
    ExpandedWeights cannot handle), so wrap `make_private_training` and the first step in this.
    Out-of-memory errors pass through unchanged.
    """
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except (NotImplementedError, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"config key 'privacy.grad_sample_mode' = {mode!r} does not work for model {type(model).__name__}: "
            f"{type(exc).__name__}: {exc}; use 'hooks' (Opacus' default) or another mode"
        ) from exc


def make_private_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    *,
    privacy: PrivacyConfig,
    history: Iterable[Sequence[float]] | None = None,
    seed: int | None = None,
    criterion: nn.Module | None = None,
) -> PrivateTraining:
    """Make one round of local training differentially private, carrying epsilon over from past rounds.

    A fresh ``PrivacyEngine`` per round that forgets earlier rounds would report per-round epsilon and
    under-state the site's real spending; here the earlier history is put back into the new
    engine's accountant, so ``engine.accountant.history`` (and its epsilon) is cumulative.

    Parameters
    ----------
    model : nn.Module
        Model in training mode that passes ``ModuleValidator.validate`` (every `build_model` model does).
    optimizer : torch.optim.Optimizer
        Optimizer over the model's trainable parameters.
    data_loader : DataLoader
        Loader of the site's training set. With Poisson sampling its ``generator`` drives the sampling
        (sample rate ``1 / len(data_loader)``), so seed that generator for reproducible batches.
    privacy : PrivacyConfig
        noise_multiplier, max_grad_norm, accountant, poisson_sampling, grad_sample_mode and secure_mode.
        Without Poisson sampling the accountant's epsilon is not a valid guarantee (it assumes Poisson
        subsampling); a warning is logged.
    history : iterable of (noise_multiplier, sample_rate, num_steps), optional
        The site's accountant history from earlier rounds.
    seed : int, optional
        Seeds the Gaussian noise generator (on the model's device); ``None`` uses torch's default RNG.
        Ignored in secure mode, which forbids seeding.
    criterion : nn.Module, optional
        The loss (default ``nn.CrossEntropyLoss(reduction="mean")``). It must be a mean of per-sample terms
        divided by the batch size alone, as Opacus' ``loss_reduction="mean"`` assumes (`common.loss.
        WeightedCrossEntropy` is); in ghost mode Opacus sets its ``reduction`` to ``"none"`` to read them.

    Returns
    -------
    PrivateTraining

    Raises
    ------
    ConfigError
        If secure mode lacks torchcsprng, or Opacus refuses the grad-sample mode for this model.
    ValueError
        If ``criterion`` does not reduce by ``"mean"`` (Opacus would scale its per-sample gradients wrongly).
    """
    if criterion is not None and getattr(criterion, "reduction", None) != "mean":
        raise ValueError(
            f"the DP-SGD criterion must have reduction='mean' (Opacus' loss_reduction), got "
            f"{getattr(criterion, 'reduction', None)!r}"
        )
    engine = new_privacy_engine(
        privacy.accountant, secure_mode=privacy.secure_mode, grad_sample_mode=privacy.grad_sample_mode
    )
    engine.accountant.history = [(float(n), float(q), int(s)) for n, q, s in (history or [])]
    if not privacy.poisson_sampling:
        logger.warning("privacy.poisson_sampling is false: the reported epsilon assumes Poisson sampling")
    generator = None
    if seed is not None and not privacy.secure_mode:
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
    loss = criterion if criterion is not None else nn.CrossEntropyLoss(reduction="mean")
    with grad_sample_mode_guard(privacy.grad_sample_mode, model):
        wrapped = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=loss,
            data_loader=data_loader,
            noise_multiplier=privacy.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            poisson_sampling=privacy.poisson_sampling,
            noise_generator=generator,
            grad_sample_mode=opacus_grad_sample_mode(privacy.grad_sample_mode),
        )
    if privacy.grad_sample_mode in LOSS_WRAPPER_MODES:
        module, dp_optimizer, criterion, dp_loader = wrapped
    else:
        module, dp_optimizer, dp_loader = wrapped
        criterion = loss
    return PrivateTraining(module, dp_optimizer, dp_loader, engine, criterion)


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    *,
    privacy: PrivacyConfig,
    history: Iterable[Sequence[float]] | None = None,
    seed: int | None = None,
) -> tuple[GradSampleModule, DPOptimizer, DataLoader, PrivacyEngine]:
    """`make_private_training` as a tuple, for loops that compute plain cross-entropy themselves.

    Such a loop calls ``loss.backward()`` once, which the two-pass modes cannot clip through, so
    ``mixed_ghost`` (the default mode) runs here as ``hooks``: the same clipped, noised update and the same
    accounting, computed from instantiated per-sample gradients.

    Returns
    -------
    tuple
        ``(GradSampleModule, DPOptimizer, DataLoader, PrivacyEngine)``.

    Raises
    ------
    ConfigError
        For ``grad_sample_mode='ghost'``, whose loss must come from the wrapper only
        `make_private_training` returns.
    """
    if privacy.grad_sample_mode == MIXED_GHOST:
        logger.info("make_private: grad_sample_mode 'mixed_ghost' runs as 'hooks' for a plain-loss loop")
        privacy = copy.copy(privacy)  # a frozen config; only the mode changes, so it is not validated again
        object.__setattr__(privacy, "grad_sample_mode", "hooks")
    if privacy.grad_sample_mode == "ghost":
        raise ConfigError(
            "config key 'privacy.grad_sample_mode' = 'ghost' needs Opacus' loss wrapper, which make_private "
            "cannot return; call make_private_training and compute the loss with its criterion"
        )
    private = make_private_training(model, optimizer, data_loader, privacy=privacy, history=history, seed=seed)
    return private.module, private.optimizer, private.data_loader, private.engine
