"""Exam-level scores: image scores grouped by study, breast and view, combined per breast and per exam by a rule.

A radiologist reads one exam at a time (usually four views: L CC, L MLO, R CC, R MLO). This module groups per-image
scores (`ViewScore`) into breasts (study and laterality) and exams (study), and combines them by the run's
``evaluation.exam_rule`` (`common.metrics.exam_rule.ExamRule`). Federated evaluation (``client.exam_scores``) and
``fedmammo predict`` both call `exam_scores`. An image without a study id is its own study; one without a laterality
its own breast. A breast's label is the worst (max) headline label of its images, an exam's the worst of its breasts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.metrics.exam_rule import EXAM_RULES, MIN_LEARNED_BREASTS, ExamRule, fit_exam_rule
from common.metrics.histogram import ScoreHistogram
from common.metrics.subgroup_vocab import laterality_group, view_group

__all__ = [
    "EXAM_LEVELS",
    "EXAM_RULES",
    "MIN_LEARNED_BREASTS",
    "BreastScore",
    "ExamRule",
    "ExamScore",
    "ExamScores",
    "ViewScore",
    "exam_scores",
    "fit_exam_rule",
    "group_breasts",
    "several_views",
]

EXAM_LEVELS: tuple[str, ...] = ("breast", "exam")
"""The levels `ExamScores.level` reads: one score per breast, one per exam (study)."""


@dataclass(frozen=True)
class ViewScore:
    """One image's score and where it belongs: its study, breast side and view (from a manifest or a header).

    ``label`` is the image's headline label (1 for the most severe class), or None where it is unknown (predict).
    ``laterality`` and ``view`` may be written any way `common.metrics.laterality_group` / `view_group` read
    ('L', 'left', 'R-MLO', 'cranio-caudal'); blank is unknown.
    """

    score: float
    label: int | None = None
    study_id: str = ""
    laterality: str = ""
    view: str = ""


@dataclass(frozen=True)
class BreastScore:
    """One breast of one exam: its combined score and label, and which input images it holds."""

    study: str
    """The study id, or ``image <i>`` for input ``i`` that had none."""
    laterality: str | None
    """"L" or "R"; None for an image without a laterality (a breast of its own)."""
    score: float
    label: int | None
    images: tuple[int, ...]
    """Positions of its images in the input of `exam_scores`."""
    views: tuple[str | None, ...]
    """Each image's view ("CC", "MLO", ..., None when unknown), in the order of ``images``."""


@dataclass(frozen=True)
class ExamScore:
    """One exam (study): its combined score and label, and its breasts (positions in `ExamScores.breasts`)."""

    study: str
    score: float
    label: int | None
    breasts: tuple[int, ...]
    num_images: int


@dataclass(frozen=True)
class ExamScores:
    """Per-breast and per-exam scores of a set of images, and the rule that made them."""

    rule: ExamRule
    breasts: tuple[BreastScore, ...]
    exams: tuple[ExamScore, ...]

    @property
    def several_views(self) -> bool:
        """Whether any exam holds two or more images (otherwise breast and exam scores are the image scores)."""
        return any(exam.num_images >= 2 for exam in self.exams)

    def level(self, level: str) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, scores)`` of every breast or every exam (``level`` in `EXAM_LEVELS`); labels -1 if unknown."""
        if level not in EXAM_LEVELS:
            raise ValueError(f"level {level!r} is unknown: it must be one of {EXAM_LEVELS}")
        units: Sequence[BreastScore | ExamScore] = self.breasts if level == "breast" else self.exams
        labels = np.array([-1 if u.label is None else u.label for u in units], dtype=np.int64)
        return labels, np.array([u.score for u in units], dtype=np.float64)

    def histogram(self, level: str) -> ScoreHistogram:
        """The level's fixed-bin score histogram by label (what a site may send); needs every label known."""
        labels, scores = self.level(level)
        if (labels < 0).any():
            raise ValueError(f"{int((labels < 0).sum())} {level}(s) have no label: a histogram needs labels")
        return ScoreHistogram.from_scores(labels, scores)

    def auc(self, level: str) -> float:
        """The level's exact AUC (scikit-learn); NaN with one class only or an unknown label."""
        labels, scores = self.level(level)
        if labels.size == 0 or (labels < 0).any() or np.unique(labels).size < 2:
            return math.nan
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(labels, scores))


