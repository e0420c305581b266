"""The model card beside each study model (``models/<arm>.pt``): what the study knows of how and where it trained."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.config import AppConfig
from server.model_card import base_fields, privacy_fields, strategy_fields, write_model_card
from server.model_card_limits import limitations
from server.report import POOLED_SITE
from server.report.json_safe import to_json_safe
from server.study.arms import ArmResult

__all__ = ["ARM_CARD_KIND", "arm_card_fields", "write_arm_card"]

ARM_CARD_KIND = "study-arm-model"

_NOTES = {
    "local": "Trained on one site's data only (the study's local baseline), not by a federation.",
    "centralized": "Trained on all sites' data pooled on one node, which only a simulation can do (the study's "
    "reference); no hospital would share its images this way.",
    "loso": "Trained by a federation without one site, to measure how it does at a site it never saw.",
}


def arm_card_fields(config: AppConfig, result: ArmResult, study: Mapping[str, Any]) -> dict[str, Any]:
    """The card of one study model: the shared plan, the model's sites with their epsilon and its cross-site figures.

    The study's figures (``study.json``'s ``matrix``) are each site's score of this model on its own test split; a
    site the model was not trained on is marked ``trained_on: false``. The study sends no data counts, so those are
    None here.

    Parameters
    ----------
    config : AppConfig
        The study run's config.
    result : ArmResult
        The trained model and its record (`server.study.arms.train_arm`).
    study : Mapping
        `server.study.results.assemble_study`'s record.
    """
    arm = result.arm
    delta = config.privacy.delta if config.privacy.mode != "none" else None
    scored = (study.get("matrix") or {}).get(arm.key) or {}
    # The centralized model's one ledger is the pooled node's: its DP-SGD guarantee covers every site's images.
    pooled_node = max(result.epsilon.values()) if arm.kind == "centralized" and result.epsilon else None
    sites: dict[str, dict[str, Any]] = {}
    for site in [*arm.trained_on, *(s for s in scored if s not in arm.trained_on and s != POOLED_SITE)]:
        trained_on = site in arm.trained_on
        sites[site] = {
            "trained_on": trained_on,
            "images": None,
            "patients": None,
            "labels": None,
            "epsilon": result.epsilon.get(site, pooled_node) if trained_on and config.privacy.mode != "none" else None,
            "delta": delta if trained_on else None,
            "metrics": dict(scored.get(site) or {}),
        }
    central = result.epsilon.get(POOLED_SITE) if config.privacy.central else None
    training = {
        **strategy_fields(config),
        "arm": {
            "key": arm.key,
            "kind": arm.kind,
            "label": arm.label,
            "trained_on": list(arm.trained_on),
            **({"held_out": arm.held_out} if arm.held_out else {}),
        },
        "final_round": result.rounds if result.trained else None,
        "trained": result.trained,
        "duration_s": result.seconds,
    }
    epsilons = {site: entry["epsilon"] for site, entry in sites.items() if entry["trained_on"]}
    noise = result.noise_multiplier if result.noise_multiplier is not None else config.privacy.noise_multiplier
    notes = [_NOTES[arm.kind]] if arm.kind in _NOTES else []
    fields = {
        **base_fields(config, ARM_CARD_KIND),
        "training": training,
        "sites": sites,
        "pooled": {"metrics": dict(scored.get(POOLED_SITE) or {}), "epsilon": central},
        "privacy": privacy_fields(config, epsilons, central=central, noise=noise),
    }
    fields["limitations"] = limitations(
        config, sites, result.failures, trained=result.trained, final_round=training["final_round"],
        pooled=fields["pooled"], notes=notes,
    )  # fmt: skip
    return to_json_safe(fields)


def write_arm_card(weights_path: str | Path, config: AppConfig, result: ArmResult, study: Mapping[str, Any]) -> Path:
    """Write the JSON card and its Markdown beside ``weights_path`` (saved before); return the JSON card's path."""
    return write_model_card(weights_path, arm_card_fields(config, result, study))[0]
