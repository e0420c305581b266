"""Localization counts a site sends, summed across sites, and the rates with Wilson 95% CIs they give."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields

from scipy.stats import binomtest

from common import wire
from common.metrics.localization import ImageLocalization

__all__ = [
    "IOU_LEVELS",
    "LOCALIZATION_FIGURES",
    "LocalizationCounts",
    "localization_figures",
    "wilson_interval",
]

IOU_LEVELS = (0.1, 0.3)
"""Box IoUs whose reach is counted (`wire.LOC_IOU10`, `wire.LOC_IOU30`): 0.1 says the box overlaps the lesion at
all in a meaningful way, 0.3 that it roughly frames it (0.5, the detection convention, is rarely reached by a
class-activation map's blob, whose size follows the network's receptive field rather than the lesion)."""

_WIRE = {
    "images": wire.LOC_IMAGES,
    "hits": wire.LOC_HITS,
    "iou_sum": wire.LOC_IOU_SUM,
    "iou10": wire.LOC_IOU10,
    "iou30": wire.LOC_IOU30,
    "bright_hits": wire.LOC_BASELINE_BRIGHT_HITS,
    "centre_hits": wire.LOC_BASELINE_CENTRE_HITS,
    "chance_sum": wire.LOC_BASELINE_CHANCE_SUM,
    "flat": wire.LOC_FLAT_MAPS,
    "failed": wire.LOC_FAILED,
}

LOCALIZATION_FIGURES = (
    "loc_hit_rate",
    "loc_hit_rate_ci_low",
    "loc_hit_rate_ci_high",
    "loc_mean_iou",
    "loc_iou10_share",
    "loc_iou30_share",
    "loc_baseline_bright_rate",
    "loc_baseline_centre_rate",
    "loc_baseline_chance_rate",
    "loc_flat_share",
)
"""Rates `LocalizationCounts.figures` derives from the counts (on the server: none of them crosses the wire)."""


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy's ``binomtest``): unlike the normal approximation it stays
    inside [0, 1] and is honest at 0 or all successes and at the small counts a site's test split gives.
    ``(nan, nan)`` for no trials."""
    if trials <= 0:
        return math.nan, math.nan
    interval = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


@dataclass(frozen=True)
class LocalizationCounts:
    """Sums over a site's (or a federation's) scored images: only counts, so sites pool by adding them.

    Attributes
    ----------
    images : int
        Images scored (lesion-marked test images of the last class, up to the site's cap).
    hits : int
        Of those, how many the heatmap's maximum hit (the pointing game).
    iou_sum : float
        Sum of the suspicious box's IoU with the lesion box.
    iou10, iou30 : int
        Images whose IoU reached 0.1 / 0.3 (`IOU_LEVELS`).
    bright_hits, centre_hits : int
        Images the brightest-spot / breast-centre baseline hit.
    chance_sum : float
        Sum of the chance baseline (the lesion's share of the breast): its expected hits.
    flat : int
        Images whose heatmap was zero everywhere (no evidence for the class anywhere; scored as misses).
    failed : int
        1 when the site could not compute heatmaps at all (the error is in its log), else 0; summed, sites failed.
    """

    images: int = 0
    hits: int = 0
    iou_sum: float = 0.0
    iou10: int = 0
    iou30: int = 0
    bright_hits: int = 0
    centre_hits: int = 0
    chance_sum: float = 0.0
    flat: int = 0
    failed: int = 0

    @classmethod
    def of(cls, scores: Iterable[ImageLocalization]) -> LocalizationCounts:
        """The counts of per-image ``scores``."""
        scores = list(scores)
        return cls(
            images=len(scores),
            hits=sum(s.hit for s in scores),
            iou_sum=float(sum(s.iou for s in scores)),
            iou10=sum(s.iou >= IOU_LEVELS[0] for s in scores),
            iou30=sum(s.iou >= IOU_LEVELS[1] for s in scores),
            bright_hits=sum(s.bright_hit for s in scores),
            centre_hits=sum(s.centre_hit for s in scores),
            chance_sum=float(sum(s.chance for s in scores)),
            flat=sum(s.flat for s in scores),
        )

    @classmethod
    def pooled(cls, parts: Iterable[LocalizationCounts]) -> LocalizationCounts:
        """All ``parts`` as one population: every count summed."""
        parts = list(parts)
        return cls(**{f.name: sum(getattr(p, f.name) for p in parts) for f in fields(cls)})

    def to_flat(self) -> dict[str, int | float]:
        """The MetricRecord entries a site sends (`common.wire` names)."""
        return {_WIRE[name]: value for name, value in asdict(self).items()}

    @classmethod
    def from_flat(cls, metrics: Mapping[str, object]) -> LocalizationCounts | None:
        """The counts held in ``metrics`` (a reply, a metrics row, a summary entry); None when it holds none.

        Raises
        ------
        ValueError
            If an entry is there but is not a number.
        """
        if wire.LOC_IMAGES not in metrics:
            return None
        values: dict[str, int | float] = {}
        for f in fields(cls):
            raw = metrics.get(_WIRE[f.name], 0)
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise ValueError(f"localization entry {_WIRE[f.name]!r} = {raw!r} is not a number")
            values[f.name] = float(raw) if f.type in (float, "float") else int(raw)
        return cls(**values)

    def figures(self) -> dict[str, float]:
        """Hit rate with its Wilson 95% CI, mean IoU, shares reaching each IoU level, the baselines' rates and the
        share of flat heatmaps; NaN when no image was scored."""
        n = self.images
        rate = lambda count: count / n if n else math.nan  # noqa: E731
        low, high = wilson_interval(self.hits, n)
        values = (
            rate(self.hits),
            low,
            high,
            rate(self.iou_sum),
            rate(self.iou10),
            rate(self.iou30),
            rate(self.bright_hits),
            rate(self.centre_hits),
            rate(self.chance_sum),
            rate(self.flat),
        )
        return dict(zip(LOCALIZATION_FIGURES, (float(v) for v in values), strict=True))


def localization_figures(entry: Mapping[str, object]) -> dict[str, int | float]:
    """``entry``'s localization counts and the figures they give, or ``{}`` when it holds none (or unreadable ones).

    For a metrics row or summary entry (a site's or the pooled one), so the summary and the report show the same
    rates from the same counts.
    """
    try:
        counts = LocalizationCounts.from_flat(entry)
    except ValueError:
        return {}
    return {} if counts is None else {**counts.to_flat(), **counts.figures()}
