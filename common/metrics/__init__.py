"""Clinical metrics per site and pooled: AUC with CI, threshold metrics, shareable score histograms, per class.

Each name below imports its submodule on first use (`common.lazy_exports`): score histograms and metric
rows do not pull in scikit-learn (the AUC confidence intervals need it).
"""

from common.lazy_exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "common.metrics.binary": (
            "binary_metrics",
            "bootstrap_auc_ci",
        ),
        "common.metrics.calibration": (
            "DEFAULT_CALIBRATION_BINS",
            "Calibration",
            "ReliabilityBin",
            "calibration_from_histogram",
            "calibration_from_scores",
        ),
        "common.metrics.core": (
            "DEFAULT_TARGET_SPECIFICITY",
            "DEFAULT_THRESHOLD",
            "METRIC_KEYS",
            "confusion_metrics",
            "threshold_at_specificity",
        ),
        "common.metrics.exam": (
            "EXAM_LEVELS",
            "EXAM_RULES",
            "BreastScore",
            "ExamRule",
            "ExamScore",
            "ExamScores",
            "ViewScore",
            "exam_scores",
            "fit_exam_rule",
            "group_breasts",
            "several_views",
        ),
        "common.metrics.localization": (
            "ImageLocalization",
            "LesionRegion",
            "box_iou",
            "score_image",
        ),
        "common.metrics.localization_counts": (
            "LOCALIZATION_FIGURES",
            "LocalizationCounts",
            "localization_figures",
            "wilson_interval",
        ),
        "common.metrics.histogram": (
            "NUM_SCORE_BINS",
            "ScoreHistogram",
            "histogram_auc",
            "histogram_auc_ci",
            "histogram_metrics",
            "histogram_roc",
            "score_bin_edges",
        ),
        "common.metrics.multiclass": (
            "CLASS_METRICS",
            "MACRO_AUC",
            "ClassEvaluation",
            "class_key",
            "confusion_counts",
            "macro_auc",
        ),
        "common.metrics.paired": (
            "PairedDifference",
            "delong_auc_difference",
            "paired_auc_difference",
        ),
        "common.metrics.subgroups": (
            "AGE_BANDS",
            "DENSITY_GROUPS",
            "LATERALITY_GROUPS",
            "SUBGROUP_ATTRIBUTES",
            "SUBGROUP_METRIC_KEYS",
            "SUBGROUP_VOCABULARIES",
            "VENDOR_GROUPS",
            "VIEW_GROUPS",
            "SubgroupReport",
            "age_band",
            "density_group",
            "laterality_group",
            "pooled_subgroup_metrics",
            "subgroup_key",
            "subgroup_metrics",
            "subgroups_from_flat",
            "subgroups_to_flat",
            "vendor_group",
            "view_group",
        ),
    },
)
