"""Per-class score histograms: what a site sends instead of per-image scores, and metrics computed from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.metrics.core import (
    DEFAULT_TARGET_SPECIFICITY,
    DEFAULT_THRESHOLD,
    auc_from_counts,
    check_binary_inputs,
    confusion_metrics,
    percentile_ci,
    sensitivity_at_specificity,
)

__all__ = [
    "LOGIT_RANGE",
    "NUM_SCORE_BINS",
    "ScoreHistogram",
    "histogram_auc",
    "histogram_auc_ci",
    "histogram_metrics",
    "histogram_roc",
    "score_bin_edges",
]

NUM_SCORE_BINS: int = 200
"""Bins of equal width in logit space (about 0.1 logit each): 0.5 falls on a bin edge."""

LOGIT_RANGE: float = 10.0
"""Inner bin edges span logits [-10, 10]; the outer two bins take everything more extreme."""


def score_bin_edges(bins: int = NUM_SCORE_BINS) -> np.ndarray:
    """Probability-space edges of the score bins: 0, sigmoid of evenly spaced logits, 1.

    Equal-width bins over [0, 1] fail exactly when it matters: an imbalanced or early-round model puts
    every score below 0.01, all in one bin, and the pooled AUC collapses to 0.5 while the sites' own
    AUCs differ. Bins even in logit space keep the ranking of confident scores.
    """
    if bins < 2:
        return np.array([0.0, 1.0])
    logits = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, bins - 1)
    return np.concatenate(([0.0], 1.0 / (1.0 + np.exp(-logits)), [1.0]))


def _counts(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"ScoreHistogram.{name} must be a non-empty 1-D array of counts, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or (array < 0).any() or (array != np.round(array)).any():
        raise ValueError(f"ScoreHistogram.{name} must hold non-negative whole counts, got {array[:5].tolist()}...")
    counts = array.astype(np.int64)
    counts.setflags(write=False)
    return counts


@dataclass(frozen=True, eq=False)
class ScoreHistogram:
    """Counts of test scores per bin (see `score_bin_edges`), separately for negatives and positives.

    Sites send this instead of per-image scores: it carries no image's identity, and summing sites'
    histograms gives the pooled ROC exactly up to the bin width. Bin ``k`` holds scores in
    ``[edges[k], edges[k+1])``; a score of exactly 1.0 goes in the last bin. Arrays are read-only.
    """

    negatives: np.ndarray
    positives: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "negatives", _counts(self.negatives, "negatives"))
        object.__setattr__(self, "positives", _counts(self.positives, "positives"))
        if self.negatives.shape != self.positives.shape:
            raise ValueError(
                f"ScoreHistogram negatives ({self.negatives.size} bins) and positives ({self.positives.size} bins) "
                "must have the same number of bins"
            )

    @classmethod
    def from_scores(cls, labels: np.ndarray, scores: np.ndarray, bins: int = NUM_SCORE_BINS) -> ScoreHistogram:
        """Bin a site's test scores (probabilities in [0, 1]) by true label (0 negative, 1 positive).

        Raises
        ------
        ValueError
            If labels are not 0/1, lengths differ, a score is not finite or lies outside [0, 1], or ``bins < 1``.
        """
        if bins < 1:
            raise ValueError(f"bins = {bins} is invalid: a histogram needs at least 1 bin")
        labels_arr, scores_arr = check_binary_inputs(labels, scores)
        if scores_arr.size and (scores_arr.min() < 0.0 or scores_arr.max() > 1.0):
            raise ValueError(
                f"scores must be probabilities in [0, 1] to be binned, got range [{scores_arr.min():.4g}, "
                f"{scores_arr.max():.4g}]; apply softmax/sigmoid first"
            )
        edges = score_bin_edges(bins)
        index = np.clip(np.searchsorted(edges, scores_arr, side="right") - 1, 0, bins - 1)
        return cls(
            negatives=np.bincount(index[labels_arr == 0], minlength=bins),
            positives=np.bincount(index[labels_arr == 1], minlength=bins),
        )

    @classmethod
    def from_lists(cls, negatives: Sequence[int], positives: Sequence[int]) -> ScoreHistogram:
        """Rebuild a histogram from the plain lists of `to_lists` (JSON, Flower MetricRecord)."""
        return cls(negatives=np.asarray(negatives), positives=np.asarray(positives))

    def to_lists(self) -> dict[str, list[int]]:
        """Plain ``{"negatives": [...], "positives": [...]}`` for JSON files and Flower records."""
        return {"negatives": self.negatives.tolist(), "positives": self.positives.tolist()}

    @property
    def bins(self) -> int:
        """Number of bins."""
        return int(self.negatives.size)

    @property
    def num_negatives(self) -> int:
        """Number of label-0 cases counted."""
        return int(self.negatives.sum())

    @property
    def num_positives(self) -> int:
        """Number of label-1 cases counted."""
        return int(self.positives.sum())

    def __add__(self, other: object) -> ScoreHistogram:
        """Pool two sites: the histogram of their concatenated test sets."""
        if not isinstance(other, ScoreHistogram):
            return NotImplemented
        if other.bins != self.bins:
            raise ValueError(
                f"cannot pool score histograms with {self.bins} and {other.bins} bins; every site must use "
                "the same NUM_SCORE_BINS"
            )
        return ScoreHistogram(negatives=self.negatives + other.negatives, positives=self.positives + other.positives)

    @classmethod
    def pooled(cls, histograms: Sequence[ScoreHistogram]) -> ScoreHistogram:
        """Sum sites' histograms: the pooled ROC is then exact up to bin width, with no per-image data moved.

        Raises
        ------
        ValueError
            If there is no histogram, or their numbers of bins differ.
        """
        if not histograms:
            raise ValueError("pooling score histograms needs at least one site's histogram, got none")
        return sum(histograms[1:], histograms[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScoreHistogram):
            return NotImplemented
        return np.array_equal(self.negatives, other.negatives) and np.array_equal(self.positives, other.positives)

    __hash__ = None  # type: ignore[assignment]  # equal by content, and numpy arrays are unhashable


def histogram_auc(h: ScoreHistogram) -> float:
    """Mann–Whitney AUC, ties within a bin counting 1/2 (the trapezoid under `histogram_roc`); NaN if a class is empty.

    The binned AUC differs from the exact one only through pairs sharing a bin, at most ~1/bins.
    """
    return float(auc_from_counts(h.negatives, h.positives))


def histogram_roc(h: ScoreHistogram) -> tuple[np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr)`` from thresholds at every bin edge, high to low: (0, 0) first, (1, 1) last.

    ``bins + 1`` points each. The rates of an empty class are NaN (no curve can be drawn).
    """
    neg_above = np.concatenate(([0], np.cumsum(h.negatives[::-1])))
    pos_above = np.concatenate(([0], np.cumsum(h.positives[::-1])))
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = neg_above / h.num_negatives if h.num_negatives else np.full(neg_above.shape, np.nan)
        tpr = pos_above / h.num_positives if h.num_positives else np.full(pos_above.shape, np.nan)
    return fpr.astype(np.float64), tpr.astype(np.float64)


