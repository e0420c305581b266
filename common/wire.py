"""Names of every record and metric key that crosses the wire, so client and server agree by import."""

from __future__ import annotations

__all__ = [
    "ARRAYS_KEY",
    "CONFIG_KEY",
    "CONFUSION_KEYS",
    "EPSILON",
    "LOSS",
    "METRICS_KEY",
    "NUM_EXAMPLES",
    "NUM_STEPS",
    "SCORE_HIST_NEG",
    "SCORE_HIST_POS",
    "SECONDS",
    "SERVER_ROUND",
    "SITE_KEY",
    "SITE_NAME",
    "THRESHOLD",
    "TRAIN_LOSS",
    "UNIFORM_WEIGHT",
]

# RecordDict keys (FedAvg's own defaults for arrays/config, so its hooks need no re-keying).
ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
SITE_KEY = "site"
"""ConfigRecord holding the site's display name (chosen by the hospital, never a patient identifier)."""

# ConfigRecord entries.
SITE_NAME = "name"
SERVER_ROUND = "server-round"  # injected by Flower's strategies

# MetricRecord entries.
NUM_EXAMPLES = "num-examples"  # FedAvg's weighted_by_key default
TRAIN_LOSS = "train_loss"
NUM_STEPS = "num_steps"
UNIFORM_WEIGHT = "uniform-weight"  # set by the server under central DP, where FedAvg must weigh sites equally
EPSILON = "epsilon"
SECONDS = "seconds"
"""Wall-clock seconds the site spent on the request (training or scoring), for overhead accounting."""
LOSS = "loss"
THRESHOLD = "threshold"
"""Score at or above which the site called a test case malignant (its validation-chosen operating point)."""
CONFUSION_KEYS = ("tp", "fp", "tn", "fn")
"""Test-split confusion counts at the site's threshold; summed, they give pooled sensitivity and specificity."""
SCORE_HIST_NEG = "score_hist_neg"
"""Counts of test scores per fixed bin for label-0 images: ROC/AUC pool across sites without per-image data."""
SCORE_HIST_POS = "score_hist_pos"
