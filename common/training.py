"""Local training (plain SGD or Opacus DP-SGD) and evaluation of one model on one site's dataset."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from common.config import PrivacyConfig, TrainingConfig
from common.errors import ManifestError
from common.loss import WeightedCrossEntropy
from common.privacy import (
    MODES_WITHOUT_EMPTY_BATCHES,
    History,
    compute_epsilon,
    empty_batch_step,
    grad_sample_mode_guard,
    make_private_training,
    physical_batches,
)
from common.proximal import attach_proximal_term

__all__ = ["Augment", "EvalResult", "TrainResult", "evaluate", "resolve_device", "train_local"]

logger = logging.getLogger(__name__)

Augment = Callable[[Tensor, torch.Generator], Tensor]
"""Batch augmentation: ``(images (N, C, H, W) on the CPU, generator) -> images``, random only via the generator."""


@dataclass
class TrainResult:
    """What one round of local training produced (everything a client reports, as plain data)."""

    state_dict: dict[str, Tensor]
    """The plain model's keys (no Opacus ``_module.`` prefix), detached CPU copies."""
    num_examples: int
    """Size of the training set (the FedAvg weight)."""
    train_loss: float
    """Mean training loss over the non-empty steps of the round: cross-entropy, class-weighted when
    ``class_weights`` were given (evaluation loss is always unweighted)."""
    num_steps: int
    """Optimizer steps taken (logical batches with DP), including DP steps on empty Poisson batches."""
    epsilon: float
    """Cumulative epsilon over every round in ``history``; 0.0 when DP was never on."""
    history: History = field(default_factory=list)
    """Cumulative accountant history to pass to the next round; empty when DP was never on."""
    seconds: float = 0.0


@dataclass
class EvalResult:
    """Predictions of a model on a dataset, for the metrics module."""

    loss: float
    scores: np.ndarray
    """float64 probability of the last class (class 1, malignant, in the binary case), shape (N,)."""
    labels: np.ndarray
    """int64 true labels, shape (N,)."""
    num_examples: int
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """float64 softmax probability of every class, shape (N, num_classes); ``scores`` is its last column."""


