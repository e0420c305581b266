"""Pooled localization figures: the sites' pointing-game and IoU counts summed, then the rates and their CI."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from common.metrics.localization_counts import LocalizationCounts

__all__ = ["pool_localization_metrics"]

logger = logging.getLogger(__name__)


def pool_localization_metrics(metrics: Sequence[Mapping[str, object]]) -> dict[str, int | float]:
    """The summed counts of every site that sent localization entries, with the hit rate (Wilson 95% CI), mean IoU
    and baselines they give (`LocalizationCounts.figures`); ``{}`` when none sent any (not the final round, or
    ``evaluation.localization`` off).

    Summing counts weighs each site by the images it scored, as if all lesion-marked test images were one
    population, which the per-image pointing game is; no per-image result leaves a site. A site whose entries
    cannot be read is left out with a warning rather than failing the round's pooled figures.
    """
    parts: list[LocalizationCounts] = []
    for entry in metrics:
        try:
            counts = LocalizationCounts.from_flat(entry)
        except ValueError as exc:
            logger.warning("a site's localization entries were left out of the pooled figures: %s", exc)
            continue
        if counts is not None:
            parts.append(counts)
    if not parts:
        return {}
    pooled = LocalizationCounts.pooled(parts)
    return {**pooled.to_flat(), **pooled.figures()}
