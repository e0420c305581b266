"""PNG plots of a cross-site study (study.json): AUC matrix, LOSO drop, reliability, ROC and comparison forest."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.patches import Rectangle

from common.metrics import ScoreHistogram, histogram_roc
from server.report.plots import new_figure, save_figure

__all__ = [
    "COMPARISON_PLOT",
    "LOSO_PLOT",
    "MATRIX_PLOT",
    "POOLED",
    "RELIABILITY_PLOT",
    "STUDY_ROC_PLOT",
    "comparison",
    "entry",
    "finite",
    "mapping",
    "matrix_models",
    "plot_comparisons",
    "plot_loso",
    "plot_reliability",
    "plot_study_matrix",
    "plot_study_roc",
    "study_sites",
]

POOLED = "pooled"
MATRIX_PLOT = "study_matrix.png"
LOSO_PLOT = "study_loso.png"
RELIABILITY_PLOT = "study_reliability.png"
STUDY_ROC_PLOT = "study_roc.png"
COMPARISON_PLOT = "study_comparisons.png"

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
_PAIRS = (("local:", "federated − local", "#1f77b4"), ("centralized", "federated − centralized", "#ff7f0e"))


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None (how the study's nulls read)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a mapping, else an empty one: a hand-edited file must not crash the report."""
    return value if isinstance(value, Mapping) else {}


def study_sites(study: Mapping[str, Any]) -> list[str]:
    """The study's sites in display order (``pooled`` excluded)."""
    sites = study.get("sites")
    return [str(s) for s in sites if str(s) != POOLED] if isinstance(sites, list) else []


def entry(study: Mapping[str, Any], model: str, site: str) -> Mapping[str, Any]:
    """The matrix entry of ``model`` on ``site`` (or pooled); empty when the study has none."""
    return mapping(mapping(mapping(study.get("matrix")).get(model)).get(site))


def comparison(study: Mapping[str, Any], site: str, b: str, a: str = "federated") -> Mapping[str, Any]:
    """The paired comparison ``a − b`` at ``site``; empty when the study has none."""
    rows = study.get("comparisons")
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, Mapping) and (row.get("site"), row.get("a"), row.get("b")) == (site, a, b):
            return row
    return {}


def matrix_models(study: Mapping[str, Any]) -> list[str]:
    """Rows of the cross-site matrix: each site's local model, centralized, federated (those the study has)."""
    known = set(mapping(study.get("models"))) | set(mapping(study.get("matrix")))
    wanted = [f"local:{site}" for site in study_sites(study)] + ["centralized", "federated"]
    return [model for model in wanted if model in known]


def _text(name: str) -> str:
    """Site and model names are the study's own text: escape ``$`` so matplotlib does not parse them as math."""
    return str(name).replace("$", r"\$")


def _color(study: Mapping[str, Any], site: str) -> str:
    sites = study_sites(study)
    return "black" if site not in sites else _PALETTE[sites.index(site) % len(_PALETTE)]


def _dot(axes: Any, y: float, item: Mapping[str, Any], keys: Sequence[str], color: str) -> None:
    """A value with its 95% CI as a dot and a horizontal bar at ``y``; "n/a" written where the value is null."""
    value, low, high = (finite(item.get(k)) for k in keys)
    if value is None:
        axes.annotate("n/a", (0, y), xycoords=("axes fraction", "data"), xytext=(4, 0), textcoords="offset points",
                      va="center", color=color, fontsize="small")  # fmt: skip
        return
    xerr = [[max(value - low, 0.0)], [max(high - value, 0.0)]] if low is not None and high is not None else None
    axes.errorbar([value], [y], xerr=xerr, fmt="o", color=color, capsize=3)


def _site_axes(axes: Any, names: Sequence[str], xlabel: str, title: str) -> None:
    axes.set_yticks(range(len(names)), labels=[_text(n) for n in names])
    axes.set_ylim(len(names) - 0.5, -0.5)
    axes.set_xlabel(xlabel)
    axes.set_title(title, fontsize="medium")
    axes.grid(axis="x", alpha=0.3)


