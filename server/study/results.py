"""``study.json``: the study's models, cross-site matrix, paired comparisons, calibration and subgroups, in one file.

Per-site figures are the sites' own (exact, on their raw scores); every ``pooled`` figure is computed here from the
sites' summed score histograms (binned), which is all a deployment could pool. See ``STUDY_SCHEMA``.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from common.config import AppConfig
from common.metrics import (
    ScoreHistogram,
    calibration_from_histogram,
    confusion_metrics,
    histogram_metrics,
    pooled_subgroup_metrics,
)
from common.study_wire import ModelScores
from server.pooling import pool_histograms
from server.report import POOLED_SITE
from server.report.json_safe import to_json_safe
from server.report.study_page import STUDY_SCHEMA
from server.study.arms import ArmResult
from server.study.cross_site import SiteEvaluation

__all__ = ["POOLED", "STUDY_SCHEMA", "assemble_study"]

POOLED = POOLED_SITE
_SITE_KEYS = ("num_examples", "num_positives", "num_negatives", "auc", "auc_ci_low", "auc_ci_high", "sensitivity",
              "specificity", "sensitivity_at_specificity", "ppv", "npv")  # fmt: skip


def _versions() -> dict[str, str]:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    names = ("fedmammo", "flwr", "torch", "torchvision", "opacus", "pydicom", "numpy")
    return {**{name: version(name) for name in names}, "python": platform.python_version()}


def _site_entry(scores: ModelScores) -> dict[str, Any]:
    metrics = scores.metrics
    entry = {key: metrics.get(key) for key in _SITE_KEYS if key in metrics}
    for count in ("num_positives", "num_negatives"):  # counts travel as floats in a MetricRecord
        entry[count] = int(metrics.get(count, 0))
    entry["num_examples"] = entry["num_positives"] + entry["num_negatives"]
    return {**entry, "threshold": scores.threshold, "brier": scores.calibration.brier,
            "ece": scores.calibration.ece, "exact": True}  # fmt: skip


def _counts(entry: Mapping[str, Any]) -> dict[str, int]:
    """Confusion counts at the site's own threshold, recovered exactly from sensitivity and specificity."""
    pos, neg = int(entry.get("num_positives") or 0), int(entry.get("num_negatives") or 0)
    sens, spec = entry.get("sensitivity", math.nan), entry.get("specificity", math.nan)
    tp = round(sens * pos) if pos and sens is not None and math.isfinite(sens) else 0
    tn = round(spec * neg) if neg and spec is not None and math.isfinite(spec) else 0
    return {"tp": tp, "fn": pos - tp, "tn": tn, "fp": neg - tn}


def _with_site_calls(pooled: dict[str, Any], reports: list[Any]) -> dict[str, Any]:
    """Pooled subgroups' sensitivity and specificity from the sites' own calls (each at its validation-chosen
    threshold, as the sites' rows and the pooled headline), not from the summed histogram at 0.5."""
    for attribute, groups in pooled.items():
        for value, entry in groups.items():
            if entry.get("too_small"):
                continue
            parts = [r.metrics[attribute][value] for r in reports if (attribute, value) in r.histograms]
            counts = {k: sum(_counts(p)[k] for p in parts) for k in ("tp", "fp", "tn", "fn")}
            calls = confusion_metrics(**counts)
            entry["sensitivity"], entry["specificity"] = calls["sensitivity"], calls["specificity"]
    return pooled


def _pooled_entry(per_site: Iterable[ModelScores], config: AppConfig) -> tuple[dict[str, Any], ScoreHistogram]:
    scored = list(per_site)
    hist = pool_histograms([s.histogram for s in scored])
    entry = histogram_metrics(hist, target_specificity=config.evaluation.target_specificity,
                              bootstrap=config.study.bootstrap, seed=config.seed)  # fmt: skip
    counts = {k: sum(_counts(s.metrics)[k] for s in scored) for k in ("tp", "fp", "tn", "fn")}
    entry.update(confusion_metrics(**counts))  # each site called its cases at its own validation-chosen threshold
    calibration = calibration_from_histogram(hist, bins=config.study.calibration_bins)
    kept = {key: entry.get(key) for key in _SITE_KEYS if key in entry}
    kept["num_examples"] = hist.num_positives + hist.num_negatives
    return {**kept, "brier": calibration.brier, "ece": calibration.ece, "exact": False}, hist


