"""The training loss with class weights: a mean of per-sample weighted cross-entropy terms, safe under DP-SGD."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.config.class_weights import explicit_class_weights

__all__ = ["WeightedCrossEntropy", "balanced_class_weights", "class_weights_for"]

REDUCTIONS = ("mean", "sum", "none")


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with per-class weights, reduced as ``mean_i(w[y_i] * CE_i)`` over the batch.

    Why not ``nn.CrossEntropyLoss(weight=w)``: with ``reduction="mean"`` it divides by the sum of the batch's
    weights, ``sum_i w[y_i] CE_i / sum_i w[y_i]``. Opacus assumes a mean loss (``loss_reduction="mean"``) and
    recovers per-sample gradients by multiplying the gradient of each sample's output by the batch size, so with
    torch's normaliser image ``i``'s per-sample gradient becomes ``B w[y_i] / sum_j w[y_j] * grad CE_i``: it
    depends on the other images' labels. Adding or removing one image then changes every other image's clipped
    gradient, and per-sample clipping no longer bounds one image's influence on the update, which is what the
    DP-SGD guarantee rests on. Here the normaliser is the batch size, which Opacus undoes exactly (per physical
    batch too, as each physical batch's mean is rescaled by its own size), so image ``i``'s per-sample gradient
    is ``grad(w[y_i] CE_i)``: its own term only. Weighting the loss instead of re-sampling keeps Poisson sampling
    uniform, as the accountant assumes. Under DP-SGD a weight acts only below the clipping norm: an image whose
    weighted gradient already exceeds ``privacy.max_grad_norm`` is clipped to that norm whatever its weight.

    ``reduction`` is an attribute because Opacus' ghost clipping sets it to ``"none"`` to read per-sample losses.

    Parameters
    ----------
    class_weights : sequence of float or Tensor
        One weight per class index (finite, > 0).
    reduction : str
        ``"mean"`` (what training and Opacus use), ``"sum"`` or ``"none"`` (the per-sample terms).
    """

    class_weights: Tensor

    def __init__(self, class_weights: Sequence[float] | Tensor, *, reduction: str = "mean") -> None:
        super().__init__()
        weights = torch.as_tensor(class_weights, dtype=torch.float32).detach().clone()
        if weights.ndim != 1 or not len(weights) or not bool(torch.all(torch.isfinite(weights) & (weights > 0))):
            raise ValueError(f"class weights must be one finite weight > 0 per class, got {weights.tolist()}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.register_buffer("class_weights", weights)
        self.reduction = reduction

    def check_num_classes(self, num_classes: int) -> None:
        """Refuse a model with a different number of classes than there are weights (before any indexing error).

        Raises
        ------
        ValueError
            Naming both counts and ``training.class_weights``.
        """
        if num_classes != len(self.class_weights):
            raise ValueError(
                f"{len(self.class_weights)} class weights for a {num_classes}-class model: "
                "training.class_weights must give one weight per class (model.num_classes)"
            )

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The weighted loss of ``logits`` (N, K) against class indices ``labels`` (N,), reduced per ``reduction``.

        Raises
        ------
        ValueError
            If the model has a different number of classes than there are weights.
        """
        self.check_num_classes(int(logits.shape[1]))
        weights = self.class_weights.to(device=logits.device, dtype=logits.dtype)
        per_sample = F.cross_entropy(logits, labels, reduction="none") * weights[labels]
        if self.reduction == "none":
            return per_sample
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample.mean()  # divided by the batch size alone: data-independent (see the class docstring)


def balanced_class_weights(counts: Sequence[int]) -> tuple[float, ...]:
    """Weights inversely proportional to class counts, averaging 1 over the images counted.

    ``w_c = N / (K n_c)`` with ``N`` the images and ``K`` the classes present (``n_c > 0``; every class, when
    all are present, which is scikit-learn's "balanced"). Each present class then carries the same total weight
    ``N / K``, and the mean weight over the images is exactly 1, so the loss scale, the effective learning rate
    and, under DP, how often per-sample gradients hit the clipping norm stay those of unweighted training.
    A class with no image gets weight 1: no sample carries it, so any weight is inert; 1 is the neutral one
    (0 would read as "ignore this class", which it is not).

    Parameters
    ----------
    counts : sequence of int
        Images per class index.

    Returns
    -------
    tuple of float
        One weight per class index.
    """
    total = sum(int(n) for n in counts)
    present = sum(1 for n in counts if n > 0)
    return tuple(total / (present * int(n)) if n > 0 else 1.0 for n in counts)


def class_weights_for(
    spec: str, labels: Tensor | np.ndarray | Sequence[int], num_classes: int
) -> tuple[float, ...] | None:
    """Resolve ``training.class_weights`` for one site: None (plain loss), its balanced weights, or the list.

    ``balanced`` counts ``labels``, the site's own training split: the weights are computed on site and never
    sent, but they shape the update (see the README on what this means for the privacy guarantee).

    Parameters
    ----------
    spec : str
        ``none``, ``balanced`` or comma-separated weights.
    labels : array-like of int
        The site's training labels, class indices in ``[0, num_classes)``.
    num_classes : int
        ``model.num_classes``.

    Returns
    -------
    tuple of float or None
        None for ``none``.

    Raises
    ------
    ConfigError
        If ``spec`` is not a valid ``training.class_weights`` for ``num_classes`` classes.
    """
    explicit = explicit_class_weights(spec, num_classes)
    if explicit is not None or spec.strip() == "none":
        return explicit
    values = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels, dtype=np.int64).reshape(-1)
    return balanced_class_weights(np.bincount(values, minlength=num_classes)[:num_classes].tolist())