def plot_study_matrix(study: Mapping[str, Any], path: Path) -> Path | None:
    """Heatmap of AUC: models (rows) on each test site and pooled (columns), local models on their own site outlined."""
    rows, columns = matrix_models(study), [*study_sites(study), POOLED]
    if not rows:
        return None
    values = np.array([[finite(entry(study, m, c).get("auc")) or math.nan for c in columns] for m in rows])
    figure = new_figure(max(6.0, 1.25 * len(columns) + 4.0), max(3.2, 0.55 * len(rows) + 2.0))
    axes = figure.add_subplot()
    colormap = matplotlib.colormaps["YlGnBu"].with_extremes(bad="#e0e0e0", under="#f4c7c3")
    image = axes.imshow(np.ma.masked_invalid(values), cmap=colormap, vmin=0.5, vmax=1.0, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        text, color = ("n/a", "#555555") if math.isnan(value) else (f"{value:.3f}", "white" if value > 0.8 else "black")
        axes.text(j, i, text, ha="center", va="center", color=color, fontsize="small")
    for i, model in enumerate(rows):
        if model.startswith("local:") and model[len("local:") :] in columns:
            j = columns.index(model[len("local:") :])
            axes.add_patch(
                Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=2.5, clip_on=False)
            )
    models = mapping(study.get("models"))
    info = {m: mapping(models.get(m)) for m in rows}
    labels = [
        str(info[m].get("label") or m) + (" (untrained)" if info[m].get("trained") is False else "") for m in rows
    ]
    axes.set_yticks(range(len(rows)), labels=[_text(label) for label in labels])
    axes.set_xticks(range(len(columns)), labels=[_text(c) for c in columns], rotation=20, ha="right")
    axes.set_xlabel("test split of site")
    axes.set_ylabel("model")
    axes.set_title("AUC of each model on each site (red box: a local model on its own site)", fontsize="medium")
    figure.colorbar(image, ax=axes, label="AUC (below 0.5 in pink, n/a in grey)", extend="min")
    return save_figure(figure, path)


def plot_loso(study: Mapping[str, Any], path: Path) -> Path | None:
    """Per held-out site: federated vs leave-one-site-out AUC (left) and their paired difference with CI (right)."""
    known = set(mapping(study.get("models"))) | set(mapping(study.get("matrix")))
    sites = [site for site in study_sites(study) if f"loso:{site}" in known]
    if not sites:
        return None
    figure = new_figure(11.0, max(2.8, 0.6 * len(sites) + 1.8))
    left, right = figure.subplots(1, 2)
    keys = ("auc", "auc_ci_low", "auc_ci_high")
    for label, color in (("federated (all sites)", "#1f77b4"), ("federated without this site", "#d62728")):
        left.plot([], [], marker="o", linestyle="", color=color, label=label)
    for y, site in enumerate(sites):
        _dot(left, y - 0.12, entry(study, "federated", site), keys, "#1f77b4")
        _dot(left, y + 0.12, entry(study, f"loso:{site}", site), keys, "#d62728")
        item = comparison(study, site, f"loso:{site}")
        _dot(right, y, item, ("difference", "ci_low", "ci_high"), "#444444")
    _site_axes(left, sites, "AUC on the held-out site (95% CI)", "AUC on each site")
    _site_axes(right, sites, "federated − held out, 95% CI (right of 0: the site's data helped)",
               "Drop when a site's data is left out")  # fmt: skip
    right.axvline(0.0, color="grey", linestyle="--", linewidth=1)
    figure.legend(loc="outside lower center", ncol=2, fontsize="small", frameon=False)
    return save_figure(figure, path)


def _bins(item: Mapping[str, Any]) -> list[tuple[float, float, int, float | None, float | None]]:
    """(lower, upper, count, mean predicted, observed) of each readable reliability bin."""
    rows = item.get("bins") if isinstance(item.get("bins"), list) else []
    out = []
    for b in (mapping(b) for b in rows):
        lower, upper, count = finite(b.get("lower")), finite(b.get("upper")), finite(b.get("count"))
        if lower is not None and upper is not None and count is not None:
            out.append((lower, upper, int(count), finite(b.get("mean_predicted")), finite(b.get("observed"))))
    return out


