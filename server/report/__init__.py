"""The run directory and its report: NaN-safe files written during a run, plots and report.html built from them."""

from __future__ import annotations

from server.report.builder import build_report, latest_rows
from server.report.class_results import PER_CLASS, class_results, confusion_matrix, nest_class_results
from server.report.plots import EPSILON_PLOT, LOSS_PLOT, METRICS_PLOT, ROC_PLOT
from server.report.run_files import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    METRICS_SCHEMA,
    POOLED_SITE,
    REPORT_FILE,
    ROC_FILE,
    SUMMARY_FILE,
    RocData,
    RunDirectory,
    RunFolderError,
)
from server.report.study_page import StudyFolderError, build_study_report

__all__ = [
    "CHECKPOINTS_DIR",
    "CONFIG_FILE",
    "EPSILON_PLOT",
    "LOSS_PLOT",
    "METRICS_FILE",
    "METRICS_PLOT",
    "METRICS_SCHEMA",
    "PER_CLASS",
    "POOLED_SITE",
    "REPORT_FILE",
    "ROC_FILE",
    "ROC_PLOT",
    "SUMMARY_FILE",
    "RocData",
    "RunDirectory",
    "RunFolderError",
    "StudyFolderError",
    "build_report",
    "build_study_report",
    "class_results",
    "confusion_matrix",
    "latest_rows",
    "nest_class_results",
]
