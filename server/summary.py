"""Turns the recorded rounds into the run's summary: final per-site and pooled results with epsilon."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from common import wire
from common.config import AppConfig
from server.report import latest_rows

__all__ = ["build_summary"]


def build_summary(config: AppConfig, rows: Sequence[Mapping[str, Any]], *, duration_s: float) -> dict[str, Any]:
    """Final evaluation of the global model per site and pooled, each with the site's cumulative epsilon."""
    evaluated = latest_rows(rows, "evaluate")
    trained = latest_rows(rows, "train")
    sites: dict[str, dict[str, Any]] = {}
    for site in sorted(set(evaluated) | set(trained)):
        entry = {k: v for k, v in evaluated.get(site, {}).items() if k not in ("phase", "site")}
        entry["epsilon"] = trained.get(site, {}).get(wire.EPSILON, 0.0)
        sites[site] = entry
    pooled = sites.pop("pooled", {})
    failures = [dict(row) for row in rows if "error" in row]
    return {
        "num_rounds": config.strategy.num_rounds,
        "model": config.model.name,
        "image_size": config.data.image_size,
        "strategy": config.strategy.name,
        "sites": sites,
        "pooled": pooled,
        "privacy": {
            "enabled": config.privacy.enabled,
            "noise_multiplier": config.privacy.noise_multiplier,
            "max_grad_norm": config.privacy.max_grad_norm,
            "delta": config.privacy.delta,
            "accountant": config.privacy.accountant,
        },
        "failures": failures,
        "duration_s": duration_s,
    }
