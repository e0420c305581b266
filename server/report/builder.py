"""Builds the run's plots and report.html from the run directory's files alone (so it can be rebuilt offline)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.metrics import DEFAULT_TARGET_SPECIFICITY, DEFAULT_THRESHOLD
from server.report.card_section import render_card_section
from server.report.class_results import class_names_of
from server.report.class_section import render_class_section
from server.report.epsilons import final_epsilons
from server.report.exam_section import exam_rule_of, render_exam_section
from server.report.final_round import mark_final_round
from server.report.localization_section import render_localization_section
from server.report.page import render_page
from server.report.personalization_section import render_personalization_section
from server.report.plots import (
    CLASS_ROC_PLOT,
    EPSILON_PLOT,
    LOSS_PLOT,
    METRICS_PLOT,
    ROC_PLOT,
    legend_aucs,
    plot_epsilon_per_round,
    plot_loss_per_round,
    plot_metrics_per_round,
    plot_roc_per_class,
    plot_roc_per_site,
)
from server.report.run_files import (
    CONFIG_FILE,
    METRICS_FILE,
    POOLED_SITE,
    SUMMARY_FILE,
    RocData,
    RunDirectory,
    RunFolderError,
)

__all__ = ["build_report"]

logger = logging.getLogger(__name__)

_ALWAYS_SHOWN = frozenset({"Model", "Rounds", "Sites", "Differential privacy"})
_MODE_TEXT = {
    "local": "local: DP-SGD on each site (ε per site, per image)",
    "central": "central: the server clips each site's update and noises the aggregate (ε per federation, per site)",
    "none": "off",
}


def latest_rows(rows: Sequence[Mapping[str, Any]], phase: str) -> dict[str, dict[str, Any]]:
    """Each site's most recent successful row of ``phase`` (``pooled`` included), keyed by site."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("phase") == phase and "error" not in row:
            site = str(row["site"])
            if site not in latest or row["round"] >= latest[site]["round"]:
                latest[site] = dict(row)
    return latest


def _results(
    summary: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]], *, central: bool
) -> dict[str, dict[str, Any]]:
    """Final per-site and pooled results: from summary.json, else the last recorded round of each site.

    Without summary.json (an interrupted run) each epsilon comes from `final_epsilons`, the rule summary.json
    is written with, so a site that declined its later rounds still shows what its ledger spent. A site whose
    figures are older than the final round is marked with why (`mark_final_round`), also for summaries written
    before summary.json said so.
    """
    if summary and (summary.get("sites") or summary.get("pooled")):
        sites = summary.get("sites") if isinstance(summary.get("sites"), Mapping) else {}
        results = {str(site): dict(entry) for site, entry in sites.items() if isinstance(entry, Mapping)}
        if isinstance(summary.get("pooled"), Mapping) and summary["pooled"]:
            results[POOLED_SITE] = dict(summary["pooled"])
    else:
        evaluated, epsilons = latest_rows(rows, "evaluate"), final_epsilons(rows, central=central)
        results = {}
        for site in set(evaluated) | set(epsilons):
            results[site] = {**evaluated.get(site, {}), "epsilon": epsilons.get(site, math.nan)}
    mark_final_round(results, rows)
    return results


