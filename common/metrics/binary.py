"""Per-image binary metrics a site computes on its own test split: AUC with bootstrap CI and threshold metrics."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from common.metrics.core import (
    DEFAULT_TARGET_SPECIFICITY,
    DEFAULT_THRESHOLD,
    auc_from_counts,
    check_binary_inputs,
    confusion_metrics,
    percentile_ci,
    sensitivity_at_specificity,
)

__all__ = ["binary_metrics", "bootstrap_auc_ci"]

_MAX_CHUNK_CELLS = 4_000_000  # bounds the (resamples x cases) index array of one bootstrap chunk


def bootstrap_auc_ci(
    labels: np.ndarray, scores: np.ndarray, *, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile 95% CI of the AUC over ``resamples`` case resamplings (with replacement), seeded.

    Resamples that hold a single class have no AUC and are skipped. Each resample is reduced to counts
    per (class, distinct score), whose Mann–Whitney AUC is exact, so all resamples are scored in a few
    vectorised numpy calls. Returns ``(nan, nan)`` when both classes are not present or ``resamples <= 0``.
    """
    labels, scores = check_binary_inputs(labels, scores)
    n = labels.size
    if resamples <= 0 or labels.min(initial=1) == 1 or labels.max(initial=0) == 0:
        return float("nan"), float("nan")
    distinct, inverse = np.unique(scores, return_inverse=True)
    width = distinct.size
    cell = inverse.ravel() + width * labels  # negatives in [0, width), positives in [width, 2 * width)
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CHUNK_CELLS // max(n, 2 * width))
    aucs = []
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        picked = cell[rng.integers(0, n, size=(size, n))]
        offsets = (np.arange(size) * 2 * width)[:, None]
        counts = np.bincount((picked + offsets).ravel(), minlength=size * 2 * width).reshape(size, 2, width)
        aucs.append(auc_from_counts(counts[:, 0], counts[:, 1]))
    return percentile_ci(np.concatenate(aucs))


def binary_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    target_specificity: float = DEFAULT_TARGET_SPECIFICITY,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Clinical metrics of one test set, keyed by `METRIC_KEYS`.

    Parameters
    ----------
    labels
        True labels, 0 (benign/normal) or 1 (malignant), one per image.
    scores
        Model score per image (probability of malignancy); an image is called positive when
        ``score >= threshold``.
    threshold
        Operating point for sensitivity, specificity, PPV, NPV, F1, balanced accuracy and accuracy.
    target_specificity
        ``sensitivity_at_specificity`` is the highest ROC sensitivity whose specificity is at least this,
        the screening-style operating point (a fixed recall burden) that a threshold of 0.5 is not.
    bootstrap
        Number of case resamples for the percentile 95% AUC CI (0 skips it; the CI is then NaN).
    seed
        Seed of the bootstrap, so a run's reported CI is reproducible.

    Returns
    -------
    dict
        Every key of `METRIC_KEYS`. A value that is undefined for this test set (AUC without both classes,
        sensitivity without positives, PPV with no positive calls, ...) is ``float("nan")``: a small
        hospital's test split may lack a class, and that must not stop the federation. Counts are ints.

    Raises
    ------
    ValueError
        Only for malformed input: shapes differ, a label is not 0/1, or a score is not finite.
    """
    labels, scores = check_binary_inputs(labels, scores)
    num_pos = int(labels.sum())
    num_neg = int(labels.size - num_pos)
    both = num_pos > 0 and num_neg > 0
    if labels.size:
        tn, fp, fn, tp = confusion_matrix(labels, (scores >= threshold).astype(np.int64), labels=[0, 1]).ravel()
    else:
        tn = fp = fn = tp = 0
    if both:
        auc = float(roc_auc_score(labels, scores))
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
        sens_at_spec = sensitivity_at_specificity(fpr, tpr, target_specificity)
    else:
        auc = sens_at_spec = float("nan")
    low, high = bootstrap_auc_ci(labels, scores, resamples=bootstrap, seed=seed)
    return {
        "auc": auc,
        "auc_ci_low": low,
        "auc_ci_high": high,
        **confusion_metrics(int(tp), int(fp), int(tn), int(fn)),
        "sensitivity_at_specificity": sens_at_spec,
        "num_positives": num_pos,
        "num_negatives": num_neg,
    }
