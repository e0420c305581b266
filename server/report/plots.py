"""PNG plots of a run (ROC per site, metrics, epsilon and loss per round), drawn without pyplot's global state."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from common.metrics import ScoreHistogram, histogram_auc, histogram_roc
from server.report.class_results import class_results
from server.report.final_round import ROUND
from server.report.run_files import POOLED_SITE

__all__ = [
    "CLASS_ROC_PLOT",
    "EPSILON_PLOT",
    "LOSS_PLOT",
    "METRICS_PLOT",
    "ROC_NOTE",
    "ROC_PLOT",
    "legend_aucs",
    "new_figure",
    "plot_epsilon_per_round",
    "plot_loss_per_round",
    "plot_metrics_per_round",
    "plot_roc_per_class",
    "plot_roc_per_site",
    "roc_labels",
    "save_figure",
    "site_order",
]

ROC_PLOT = "roc_per_site.png"
METRICS_PLOT = "metrics_per_round.png"
EPSILON_PLOT = "epsilon_per_round.png"
LOSS_PLOT = "loss_per_round.png"
CLASS_ROC_PLOT = "roc_per_class.png"
ROC_NOTE = "curves drawn from binned score histograms; AUC as in the table"
"""The ROC legends' title: the curves are binned, the AUCs are the report table's (exact at sites)."""

_DPI = 110
_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def site_order(sites: Sequence[str]) -> list[str]:
    """Sites sorted by name with the pooled row last, the order used by every plot and table."""
    unique = sorted(set(sites) - {POOLED_SITE})
    return [*unique, POOLED_SITE] if POOLED_SITE in sites else unique


def _style(site: str, index: int, *, lines: bool = False) -> dict[str, Any]:
    """Pooled is black; in per-round line plots it is dashed and drawn underneath so it never hides a site."""
    if site == POOLED_SITE:
        return {
            "color": "black",
            "linewidth": 2.0 if lines else 2.4,
            "linestyle": "--" if lines else "-",
            "zorder": 1.5,
        }
    return {"color": _PALETTE[index % len(_PALETTE)], "linewidth": 1.6, "linestyle": "-", "zorder": 2}


def _label(site: str) -> str:
    """Site names are the hospitals' own text: escape ``$`` so matplotlib does not parse them as math."""
    return site.replace("$", r"\$")


def new_figure(width: float, height: float) -> Figure:
    """A Matplotlib figure on the Agg canvas (no display, no global pyplot state), laid out by constrained layout."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as the report's PNG at ``path``."""
    figure.savefig(path, dpi=_DPI, format="png")
    return path


def _series(rows: Sequence[Mapping[str, Any]], phase: str, key: str) -> dict[str, tuple[list[int], list[float]]]:
    """Per site, (rounds, values) of ``key`` in rows of ``phase``, NaN where missing, sorted by round."""
    by_site: dict[str, dict[int, float]] = {}
    for row in rows:
        if row.get("phase") != phase or "error" in row:
            continue
        value = row.get(key)
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        by_site.setdefault(str(row["site"]), {})[int(row["round"])] = number
    return {site: (sorted(points), [points[r] for r in sorted(points)]) for site, points in by_site.items()}


