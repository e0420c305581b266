"""Per-breast and per-exam scores of the images one ``fedmammo predict`` call scored, for ``predictions.json``.

A radiologist reads an exam, not an image: the four views of one woman become one score per breast and one per exam
by the model's own ``evaluation.exam_rule`` (`common.metrics.exam`), grouped by the DICOM header's study, laterality
and view. The ``learned`` rule was fitted on a site's validation split, which predict does not have; it falls back to
``max`` and says so in the output rather than invent a combination.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common.metrics.exam import ViewScore, exam_scores
from common.metrics.exam_rule import ExamRule

__all__ = ["exam_section"]

_NO_VALIDATION = "predict has no validation split to fit the learned combination on"


def _view_score(record: dict[str, Any]) -> ViewScore:
    return ViewScore(
        score=float(record["headline"]["score"]),
        study_id=str(record.get("study_id") or ""),
        laterality=str(record.get("laterality") or record.get("laterality_detected") or ""),
        view=str(record.get("view") or ""),
    )


def exam_section(records: Sequence[dict[str, Any]], rule_name: str) -> dict[str, Any]:
    """The ``breasts`` and ``exams`` of the scored ``records`` (failed ones left out), and the rule used.

    Parameters
    ----------
    records : sequence of dict
        `client.predict.records.image_record` / ``failure_record`` entries, in input order.
    rule_name : str
        The model's ``evaluation.exam_rule`` (from its card's config).

    Returns
    -------
    dict
        ``{"exam_rule": {...}, "breasts": [...], "exams": [...]}``; each breast and exam names its images by file name
        and gives the combined score. An image without a study id is its own exam; one without a laterality (in the
        header or detected from the image) its own breast.
    """
    scored = [record for record in records if record.get("status") == "ok"]
    rule = ExamRule("max", requested="learned", note=_NO_VALIDATION) if rule_name == "learned" else rule_name
    result = exam_scores([_view_score(record) for record in scored], rule)
    breasts = [
        {
            "study_id": None if breast.study.startswith("image ") else breast.study,
            "laterality": breast.laterality,
            "score": round(breast.score, 6),
            "images": [scored[i]["file"] for i in breast.images],
            "views": list(breast.views),
        }
        for breast in result.breasts
    ]
    exams = [
        {
            "study_id": None if exam.study.startswith("image ") else exam.study,
            "score": round(exam.score, 6),
            "breasts": [
                {"laterality": result.breasts[b].laterality, "score": round(result.breasts[b].score, 6)}
                for b in exam.breasts
            ],
            "num_images": exam.num_images,
        }
        for exam in result.exams
    ]
    applied = result.rule
    return {
        "exam_rule": {"name": applied.name, "requested": applied.requested, "note": applied.note or None},
        "breasts": breasts,
        "exams": exams,
    }
