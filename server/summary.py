"""Turns the recorded rounds into the run's summary: final per-site and pooled results with epsilon."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from common import wire
from common.config import AppConfig
from server.report import POOLED_SITE, latest_rows, nest_class_results
from server.report.final_round import FINAL_ROUND, mark_final_round

__all__ = ["build_summary"]


def _spent(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each site's largest epsilon over its train rows, declined ones included (they carry the ledger's).

    A site that declined its later rounds (or all of them) has still spent what its ledger holds; epsilon only
    grows, so the largest figure is the latest one.
    """
    spent: dict[str, float] = {}
    for row in rows:
        if row.get("phase") == "train" and wire.EPSILON in row and ("error" not in row or row.get("declined")):
            site = str(row["site"])
            spent[site] = max(spent.get(site, 0.0), float(row[wire.EPSILON]))
    return spent


def build_summary(config: AppConfig, rows: Sequence[Mapping[str, Any]], *, duration_s: float) -> dict[str, Any]:
    """Final evaluation of the global model per site and pooled, each with the site's cumulative epsilon.

    With more than two classes each entry also holds its per-class results (see `nest_class_results`).
    Each entry keeps the ``round`` its figures are from; a site whose last evaluation is older than the final
    round (it failed or declined later) also says why under ``not_in_final_round``, since the pooled row of the
    final round does not include it (`server.report.final_round`).
    """
    evaluated = latest_rows(rows, "evaluate")
    trained = latest_rows(rows, "train")
    # Central DP gives every site the same (site-level) guarantee: the federation's epsilon on the pooled row.
    central_epsilon = trained.get(POOLED_SITE, {}).get(wire.EPSILON, 0.0) if config.privacy.central else None
    spent = _spent(rows)
    sites: dict[str, dict[str, Any]] = {}
    for site in sorted(set(evaluated) | set(trained) | set(spent)):
        entry = {k: v for k, v in evaluated.get(site, {}).items() if k not in ("phase", "site")}
        entry["epsilon"] = central_epsilon if central_epsilon is not None else spent.get(site, 0.0)
        sites[site] = entry
    last_round = mark_final_round(sites, rows)
    pooled = sites.pop(POOLED_SITE, {})
    if central_epsilon is None and sites:  # the worst site overall: one that declined late rounds still counts
        pooled["epsilon"] = max(float(entry["epsilon"]) for entry in sites.values())
    names = config.model.class_labels
    sites = {site: nest_class_results(entry, names) for site, entry in sites.items()}
    pooled = nest_class_results(pooled, names)
    failures = [dict(row) for row in rows if "error" in row]
    return {
        "num_rounds": config.strategy.num_rounds,
        FINAL_ROUND: last_round,  # the round of the pooled row; see each site's "round"
        "model": config.model.name,
        # Headline metrics (auc, sensitivity, ...) are the last class vs the rest; with more than two classes
        # each entry adds per_class (one vs rest, by name), macro_auc and confusion_matrix (row = true class).
        "num_classes": config.model.num_classes,
        "classes": list(names),
        "image_size": config.data.image_size,
        "strategy": config.strategy.name,
        "sites": sites,
        "pooled": pooled,
        "privacy": {
            "mode": config.privacy.mode,
            # With a target epsilon each site derives its own sigma from its training-set size, so no
            # single figure is true for local DP (central DP: server_app records the sigma it used).
            "noise_multiplier": (
                f"per site, set for ε={config.privacy.target_epsilon:g}"
                if config.privacy.local and config.privacy.target_epsilon > 0
                else config.privacy.noise_multiplier
            ),
            "target_epsilon": config.privacy.target_epsilon,
            "max_grad_norm": config.privacy.max_grad_norm,
            **(
                {
                    "central_clipping": config.privacy.central_clipping,
                    "update_clip_norm": config.privacy.update_clip_norm,
                }
                if config.privacy.central
                else {}
            ),
            "delta": config.privacy.delta,
            "accountant": config.privacy.accountant,
        },
        "failures": failures,
        "duration_s": duration_s,
    }