def plot_reliability(study: Mapping[str, Any], path: Path, model: str = "federated") -> Path | None:
    """Reliability diagram of ``model`` per site and pooled: observed rate vs mean prediction, counts as bars."""
    calibration = mapping(mapping(study.get("calibration")).get(model))
    panels = [site for site in (*study_sites(study), POOLED) if site in calibration]
    if not panels:
        return None
    columns = 2 if len(panels) == 4 else min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    figure = new_figure(3.6 * columns + 0.4, 3.7 * lines)
    grid = figure.subplots(lines, columns, squeeze=False).ravel()
    for axes in grid[len(panels) :]:
        axes.set_visible(False)
    for index, (site, axes) in enumerate(zip(panels, grid, strict=False)):
        item, fallback = mapping(calibration.get(site)), entry(study, model, site)
        brier, ece = (finite(item.get(k, fallback.get(k))) for k in ("brier", "ece"))
        bins = _bins(item)
        counts = axes.twinx()
        counts.bar([(lo + hi) / 2 for lo, hi, *_ in bins], [c for _, _, c, *_ in bins],
                   width=[hi - lo for lo, hi, *_ in bins], color="#bbbbbb", alpha=0.5)  # fmt: skip
        counts.set_ylim(0, 4 * max([c for _, _, c, *_ in bins] or [1]))
        counts.tick_params(labelsize="x-small", colors="#888888")
        if index % columns == columns - 1 or index == len(panels) - 1:
            counts.set_ylabel("images per bin (grey bars)", fontsize="x-small", color="#888888")
        axes.set_zorder(counts.get_zorder() + 1)
        axes.patch.set_visible(False)
        points = [(p, o) for _, _, c, p, o in bins if c > 0 and p is not None and o is not None]
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", color=_color(study, site), label="observed")
        else:
            axes.text(0.5, 0.5, "n/a", ha="center", va="center", transform=axes.transAxes)
        name = f"{_text(site)} (from histograms)" if site == POOLED else _text(site)
        scores = " · ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in (("Brier", brier), ("ECE", ece)))
        axes.set_title(f"{name}\n{scores}", fontsize="medium")
        axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed malignant rate")
        axes.grid(alpha=0.3)
        if index == 0:
            axes.legend(fontsize="x-small", loc="upper left")
    return save_figure(figure, path)


def plot_study_roc(study: Mapping[str, Any], path: Path, model: str = "federated") -> Path | None:
    """ROC of ``model`` per site and pooled from the score histograms; operating points and AUCs from the matrix."""
    histograms = mapping(mapping(study.get("roc")).get(model))
    curves = [site for site in (*study_sites(study), POOLED) if site in histograms]
    if not curves:
        return None
    figure = new_figure(6.0, 6.2)
    axes = figure.add_subplot()
    for site in curves:
        lists, item, color = mapping(histograms.get(site)), entry(study, model, site), _color(study, site)
        try:
            fpr, tpr = histogram_roc(ScoreHistogram.from_lists(lists.get("negatives"), lists.get("positives")))
        except (ValueError, TypeError):
            fpr, tpr = np.array([math.nan]), np.array([math.nan])
        auc = finite(item.get("auc"))
        one_class = not (np.isfinite(fpr).all() and np.isfinite(tpr).all())
        label = f"{_text(site)} (AUC {'n/a' if auc is None else f'{auc:.3f}'}{': one class only' * one_class})"
        axes.plot(fpr, tpr, color=color, linewidth=2.2 if site == POOLED else 1.6, label=label)
        sensitivity, specificity = finite(item.get("sensitivity")), finite(item.get("specificity"))
        if sensitivity is not None and specificity is not None:
            axes.plot([1 - specificity], [sensitivity], marker="o", markersize=8, color=color, markeredgecolor="black")
    axes.plot([], [], marker="o", linestyle="", color="white", markeredgecolor="black", label="operating point")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance (AUC 0.5)")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", xlabel="1 − specificity (false-positive rate)",
             ylabel="sensitivity (true-positive rate)")  # fmt: skip
    axes.set_title(f"ROC of the {_text(model)} model per site", fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small", title="AUC: exact at sites, binned for pooled",
                title_fontsize="small")  # fmt: skip
    return save_figure(figure, path)


def plot_comparisons(study: Mapping[str, Any], path: Path) -> Path | None:
    """Forest plot per site (and pooled): federated − local and federated − centralized AUC with 95% CIs."""
    names = [site for site in (*study_sites(study), POOLED)
             if any(comparison(study, site, b) for b in (f"local:{site}", "centralized"))]  # fmt: skip
    if not names:
        return None
    figure = new_figure(8.0, max(2.8, 0.7 * len(names) + 1.8))
    axes = figure.add_subplot()
    keys = ("difference", "ci_low", "ci_high")
    for _, label, color in _PAIRS:
        axes.plot([], [], marker="o", linestyle="", color=color, label=label)
    for y, site in enumerate(names):
        for offset, (b, _, color) in zip((-0.15, 0.15), _PAIRS, strict=True):
            if not (b == "local:" and site == POOLED):  # pooled has no single local model to compare with
                _dot(axes, y + offset, comparison(study, site, b + site if b == "local:" else b), keys, color)
    _site_axes(axes, names, "difference in AUC, paired 95% CI (right of 0: federated better)",
               "Federated model compared with training alone and with pooled data")  # fmt: skip
    axes.axvline(0.0, color="grey", linestyle="--", linewidth=1)
    figure.legend(loc="outside lower center", ncol=2, fontsize="small", frameon=False)
    return save_figure(figure, path)