def histogram_auc_ci(h: ScoreHistogram, *, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% CI of `histogram_auc`, resampling cases from the binned data; NaN without both classes."""
    total = h.num_negatives + h.num_positives
    if resamples <= 0 or h.num_negatives == 0 or h.num_positives == 0:
        return float("nan"), float("nan")
    cells = np.concatenate((h.negatives, h.positives)).astype(np.float64)
    # Resampling cases with replacement is a multinomial draw over the (class, bin) cells.
    draws = np.random.default_rng(seed).multinomial(total, cells / total, size=resamples)
    return percentile_ci(auc_from_counts(draws[:, : h.bins], draws[:, h.bins :]))


def histogram_metrics(
    h: ScoreHistogram,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    target_specificity: float = DEFAULT_TARGET_SPECIFICITY,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """The `binary_metrics` keys computed from a (pooled) histogram, so the server can score all sites as one.

    ``threshold`` is rounded to the nearest bin edge (0.5 is an edge, so the default is exact). The CI
    resamples cases from the binned data. Undefined values are NaN.
    """
    edge = int(np.argmin(np.abs(score_bin_edges(h.bins) - threshold)))
    tp, fn = int(h.positives[edge:].sum()), int(h.positives[:edge].sum())
    fp, tn = int(h.negatives[edge:].sum()), int(h.negatives[:edge].sum())
    fpr, tpr = histogram_roc(h)
    low, high = histogram_auc_ci(h, resamples=bootstrap, seed=seed)
    return {
        "auc": histogram_auc(h),
        "auc_ci_low": low,
        "auc_ci_high": high,
        **confusion_metrics(tp, fp, tn, fn),
        "sensitivity_at_specificity": sensitivity_at_specificity(fpr, tpr, target_specificity),
        "num_positives": h.num_positives,
        "num_negatives": h.num_negatives,
    }
