"""A study's models (local-only, centralized, federated, leave-one-site-out), each trained by the run's own strategy.

Every model trains with the same code, splits, seed, rounds and local epochs as the federation: Flower's strategy
and its ``start`` loop over a `SubsetGrid` of the model's sites. A site's local model is a federation of one; the
centralized model is a federation of the one simulated node that holds every site's training data.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from common import wire
from common.config import AppConfig
from common.file_names import file_safe
from server.model_arrays import final_weights, initial_arrays
from server.report import POOLED_SITE, RunDirectory
from server.strategy import build_strategy
from server.study.nodes import SiteNodes, SubsetGrid

__all__ = ["ArmResult", "StudyArm", "plan_arms", "train_arm"]

logger = logging.getLogger(__name__)

FEDERATED = "federated"
CENTRALIZED = "centralized"


@dataclass(frozen=True)
class StudyArm:
    """One model of the study: its key (``local:site-0``), kind, display label and the nodes that train it."""

    key: str
    kind: str
    label: str
    trained_on: tuple[str, ...]
    node_ids: tuple[int, ...]
    held_out: str | None = None


@dataclass
class ArmResult:
    """A trained model and what its training left in the record."""

    arm: StudyArm
    arrays: ArrayRecord
    trained: bool
    seconds: float
    rounds: int
    epsilon: dict[str, float] = field(default_factory=dict)
    noise_multiplier: float | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)


def plan_arms(arms: tuple[str, ...], nodes: SiteNodes) -> list[StudyArm]:
    """The study's models in display order: each site's local model, centralized, federated, each site left out.

    The centralized model needs the pooled node (simulation only); leave-one-site-out needs at least two sites.
    A model that cannot be trained here is left out with a warning.
    """
    sites = tuple(nodes.sites)
    planned: list[StudyArm] = []
    if "local" in arms:
        planned += [StudyArm(f"local:{s}", "local", f"local {s}", (s,), (nodes.sites[s],)) for s in sites]
    if "centralized" in arms:
        if nodes.pooled is None:
            logger.warning("no node holds the pooled data (only a simulation has one): no centralized model")
        else:
            planned.append(StudyArm(CENTRALIZED, "centralized", "centralized (pooled data)", sites, (nodes.pooled,)))
    if "federated" in arms:
        planned.append(StudyArm(FEDERATED, "federated", "federated", sites, tuple(nodes.sites.values())))
    if "loso" in arms:
        if len(sites) < 2:
            logger.warning("leave-one-site-out needs at least two sites; %d answered", len(sites))
        else:
            for held in sites:
                others = tuple(s for s in sites if s != held)
                ids = tuple(nodes.sites[s] for s in others)
                planned.append(StudyArm(f"loso:{held}", "loso", f"federated without {held}", others, ids, held))
    return planned


def _arm_config(config: AppConfig, arm: StudyArm) -> AppConfig:
    """The run's config for a federation of the arm's sites: the same training, no evaluation between rounds."""
    sites = len(arm.node_ids)
    return replace(
        config,
        federation=replace(config.federation, num_sites=sites),
        strategy=replace(config.strategy, fraction_evaluate=0.0, min_nodes=min(config.strategy.min_nodes, sites)),
    )


def _round_timeout(config: AppConfig, arm: StudyArm) -> float:
    """The pooled node trains on every site's data, so its rounds get the sites' timeouts added up."""
    return config.strategy.round_timeout_s * (len(arm.trained_on) if arm.kind == "centralized" else 1)


def _silent_rounds(arm: StudyArm, rows: list[dict[str, Any]], rounds: int, timeout_s: float) -> list[dict[str, Any]]:
    """A failure per round in which a node of the model sent nothing (it timed out): it leaves no row otherwise."""
    failures = []
    for number in range(1, rounds + 1):
        seen = {str(r["site"]) for r in rows if r.get("round") == number and r.get("site") != POOLED_SITE}
        missing = len(arm.node_ids) - len(seen)
        if missing > 0:
            who = "the pooled node" if arm.kind == "centralized" else ", ".join(sorted(set(arm.trained_on) - seen))
            reason = f"{missing} node(s) sent no reply within {timeout_s:.0f}s"
            failures.append({"stage": "train", "model": arm.key, "site": who or None, "round": number,
                             "error": reason, "declined": False})  # fmt: skip
    return failures


def _final_epsilons(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Each site's last recorded epsilon (its ledger for this model), and the pooled one under central DP."""
    spent: dict[str, float] = {}
    for row in rows:
        value = row.get(wire.EPSILON)
        if row.get("phase") == "train" and value is not None and math.isfinite(float(value)):
            spent[str(row["site"])] = float(value)
    return spent


def train_arm(grid: Grid, config: AppConfig, arm: StudyArm, study_dir: Path) -> ArmResult:
    """Train one model of the study; its per-round rows go to ``arms/<key>/metrics.jsonl`` in the study folder.

    The train messages carry the model's key (`wire.STUDY_ARM`), so in simulation each model charges its own
    privacy ledger at each site (`client.site.study_ledger`).
    """
    arm_config = _arm_config(config, arm)
    run_dir = RunDirectory(study_dir / "arms" / file_safe(arm.key))
    run_dir.write_config(arm_config.to_nested())
    initial = initial_arrays(config)
    grid = SubsetGrid(grid, arm.node_ids)
    connected = len(list(grid.get_node_ids()))
    if connected < len(arm.node_ids):  # Flower's sampling would wait for the missing node for ever
        reason = f"{len(arm.node_ids) - connected} of its {len(arm.node_ids)} node(s) not connected; not trained"
        logger.warning("study: %s: %s", arm.label, reason)
        failure = {"stage": "train", "model": arm.key, "site": None, "round": None, "error": reason, "declined": False}
        return ArmResult(arm, initial, False, 0.0, 0, failures=[failure])
    strategy = build_strategy(arm_config, run_dir)
    started = time.monotonic()
    logger.info("study: training %s on %s", arm.label, ", ".join(arm.trained_on))
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=config.strategy.num_rounds,
        timeout=_round_timeout(config, arm),
        train_config=ConfigRecord({wire.STUDY_ARM: arm.key}),
        evaluate_config=ConfigRecord(),
    )
    rows = run_dir.read_metrics()
    failures = [
        {
            "stage": "train",
            "model": arm.key,
            "site": str(r["site"]),
            "round": int(r["round"]),
            "error": str(r["error"]),
            "declined": bool(r.get("declined", False)),
        }
        for r in rows
        if "error" in r
    ]
    failures += _silent_rounds(arm, rows, config.strategy.num_rounds, _round_timeout(config, arm))
    epsilon = _final_epsilons(rows)
    if arm.kind == "centralized" and epsilon:  # the pooled node's ledger speaks for the pooled data, not a site
        epsilon = {"pooled data": max(epsilon.values())}
    if strategy.central is None:
        epsilon.pop(POOLED_SITE, None)
    return ArmResult(
        arm=arm,
        arrays=final_weights(result.arrays, initial),
        trained=len(result.arrays) > 0,
        seconds=time.monotonic() - started,
        rounds=config.strategy.num_rounds,
        epsilon=epsilon if config.privacy.mode != "none" else {},
        noise_multiplier=strategy.central.noise_multiplier if strategy.central is not None else None,
        failures=failures,
    )
