"""Clinical metrics per site and pooled: AUC with CI, threshold metrics, shareable score histograms, per class."""

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
    histogram_auc_ci,
    histogram_metrics,
    histogram_roc,
    score_bin_edges,
)
from common.metrics.multiclass import (
    CLASS_METRICS,
    MACRO_AUC,
    ClassEvaluation,
    class_key,
    confusion_counts,
    macro_auc,
)

__all__ = [
    "CLASS_METRICS",
    "DEFAULT_TARGET_SPECIFICITY",
    "DEFAULT_THRESHOLD",
    "MACRO_AUC",
    "METRIC_KEYS",
    "NUM_SCORE_BINS",
    "ClassEvaluation",
    "ScoreHistogram",
    "binary_metrics",
    "bootstrap_auc_ci",
    "class_key",
    "confusion_counts",
    "confusion_metrics",
    "histogram_auc",
    "histogram_auc_ci",
    "histogram_metrics",
    "histogram_roc",
    "macro_auc",
    "score_bin_edges",
    "threshold_at_specificity",
]
