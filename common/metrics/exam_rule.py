"""The rule that turns a breast's view scores into one breast score and an exam's breasts into one exam score."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import ConfigError

__all__ = ["EXAM_RULES", "MIN_LEARNED_BREASTS", "ExamRule", "fit_exam_rule"]

logger = logging.getLogger(__name__)

EXAM_RULES: tuple[str, ...] = ("max", "mean", "learned")
"""The values of ``evaluation.exam_rule``."""
MIN_LEARNED_BREASTS = 10
"""Fewest validation breasts the ``learned`` rule is fitted on; with fewer it falls back to ``max``."""
_EPS = 1e-6


def _features(scores: Sequence[float]) -> np.ndarray:
    """A breast's features for the learned rule: the logits of the max and the mean of its view scores.

    Both are defined for any number of views (a breast with one view has max = mean), so a missing CC or MLO
    view needs no imputation; logits, because a logistic model is linear in them.
    """
    values = np.clip(np.asarray(scores, dtype=np.float64), _EPS, 1.0 - _EPS)
    summary = np.array([values.max(), values.mean()])
    return np.log(summary / (1.0 - summary))


@dataclass(frozen=True)
class ExamRule:
    """How views become a breast score and breasts an exam score.

    ``max``: a breast is as suspicious as its most suspicious view, an exam as its most suspicious breast (a
    lesion often shows in one view only, a cancer in one breast only). ``mean``: the average of the view scores,
    and of the breast scores; it uses both views' evidence, but dilutes a one-sided finding by the other breast.
    ``learned``: a logistic regression (scikit-learn) on the logits of the max and the mean of a breast's view
    scores, fitted on the site's validation breasts (`fit_exam_rule`); the exam score is then the max of its
    breasts' learned scores. ``requested`` is the configured rule; ``note`` says why ``learned`` fell back to
    ``max`` ("" when it did not).
    """

    name: str
    requested: str = ""
    note: str = ""
    model: Any = None
    """The fitted ``sklearn.linear_model.LogisticRegression`` of the learned rule; None for max and mean."""

    def __post_init__(self) -> None:
        if self.name not in EXAM_RULES:
            raise ConfigError(
                f"config key 'evaluation.exam_rule' = {self.name!r} is invalid: it must be one of {EXAM_RULES}"
            )
        if self.name == "learned" and self.model is None:
            raise ConfigError("the 'learned' exam rule needs a fitted model: build it with fit_exam_rule")
        if not self.requested:
            object.__setattr__(self, "requested", self.name)

    @property
    def fell_back(self) -> bool:
        """Whether ``learned`` was asked for and ``max`` is used (the validation split could not fit one)."""
        return self.requested != self.name

    def breast_score(self, scores: Sequence[float]) -> float:
        """One breast's score from its images' scores (probabilities in [0, 1], at least one)."""
        if len(scores) == 0:
            raise ValueError("a breast needs at least one image score")
        if self.name == "mean":
            return float(np.mean(scores))
        if self.name == "learned":
            return float(self.model.predict_proba(_features(scores)[None, :])[0, 1])
        return float(np.max(scores))

    def exam_score(self, breast_scores: Sequence[float]) -> float:
        """One exam's score from its breasts' scores: their mean under ``mean``, else their max."""
        if len(breast_scores) == 0:
            raise ValueError("an exam needs at least one breast score")
        return float(np.mean(breast_scores)) if self.name == "mean" else float(np.max(breast_scores))


def fit_exam_rule(
    name: str,
    breasts: Sequence[tuple[Sequence[float], int]] = (),
    *,
    min_breasts: int = MIN_LEARNED_BREASTS,
    seed: int = 0,
) -> ExamRule:
    """The rule ``name``; for ``learned`` fitted on ``breasts`` (each: its view scores and its label 0/1).

    ``learned`` falls back to ``max``, logging why (kept in `ExamRule.note`), when there are fewer than
    ``min_breasts`` breasts or only one class among them: a logistic fit on a handful of breasts, or on one
    class, is no combination at all. ``max`` and ``mean`` ignore ``breasts``.

    Raises
    ------
    ConfigError
        If ``name`` is not one of `EXAM_RULES`.
    """
    if name != "learned":
        return ExamRule(name)
    labels = np.asarray([label for _, label in breasts], dtype=np.int64)
    if len(breasts) < min_breasts:
        note = f"{len(breasts)} validation breast(s), fewer than the {min_breasts} the learned rule is fitted on"
    elif np.unique(labels).size < 2:
        note = f"the {len(breasts)} validation breasts are all of one class ({int(labels[0])})"
    else:
        from sklearn.linear_model import LogisticRegression  # scikit-learn is loaded only where a rule is fitted

        features = np.stack([_features(scores) for scores, _ in breasts])
        model = LogisticRegression(random_state=seed).fit(features, labels)
        logger.info("learned exam rule fitted on %d validation breast(s) (%d positive)", len(breasts),
                    int(labels.sum()))  # fmt: skip
        return ExamRule("learned", model=model)
    logger.warning("evaluation.exam_rule=learned falls back to max: %s", note)
    return ExamRule("max", requested="learned", note=note)
