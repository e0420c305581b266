"""Clinical metrics per site and pooled: AUC with CI, threshold metrics, and shareable score histograms."""

from __future__ import annotations

from common.metrics.binary import binary_metrics, bootstrap_auc_ci
from common.metrics.core import (
    DEFAULT_TARGET_SPECIFICITY,
    DEFAULT_THRESHOLD,
    METRIC_KEYS,
    confusion_metrics,
    threshold_at_specificity,
)
from common.metrics.histogram import (
    NUM_SCORE_BINS,
    ScoreHistogram,
    histogram_auc,
    histogram_metrics,
    histogram_roc,
    score_bin_edges,
)

__all__ = [
    "DEFAULT_TARGET_SPECIFICITY",
    "DEFAULT_THRESHOLD",
    "METRIC_KEYS",
    "NUM_SCORE_BINS",
    "ScoreHistogram",
    "binary_metrics",
    "bootstrap_auc_ci",
    "confusion_metrics",
    "histogram_auc",
    "histogram_metrics",
    "histogram_roc",
    "score_bin_edges",
    "threshold_at_specificity",
]
