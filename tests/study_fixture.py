"""A realistic study.json (runs/study_schema.md, schema 1) for report tests: seeded scores, real histograms."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.metrics import ScoreHistogram, binary_metrics, histogram_metrics
from server.report.json_safe import to_json_safe

__all__ = ["FIXTURE_FAILURE", "write_study_fixture"]

FIXTURE_FAILURE = "ManifestError: the site's manifest is missing or invalid"
_SEED = 20261129
_MIN_SUBGROUP = 10
_RESAMPLES = 200
_ATTRIBUTES = {"view": ["CC", "MLO"], "laterality": ["L", "R"], "density": ["B", "C"]}
_ENTRY_KEYS = ("auc", "auc_ci_low", "auc_ci_high", "sensitivity", "specificity", "num_positives", "num_negatives")


def _scores(rng: np.random.Generator, labels: np.ndarray, separation: float) -> np.ndarray:
    """Probabilities whose logits are shifted by ``separation`` for positives: 0 gives an untrained-like model."""
    spread = 1.0 if separation else 0.1
    return 1.0 / (1.0 + np.exp(-rng.normal(-0.6 + separation * labels, spread)))


def _reliability(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    edges = np.linspace(0.0, 1.0, 11)
    index = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, 9)
    bins, ece = [], 0.0
    for k in range(10):
        chosen = index == k
        count = int(chosen.sum())
        mean, observed = (float(scores[chosen].mean()), float(labels[chosen].mean())) if count else (None, None)
        ece += count * abs(mean - observed) / labels.size if count else 0.0
        bins.append({"lower": edges[k], "upper": edges[k + 1], "count": count, "mean_predicted": mean,
                     "observed": observed})  # fmt: skip
    return {"brier": float(np.mean((scores - labels) ** 2)), "ece": ece, "bins": bins}


def _entry(labels: np.ndarray, scores: np.ndarray, seed: int) -> dict[str, Any]:
    metrics = binary_metrics(labels, scores, bootstrap=_RESAMPLES, seed=seed)
    calibration = _reliability(labels, scores)
    return {"num_examples": int(labels.size), **{k: metrics[k] for k in _ENTRY_KEYS}, "threshold": 0.5,
            "brier": calibration["brier"], "ece": calibration["ece"], "exact": True}  # fmt: skip


def _auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mann–Whitney AUC of each row (continuous scores: a positive and a negative never tie)."""
    ranks = scores.argsort(axis=1).argsort(axis=1) + 1
    positives = labels.sum(axis=1)
    negatives = labels.shape[1] - positives
    return ((ranks * labels).sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)