def _model_entry(result: ArmResult) -> dict[str, Any]:
    arm = result.arm
    return {
        "kind": arm.kind,
        "label": arm.label,
        "trained_on": list(arm.trained_on),
        **({"held_out": arm.held_out} if arm.held_out else {}),
        "rounds": result.rounds,
        "seconds": round(result.seconds, 1),
        "epsilon": result.epsilon,
        "noise_multiplier": result.noise_multiplier,
        "trained": result.trained,
    }


def _by_model(evaluations: Mapping[str, SiteEvaluation]) -> dict[str, dict[str, ModelScores]]:
    scored: dict[str, dict[str, ModelScores]] = {}
    for site, evaluation in evaluations.items():
        for key, scores in evaluation.models.items():
            scored.setdefault(key, {})[site] = scores
    return scored


def assemble_study(
    config: AppConfig,
    sites: list[str],
    arms: list[ArmResult],
    evaluations: Mapping[str, SiteEvaluation],
    *,
    wall_time_s: float,
    discovery_failures: list[str] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """The study record (JSON-safe: undefined figures are null); the report is built from it alone."""
    matrix: dict[str, dict[str, Any]] = {}
    calibration: dict[str, dict[str, Any]] = {}
    roc: dict[str, dict[str, Any]] = {}
    subgroups: dict[str, dict[str, Any]] = {}
    for key, per_site in _by_model(evaluations).items():
        matrix[key] = {site: _site_entry(s) for site, s in per_site.items()}
        calibration[key] = {site: s.calibration.to_dict() for site, s in per_site.items()}
        roc[key] = {site: s.histogram.to_lists() for site, s in per_site.items()}
        subgroups[key] = {site: s.subgroups.metrics for site, s in per_site.items()}
        if not key.startswith("loso:"):  # a leave-one-out model is scored on its held-out site only
            matrix[key][POOLED], hist = _pooled_entry(per_site.values(), config)
            calibration[key][POOLED] = calibration_from_histogram(hist, bins=config.study.calibration_bins).to_dict()
            roc[key][POOLED] = hist.to_lists()
            reports = [s.subgroups for s in per_site.values()]
            subgroups[key][POOLED] = _with_site_calls(
                pooled_subgroup_metrics(
                    reports, min_count=config.study.min_subgroup, resamples=config.study.bootstrap, seed=config.seed
                ),
                reports,
            )
    held_out = [e.models[f"loso:{site}"] for site, e in evaluations.items() if f"loso:{site}" in e.models]
    failures = [f for result in arms for f in result.failures]
    failures += [{"stage": "evaluate", "model": None, "site": site, "round": None, "error": e.error, "declined": False}
                 for site, e in evaluations.items() if e.error]  # fmt: skip
    failures += [{"stage": "discover", "model": None, "site": None, "round": None, "error": reason, "declined": False}
                 for reason in discovery_failures]  # fmt: skip
    study = {
        "schema": STUDY_SCHEMA,
        "title": "cross-site generalization study",
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wall_time_s": round(wall_time_s, 1),
        "config": config.to_nested(),
        "versions": _versions(),
        "sites": sites,
        "positive_class": config.model.class_labels[-1],
        "models": {result.arm.key: _model_entry(result) for result in arms},
        "matrix": matrix,
        "held_out_pooled": _pooled_entry(held_out, config)[0] if held_out else None,
        "comparisons": [row for site in sites if site in evaluations for row in evaluations[site].pairs],
        "calibration": calibration,
        "roc": roc,
        "subgroups": subgroups,
        "min_subgroup": config.study.min_subgroup,
        "failures": failures,
    }
    return to_json_safe(study)
