"""Count-level primitives shared by per-image and histogram metrics: AUC from counts, confusion ratios, CIs."""

from __future__ import annotations

import numpy as np

__all__ = [
    "DEFAULT_TARGET_SPECIFICITY",
    "DEFAULT_THRESHOLD",
    "METRIC_KEYS",
    "auc_from_counts",
    "check_binary_inputs",
    "confusion_metrics",
    "percentile_ci",
    "sensitivity_at_specificity",
    "threshold_at_specificity",
]

DEFAULT_THRESHOLD = 0.5
"""Score at or above which an image is called positive (malignant)."""
DEFAULT_TARGET_SPECIFICITY = 0.9
"""Specificity at which ``sensitivity_at_specificity`` is read off the ROC curve."""

METRIC_KEYS: tuple[str, ...] = (
    "auc",
    "auc_ci_low",
    "auc_ci_high",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "balanced_accuracy",
    "accuracy",
    "sensitivity_at_specificity",
    "num_positives",
    "num_negatives",
)
"""Every key ``binary_metrics`` and ``histogram_metrics`` return, in display order."""


def check_binary_inputs(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``labels`` (0/1) and ``scores`` (finite) to 1-D int64 / float64 arrays.

    Raises
    ------
    ValueError
        If the arrays are not 1-D, differ in length, a label is not 0 or 1, or a score is NaN/inf;
        such inputs are bugs upstream, unlike an absent class, which only makes some metrics NaN.
    """
    labels_arr = np.asarray(labels)
    scores_arr = np.asarray(scores, dtype=np.float64)
    if labels_arr.ndim != 1 or scores_arr.ndim != 1 or labels_arr.shape != scores_arr.shape:
        raise ValueError(
            f"labels (shape {labels_arr.shape}) and scores (shape {scores_arr.shape}) must be 1-D arrays of "
            "the same length, one entry per image; flatten them or pass the positive-class probability only"
        )
    if labels_arr.size and not np.isin(labels_arr, (0, 1)).all():
        bad = sorted(set(np.unique(labels_arr).tolist()) - {0, 1})
        raise ValueError(
            f"labels must be 0 (benign) or 1 (malignant), got {bad[:5]}; binarise multi-class labels first"
        )
    if not np.isfinite(scores_arr).all():
        raise ValueError("scores contain NaN or infinity; every image needs a finite score (check the model output)")
    return labels_arr.astype(np.int64), scores_arr


def auc_from_counts(negatives: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Mann–Whitney AUC of score counts ordered from low to high score along the last axis.

    A positive beats every negative in a lower cell and ties (counts 1/2) with negatives in its own
    cell, so cells can be fine histogram bins or the distinct observed scores (exact AUC). Works on
    stacked rows, which is what makes the bootstrap vectorised. NaN where a class has no cases.
    """
    neg = np.asarray(negatives, dtype=np.float64)
    pos = np.asarray(positives, dtype=np.float64)
    neg_below = np.cumsum(neg, axis=-1) - neg
    wins = (pos * (neg_below + 0.5 * neg)).sum(axis=-1)
    pairs = neg.sum(axis=-1) * pos.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1.0), np.nan)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else float("nan")


def confusion_metrics(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    """Threshold metrics from a confusion matrix; a ratio with a zero denominator is NaN, not an error."""
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (sensitivity + specificity) / 2.0,
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
    }


def sensitivity_at_specificity(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest sensitivity among ROC points whose specificity (1 - fpr) is at least ``target``; NaN if none."""
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    ok = (1.0 - fpr >= target - 1e-12) & np.isfinite(tpr)
    return float(tpr[ok].max()) if ok.any() else float("nan")


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite bootstrap values (NaN, NaN when there are none)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def threshold_at_specificity(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The lowest score threshold whose specificity on ``(labels, scores)`` is at least ``target``.

    Chosen on a validation split, it fixes the operating point before the test split is seen (as a
    screening programme fixes its recall rate), instead of a 0.5 that an imbalanced model may never
    reach. NaN when there are no negatives to measure specificity on.
    """
    labels, scores = check_binary_inputs(labels, scores)
    negatives = np.sort(scores[labels == 0])[::-1]
    if negatives.size == 0:
        return float("nan")
    allowed_false_positives = int(np.floor((1.0 - target) * negatives.size + 1e-9))
    if allowed_false_positives >= negatives.size:
        return float(negatives[-1])
    return float(np.nextafter(negatives[allowed_false_positives], np.inf))
