"""Draws a sweep's privacy–utility curve: pooled AUC against epsilon, one line per setting of the other swept keys."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from simulations.sweep_summary import JobOutcome

__all__ = ["EPSILON_KEYS", "PLOT_FILE", "PRIVACY_KEYS", "is_no_dp", "plot_privacy_utility"]

PLOT_FILE = "privacy_utility.png"
EPSILON_KEYS = frozenset({"privacy.target_epsilon", "privacy.noise_multiplier"})
"""Swept keys that move a job along the epsilon axis, not onto another line."""
PRIVACY_KEYS = frozenset({"privacy", "privacy.mode"})
"""Swept keys that choose the privacy mode: no-DP jobs are matched to lines without them."""

_HEADLINE = {"study": ("federated_auc", "federated model"), "simulate": ("auc", "global model")}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
_REFERENCE = "#555555"
_DPI = 110
_NUDGE = 0.012
"""Sideways offset between lines: this fraction of the ε range (of a decade on a log axis)."""
_MAX_TICKS = 10
_MAX_LABEL = 60
_MIN_TICK_GAP = 0.05
"""Ticks closer than this fraction of the axis are dropped."""

Series = tuple[tuple[str, str], ...]
Point = tuple[float, float, float | None, float | None]


def is_no_dp(outcome: JobOutcome) -> bool:
    """Whether a job trained without DP: its result says privacy mode ``none``, or (no result) its overrides do."""
    mode = outcome.figures.get("privacy_mode")
    if mode is not None:
        return mode == "none"
    return any(_bare(key) in PRIVACY_KEYS and value == "none" for key, value in _pairs(outcome.overrides))


def _bare(key: str) -> str:
    return key.lstrip("+~")


def _pairs(overrides: Sequence[str]) -> list[tuple[str, str]]:
    return [(text.split("=", 1)[0], text.split("=", 1)[1]) for text in overrides if "=" in text]


def _series(outcome: JobOutcome, swept_keys: Sequence[str], leave_out: frozenset[str]) -> Series:
    return tuple(
        (key, outcome.swept[key]) for key in swept_keys if key in outcome.swept and _bare(key) not in leave_out
    )


def _text(series: Series) -> str:
    """The legend label of a line, cut at `_MAX_LABEL` characters (the table has the whole of it)."""
    text = ", ".join(f"{_bare(key)}={value}" for key, value in series)
    return text if len(text) <= _MAX_LABEL else text[: _MAX_LABEL - 1] + "…"


def _collect(
    kind: str, swept_keys: Sequence[str], outcomes: Sequence[JobOutcome]
) -> tuple[dict[Series, list[Point]], dict[Series, list[float]]]:
    """DP points per line, and no-DP AUCs per line (without the privacy keys); jobs without an AUC are left out."""
    headline = _HEADLINE[kind][0]
    curves: dict[Series, list[Point]] = {}
    references: dict[Series, list[float]] = {}
    for outcome in outcomes:
        auc, epsilon = outcome.figures.get(headline), outcome.figures.get("epsilon")
        if not isinstance(auc, float):
            continue
        if is_no_dp(outcome):
            references.setdefault(_series(outcome, swept_keys, EPSILON_KEYS | PRIVACY_KEYS), []).append(auc)
        elif isinstance(epsilon, float):
            low, high = outcome.figures.get(f"{headline}_ci_low"), outcome.figures.get(f"{headline}_ci_high")
            point = (epsilon, auc, low if isinstance(low, float) else None, high if isinstance(high, float) else None)
            curves.setdefault(_series(outcome, swept_keys, EPSILON_KEYS), []).append(point)
    return curves, references


def _draw_curves(axes: Axes, curves: Mapping[Series, list[Point]], default: str, *, log: bool) -> dict[Series, str]:
    """One error-bar line per series, each nudged sideways a little so equal ε never hide each other's bars.

    Returns each series' colour, keyed by the series without the privacy keys (to colour its no-DP line).
    """
    colours: dict[Series, str] = {}
    epsilons = [p[0] for points in curves.values() for p in points]
    span = ((max(epsilons) - min(epsilons)) or 1.0) if epsilons else 1.0
    for i, (series, points) in enumerate(curves.items()):
        points = sorted(points, key=lambda p: p[0])
        colour = _PALETTE[i % len(_PALETTE)]
        nudge = (i - (len(curves) - 1) / 2) * _NUDGE
        xs = [p[0] * 10**nudge if log else p[0] + nudge * span for p in points]
        below = [max(0.0, auc - low) if low is not None else 0.0 for _, auc, low, _ in points]
        above = [max(0.0, high - auc) if high is not None else 0.0 for _, auc, _, high in points]
        label = _text(series) or default
        axes.errorbar(xs, [p[1] for p in points], yerr=[below, above], marker="o", capsize=3, color=colour, label=label)
        colours.setdefault(tuple(pair for pair in series if _bare(pair[0]) not in PRIVACY_KEYS), colour)
    return colours


def _draw_references(axes: Axes, references: Mapping[Series, list[float]], colours: Mapping[Series, str]) -> None:
    """A dashed horizontal line per no-DP setting (mean AUC of its jobs), labelled "no DP" at the right edge."""
    for series, values in references.items():
        level = sum(values) / len(values)
        label = f"no DP: {_text(series)}" if series else "no DP"
        axes.axhline(level, linestyle="--", linewidth=1.2, color=colours.get(series, _REFERENCE), label=label)
        axes.annotate(
            "no DP",
            xy=(1.0, level),
            xycoords=("axes fraction", "data"),
            xytext=(3, 0),
            textcoords="offset points",
            ha="left",
            va="center",
            annotation_clip=False,
            fontsize=8,
            color=colours.get(series, _REFERENCE),
        )


def _ticks(epsilons: Sequence[float], *, log: bool) -> list[float]:
    """Axis ticks at the ε the sweep reached (two significant digits), leaving out ones that would crowd the last.

    Empty (matplotlib's own ticks) when there are more than `_MAX_TICKS` of them.
    """
    rounded = sorted({float(f"{e:.2g}") for e in epsilons})
    if not rounded or len(rounded) > _MAX_TICKS:
        return []
    where = [math.log10(e) for e in rounded] if log else rounded
    gap = _MIN_TICK_GAP * ((where[-1] - where[0]) or 1.0)
    ticks, last = [rounded[0]], where[0]
    for value, position in zip(rounded[1:], where[1:], strict=True):
        if position - last >= gap:
            ticks.append(value)
            last = position
    return ticks


def plot_privacy_utility(path: Path, kind: str, swept_keys: Sequence[str], outcomes: Sequence[JobOutcome]) -> Path:
    """Write the privacy–utility PNG to ``path``: pooled AUC (95% CI bars) against ε, no-DP jobs as reference lines.

    For a study the AUC is the federated model's and ε its largest per-site ε; for a simulation the global
    model's and the worst site's ε. Before any job has an AUC the figure says so. Written atomically.
    """
    headline_label = _HEADLINE[kind][1]
    curves, references = _collect(kind, swept_keys, outcomes)
    figure = Figure(figsize=(8.0, 5.0), dpi=_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    epsilons = sorted({p[0] for points in curves.values() for p in points})
    log = bool(epsilons) and epsilons[0] > 0 and epsilons[-1] / epsilons[0] >= 10
    colours = _draw_curves(axes, curves, f"{headline_label} (DP)", log=log)
    _draw_references(axes, references, colours)
    if log:
        axes.set_xscale("log")
    ticks = _ticks(epsilons, log=log)
    if ticks:
        axes.set_xticks(ticks, [f"{e:g}" for e in ticks])
        axes.minorticks_off()
    if not curves and not references:
        axes.text(0.5, 0.5, "no finished job with an AUC yet", ha="center", va="center", transform=axes.transAxes)
    elif not curves:
        axes.text(0.5, 0.1, "no DP job with a known ε yet", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("ε (largest per-site, cumulative)" if kind == "study" else "ε (worst site, cumulative)")
    axes.set_ylabel(f"pooled AUC, {headline_label}")
    axes.set_title("privacy–utility: pooled AUC against ε")
    axes.grid(True, alpha=0.3)
    if curves or references:
        handles, labels = axes.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda i: labels[i].startswith("no DP"))
        axes.legend(  # below the axes: inside, it would cover the no-DP lines at the top
            [handles[i] for i in order],
            [labels[i] for i in order],
            fontsize=8,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.14),
            ncol=2 if len(labels) > 3 else 1,
            frameon=False,
        )
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png")
    os.replace(temporary, path)
    return path
