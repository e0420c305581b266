"""Calibration of malignancy probabilities: reliability bins, Brier score and ECE, per site or pooled."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.metrics.core import check_binary_inputs
from common.metrics.histogram import ScoreHistogram, score_bin_edges

__all__ = [
    "DEFAULT_CALIBRATION_BINS",
    "Calibration",
    "ReliabilityBin",
    "calibration_from_histogram",
    "calibration_from_scores",
]

DEFAULT_CALIBRATION_BINS = 10
"""Equal-width probability bins of the reliability diagram: ten is the usual choice and keeps bins populated."""

# Flat MetricRecord entries, each after the caller's prefix.
_BRIER, _ECE, _N, _EXACT = "brier", "ece", "n", "exact"
_BIN_COUNT, _BIN_MEAN, _BIN_OBSERVED = "bin_count", "bin_mean_predicted", "bin_observed"


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class ReliabilityBin:
    """One bar of a reliability diagram: scores in ``[lower, upper)`` (the last bin includes 1.0).

    ``mean_predicted`` is the mean score and ``observed`` the share of malignant images in the bin; both are
    NaN when ``count`` is 0, since an empty bin says nothing about calibration.
    """

    lower: float
    upper: float
    count: int
    mean_predicted: float
    observed: float


@dataclass(frozen=True)
class Calibration:
    """How far a test set's predicted probabilities are from the observed malignancy rates.

    AUC only ranks images; a model moved to another hospital often keeps its ranking but not its
    probabilities, and a clinician reading "30 % malignant" needs the latter. ``brier`` is the mean squared
    error of the probabilities, ``ece`` the count-weighted mean gap between ``observed`` and ``mean_predicted``
    over the bins. Both are NaN for an empty test set. ``exact`` is False when computed from binned scores.
    """

    bins: tuple[ReliabilityBin, ...]
    brier: float
    ece: float
    num_examples: int
    exact: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe nested dict; NaN becomes None (JSON has no NaN)."""
        return {
            "brier": _none_if_nan(self.brier),
            "ece": _none_if_nan(self.ece),
            "exact": self.exact,
            "num_examples": self.num_examples,
            "bins": [
                {
                    "lower": b.lower,
                    "upper": b.upper,
                    "count": b.count,
                    "mean_predicted": _none_if_nan(b.mean_predicted),
                    "observed": _none_if_nan(b.observed),
                }
                for b in self.bins
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Undo `to_dict` (None back to NaN)."""
        bins = tuple(
            ReliabilityBin(
                lower=float(b["lower"]),
                upper=float(b["upper"]),
                count=int(b["count"]),
                mean_predicted=_nan_if_none(b["mean_predicted"]),
                observed=_nan_if_none(b["observed"]),
            )
            for b in data["bins"]
        )
        return cls(
            bins=bins,
            brier=_nan_if_none(data["brier"]),
            ece=_nan_if_none(data["ece"]),
            num_examples=int(data["num_examples"]),
            exact=bool(data["exact"]),
        )

    def to_flat(self, prefix: str) -> dict[str, float | int | list[float] | list[int]]:
        """Flat entries for a Flower MetricRecord, keys ``f"{prefix}brier"`` etc.; NaN stays NaN (floats allowed).

        Bin edges are not sent: the bins are equal-width on [0, 1], so their number implies them.
        """
        return {
            f"{prefix}{_BRIER}": float(self.brier),
            f"{prefix}{_ECE}": float(self.ece),
            f"{prefix}{_N}": int(self.num_examples),
            f"{prefix}{_EXACT}": int(self.exact),
            f"{prefix}{_BIN_COUNT}": [int(b.count) for b in self.bins],
            f"{prefix}{_BIN_MEAN}": [float(b.mean_predicted) for b in self.bins],
            f"{prefix}{_BIN_OBSERVED}": [float(b.observed) for b in self.bins],
        }

    @classmethod
    def from_flat(cls, prefix: str, record: Mapping[str, Any]) -> Calibration:
        """Undo `to_flat`.

        Raises
        ------
        ValueError
            If an entry is missing or the three bin lists differ in length.
        """
        try:
            counts, means, observed = (record[f"{prefix}{k}"] for k in (_BIN_COUNT, _BIN_MEAN, _BIN_OBSERVED))
            brier, ece, n = record[f"{prefix}{_BRIER}"], record[f"{prefix}{_ECE}"], record[f"{prefix}{_N}"]
        except KeyError as exc:
            raise ValueError(f"calibration record with prefix {prefix!r} lacks its entry {exc}") from exc
        if not len(counts) == len(means) == len(observed) >= 1:
            raise ValueError(
                f"calibration record with prefix {prefix!r} has {len(counts)} counts, {len(means)} means and "
                f"{len(observed)} observed shares; they must be equally many (one per bin, at least one)"
            )
        edges = _probability_edges(len(counts))
        bins = tuple(
            ReliabilityBin(float(edges[k]), float(edges[k + 1]), int(counts[k]), float(means[k]), float(observed[k]))
            for k in range(len(counts))
        )
        exact = bool(record.get(f"{prefix}{_EXACT}", 0))
        return cls(bins=bins, brier=float(brier), ece=float(ece), num_examples=int(n), exact=exact)


def _check_bins(bins: int) -> None:
    if bins < 1:
        raise ValueError(f"bins = {bins} is invalid: a reliability diagram needs at least 1 bin")


def _summarise(
    bins: int, counts: np.ndarray, sum_predicted: np.ndarray, sum_positive: np.ndarray, sum_squared_error: float
) -> tuple[tuple[ReliabilityBin, ...], float, float, int]:
    """Reliability bins, Brier and ECE from per-bin sums (shared by the exact and the binned path)."""
    total = int(counts.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(counts > 0, sum_predicted / np.maximum(counts, 1), np.nan)
        observed = np.where(counts > 0, sum_positive / np.maximum(counts, 1), np.nan)
    edges = _probability_edges(bins)
    reliability = tuple(
        ReliabilityBin(
            float(edges[k]), float(edges[k + 1]), int(counts[k]), float(mean_predicted[k]), float(observed[k])
        )
        for k in range(bins)
    )
    if total == 0:
        return reliability, math.nan, math.nan, 0
    filled = counts > 0
    ece = float((counts[filled] * np.abs(observed[filled] - mean_predicted[filled])).sum() / total)
    return reliability, float(sum_squared_error / total), ece, total


def _probability_edges(bins: int) -> np.ndarray:
    """Edges of ``bins`` equal-width probability bins, ``k / bins`` (so 0.3 is 0.3, not 0.30000000000000004)."""
    return np.arange(bins + 1) / bins


def _probability_bin(probabilities: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin index of each probability, consistent with `_probability_edges`; 1.0 goes in the last bin."""
    return np.clip(np.searchsorted(_probability_edges(bins), probabilities, side="right") - 1, 0, bins - 1)


def calibration_from_scores(
    labels: np.ndarray, scores: np.ndarray, *, bins: int = DEFAULT_CALIBRATION_BINS
) -> Calibration:
    """Exact calibration of one site's test scores.

    Parameters
    ----------
    labels
        True labels, 0 or 1, one per image.
    scores
        Predicted probability of malignancy per image, in [0, 1].
    bins
        Number of equal-width probability bins of the reliability diagram.

    Returns
    -------
    Calibration
        ``exact=True``. A single-class test set still has a Brier score (the probabilities are still wrong
        or right); an empty one has Brier and ECE NaN and all counts 0.

    Raises
    ------
    ValueError
        If labels are not 0/1, lengths differ, a score is not finite or lies outside [0, 1], or ``bins < 1``.
    """
    _check_bins(bins)
    labels, scores = check_binary_inputs(labels, scores)
    if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
        raise ValueError(
            f"scores must be probabilities in [0, 1] for calibration, got range [{scores.min():.4g}, "
            f"{scores.max():.4g}]; apply softmax/sigmoid first"
        )
    index = _probability_bin(scores, bins)
    counts = np.bincount(index, minlength=bins)
    sum_predicted = np.bincount(index, weights=scores, minlength=bins)
    sum_positive = np.bincount(index, weights=labels.astype(np.float64), minlength=bins)
    squared_error = float(((scores - labels) ** 2).sum())
    reliability, brier, ece, total = _summarise(bins, counts, sum_predicted, sum_positive, squared_error)
    return Calibration(bins=reliability, brier=brier, ece=ece, num_examples=total, exact=True)


def _representatives(edges: np.ndarray) -> np.ndarray:
    """One probability standing for every score of a histogram bin.

    An inner bin (both edges strictly inside (0, 1)) is represented by the sigmoid of its mid-logit; the
    open outer bins by their inner edge (all their scores lie closer to it than ~5e-5); a single bin [0, 1]
    by 0.5.
    """
    lower, upper = edges[:-1], edges[1:]
    inner = (lower > 0.0) & (upper < 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mid_logit = (np.log(lower) - np.log1p(-lower) + np.log(upper) - np.log1p(-upper)) / 2.0
    rep = np.where(inner, 1.0 / (1.0 + np.exp(-np.where(inner, mid_logit, 0.0))), 0.5)
    rep = np.where((lower == 0.0) & (upper < 1.0), upper, rep)
    return np.where((upper == 1.0) & (lower > 0.0), lower, rep)


def calibration_from_histogram(histogram: ScoreHistogram, *, bins: int = DEFAULT_CALIBRATION_BINS) -> Calibration:
    """Calibration from a (pooled) score histogram, so the server can assess all sites as one population.

    Every score of a fine histogram bin is replaced by one representative probability (see
    ``_representatives``), and each fine bin goes whole into the coarse probability bin that holds its
    representative.

    Binning error: the default fine bins are ~0.1 logit wide, and the sigmoid's slope is at most 1/4, so a
    representative is within ~0.013 of every score in its bin (bins are at most ~0.025 wide in probability).
    Brier and each bin's ``mean_predicted`` are off by about that much at most, and usually far less since
    the errors cancel. The coarse bin counts equal the exact ones except for the scores of the few fine bins
    that straddle a coarse edge (0.5 is a fine edge; 0.1, 0.2, ... are not), which all go to one side.

    Parameters
    ----------
    histogram
        Per-class counts of scores in the bins of `score_bin_edges`, e.g. the sum of the sites' histograms
        (``ScoreHistogram.pooled``).
    bins
        Number of equal-width probability bins of the reliability diagram.

    Returns
    -------
    Calibration
        ``exact=False``; Brier and ECE NaN when the histogram is empty.

    Raises
    ------
    ValueError
        If ``bins < 1``.
    """
    _check_bins(bins)
    rep = _representatives(score_bin_edges(histogram.bins))
    neg = histogram.negatives.astype(np.float64)
    pos = histogram.positives.astype(np.float64)
    index = _probability_bin(rep, bins)
    counts = np.bincount(index, weights=neg + pos, minlength=bins).round().astype(np.int64)
    sum_predicted = np.bincount(index, weights=(neg + pos) * rep, minlength=bins)
    sum_positive = np.bincount(index, weights=pos, minlength=bins)
    squared_error = float((neg * rep**2 + pos * (1.0 - rep) ** 2).sum())
    reliability, brier, ece, total = _summarise(bins, counts, sum_predicted, sum_positive, squared_error)
    return Calibration(bins=reliability, brier=brier, ece=ece, num_examples=total, exact=False)
