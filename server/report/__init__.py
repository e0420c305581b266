"""The run directory and its report: NaN-safe files written during a run, plots and report.html built from them.

Each name below imports its submodule on first use (`common.lazy_exports`): claiming a run folder
(``server.report.run_folder``) or writing metrics rows does not pull in matplotlib and scikit-learn.
"""

from common.lazy_exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "server.report.builder": ("build_report", "latest_rows"),
        "server.report.class_results": ("PER_CLASS", "class_results", "confusion_matrix", "nest_class_results"),
        "server.report.plots": ("EPSILON_PLOT", "LOSS_PLOT", "METRICS_PLOT", "ROC_PLOT"),
        "server.report.run_files": (
            "CHECKPOINTS_DIR",
            "CONFIG_FILE",
            "METRICS_FILE",
            "METRICS_SCHEMA",
            "POOLED_SITE",
            "REPORT_FILE",
            "ROC_FILE",
            "SUMMARY_FILE",
            "RocData",
            "RunDirectory",
            "RunFolderError",
        ),
        "server.report.study_page": ("StudyFolderError", "build_study_report"),
    },
)
