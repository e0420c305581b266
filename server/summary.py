"""Turns the recorded rounds into the run's summary: final per-site and pooled results with epsilon."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from common import wire
from common.config import AppConfig
from server.report import POOLED_SITE, latest_rows, nest_class_results

__all__ = ["build_summary"]


def build_summary(config: AppConfig, rows: Sequence[Mapping[str, Any]], *, duration_s: float) -> dict[str, Any]:
    """Final evaluation of the global model per site and pooled, each with the site's cumulative epsilon.

    With more than two classes each entry also holds its per-class results (see `nest_class_results`).
    """
    evaluated = latest_rows(rows, "evaluate")
    trained = latest_rows(rows, "train")
    # Central DP gives every site the same (site-level) guarantee: the federation's epsilon on the pooled row.
    central_epsilon = trained.get(POOLED_SITE, {}).get(wire.EPSILON, 0.0) if config.privacy.central else None
    sites: dict[str, dict[str, Any]] = {}
    for site in sorted(set(evaluated) | set(trained)):
        entry = {k: v for k, v in evaluated.get(site, {}).items() if k not in ("phase", "site")}
        entry["epsilon"] = (
            central_epsilon if central_epsilon is not None else trained.get(site, {}).get(wire.EPSILON, 0.0)
        )
        sites[site] = entry
    pooled = sites.pop(POOLED_SITE, {})
    if central_epsilon is None and sites:  # the worst site overall: one that declined late rounds still counts
        pooled["epsilon"] = max(float(entry["epsilon"]) for entry in sites.values())
    names = config.model.class_labels
    sites = {site: nest_class_results(entry, names) for site, entry in sites.items()}
    pooled = nest_class_results(pooled, names)
    failures = [dict(row) for row in rows if "error" in row]
    return {
        "num_rounds": config.strategy.num_rounds,
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
