"""A site's exam-level figures: its test images grouped into breasts and exams, reduced to AUCs, counts, histograms.

The per-image scores, and the breasts' and exams' scores made from them, stay in this process; what leaves is
what `common.wire.exam_keys` names: per level (breast, exam) the exact AUC, the counts and a fixed-bin score
histogram the server sums over sites.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from common import wire
from common.data import SiteImages, read_manifest
from common.metrics import NUM_SCORE_BINS, ExamScores, ScoreHistogram, ViewScore, exam_scores, several_views

__all__ = ["empty_exam_figures", "exam_figures", "figures_of", "needs_validation", "view_records"]

logger = logging.getLogger(__name__)

_LEVELS = ((wire.BREAST_PREFIX, "breast"), (wire.EXAM_PREFIX, "exam"))


def view_records(manifest: Path | None, images: SiteImages, labels: np.ndarray, scores: np.ndarray) -> list[ViewScore]:
    """Each image of ``images`` as a `ViewScore`: its score and headline label, and its manifest row's study id,
    laterality and view. Empty when the split has no manifest lines (a pooled, centralized split)."""
    if manifest is None or images.row_numbers is None or len(images) == 0:
        return []
    rows = {row.row_number: row for row in read_manifest(manifest)}
    records = []
    for line, label, score in zip(images.row_numbers, labels, scores, strict=True):
        row = rows.get(line)
        records.append(
            ViewScore(
                score=float(score),
                label=int(label),
                study_id=row.study_id if row is not None else "",
                laterality=row.laterality if row is not None else "",
                view=row.view if row is not None else "",
            )
        )
    return records


def needs_validation(rule: str, manifest: Path | None, val: SiteImages) -> bool:
    """Whether the exam rule needs the validation split's scores: ``learned`` with a validation split that can be
    grouped (it has manifest lines)."""
    return rule == "learned" and manifest is not None and len(val) > 0 and val.row_numbers is not None


def empty_exam_figures() -> dict[str, float | int | list[int]]:
    """The exam-level entries of a site with no study of several views: counts 0, AUC NaN, empty histograms."""
    values: dict[str, float | int | list[int]] = {wire.EXAM_RULE_FALLBACK: 0}
    for prefix, _ in _LEVELS:
        values.update(
            {
                wire.exam_key(prefix, "auc"): math.nan,
                wire.exam_key(prefix, "num_cases"): 0,
                wire.exam_key(prefix, "num_positives"): 0,
                wire.exam_key(prefix, "num_negatives"): 0,
                wire.exam_key(prefix, "hist_neg"): [0] * NUM_SCORE_BINS,
                wire.exam_key(prefix, "hist_pos"): [0] * NUM_SCORE_BINS,
            }
        )
    return values


def figures_of(result: ExamScores) -> dict[str, float | int | list[int]]:
    """The reply entries of scored breasts and exams: per level its exact AUC, counts and histograms."""
    values: dict[str, float | int | list[int]] = {wire.EXAM_RULE_FALLBACK: int(result.rule.fell_back)}
    for prefix, level in _LEVELS:
        histogram: ScoreHistogram = result.histogram(level)
        lists = histogram.to_lists()
        values.update(
            {
                wire.exam_key(prefix, "auc"): result.auc(level),
                wire.exam_key(prefix, "num_cases"): histogram.num_negatives + histogram.num_positives,
                wire.exam_key(prefix, "num_positives"): histogram.num_positives,
                wire.exam_key(prefix, "num_negatives"): histogram.num_negatives,
                wire.exam_key(prefix, "hist_neg"): lists["negatives"],
                wire.exam_key(prefix, "hist_pos"): lists["positives"],
            }
        )
    return values


def exam_figures(
    manifest: Path | None,
    rule: str,
    test: tuple[SiteImages, np.ndarray, np.ndarray],
    validation: tuple[SiteImages, np.ndarray, np.ndarray] | None = None,
    *,
    seed: int = 0,
) -> dict[str, float | int | list[int]]:
    """The evaluate reply's exam-level entries (`common.wire.exam_keys`) for one scored split.

    Parameters
    ----------
    manifest : Path or None
        The site's manifest, whose rows give each image's study id, laterality and view (None: a pooled split).
    rule : str
        ``evaluation.exam_rule``.
    test : tuple
        The scored split, its headline labels (0/1) and its scores (probability of the last class).
    validation : tuple or None
        The same for the validation split, which the ``learned`` rule is fitted on (`needs_validation`).
    seed : int
        The run's seed.

    Returns
    -------
    dict
        Per level the exact AUC, counts and histograms; `empty_exam_figures` when no study of the split holds
        several images (breast and exam figures would repeat the image-level ones).
    """
    records = view_records(manifest, *test)
    if not several_views(records):
        return empty_exam_figures()
    val_records = view_records(manifest, *validation) if validation is not None else []
    result = exam_scores(records, rule, validation=val_records, seed=seed)
    figures = figures_of(result)
    logger.info("exam level (%s rule): %d breast(s) AUC %.3f, %d exam(s) AUC %.3f", result.rule.name,
                len(result.breasts), figures[wire.exam_key(wire.BREAST_PREFIX, "auc")], len(result.exams),
                figures[wire.exam_key(wire.EXAM_PREFIX, "auc")])  # fmt: skip
    return figures