def _line_axes(axes: Any, series: Mapping[str, tuple[list[int], list[float]]], ylabel: str, title: str) -> None:
    for index, site in enumerate(site_order(list(series))):
        rounds, values = series[site]
        axes.plot(rounds, values, marker="o", markersize=4, label=_label(site), **_style(site, index, lines=True))
    axes.set_xlabel("round")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    rounds = sorted({r for rs, _ in series.values() for r in rs})
    if rounds:
        axes.set_xticks(rounds if len(rounds) <= 20 else rounds[:: max(1, len(rounds) // 10)])


def legend_aucs(
    results: Mapping[str, Mapping[str, Any]], roc_round: int
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The AUCs the results tables show, for the ROC legends: per site (and pooled), and per class index.

    Only entries from the ROC data's round count: a site whose figures are older keeps its curve's own AUC.
    """
    headline: dict[str, float] = {}
    per_class: list[dict[str, float]] = []
    for site, entry in results.items():
        if entry.get(ROUND, roc_round) == roc_round:
            headline[site] = entry.get("auc", math.nan)
            for index, values in enumerate(class_results(entry)):
                per_class += [{} for _ in range(index + 1 - len(per_class))]
                per_class[index][site] = values.get("auc", math.nan)
    return headline, per_class


def roc_labels(curves: Mapping[str, ScoreHistogram], aucs: Mapping[str, float] | None = None) -> dict[str, str]:
    """Each curve's legend label: its AUC from ``aucs`` (the report table's figure), else from the histogram.

    The table's AUC is exact at sites; the histogram's is binned and can differ from it by up to ~1/bins per
    pair of cases sharing a bin, so the legend takes the table's figure wherever there is one.
    """
    labels = {}
    for site, histogram in curves.items():
        given = (aucs or {}).get(site)
        valid = isinstance(given, (int, float)) and not isinstance(given, bool) and math.isfinite(given)
        auc = float(given) if valid else histogram_auc(histogram)
        name = _label(site)
        labels[site] = f"{name} (AUC {auc:.3f})" if math.isfinite(auc) else f"{name} (AUC n/a: one class only)"
    return labels


def _roc_axes(
    axes: Any, curves: Mapping[str, ScoreHistogram], title: str, aucs: Mapping[str, float] | None = None
) -> None:
    """One ROC curve per site (pooled last, in black), the table's AUC in the legend, and the chance diagonal."""
    labels = roc_labels(curves, aucs)
    for index, site in enumerate(site_order(list(curves))):
        fpr, tpr = histogram_roc(curves[site])
        axes.plot(fpr, tpr, label=labels[site], drawstyle="default", **_style(site, index))
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance (AUC 0.5)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_aspect("equal")
    axes.set_xlabel("1 − specificity (false-positive rate)")
    axes.set_ylabel("sensitivity (true-positive rate)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small", title=ROC_NOTE, title_fontsize="x-small")


def plot_roc_per_site(
    sites: Mapping[str, ScoreHistogram],
    pooled: ScoreHistogram | None,
    path: Path,
    *,
    positive: str = "",
    aucs: Mapping[str, float] | None = None,
) -> Path:
    """One ROC curve per site plus pooled; ``positive`` names the class scored against the rest (K > 2).

    ``aucs`` (site or ``pooled`` -> AUC) are the report table's figures, shown in the legend; a curve without one
    shows its histogram's AUC (see `roc_labels`).
    """
    figure = new_figure(6.0, 5.6)
    curves = {**sites, **({POOLED_SITE: pooled} if pooled is not None else {})}
    detail = f"{_label(positive)} vs rest" if positive else "per site"
    _roc_axes(figure.add_subplot(), curves, f"ROC of the final global model, {detail}", aucs)
    return save_figure(figure, path)


def plot_roc_per_class(
    sites: Mapping[str, Sequence[ScoreHistogram]],
    pooled: Sequence[ScoreHistogram],
    names: Sequence[str],
    path: Path,
    *,
    aucs: Sequence[Mapping[str, float]] = (),
) -> Path:
    """One panel per class (that class vs the rest), each with a curve per site and pooled.

    ``aucs[i]`` (site or ``pooled`` -> AUC of class ``i`` vs the rest) are the per-class table's figures.
    """
    count = max([len(pooled), *(len(hs) for hs in sites.values())])
    figure = new_figure(5.0 * count, 5.2)
    panels = figure.subplots(1, count, squeeze=False)[0]
    for index, axes in enumerate(panels):
        curves = {site: hs[index] for site, hs in sites.items() if index < len(hs)}
        if index < len(pooled):
            curves[POOLED_SITE] = pooled[index]
        name = names[index] if index < len(names) else f"class_{index}"
        _roc_axes(axes, curves, f"{_label(name)} vs rest", aucs[index] if index < len(aucs) else None)
    return save_figure(figure, path)


def plot_metrics_per_round(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """AUC, sensitivity and specificity of the global model per round (evaluate rows), one line per site."""
    figure = new_figure(13.0, 4.2)
    panels = figure.subplots(1, 3, sharey=True)
    for axes, key, title in zip(
        panels, ("auc", "sensitivity", "specificity"), ("AUC", "Sensitivity", "Specificity"), strict=True
    ):
        _line_axes(axes, _series(rows, "evaluate", key), title, f"{title} per round")
        axes.set_ylim(-0.02, 1.02)
    panels[0].legend(fontsize="small", loc="lower right")
    return save_figure(figure, path)


def plot_epsilon_per_round(rows: Sequence[Mapping[str, Any]], delta: float | None, path: Path) -> Path:
    """Cumulative epsilon per site after each round (train rows); lower means a stronger privacy guarantee."""
    figure = new_figure(6.5, 4.2)
    axes = figure.add_subplot()
    numeric = isinstance(delta, (int, float)) and not isinstance(delta, bool)  # a hand-edited config may hold text
    title = "Privacy spent: cumulative ε per site" + (f" (δ = {delta:g})" if numeric else "")
    _line_axes(axes, _series(rows, "train", "epsilon"), "ε (cumulative)", title)
    axes.set_ylim(bottom=0)
    axes.legend(fontsize="small", loc="upper left")
    return save_figure(figure, path)


def plot_loss_per_round(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Mean local training loss per site per round, with the test loss beside it when sites reported one."""
    test = _series(rows, "evaluate", "loss")
    has_test = any(math.isfinite(v) for _, values in test.values() for v in values)
    figure = new_figure(11.0 if has_test else 6.5, 4.2)
    panels = figure.subplots(1, 2 if has_test else 1, squeeze=False)[0]
    _line_axes(panels[0], _series(rows, "train", "train_loss"), "cross-entropy", "Training loss per round")
    panels[0].legend(fontsize="small", loc="upper right")
    if has_test:
        _line_axes(panels[1], test, "cross-entropy", "Test loss of the global model per round")
    return save_figure(figure, path)
