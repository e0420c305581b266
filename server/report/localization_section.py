"""The report's "Where the model looked" section: pointing-game hit rate and box IoU per site, with baselines."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from common import wire
from common.metrics.localization_counts import IOU_LEVELS, localization_figures
from server.report.page import fmt, html_table
from server.report.plots import site_order
from server.report.run_files import POOLED_SITE

__all__ = ["render_localization_section"]

_INTRO = (
    "<p>In the final round each site computed the global model's class-activation map (Grad-CAM, for the score of "
    "<b>{last}</b>) on its test images of that class that carry a lesion mark, and sent counts only. "
    "<b>Hit rate</b> is the pointing game: the share of images whose map peaks inside the lesion (a lesion under "
    "one pixel's radius counts as one pixel's). <b>Box IoU</b> compares the box around the map's hot region (half "
    "its peak or more) with the lesion's box. Brightest spot, Breast centre and Random point are shortcuts that "
    "never look at the model: the brightest spot of the image, the centre of the breast, and a point drawn at "
    "random over the breast (its expected hit rate). A model that localizes should beat all three; one that does "
    "not may be right for the wrong reason. <b>No heatmap</b> is the share of images whose map was zero everywhere "
    "(the model saw nothing of that class anywhere); they count as misses.</p>"
)


def _rate_cell(figures: Mapping[str, Any]) -> str:
    rate, low, high = (fmt(figures.get(k)) for k in ("loc_hit_rate", "loc_hit_rate_ci_low", "loc_hit_rate_ci_high"))
    return f"{rate} ({low}–{high})" if "n/a" not in (low, high) else rate


def render_localization_section(results: Mapping[str, Mapping[str, Any]], class_names: list[str] | None = None) -> str:
    """HTML (escaped here) for the report, or "" when no site sent localization counts.

    ``results`` are the final per-site and pooled entries (summary.json's, or the last evaluate rows): the counts
    of `common.wire.LOCALIZATION_KEYS`, from which every rate is derived here the same way as in summary.json.
    """
    figures = {site: localization_figures(entry) for site, entry in results.items()}
    figures = {site: values for site, values in figures.items() if values}
    if not figures:
        return ""
    headers = [
        "Site",
        "Images scored",
        "Hit rate (95% CI)",
        "Mean box IoU",
        *(f"IoU ≥ {level:g}" for level in IOU_LEVELS),
        "Brightest spot",
        "Breast centre",
        "Random point",
        "No heatmap",
    ]
    rows = []
    for site in site_order(list(figures)):
        values = figures[site]
        cells = [
            escape(site),
            fmt(int(values[wire.LOC_IMAGES])),
            _rate_cell(values),
            fmt(values.get("loc_mean_iou")),
            fmt(values.get("loc_iou10_share")),
            fmt(values.get("loc_iou30_share")),
            fmt(values.get("loc_baseline_bright_rate")),
            fmt(values.get("loc_baseline_centre_rate")),
            fmt(values.get("loc_baseline_chance_rate")),
            fmt(values.get("loc_flat_share")),
        ]
        failed = site != POOLED_SITE and values.get(wire.LOC_FAILED, 0)
        rows.append(("pooled" if site == POOLED_SITE else "warn" if failed else "", cells))
    last = escape(class_names[-1]) if class_names else "the positive class"
    parts = ["<h2>Where the model looked</h2>", _INTRO.format(last=last), html_table(headers, rows)]
    failed_sites = [s for s, v in figures.items() if s != POOLED_SITE and v.get(wire.LOC_FAILED, 0)]
    if failed_sites:
        names = ", ".join(escape(s) for s in site_order(failed_sites))
        parts.append(f'<p class="warn">No heatmaps could be made at {names} (the reason is in the site\'s log).</p>')
    if all(int(v[wire.LOC_IMAGES]) == 0 for v in figures.values()):
        parts.append('<p class="note">No test image of that class had a lesion mark: nothing was scored.</p>')
    return "\n".join(parts)