def _privacy(summary: Mapping[str, Any] | None, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's privacy settings with a ``mode`` (runs recorded before ``privacy.mode`` had ``enabled``)."""
    for source in (summary, config):
        if source and isinstance(source.get("privacy"), Mapping):
            privacy = dict(source["privacy"])
            if "mode" not in privacy and "enabled" in privacy:
                privacy["mode"] = "local" if privacy["enabled"] else "none"
            return privacy
    return {}


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def operating_point_text(config: Mapping[str, Any] | None) -> tuple[str, float]:
    """How sensitivity/specificity were read (from the run's evaluation config), and the target specificity.

    Plain text: the caller escapes it. A target that is not a number (a hand-edited config) reads as NaN.
    """
    evaluation = (config or {}).get("evaluation")
    evaluation = evaluation if isinstance(evaluation, Mapping) else {}
    target = evaluation.get("target_specificity", DEFAULT_TARGET_SPECIFICITY)
    target = float(target) if isinstance(target, (int, float)) and not isinstance(target, bool) else math.nan
    if evaluation.get("operating_point", "fixed") == "fixed":
        return f"a fixed score threshold of {_text(evaluation.get('threshold', DEFAULT_THRESHOLD))}", target
    return (
        f"the threshold each site chose on its own validation split (the lowest giving specificity of at least "
        f"{_text(target)} there; see the Threshold column)",
        target,
    )


def _settings(
    summary: Mapping[str, Any] | None, config: Mapping[str, Any] | None, privacy: Mapping[str, Any], sites: list[str]
) -> list[tuple[str, str]]:
    summary, config = summary or {}, config or {}
    section = lambda name: config.get(name) if isinstance(config.get(name), Mapping) else {}  # noqa: E731
    duration = summary.get("duration_s")
    mode = privacy.get("mode")
    settings = [
        ("Model", _text(summary.get("model", section("model").get("name")))),
        ("Strategy", _text(summary.get("strategy", section("strategy").get("name")))),
        ("Rounds", _text(summary.get("num_rounds", section("strategy").get("num_rounds")))),
        ("Sites", ", ".join(sites) if sites else "n/a"),
        ("Image size (pixels)", _text(summary.get("image_size", section("data").get("image_size")))),
        ("Differential privacy", _MODE_TEXT.get(str(mode), _text(mode))),
    ]
    settings = [(name, value) for name, value in settings if value != "n/a" or name in _ALWAYS_SHOWN]
    if mode == "central":
        settings += [
            ("Noise multiplier (on the aggregate)", _text(privacy.get("noise_multiplier"))),
            ("Update clipping", _text(privacy.get("central_clipping"))),
            ("Update clip norm (start value when adaptive)", _text(privacy.get("update_clip_norm"))),
            ("δ (delta)", _text(privacy.get("delta"))),
        ]
    elif mode is not None and mode != "none":
        settings += [
            ("Noise multiplier", _text(privacy.get("noise_multiplier"))),
            ("Max gradient norm (clipping)", _text(privacy.get("max_grad_norm"))),
            ("δ (delta)", _text(privacy.get("delta"))),
        ]
        if "accountant" in privacy:
            settings.append(("Privacy accountant", _text(privacy["accountant"])))
    settings += [
        ("Decision threshold", operating_point_text(config)[0]),
        ("Target specificity", _text(operating_point_text(config)[1])),
        ("Duration", f"{duration:.0f} s" if isinstance(duration, (int, float)) and math.isfinite(duration) else "n/a"),
    ]
    return settings


def _read_roc(run_dir: RunDirectory) -> tuple[RocData | None, str]:
    try:
        roc = run_dir.read_roc()
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        logger.warning("%s is unreadable (%s); the report has no ROC plot", run_dir.roc_path, exc)
        return None, f"No ROC data: {run_dir.roc_path.name} could not be read ({exc})."
    return roc, "" if roc is not None else "No ROC data: no round was evaluated (roc.json is missing)."


def _plots(
    run_dir: RunDirectory,
    rows: list[dict[str, Any]],
    roc: RocData | None,
    privacy: Mapping[str, Any],
    class_names: list[str],
    results: Mapping[str, Mapping[str, Any]],
) -> tuple[list[tuple[str, str]], list[str]]:
    """Draw every plot the data allows; say why the others are missing, and delete stale copies of them.

    With more than two classes (``class_names``) the ROC plot is the last class vs the rest, and a per-class
    ROC plot follows it when roc.json holds the per-class histograms. The ROC legends show the results tables'
    AUCs (exact at sites) where they are from the ROC data's round (`legend_aucs`).
    """
    aucs, class_aucs = legend_aucs(results, roc.round) if roc else ({}, [])
    positive = class_names[-1] if class_names else ""
    plots: list[tuple[str, str]] = []
    notes: list[str] = []
    has = lambda phase, key: any(r.get("phase") == phase and key in r and "error" not in r for r in rows)  # noqa: E731
    wanted: list[tuple[str, bool, str, Any]] = [
        (ROC_PLOT, roc is not None, "",
         lambda p: plot_roc_per_site(roc.sites, roc.pooled, p, positive=positive, aucs=aucs)),
        (CLASS_ROC_PLOT, bool(class_names and roc and roc.class_sites), "",
         lambda p: plot_roc_per_class(roc.class_sites, roc.class_pooled, class_names, p, aucs=class_aucs)),
        (METRICS_PLOT, has("evaluate", "auc"), "No evaluation rounds recorded: no metrics plot.",
         lambda p: plot_metrics_per_round(rows, p)),
        (EPSILON_PLOT, privacy.get("mode") != "none" and has("train", "epsilon"),
         "Differential privacy was off for this run: there is no privacy guarantee (ε is unbounded), so no ε plot."
         if privacy.get("mode") == "none" else "No training rounds with ε recorded: no ε plot.",
         lambda p: plot_epsilon_per_round(rows, privacy.get("delta"), p)),
        (LOSS_PLOT, has("train", "train_loss"), "No training rounds recorded: no loss plot.",
         lambda p: plot_loss_per_round(rows, p)),
    ]  # fmt: skip
    captions = {
        ROC_PLOT: f"ROC curves of the final global model (round {roc.round if roc else '?'}) on each site's test "
        "split and pooled; curves further to the top left are better. Curves drawn from binned score histograms; "
        "AUC as in the table."
        + (f" The score is the probability of {positive}, against all other classes." if positive else ""),
        CLASS_ROC_PLOT: "ROC curves of each class against all the others (scored by that class's probability), "
        "per site and pooled. Curves drawn from binned score histograms; AUC as in the per-class table.",
        METRICS_PLOT: "AUC, sensitivity and specificity of the global model per round (sensitivity and "
        "specificity at each site's decision threshold).",
        EPSILON_PLOT: "Cumulative privacy loss ε of the federation after each round, accounted by the server for "
        "whole sites (central DP; smaller is more private)."
        if privacy.get("mode") == "central"
        else "Cumulative privacy loss ε per site after each round (smaller is more private).",
        LOSS_PLOT: "Training loss per site per round (and the global model's test loss when reported).",
    }
    for name, available, note, draw in wanted:
        path = run_dir.path / name
        if available:
            draw(path)
            plots.append((name, captions[name]))
        else:
            path.unlink(missing_ok=True)
            if note:
                notes.append(note)
    return plots, notes


def build_report(run_dir: str | Path) -> Path:
    """Draw the plots and write ``report.html`` into ``run_dir`` from its files; return the report's path.

    Works on a finished run, a run that crashed part-way (only ``metrics.jsonl``) or a copied folder:
    whatever file is missing becomes a sentence in the report rather than an error.

    Raises
    ------
    RunFolderError
        If ``run_dir`` does not exist (a typo must neither create a folder nor an empty report), holds none of
        metrics.jsonl, summary.json and config.yaml, or one of those cannot be read.
    """
    folder = RunDirectory(run_dir, create=False)
    if not any((folder.path / name).is_file() for name in (METRICS_FILE, SUMMARY_FILE, CONFIG_FILE)):
        raise RunFolderError(
            f"{folder.path} is not a run folder: it holds none of {METRICS_FILE}, {SUMMARY_FILE} and {CONFIG_FILE}"
        )
    rows = folder.read_metrics()
    summary, config = folder.read_summary(), folder.read_config()
    roc, roc_note = _read_roc(folder)
    privacy = _privacy(summary, config)
    results = _results(summary, rows, central=privacy.get("mode") == "central")
    sites = sorted({str(r["site"]) for r in rows} | set(results) | set(roc.sites if roc else ()))
    sites = [s for s in sites if s != POOLED_SITE]
    class_names = class_names_of(summary, config, results)
    plots, notes = _plots(folder, rows, roc, privacy, class_names, results)
    failures = (summary or {}).get("failures") or [r for r in rows if "error" in r]
    html_text = render_page(
        title=f"fedmammo run report: {folder.path.name}",
        settings=_settings(summary, config, privacy, sites),
        results=results,
        privacy_enabled=privacy.get("mode") != "none",
        plots=plots,
        notes=[n for n in (roc_note, *notes) if n],
        rows=rows,
        failures=failures,
        threshold=operating_point_text(config)[0],
        target_specificity=operating_point_text(config)[1],
        class_names=class_names,
        class_section=render_class_section(results, class_names) if class_names else "",
        personalization_section=render_personalization_section(results, config),
        exam_section=render_exam_section(results, exam_rule_of(summary, config)),
        card_section=render_card_section(folder.path),
        localization_section=render_localization_section(results, class_names),
    )
    folder.report_path.write_text(html_text, encoding="utf-8")
    logger.info("wrote %s with %d plot(s)", folder.report_path, len(plots))
    return folder.report_path