def resolve_device(device: str) -> torch.device:
    """Map ``training.device`` (``"auto"``, ``"cpu"``, ``"cuda"``) to a torch device; auto prefers CUDA."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _optimizer(model: nn.Module, training: TrainingConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]  # frozen BatchNorm stays out
    if training.optimizer == "adam":
        return torch.optim.Adam(params, lr=training.learning_rate, weight_decay=training.weight_decay)
    return torch.optim.SGD(
        params, lr=training.learning_rate, momentum=training.momentum, weight_decay=training.weight_decay
    )


@contextmanager
def _quiet_hooks() -> Iterator[None]:
    # The first conv's input never requires grad, so torch notes that Opacus' full backward hook fires on
    # outputs only. That is exactly what Opacus needs; the note repeats every step and says nothing.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        yield


def train_local(
    model: nn.Module,
    dataset: Dataset,
    *,
    training: TrainingConfig,
    privacy: PrivacyConfig,
    history: History | None = None,
    seed: int = 0,
    augment: Augment | None = None,
    device: str = "cpu",
    class_weights: Sequence[float] | None = None,
    proximal_mu: float = 0.0,
) -> TrainResult:
    """Train ``model`` in place for ``training.local_epochs`` epochs of cross-entropy on ``dataset``.

    With ``privacy.mode == "local"`` this is DP-SGD through Opacus with Poisson sampling (per-sample clipping to
    ``max_grad_norm``, Gaussian noise), continuing ``history`` so epsilon is cumulative across rounds.
    Per-sample gradients come from ``privacy.grad_sample_mode`` (``ghost`` and ``mixed_ghost`` train through
    the loss wrapper `make_private_training` returns, whose ``backward()`` clips). With DP and
    ``0 < training.physical_batch_size < batch_size`` each logical (Poisson) batch runs through the model in
    physical chunks (Opacus' BatchMemoryManager) and the optimizer steps once per logical batch, which gives
    the same update with less memory; without DP the physical size is ignored.
    Empty Poisson batches still take a (noise-only) step and count in the accountant, as the privacy
    analysis requires; they are left out of the mean loss. Without privacy it is plain minibatch training.
    Frozen BatchNorm layers stay in eval mode throughout. With ``class_weights`` the loss is
    ``mean_i(w[y_i] * CE_i)`` (`common.loss.WeightedCrossEntropy`: each image's gradient is its own weighted
    term, as per-sample clipping needs); without them it is exactly the plain cross-entropy of before.

    Parameters
    ----------
    model : nn.Module
        A `build_model` model with the round's starting weights; it is trained in place (not copied).
    dataset : Dataset
        Items ``(image (C, H, W) float tensor, label int)``.
    training, privacy : TrainingConfig, PrivacyConfig
        Batch size, epochs, optimizer; DP settings.
    history : list of (noise_multiplier, sample_rate, num_steps), optional
        The site's accountant history from earlier rounds. Without DP it is returned unchanged (a ledger is
        never wiped), and a warning says this round's training is not covered by any guarantee.
    seed : int
        Seeds shuffling/Poisson sampling, DP noise and augmentation with independent generators.
    augment : callable, optional
        Applied to each CPU batch with its own generator before the forward pass.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    class_weights : sequence of float, optional
        One loss weight per class index, resolved by the caller (`common.loss.class_weights_for`); None is the
        unweighted loss.
    proximal_mu : float
        FedProx: each step also pulls the weights towards the ones ``model`` holds on entry (the global model) with
        the gradient ``proximal_mu x (w - w_global)`` of ``proximal_mu / 2 x ||w - w_global||^2``; under DP-SGD it
        is added after Opacus' clipping and noise (`common.proximal`), so the accounting is unchanged. 0 is off;
        the reported loss is always the cross-entropy alone.

    Returns
    -------
    TrainResult

    Raises
    ------
    ManifestError
        If ``dataset`` is empty (the site has no training split).
    ConfigError
        If the grad-sample mode does not work for ``model`` (raised at wrapping or the first step), or
        secure mode is asked for without torchcsprng.
    ValueError
        If a label is not a class index of the model's output (a site checks its manifest before this),
        ``class_weights`` is not one finite weight > 0 per class, or ``proximal_mu`` is negative or not finite.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ManifestError("the training set is empty: the site's manifest has no rows in its 'train' split")
    start = time.perf_counter()
    loader_seed, noise_seed, augment_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(3))
    target = resolve_device(device)
    model.to(target).train()
    loader = DataLoader(
        dataset,
        batch_size=min(training.batch_size, len(dataset)),  # type: ignore[arg-type]
        shuffle=True,
        generator=torch.Generator().manual_seed(loader_seed),
    )
    optimizer = _optimizer(model, training)
    proximal = attach_proximal_term(optimizer, proximal_mu)  # on the plain optimizer: Opacus steps it last
    module: nn.Module = model
    weighted = None if class_weights is None else WeightedCrossEntropy(class_weights).to(target)
    criterion: Callable[[Tensor, Tensor], Any] = F.cross_entropy if weighted is None else weighted
    private = None
    if privacy.local:
        private = make_private_training(
            model, optimizer, loader, privacy=privacy, history=history, seed=noise_seed, criterion=weighted
        )
        module, optimizer, loader, criterion = private.module, private.optimizer, private.data_loader, private.criterion
    physical = training.physical_batch_size
    split = private is not None and 0 < physical < min(training.batch_size, len(dataset))  # type: ignore[arg-type]
    skip_empty = private is not None and privacy.grad_sample_mode in MODES_WITHOUT_EMPTY_BATCHES
    augment_generator = torch.Generator().manual_seed(augment_seed)
    losses: list[float] = []
    steps = 0
    try:
        with _quiet_hooks():
            for _ in range(training.local_epochs):
                batches = physical_batches(loader, physical, optimizer) if split else loader
                for images, labels in batches:
                    if augment is not None and len(labels):
                        images = augment(images, augment_generator)
                    cpu_labels = labels
                    images, labels = images.to(target), labels.to(target).long()
                    optimizer.zero_grad(set_to_none=True)
                    if skip_empty and not len(labels):
                        empty_batch_step(optimizer)  # noise-only step these modes cannot run the model for
                        continue
                    first_dp_step = private is not None and steps == 0
                    with grad_sample_mode_guard(privacy.grad_sample_mode, model) if first_dp_step else nullcontext():
                        logits = module(images)
                    # Outside the guard, which would report a bad label or weight count as a grad-sample mode failure.
                    _check_labels(cpu_labels, int(logits.shape[1]))
                    if weighted is not None:
                        weighted.check_num_classes(int(logits.shape[1]))
                    with grad_sample_mode_guard(privacy.grad_sample_mode, model) if first_dp_step else nullcontext():
                        loss = criterion(logits, labels)
                        loss.backward()
                        optimizer.step()
                    steps += 1
                    if len(labels):
                        losses.append(loss.item())
    finally:
        if proximal is not None:
            proximal.remove()
        if private is not None:
            private.module.to_standard_module()  # removes Opacus hooks and per-sample grads from ``model``
    prior: History = [(float(n), float(q), int(s)) for n, q, s in (history or [])]
    if private is not None:
        new_history: History = list(private.engine.accountant.history)
        steps = sum(s for *_, s in new_history) - sum(s for *_, s in prior)  # logical steps, not physical
    else:
        new_history = prior
        if new_history:
            logger.warning("privacy.mode=%s: this round's local training is not DP-SGD", privacy.mode)
    epsilon = compute_epsilon(new_history, delta=privacy.delta, accountant=privacy.accountant)
    train_loss = float(np.mean(losses)) if losses else math.nan
    result = TrainResult(
        state_dict={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        num_examples=len(dataset),  # type: ignore[arg-type]
        train_loss=train_loss,
        num_steps=steps,
        epsilon=epsilon,
        history=new_history,
        seconds=time.perf_counter() - start,
    )
    logger.info(
        "local training: %d examples, %d steps, loss %.4f, epsilon %.3f, %.1fs",
        result.num_examples,
        steps,
        train_loss,
        epsilon,
        result.seconds,
    )
    return result


def evaluate(model: nn.Module, dataset: Dataset, *, batch_size: int = 64, device: str = "cpu") -> EvalResult:
    """Score every item of ``dataset`` without gradients (the model's train/eval mode is restored after).

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits (N, num_classes).
    dataset : Dataset
        Items ``(image, label)``, read in order.
    batch_size : int
        Inference batch size.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.

    Returns
    -------
    EvalResult
        Mean cross-entropy, softmax probability of the last class (class 1 for binary; for more classes the
        last class, the most severe, as a one-vs-rest score), every class's softmax probability (for per-class
        metrics), labels in dataset order. An empty dataset gives loss NaN.

    Raises
    ------
    ValueError
        If a label is not a class index of the model's output (which cross-entropy would report only as an
        index error, or a device-side assert on CUDA).
    """
    target = resolve_device(device)
    was_training = model.training
    model.to(target).eval()
    total_loss = 0.0
    probabilities: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    num_classes = 2
    try:
        with torch.no_grad():
            for images, batch_labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
                logits = model(images.to(target))
                num_classes = int(logits.shape[1])
                _check_labels(batch_labels, num_classes)
                batch_labels = batch_labels.to(target).long()
                total_loss += F.cross_entropy(logits, batch_labels, reduction="sum").item()
                probabilities.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
                labels.append(batch_labels.cpu().numpy())
    finally:
        model.train(was_training)
    count = int(sum(len(batch) for batch in labels))
    probs = np.concatenate(probabilities) if probabilities else np.zeros((0, num_classes), dtype=np.float64)
    return EvalResult(
        loss=total_loss / count if count else math.nan,
        scores=probs[:, -1].astype(np.float64),
        labels=np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, dtype=np.int64),
        num_examples=count,
        probabilities=probs.astype(np.float64),
    )


def _check_labels(labels: Tensor, num_classes: int) -> None:
    """Refuse labels outside ``[0, num_classes)`` on the CPU, before cross-entropy turns them into an opaque error."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = sorted({int(v) for v in labels.tolist()} - set(range(num_classes)))
        raise ValueError(
            f"label(s) {bad[:5]} are not class indices of this {num_classes}-class model: labels must be in "
            f"[0, {num_classes}) (model.num_classes = {num_classes})"
        )
