"""Wrap model, optimizer and loader with Opacus, continuing the site's accountant history."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader

from common.config import PrivacyConfig

__all__ = ["make_private", "new_privacy_engine"]

logger = logging.getLogger(__name__)


def new_privacy_engine(accountant: str) -> PrivacyEngine:
    """A ``PrivacyEngine`` with ``secure_mode=False``, without Opacus' secure-RNG warning.

    Secure mode needs ``torchcsprng`` (unmaintained, not installed) and forbids seeding; this project
    chooses seeded, reproducible pseudo-randomness. The choice is logged once per engine instead of
    warned about on every round.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
        engine = PrivacyEngine(accountant=accountant, secure_mode=False)
    logger.debug("Opacus PrivacyEngine(accountant=%s, secure_mode=False): noise from a seeded PRNG", accountant)
    return engine


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    *,
    privacy: PrivacyConfig,
    history: Iterable[Sequence[float]] | None = None,
    seed: int | None = None,
) -> tuple[GradSampleModule, DPOptimizer, DataLoader, PrivacyEngine]:
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
        noise_multiplier, max_grad_norm, accountant and poisson_sampling. Without Poisson sampling the
        accountant's epsilon is not a valid guarantee (it assumes Poisson subsampling); a warning is logged.
    history : iterable of (noise_multiplier, sample_rate, num_steps), optional
        The site's accountant history from earlier rounds.
    seed : int, optional
        Seeds the Gaussian noise generator (on the model's device); ``None`` uses torch's default RNG.

    Returns
    -------
    tuple
        ``(GradSampleModule, DPOptimizer, DataLoader, PrivacyEngine)``; the wrapped module shares its
        parameters with ``model`` (unwrap with ``._module``).
    """
    engine = new_privacy_engine(privacy.accountant)
    engine.accountant.history = [(float(n), float(q), int(s)) for n, q, s in (history or [])]
    if not privacy.poisson_sampling:
        logger.warning("privacy.poisson_sampling is false: the reported epsilon assumes Poisson sampling")
    generator = None
    if seed is not None:
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
    module, dp_optimizer, dp_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=privacy.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        poisson_sampling=privacy.poisson_sampling,
        noise_generator=generator,
    )
    return module, dp_optimizer, dp_loader, engine
