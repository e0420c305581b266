"""A study's per-model site figures as flat Flower-record values, and back: one codec both sides import."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.metrics import (
    METRIC_KEYS,
    Calibration,
    PairedDifference,
    ScoreHistogram,
    SubgroupReport,
    subgroups_from_flat,
    subgroups_to_flat,
)

__all__ = ["ModelScores", "model_scores_from_flat", "model_scores_to_flat", "pair_from_flat", "pair_to_flat"]

_THRESHOLD = "threshold"
_HIST_NEG = "hist_neg"
_HIST_POS = "hist_pos"
_CALIBRATION = "cal."
_SUBGROUPS = "sub."


@dataclass(frozen=True)
class ModelScores:
    """One model's figures on a site's test split: aggregates only (no image's score)."""

    metrics: dict[str, float]
    threshold: float
    histogram: ScoreHistogram
    calibration: Calibration
    subgroups: SubgroupReport


def _number(value: Any) -> float:
    return float(value) if value is not None else math.nan


def model_scores_to_flat(scores: ModelScores) -> dict[str, Any]:
    """Values for one MetricRecord: the metrics, threshold, histogram, reliability bins and subgroups."""
    hist = scores.histogram.to_lists()
    return {
        **{key: _number(scores.metrics.get(key)) for key in METRIC_KEYS},
        _THRESHOLD: float(scores.threshold),
        _HIST_NEG: hist["negatives"],
        _HIST_POS: hist["positives"],
        **scores.calibration.to_flat(_CALIBRATION),
        **subgroups_to_flat(scores.subgroups, _SUBGROUPS),
    }


def model_scores_from_flat(record: Mapping[str, Any]) -> ModelScores:
    """The `ModelScores` a site sent (`model_scores_to_flat`); raises KeyError or ValueError on a malformed one."""
    return ModelScores(
        metrics={key: float(record[key]) for key in METRIC_KEYS if key in record},
        threshold=float(record[_THRESHOLD]),
        histogram=ScoreHistogram.from_lists(record[_HIST_NEG], record[_HIST_POS]),
        calibration=Calibration.from_flat(_CALIBRATION, record),
        subgroups=subgroups_from_flat(_SUBGROUPS, record),
    )


def pair_to_flat(difference: PairedDifference) -> dict[str, Any]:
    """Values for one MetricRecord: the paired AUC difference, its CI and the number of images."""
    return {
        "difference": float(difference.difference),
        "ci_low": float(difference.ci_low),
        "ci_high": float(difference.ci_high),
        "num_examples": int(difference.num_examples),
    }


def pair_from_flat(record: Mapping[str, Any], method: str = "paired bootstrap") -> PairedDifference:
    """The `PairedDifference` a site sent (`pair_to_flat`)."""
    return PairedDifference(
        difference=float(record["difference"]),
        ci_low=float(record["ci_low"]),
        ci_high=float(record["ci_high"]),
        num_examples=int(record["num_examples"]),
        method=method,
    )
