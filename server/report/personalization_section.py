"""The report's personalization section: per site, the global model beside its fine-tuned copy; what FedBN means."""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape
from typing import Any

from common import wire
from server.report.page import auc_cell, fmt, html_table
from server.report.plots import site_order
from server.report.run_files import POOLED_SITE

__all__ = ["render_personalization_section"]

_COMPARED = (("sensitivity", "Sensitivity"), ("specificity", "Specificity"))

_FEDBN_NOTE = (
    "<p>FedBN (<code>personalization.fedbn</code>): each site's normalization layers never left it. Each site's "
    "figures above are of the shared layers the federation trained with that site's own normalization layers; the "
    "saved global model holds the normalization layers it started with.</p>"
)


def _section(config: Mapping[str, Any] | None) -> Mapping[str, Any]:
    value = (config or {}).get("personalization")
    return value if isinstance(value, Mapping) else {}


def _fine_tuned(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry's fine-tuned figures under their plain names (``ft_auc`` -> ``auc``)."""
    prefix = wire.FINE_TUNED_PREFIX
    return {key.removeprefix(prefix): value for key, value in entry.items() if key.startswith(prefix)}


def _difference(tuned: Any, base: Any) -> str:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (tuned, base))
    if not numbers or math.isnan(tuned) or math.isnan(base):
        return "n/a"
    return f"{tuned - base:+.3f}"


def _table(results: Mapping[str, Mapping[str, Any]], epochs: Any) -> str:
    headers = ["Site", "Global AUC (95% CI)", "Fine-tuned AUC (95% CI)", "AUC change"]
    for _, title in _COMPARED:
        headers += [f"Global {title.lower()}", f"Fine-tuned {title.lower()}"]
    headers.append("ε after fine-tuning")
    rows = []
    for site in site_order([s for s in results if s != POOLED_SITE]):
        entry = results[site]
        tuned = _fine_tuned(entry)
        if not tuned:
            continue
        if tuned.get("declined"):
            cells = [escape(site), auc_cell(entry), "declined by the site's privacy limits", "n/a"]
            cells += ["n/a"] * (2 * len(_COMPARED)) + [fmt(tuned.get(wire.EPSILON), 2)]
            rows.append(("warn", cells))
            continue
        cells = [escape(site), auc_cell(entry), auc_cell(tuned), _difference(tuned.get("auc"), entry.get("auc"))]
        for key, _ in _COMPARED:
            cells += [fmt(entry.get(key)), fmt(tuned.get(key))]
        cells.append(fmt(tuned.get(wire.EPSILON), 2) if wire.EPSILON in tuned else "off")
        rows.append(("", cells))
    if not rows:
        return ""
    intro = (
        f"<p>In the last round each site also fine-tuned a copy of the global model for {escape(str(epochs))} "
        "epoch(s) on its own training split (DP-SGD under local privacy, charged to its privacy ledger) and scored "
        "both on its test split; the fine-tuned models never left the sites. Sensitivity and specificity are read "
        "at each model's own validation-chosen threshold. There is no pooled row: only the global model's score "
        "histograms are sent.</p>"
    )
    return intro + html_table(headers, rows)


def render_personalization_section(results: Mapping[str, Mapping[str, Any]], config: Mapping[str, Any] | None) -> str:
    """HTML (escaped here) for the report, or "" when the run used no personalization.

    ``results`` are the final per-site entries (summary.json's ``sites``, or the last evaluate rows): under
    ``personalization.fine_tune_epochs`` they hold the ``ft_`` figures beside the global model's. ``config`` is the
    run's config.yaml (for whether FedBN was on).
    """
    section = _section(config)
    fedbn = bool(section.get("fedbn"))
    table = _table(results, section.get("fine_tune_epochs", "?"))
    if not fedbn and not table:
        return ""
    parts = ["<h2>Personalization: global and fine-tuned models per site</h2>" if table else "<h2>FedBN</h2>"]
    parts += [_FEDBN_NOTE] if fedbn else []
    parts += [table] if table else []
    return "\n".join(parts)
