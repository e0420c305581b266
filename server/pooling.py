"""Pooled (all-site) metrics from what sites send: weighted means, the worst epsilon, summed histograms and counts."""

from __future__ import annotations

import logging
import math

import numpy as np
from flwr.app import MetricRecord, RecordDict

from common import wire
from common.metrics import ClassEvaluation, ScoreHistogram, confusion_metrics, histogram_metrics
from server.exam_pooling import pool_exam_metrics
from server.localization_pooling import pool_localization_metrics

__all__ = [
    "metric_classes",
    "pool_evaluate_metrics",
    "pool_histograms",
    "pool_train_metrics",
    "reply_classes",
    "reply_histogram",
]

logger = logging.getLogger(__name__)


def _metrics(record: RecordDict) -> MetricRecord:
    return next(iter(record.metric_records.values()))


def _weighted_mean(records: list[RecordDict], key: str, weight_key: str) -> float:
    pairs = [(float(_metrics(r)[weight_key]), float(_metrics(r)[key])) for r in records if key in _metrics(r)]
    pairs = [(w, v) for w, v in pairs if not math.isnan(v)]
    total = sum(w for w, _ in pairs)
    return sum(w * v for w, v in pairs) / total if total > 0 else float("nan")


def reply_histogram(record: RecordDict) -> ScoreHistogram:
    """The test-score histogram a site sent with its evaluation reply."""
    metrics = _metrics(record)
    return ScoreHistogram(
        negatives=np.asarray(metrics[wire.SCORE_HIST_NEG], dtype=np.int64),
        positives=np.asarray(metrics[wire.SCORE_HIST_POS], dtype=np.int64),
    )


def metric_classes(metrics: MetricRecord) -> ClassEvaluation | None:
    """Per-class results held in ``metrics`` (None from a binary model, or if malformed: logged, never fatal)."""
    try:
        return ClassEvaluation.from_flat(metrics)
    except ValueError as exc:
        logger.warning("per-class results left out: %s", exc)
        return None


def reply_classes(record: RecordDict) -> ClassEvaluation | None:
    """The per-class histograms, metrics and confusion matrix a site sent (None from a binary model)."""
    return metric_classes(_metrics(record))


def pool_histograms(histograms: list[ScoreHistogram]) -> ScoreHistogram:
    """Sum per-site histograms: the pooled ROC is then exact up to bin width, with no per-image data moved."""
    return ScoreHistogram.pooled(histograms)


def pool_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """FedAvg ``train_metrics_aggr_fn``: example-weighted loss, total examples, and the largest epsilon.

    The largest epsilon, not the mean, because a federation's privacy claim is only as strong as its
    weakest site's guarantee. Metrics are always weighted by examples (they describe the data), whatever
    ``weight_key`` FedAvg weighs the models by (equal weights under central DP).
    """
    weight_key = wire.NUM_EXAMPLES
    return MetricRecord(
        {
            weight_key: int(sum(int(_metrics(r)[weight_key]) for r in records)),
            wire.TRAIN_LOSS: _weighted_mean(records, wire.TRAIN_LOSS, weight_key),
            **(
                {wire.EPSILON: max(float(_metrics(r)[wire.EPSILON]) for r in records if wire.EPSILON in _metrics(r))}
                if any(wire.EPSILON in _metrics(r) for r in records)
                else {}
            ),
        }
    )


def pool_evaluate_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """FedAvg ``evaluate_metrics_aggr_fn``: metrics of all sites' test images as one population."""
    weight_key = wire.NUM_EXAMPLES
    pooled = pool_histograms([reply_histogram(r) for r in records])
    values: dict[str, float | int] = {
        weight_key: int(sum(int(_metrics(r)[weight_key]) for r in records)),
        wire.LOSS: _weighted_mean(records, wire.LOSS, weight_key),
    }
    values.update(histogram_metrics(pooled))
    if all(all(k in _metrics(r) for k in wire.CONFUSION_KEYS) for r in records):
        # Each site called cases at its own validation-chosen threshold: pool those calls, not a 0.5 re-read.
        counts = {k: int(sum(int(_metrics(r)[k]) for r in records)) for k in wire.CONFUSION_KEYS}
        values.update(confusion_metrics(**counts))
        values.update(counts)
    values.update(_pool_classes(records))
    values.update(pool_exam_metrics([_metrics(r) for r in records]))  # breast and exam level, when sites sent any
    values.update(pool_localization_metrics([_metrics(r) for r in records]))  # the final round's heatmap counts
    return MetricRecord(values)


def _pool_classes(records: list[RecordDict]) -> dict[str, int | float | list[int]]:
    """Per-class results of all sites as one population: summed one-vs-rest histograms and confusion matrices."""
    evaluations = [reply_classes(r) for r in records]
    if not any(e is not None for e in evaluations):
        return {}
    if any(e is None for e in evaluations) or len({e.num_classes for e in evaluations if e is not None}) > 1:
        logger.warning("not every site sent per-class results for as many classes; none pooled this round")
        return {}
    return ClassEvaluation.pooled([e for e in evaluations if e is not None]).to_flat()
