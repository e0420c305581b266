"""Names of every record and metric key that crosses the wire, so client and server agree by import."""

from __future__ import annotations

__all__ = [
    "ARRAYS_KEY",
    "CLASS_HIST_NEG",
    "CLASS_HIST_POS",
    "CONFIG_KEY",
    "CONFUSION_KEYS",
    "CONFUSION_MATRIX",
    "EPSILON",
    "FINE_TUNED_PREFIX",
    "FINE_TUNE_DECLINED",
    "FINE_TUNE_EPOCHS",
    "LOSS",
    "METRICS_KEY",
    "NOISE_MULTIPLIER",
    "NUM_CLASSES",
    "NUM_EXAMPLES",
    "NUM_STEPS",
    "PROXIMAL_MU",
    "RUN_KEY",
    "SAT_OUT",
    "SCORE_HIST_NEG",
    "SCORE_HIST_POS",
    "SECAGG_ARRAY_NAMES",
    "SECAGG_METRICS_PREFIX",
    "SECAGG_SITE_PREFIX",
    "SECONDS",
    "SERVER_ROUND",
    "SITE_KEY",
    "SITE_NAME",
    "SITE_POOLED",
    "STUDY_ARM",
    "STUDY_DESCRIBE",
    "STUDY_MODEL",
    "STUDY_PAIR",
    "STUDY_QUERY",
    "THRESHOLD",
    "TRAIN_LOSS",
    "UNIFORM_WEIGHT",
    "class_hist_keys",
    "fine_tuned_key",
    "study_model_key",
    "study_pair_key",
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
RUN_KEY = "run-key"
"""A train request's run key: a random id the server keeps in the run's checkpoint, the same when the run resumes, so
a site's ledger can tell a round it trained before from a new one (`client.ledger_rounds`). Evaluate requests carry it
too: under FedBN a site finds its own normalization layers by it (`client.local_layers`)."""
PROXIMAL_MU = "proximal-mu"  # injected by Flower's FedProx: the weight of the sites' proximal term

# MetricRecord entries.
NUM_EXAMPLES = "num-examples"  # FedAvg's weighted_by_key default
TRAIN_LOSS = "train_loss"
NUM_STEPS = "num_steps"
SAT_OUT = "sat_out"
"""1 in a train reply when the site sat the round out (the patch stage, with no lesion mark in its training split):
it trained nothing, spent no privacy and sends the received weights back with ``num-examples`` 0."""
UNIFORM_WEIGHT = "uniform-weight"  # set by the server under central DP, where FedAvg must weigh sites equally
EPSILON = "epsilon"
NOISE_MULTIPLIER = "noise_multiplier"  # DP-SGD's, this round: a hospital's policy gate checks it against its floor
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

# Multi-class entries (only when model.num_classes > 2; a binary reply is exactly the keys above).
NUM_CLASSES = "num_classes"
"""Number of classes K the site scored; tells the server which of the entries below to read."""
CONFUSION_MATRIX = "confusion_matrix"
"""K x K test-split counts, row-major: row = true class, column = class of highest probability (argmax)."""
CLASS_HIST_NEG = "class_hist_neg_"
"""Prefix; ``class_hist_neg_<c>`` counts P(class c) per score bin for images whose label is not c."""
CLASS_HIST_POS = "class_hist_pos_"
"""Prefix; ``class_hist_pos_<c>`` counts P(class c) per score bin for images whose label is c (one vs rest)."""


def class_hist_keys(index: int) -> tuple[str, str]:
    """The (negatives, positives) MetricRecord keys of class ``index``'s one-vs-rest score histogram."""
    return f"{CLASS_HIST_NEG}{index}", f"{CLASS_HIST_POS}{index}"


# Cross-site study entries (`fedmammo study`; `server.study`, `client.study_scores`).
SITE_POOLED = "pooled"
"""1 in a node's site record when it holds every site's training data (the study's centralized reference,
which exists only in simulation)."""
STUDY_ARM = "study-arm"
"""Train ConfigRecord: which study model the round trains (``local:site-0``, ``federated``); in simulation it
selects that model's own privacy ledger."""
STUDY_QUERY = "study-query"
"""Query ConfigRecord: what the server asks; `STUDY_DESCRIBE` asks for the site record only."""
STUDY_DESCRIBE = "describe"
STUDY_MODEL = "study-model."
"""Prefix; evaluate ConfigRecord ``study-model.<i>`` names the model whose ArrayRecord is ``study-model.<i>``,
and the reply's MetricRecord ``study-model.<i>`` holds that model's figures on the site's test split."""
STUDY_PAIR = "study-pair."
"""Prefix; evaluate ConfigRecord ``study-pair.<j>`` = ``"<a>,<b>"`` (model indices) asks for the paired AUC
difference a - b on the same test images, returned as MetricRecord ``study-pair.<j>``."""


def study_model_key(index: int) -> str:
    """The record key of the study's model ``index`` (arrays in the request, figures in the reply)."""
    return f"{STUDY_MODEL}{index}"


def study_pair_key(index: int) -> str:
    """The record key of the study's paired comparison ``index``."""
    return f"{STUDY_PAIR}{index}"


# SecAgg+ entries (`server.secure_aggregation`, `client.secure_aggregation`). Flower's SecAgg+ speaks the legacy
# FitIns/FitRes, whose arrays have no names and whose metrics are one flat table: the round's records travel in them.
SECAGG_ARRAY_NAMES = "array-names"
"""FitIns config: the global model's array names, comma-joined, in the order of the FitIns parameters."""
SECAGG_METRICS_PREFIX = f"{METRICS_KEY}."
"""Prefix; FitRes metrics ``metrics.<key>`` is entry ``<key>`` of the site's train MetricRecord."""
SECAGG_SITE_PREFIX = f"{SITE_KEY}."
"""Prefix; FitRes metrics ``site.<key>`` is entry ``<key>`` of the site's ConfigRecord (`SITE_KEY`)."""


# Personalization entries (`personalization.*`; `client.fine_tune`, `server.personalization`).
FINE_TUNED_PREFIX = "ft_"
"""Prefix; with ``personalization.fine_tune_epochs`` > 0 the last round's evaluate reply holds ``ft_<key>`` beside
``<key>``: the same figure of the site's fine-tuned copy of the global model on the same test split (``ft_auc``)."""
FINE_TUNE_DECLINED = f"{FINE_TUNED_PREFIX}declined"
"""1 when the site's privacy limits declined the fine-tuning (its other ``ft_`` figures are then NaN), else 0."""
FINE_TUNE_EPOCHS = f"{FINE_TUNED_PREFIX}epochs"
"""The epochs the site fine-tuned for (``personalization.fine_tune_epochs``)."""


def fine_tuned_key(key: str) -> str:
    """The evaluate-reply key of the fine-tuned model's figure ``key`` (``auc`` -> ``ft_auc``)."""
    return f"{FINE_TUNED_PREFIX}{key}"