def _paired(labels: np.ndarray, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """AUC(a) − AUC(b) on the same images with a paired bootstrap CI; nulls when a class is missing."""
    if labels.min() == labels.max():
        return {"difference": None, "ci_low": None, "ci_high": None}
    picks = rng.integers(0, labels.size, (_RESAMPLES, labels.size))
    picks = picks[labels[picks].min(axis=1) != labels[picks].max(axis=1)]
    diffs = _auc(labels[picks], a[picks]) - _auc(labels[picks], b[picks])
    low, high = np.percentile(diffs, [2.5, 97.5])
    difference = _auc(labels[None], a[None])[0] - _auc(labels[None], b[None])[0]
    return {"difference": float(difference), "ci_low": float(low), "ci_high": float(high)}


def _subgroups(labels: np.ndarray, scores: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attribute, values in groups.items():
        for value in sorted(set(values.tolist())):
            chosen = values == value
            n = int(chosen.sum())
            if n < _MIN_SUBGROUP:
                out.setdefault(attribute, {})[value] = {"num_examples": n, "too_small": True}
                continue
            m = binary_metrics(labels[chosen], scores[chosen], bootstrap=_RESAMPLES)
            keep = ("auc", "auc_ci_low", "auc_ci_high", "sensitivity", "specificity", "num_positives")
            out.setdefault(attribute, {})[value] = {"num_examples": n, **{k: m[k] for k in keep}}
    return out


def _separation(model: str, site: str, untrained: str) -> float:
    if model == untrained:
        return 0.0
    if model.startswith("local:"):
        return 1.6 if model == f"local:{site}" else 0.9
    return {"centralized": 1.9, "federated": 1.8}.get(model, 1.2)  # a LOSO model never saw its held-out site


def write_study_fixture(
    folder: Path, *, sites: Sequence[str] = ("site-0", "site-1", "site-2"), with_nulls: bool = False
) -> Path:
    """Write ``folder/study.json`` as `fedmammo study` would and return its path.

    Every number is computed from seeded synthetic scores (exact AUCs with bootstrap CIs at sites, pooled
    figures from summed 200-bin histograms). The first site holds a subgroup of 4 images (too small to score)
    and one training failure is listed. ``with_nulls`` makes the last site's test split benign only (its AUCs
    and comparisons are null) and the second site's local model untrained (every round failed).
    """
    rng = np.random.default_rng(_SEED)
    sites = list(sites)
    single = sites[-1] if with_nulls else ""
    untrained = f"local:{sites[min(1, len(sites) - 1)]}" if with_nulls else ""
    labels = {s: (rng.random(40 + 10 * i) < 0.3).astype(int) * (s != single) for i, s in enumerate(sites)}
    for s in sites:
        if s != single:
            labels[s][:2] = (0, 1)  # both classes, whatever the draw
    groups = {s: {a: rng.choice(v, labels[s].size) for a, v in _ATTRIBUTES.items()} for s in sites}
    groups[sites[0]]["density"][:4] = "D"  # a subgroup of 4 images: too small to score
    loso = [f"loso:{s}" for s in sites] if len(sites) > 1 else []
    keys = [*(f"local:{s}" for s in sites), "centralized", "federated", *loso]
    scores = {m: {s: _scores(rng, labels[s], _separation(m, s, untrained)) for s in sites} for m in keys}
    models, matrix, calibration = {}, {}, {}
    for number, model in enumerate(keys):
        kind, _, site = model.partition(":")
        trained_on = [site] if kind == "local" else [s for s in sites if s != site]
        tested = [site] if kind == "loso" else sites
        models[model] = {
            "kind": kind, "label": {"local": f"local {site}", "loso": f"federated without {site}"}.get(kind, model),
            "trained_on": trained_on, "rounds": 5, "seconds": round(30.0 + 7.3 * number, 1),
            "epsilon": {} if kind == "centralized" else {s: round(7.9 - 0.4 * i, 2) for i, s in enumerate(trained_on)},
            "noise_multiplier": None if kind == "centralized" else 1.1, "trained": model != untrained,
            **({"held_out": site} if kind == "loso" else {}),
        }  # fmt: skip
        matrix[model] = {s: _entry(labels[s], scores[model][s], number) for s in tested}
        if kind != "loso":
            pooled = ScoreHistogram.pooled([ScoreHistogram.from_scores(labels[s], scores[model][s]) for s in sites])
            metrics = histogram_metrics(pooled, bootstrap=_RESAMPLES)
            all_labels = np.concatenate([labels[s] for s in sites])
            all_scores = np.concatenate([scores[model][s] for s in sites])
            reliability = _reliability(all_labels, all_scores)
            matrix[model]["pooled"] = {
                "num_examples": int(all_labels.size), **{k: metrics[k] for k in _ENTRY_KEYS}, "threshold": 0.5,
                "brier": reliability["brier"], "ece": reliability["ece"], "exact": False,
            }  # fmt: skip
            calibration[model] = {s: {**_reliability(labels[s], scores[model][s]), "exact": True} for s in sites}
            calibration[model]["pooled"] = {**reliability, "exact": False}
    comparisons = []
    for s in sites:
        for b, label in ((f"local:{s}", "federated − local"), ("centralized", "federated − centralized"),
                         (f"loso:{s}", "federated − held out (LOSO drop)")):  # fmt: skip
            if b in scores:
                paired = _paired(labels[s], scores["federated"][s], scores[b][s], rng)
                comparisons.append({"site": s, "a": "federated", "b": b, "label": label, **paired,
                                    "num_examples": int(labels[s].size), "method": "paired bootstrap"})  # fmt: skip
    federated = {s: ScoreHistogram.from_scores(labels[s], scores["federated"][s]) for s in sites}
    roc = {s: h.to_lists() for s, h in federated.items()}
    roc["pooled"] = ScoreHistogram.pooled(list(federated.values())).to_lists()
    subgroups = {s: _subgroups(labels[s], scores["federated"][s], groups[s]) for s in sites}
    subgroups["pooled"] = _subgroups(
        np.concatenate([labels[s] for s in sites]),
        np.concatenate([scores["federated"][s] for s in sites]),
        {a: np.concatenate([groups[s][a] for s in sites]) for a in ("view", "laterality", "density")},
    )
    failed = sites[min(1, len(sites) - 1)]
    held_out = [ScoreHistogram.from_scores(labels[m[5:]], scores[m][m[5:]]) for m in loso]
    held_out_pooled = histogram_metrics(ScoreHistogram.pooled(held_out), bootstrap=_RESAMPLES) if loso else None
    study = {
        "schema": 1, "title": "cross-site generalization study", "created": "2026-11-29T14:00:00Z",
        "wall_time_s": 512.3,
        "config": {"seed": 7, "model": {"name": "small_cnn"}, "strategy": {"name": "fedavg", "num_rounds": 5},
                   "privacy": {"mode": "local", "noise_multiplier": 1.1, "delta": 1e-5}},
        "versions": {"fedmammo": "0.1.0", "flwr": "1.41.0", "torch": "2.5", "opacus": "1.5", "python": "3.12"},
        "sites": sites, "positive_class": "malignant", "models": models, "matrix": matrix,
        "held_out_pooled": {k: held_out_pooled[k] for k in _ENTRY_KEYS} if held_out_pooled else None,
        "comparisons": comparisons, "calibration": calibration, "roc": {"federated": roc},
        "subgroups": {"federated": subgroups}, "min_subgroup": _MIN_SUBGROUP,
        "failures": [{"stage": "train", "model": f"local:{failed}", "site": failed, "round": 3,
                      "error": FIXTURE_FAILURE, "declined": False}],
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.json"
    path.write_text(json.dumps(to_json_safe(study), indent=1, allow_nan=False), encoding="utf-8")
    return path
