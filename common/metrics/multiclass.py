"""More than two classes, one vs rest: per-class AUC with CI, macro AUC, argmax confusion matrix, and their pooling.

A site scores each class c by its softmax probability P(c) against all other classes, and sends one
`ScoreHistogram` per class (P(c) of images labelled c vs of the rest) plus a K x K confusion matrix; summing
those over sites gives the pooled per-class ROC and confusion matrix without any per-image score leaving a site.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from common import wire
from common.metrics.binary import bootstrap_auc_ci
from common.metrics.histogram import NUM_SCORE_BINS, ScoreHistogram, histogram_auc, histogram_auc_ci

__all__ = [
    "CLASS_METRICS",
    "MACRO_AUC",
    "ClassEvaluation",
    "check_class_inputs",
    "class_key",
    "confusion_counts",
    "macro_auc",
]

CLASS_METRICS: tuple[str, ...] = ("auc", "auc_ci_low", "auc_ci_high", "num_cases")
"""Per-class results, each flattened to ``class_key(metric, c)`` (``auc_class0``, ...) in records and rows."""
MACRO_AUC = "macro_auc"
"""Unweighted mean of the per-class one-vs-rest AUCs (NaN when any class's AUC is undefined)."""


def class_key(metric: str, index: int) -> str:
    """Flat key of one class's result, e.g. ``class_key("auc", 0) == "auc_class0"``."""
    return f"{metric}_class{index}"


def check_class_inputs(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``labels`` (class indices) and ``probabilities`` (N x K, finite) and convert them to int64 / float64.

    Raises
    ------
    ValueError
        If shapes disagree, K < 2, a probability is not finite, or a label is not an integer in [0, K):
        such inputs are bugs upstream (a site checks its labels against ``model.num_classes`` first).
    """
    labels_arr = np.asarray(labels)
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2 or labels_arr.ndim != 1 or labels_arr.shape[0] != probs.shape[0]:
        raise ValueError(
            f"labels (shape {labels_arr.shape}) and probabilities (shape {probs.shape}) must be N labels and an "
            "N x K matrix of class probabilities with K >= 2"
        )
    if not np.isfinite(probs).all():
        raise ValueError("probabilities contain NaN or infinity; every image needs finite class probabilities")
    k = probs.shape[1]
    if labels_arr.size and (
        not np.issubdtype(labels_arr.dtype, np.integer) or labels_arr.min() < 0 or labels_arr.max() >= k
    ):
        bad = sorted(set(np.unique(labels_arr).tolist()) - set(range(k)))
        raise ValueError(f"labels must be class indices in [0, {k}) for {k} classes, got {bad[:5]}")
    return labels_arr.astype(np.int64), probs


def confusion_counts(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """K x K counts: row = true class, column = the class of highest probability (ties go to the lower index)."""
    labels, probs = check_class_inputs(labels, probabilities)
    k = probs.shape[1]
    predicted = probs.argmax(axis=1) if labels.size else np.zeros(0, dtype=np.int64)
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k).astype(np.int64)


def macro_auc(aucs: Sequence[float]) -> float:
    """Mean of the per-class AUCs; NaN when there are none or any is NaN (a class absent from the test set).

    Strict on purpose, as scikit-learn's macro average is: a mean over only the classes a site happens to
    have would not be comparable between sites.
    """
    values = np.asarray(aucs, dtype=np.float64)
    return float(values.mean()) if values.size and np.isfinite(values).all() else math.nan


def _entries(index: int, auc: float, low: float, high: float, cases: int) -> dict[str, float]:
    return dict(zip((class_key(m, index) for m in CLASS_METRICS), (auc, low, high, cases), strict=True))


@dataclass(frozen=True, eq=False)
class ClassEvaluation:
    """One test set scored per class, one vs rest, reduced to what may leave a site.

    ``metrics`` holds ``class_key(m, c)`` for every ``m`` in `CLASS_METRICS` and class ``c``, plus `MACRO_AUC`;
    ``histograms[c]`` is class c's one-vs-rest histogram of P(c); ``confusion`` the K x K argmax counts.
    """

    metrics: dict[str, float]
    histograms: tuple[ScoreHistogram, ...]
    confusion: np.ndarray

    def __post_init__(self) -> None:
        k = len(self.histograms)
        confusion = np.asarray(self.confusion)
        if k < 2 or confusion.shape != (k, k) or (confusion < 0).any():
            raise ValueError(
                f"a ClassEvaluation needs K >= 2 histograms and a K x K non-negative confusion matrix, got "
                f"{k} histogram(s) and a matrix of shape {confusion.shape}"
            )
        object.__setattr__(self, "confusion", confusion.astype(np.int64))

    @property
    def num_classes(self) -> int:
        """K."""
        return len(self.histograms)

    @classmethod
    def from_predictions(
        cls,
        labels: np.ndarray,
        probabilities: np.ndarray,
        *,
        bootstrap: int = 1000,
        seed: int = 0,
        bins: int = NUM_SCORE_BINS,
    ) -> ClassEvaluation:
        """A site's own test split: exact per-class AUC (scikit-learn) with a bootstrap CI, histograms, confusion.

        A class absent from the test set (or the only class present) has AUC and CI NaN, and then so has the
        macro AUC; that never stops the site.
        """
        labels, probs = check_class_inputs(labels, probabilities)
        probs = np.clip(probs, 0.0, 1.0)  # softmax in float64 can overshoot 1 by an ulp
        metrics: dict[str, float] = {}
        histograms = []
        for c in range(probs.shape[1]):
            positive = (labels == c).astype(np.int64)
            cases = int(positive.sum())
            auc = float(roc_auc_score(positive, probs[:, c])) if 0 < cases < positive.size else math.nan
            low, high = bootstrap_auc_ci(positive, probs[:, c], resamples=bootstrap, seed=seed)
            metrics.update(_entries(c, auc, low, high, cases))
            histograms.append(ScoreHistogram.from_scores(positive, probs[:, c], bins))
        metrics[MACRO_AUC] = macro_auc([metrics[class_key("auc", c)] for c in range(probs.shape[1])])
        return cls(metrics, tuple(histograms), confusion_counts(labels, probs))

    @classmethod
    def from_histograms(
        cls, histograms: Sequence[ScoreHistogram], confusion: np.ndarray, *, bootstrap: int = 1000, seed: int = 0
    ) -> ClassEvaluation:
        """Per-class AUC (exact up to the bin width) and its CI from histograms, e.g. all sites' summed ones."""
        metrics: dict[str, float] = {}
        for c, h in enumerate(histograms):
            low, high = histogram_auc_ci(h, resamples=bootstrap, seed=seed)
            metrics.update(_entries(c, histogram_auc(h), low, high, h.num_positives))
        metrics[MACRO_AUC] = macro_auc([metrics[class_key("auc", c)] for c in range(len(histograms))])
        return cls(metrics, tuple(histograms), np.asarray(confusion))

    @classmethod
    def pooled(cls, evaluations: Sequence[ClassEvaluation], *, bootstrap: int = 1000, seed: int = 0) -> ClassEvaluation:
        """All sites' test images as one population: summed histograms per class and summed confusion matrices.

        Raises
        ------
        ValueError
            If there is no evaluation or the sites scored different numbers of classes.
        """
        if not evaluations:
            raise ValueError("pooling needs at least one site's ClassEvaluation, got none")
        counts = sorted({e.num_classes for e in evaluations})
        if len(counts) > 1:
            raise ValueError(f"cannot pool sites that scored different numbers of classes {counts}")
        histograms = [ScoreHistogram.pooled(hs) for hs in zip(*(e.histograms for e in evaluations), strict=True)]
        confusion = np.sum([e.confusion for e in evaluations], axis=0)
        return cls.from_histograms(histograms, confusion, bootstrap=bootstrap, seed=seed)

    def to_flat(self) -> dict[str, int | float | list[int]]:
        """Flat entries for a Flower MetricRecord (scalars and fixed-size lists of counts; see `common.wire`)."""
        flat: dict[str, int | float | list[int]] = {wire.NUM_CLASSES: self.num_classes, **self.metrics}
        for c, h in enumerate(self.histograms):
            negatives, positives = wire.class_hist_keys(c)
            flat[negatives], flat[positives] = h.negatives.tolist(), h.positives.tolist()
        flat[wire.CONFUSION_MATRIX] = self.confusion.ravel().tolist()
        return flat

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> ClassEvaluation | None:
        """Undo `to_flat` (a site's reply or the pooled record); None when it holds no multi-class entries.

        Raises
        ------
        ValueError
            If ``num_classes`` is there but a histogram or the confusion matrix is missing or of the wrong size.
        """
        if wire.NUM_CLASSES not in values:
            return None
        k = int(values[wire.NUM_CLASSES])
        try:
            histograms = tuple(
                ScoreHistogram.from_lists(values[neg], values[pos]) for neg, pos in map(wire.class_hist_keys, range(k))
            )
            confusion = np.asarray(values[wire.CONFUSION_MATRIX], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"a {k}-class evaluation record lacks its entry {exc}") from exc
        if confusion.size != k * k:
            raise ValueError(f"'{wire.CONFUSION_MATRIX}' holds {confusion.size} counts; {k} classes need {k * k}")
        kinds = {class_key(m, c): int if m == "num_cases" else float for c in range(k) for m in CLASS_METRICS}
        metrics = {name: kind(values[name]) for name, kind in {**kinds, MACRO_AUC: float}.items() if name in values}
        return cls(metrics, histograms, confusion.reshape(k, k))
