"""Names of every record and metric key that crosses the wire, so client and server agree by import."""

from __future__ import annotations

__all__ = [
    "ARRAYS_KEY",
    "BREAST_PREFIX",
    "CLASS_HIST_NEG",
    "CLASS_HIST_POS",
    "CONFIG_KEY",
    "CONFUSION_KEYS",
    "CONFUSION_MATRIX",
    "DATA_COUNT_PREFIX",
    "DATA_IMAGES",
    "DATA_LABEL",
    "DATA_PATIENTS",
    "DATA_SPLITS",
    "EPSILON",
    "EXAM_FIGURES",
    "EXAM_PREFIX",
    "EXAM_RULE_FALLBACK",
    "FINE_TUNED_PREFIX",
    "FINE_TUNE_DECLINED",
    "FINE_TUNE_EPOCHS",
    "LOCALIZATION_KEYS",
    "LOC_BASELINE_BRIGHT_HITS",
    "LOC_BASELINE_CENTRE_HITS",
    "LOC_BASELINE_CHANCE_SUM",
    "LOC_FAILED",
    "LOC_FLAT_MAPS",
    "LOC_HITS",
    "LOC_IMAGES",
    "LOC_IOU10",
    "LOC_IOU30",
    "LOC_IOU_SUM",
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
    "data_count_key",
    "data_label_key",
    "exam_key",
    "exam_keys",
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


# Site data counts (`client.site_counts`): each evaluation reply says how many images, patients and cases of each
# class the site holds per split, so the model card can describe its training sites (`server.model_card`).
DATA_COUNT_PREFIX = "data_"
"""Prefix of every count entry; these are counts of the site's data, not figures of a model, and are never pooled."""
DATA_SPLITS = ("train", "val", "test")
DATA_IMAGES = "images"
DATA_PATIENTS = "patients"
DATA_LABEL = "label_"


def data_count_key(split: str, what: str) -> str:
    """The evaluate-reply key of ``split``'s count of ``what`` (`DATA_IMAGES`, `DATA_PATIENTS`): ``data_val_images``."""
    return f"{DATA_COUNT_PREFIX}{split}_{what}"


def data_label_key(split: str, label: int) -> str:
    """The evaluate-reply key of ``split``'s number of images with class index ``label``: ``data_test_label_1``."""
    return data_count_key(split, f"{DATA_LABEL}{label}")


# Exam-level entries (`client.exam_scores`, `server.exam_pooling`): images grouped into breasts and exams by
# `common.metrics.exam`. Every binary or multi-class evaluate reply holds all of them (Flower's FedAvg refuses a round
# whose replies differ in metric names); a site whose test split has no study with several views sends counts 0,
# AUC NaN and empty histograms.
BREAST_PREFIX = "breast_"
"""Prefix of the per-breast figures (a breast: one study's images of one side, CC and MLO combined)."""
EXAM_PREFIX = "exam_"
"""Prefix of the per-exam figures (an exam: one study's images, both breasts combined)."""
EXAM_FIGURES = ("auc", "num_cases", "num_positives", "num_negatives", "hist_neg", "hist_pos")
"""Each level's figures: exact AUC at the site, breasts/exams counted (all, label 1, label 0), and their fixed-bin
score histograms (as `SCORE_HIST_NEG`/`SCORE_HIST_POS`), which the server sums into the pooled AUC."""
EXAM_RULE_FALLBACK = "exam_rule_fallback"
"""1 when ``evaluation.exam_rule = learned`` fell back to ``max`` at the site (its validation breasts could not fit
a combination), else 0."""


def exam_key(prefix: str, figure: str) -> str:
    """The evaluate-reply key of a level's figure: ``exam_key(BREAST_PREFIX, "auc") == "breast_auc"``."""
    return f"{prefix}{figure}"


def exam_keys() -> tuple[str, ...]:
    """Every exam-level key an evaluate reply holds."""
    return (*(exam_key(p, f) for p in (BREAST_PREFIX, EXAM_PREFIX) for f in EXAM_FIGURES), EXAM_RULE_FALLBACK)


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


# Localization entries (``evaluation.localization``; `client.localization`, `common.metrics.localization_counts`):
# the final round's evaluate reply counts where the global model's Grad-CAM pointed on the site's lesion-marked test
# images of the last class. Every site sends all of them (zeros when it has no such image), as FedAvg refuses a round
# whose replies differ in metric names. Counts only: the server sums them and derives the rates.
LOC_IMAGES = "loc_images"
"""Images scored: lesion-marked test images whose label is the last class (at most `client.localization`'s cap)."""
LOC_HITS = "loc_hits"
"""Of those, the images whose heatmap maximum lies in the lesion (the pointing game)."""
LOC_IOU_SUM = "loc_iou_sum"
"""Sum over the scored images of the suspicious box's IoU with the lesion's box (divided by `LOC_IMAGES`: mean)."""
LOC_IOU10 = "loc_iou10"
"""Images whose box IoU is at least 0.1."""
LOC_IOU30 = "loc_iou30"
"""Images whose box IoU is at least 0.3."""
LOC_BASELINE_BRIGHT_HITS = "loc_baseline_bright_hits"
"""Images whose brightest spot lies in the lesion: what a model pointing at "bright" would score."""
LOC_BASELINE_CENTRE_HITS = "loc_baseline_centre_hits"
"""Images whose breast centre (centroid of the tissue) lies in the lesion."""
LOC_BASELINE_CHANCE_SUM = "loc_baseline_chance_sum"
"""Sum of each lesion's share of its breast: the hits expected of a point drawn at random over the breast."""
LOC_FLAT_MAPS = "loc_flat_maps"
"""Images whose heatmap was zero everywhere (no evidence for the last class anywhere): misses, counted apart."""
LOC_FAILED = "loc_failed"
"""1 when the site could not compute heatmaps (the reason is in its log; its other figures are kept), else 0."""
LOCALIZATION_KEYS = (
    LOC_IMAGES,
    LOC_HITS,
    LOC_IOU_SUM,
    LOC_IOU10,
    LOC_IOU30,
    LOC_BASELINE_BRIGHT_HITS,
    LOC_BASELINE_CENTRE_HITS,
    LOC_BASELINE_CHANCE_SUM,
    LOC_FLAT_MAPS,
    LOC_FAILED,
)
"""Every localization entry of an evaluate reply."""