def _study(record: ViewScore, index: int) -> str:
    return record.study_id.strip() or f"image {index}"


def group_breasts(records: Sequence[ViewScore]) -> list[tuple[str, str | None, list[int]]]:
    """The breasts of ``records`` in order of first appearance: ``(study, laterality, image positions)``.

    Images share a breast when they share a study id and a laterality; an image without a study id is its own
    study (``image <i>``), one without a laterality its own breast.
    """
    breasts: dict[tuple[str, str], tuple[str, str | None, list[int]]] = {}
    for index, record in enumerate(records):
        study, side = _study(record, index), laterality_group(record.laterality)
        key = (study, side if side is not None else f"image {index}")
        breasts.setdefault(key, (study, side, []))[2].append(index)
    return list(breasts.values())


def several_views(records: Sequence[ViewScore]) -> bool:
    """Whether some study (by study id) holds two or more of ``records``: only then do exam scores differ."""
    studies = [r.study_id.strip() for r in records if r.study_id.strip()]
    return len(studies) > len(set(studies))


def _worst(labels: Sequence[int | None]) -> int | None:
    return None if any(label is None for label in labels) else max(int(label) for label in labels)  # type: ignore[arg-type]


def _labelled_breasts(records: Sequence[ViewScore]) -> list[tuple[list[float], int]]:
    """Validation breasts for fitting: view scores and label, leaving out a breast with an unlabelled image."""
    found = []
    for _, _, images in group_breasts(records):
        label = _worst([records[i].label for i in images])
        if label is not None:
            found.append(([float(records[i].score) for i in images], label))
    return found


def exam_scores(
    records: Sequence[ViewScore],
    rule: ExamRule | str = "max",
    *,
    validation: Sequence[ViewScore] = (),
    seed: int = 0,
) -> ExamScores:
    """Group ``records`` into breasts and exams and score each by ``rule``.

    Parameters
    ----------
    records : sequence of ViewScore
        The images to combine, e.g. one site's test split or the images given to ``fedmammo predict``.
    rule : ExamRule or str
        A rule, or its name (``evaluation.exam_rule``). ``learned`` is fitted here on ``validation``'s breasts
        (`fit_exam_rule`), falling back to ``max`` with a logged reason when they cannot fit one.
    validation : sequence of ViewScore
        Labelled images of a validation split (only read by ``learned``).
    seed : int
        The run's seed, for the logistic fit.

    Raises
    ------
    ConfigError
        If ``rule`` names no rule of `EXAM_RULES`.
    ValueError
        If a score is not a finite probability in [0, 1].
    """
    scores = np.asarray([r.score for r in records], dtype=np.float64)
    if scores.size and (not np.isfinite(scores).all() or scores.min() < 0.0 or scores.max() > 1.0):
        raise ValueError("view scores must be finite probabilities in [0, 1]; apply softmax/sigmoid first")
    if isinstance(rule, str):
        rule = fit_exam_rule(rule, _labelled_breasts(validation) if rule == "learned" else (), seed=seed)
    breasts: list[BreastScore] = []
    studies: dict[str, list[int]] = {}
    for study, side, images in group_breasts(records):
        studies.setdefault(study, []).append(len(breasts))
        breasts.append(
            BreastScore(
                study=study,
                laterality=side,
                score=rule.breast_score([float(scores[i]) for i in images]),
                label=_worst([records[i].label for i in images]),
                images=tuple(images),
                views=tuple(view_group(records[i].view) for i in images),
            )
        )
    exams = tuple(
        ExamScore(
            study=study,
            score=rule.exam_score([breasts[b].score for b in members]),
            label=_worst([breasts[b].label for b in members]),
            breasts=tuple(members),
            num_images=sum(len(breasts[b].images) for b in members),
        )
        for study, members in studies.items()
    )
    return ExamScores(rule=rule, breasts=tuple(breasts), exams=exams)
