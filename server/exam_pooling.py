"""Pooled breast- and exam-level AUCs and counts: the sites' breast and exam score histograms summed."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from common import wire
from common.metrics import ScoreHistogram, histogram_auc

__all__ = ["pool_exam_metrics", "reply_exam_histograms"]

logger = logging.getLogger(__name__)

_PREFIXES = (wire.BREAST_PREFIX, wire.EXAM_PREFIX)


def reply_exam_histograms(metrics: Mapping[str, Any]) -> dict[str, ScoreHistogram]:
    """A site's breast and exam histograms by prefix (`common.wire.BREAST_PREFIX`, `EXAM_PREFIX`), those it sent.

    A malformed pair (negative counts, a mismatched length) is logged and left out, never fatal: the round's
    image-level results do not depend on it.
    """
    found: dict[str, ScoreHistogram] = {}
    for prefix in _PREFIXES:
        negatives, positives = (wire.exam_key(prefix, f) for f in ("hist_neg", "hist_pos"))
        if negatives not in metrics or positives not in metrics:
            continue
        try:
            found[prefix] = ScoreHistogram(np.asarray(metrics[negatives]), np.asarray(metrics[positives]))
        except ValueError as exc:
            logger.warning("a site's %s histograms are left out of the pooled exam figures: %s", prefix, exc)
    return found


def pool_exam_metrics(sites: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    """The pooled ``breast_``/``exam_`` AUC and counts over the sites' evaluate metrics; {} for a level no site has.

    The AUC is that of the summed histograms: the ranking of all sites' breasts (exams) as one population, exact
    up to the bin width, with no breast's score leaving its site. A level where no site counted a case (no test
    split with a study of several views) is left out, so the pooled row says nothing about exams it never saw.
    The pooled ``exam_rule_fallback`` counts the sites whose ``learned`` rule fell back to ``max``.
    """
    values: dict[str, float | int] = {}
    per_site = [reply_exam_histograms(metrics) for metrics in sites]
    for prefix in _PREFIXES:
        histograms = [found[prefix] for found in per_site if prefix in found]
        if len({h.bins for h in histograms}) > 1:
            logger.warning("sites sent %s histograms of different sizes; no pooled %s figures", prefix, prefix)
            continue
        pooled = ScoreHistogram.pooled(histograms) if histograms else None
        if pooled is None or pooled.num_negatives + pooled.num_positives == 0:
            continue
        values.update(
            {
                wire.exam_key(prefix, "auc"): histogram_auc(pooled),
                wire.exam_key(prefix, "num_cases"): pooled.num_negatives + pooled.num_positives,
                wire.exam_key(prefix, "num_positives"): pooled.num_positives,
                wire.exam_key(prefix, "num_negatives"): pooled.num_negatives,
            }
        )
    if values:
        values[wire.EXAM_RULE_FALLBACK] = int(sum(int(m.get(wire.EXAM_RULE_FALLBACK, 0) or 0) for m in sites))
    return values
