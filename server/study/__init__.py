"""A cross-site generalization study in one ServerApp run: local-only, centralized, federated and
leave-one-site-out models, then every site scores every model on its own test split (`run_study`)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from flwr.serverapp import Grid

from common.config import AppConfig
from common.file_names import file_safe
from common.privacy.noise_seed import simulation_noise_seed
from server.report import RunDirectory
from server.report.run_folder import server_run_dir
from server.report.study_page import STUDY_FILE
from server.study.arm_cards import write_arm_card
from server.study.arms import ArmResult, StudyArm, plan_arms, train_arm
from server.study.cross_site import SiteEvaluation, evaluate_across_sites
from server.study.nodes import SiteNodes, SubsetGrid, discover_sites
from server.study.results import POOLED, STUDY_SCHEMA, assemble_study

__all__ = [
    "POOLED",
    "STUDY_FILE",
    "STUDY_SCHEMA",
    "ArmResult",
    "SiteEvaluation",
    "SiteNodes",
    "StudyArm",
    "SubsetGrid",
    "run_study",
]

logger = logging.getLogger(__name__)

_DISCOVERY_TIMEOUT_S = 120.0


def run_study(grid: Grid, config: AppConfig) -> Path:
    """Train every model of ``config.study.arms`` on the federation's sites, score all of them at every site,
    write ``study.json``, the models and ``study.html`` into the run folder, and return the folder.

    The sites' replies hold figures only: metrics, score histograms, reliability bins, subgroup figures and paired
    AUC differences (`client.study_scores`).
    """
    from server.report import build_study_report

    started = time.monotonic()
    noise_seed = simulation_noise_seed()
    if config.privacy.central and noise_seed is not None and not config.privacy.secure_mode:
        np.random.seed(noise_seed)  # as `server.server_app.run_federation`: reproducible central noise, simulation only
    folder = RunDirectory(server_run_dir(config.output.run_dir))
    folder.write_config(config.to_nested())
    if config.privacy.local and config.privacy.target_epsilon <= 0:
        logger.warning(
            "study under DP-SGD with a fixed noise multiplier: models trained on more images (the centralized one) "
            "spend less epsilon than a site's, so the arms are compared at different privacy; set "
            "privacy.target_epsilon to give every model the same epsilon"
        )
    expected = config.federation.num_sites + int("centralized" in config.study.arm_names)
    nodes = discover_sites(
        grid, expected=expected, timeout_s=min(config.strategy.round_timeout_s, _DISCOVERY_TIMEOUT_S)
    )
    logger.info("study: sites %s%s", ", ".join(nodes.sites), " and the pooled node" if nodes.pooled else "")
    arms = plan_arms(config.study.arm_names, nodes)
    results = [train_arm(grid, config, arm, folder.path) for arm in arms]
    models_dir = folder.path / "models"
    models_dir.mkdir(exist_ok=True)
    for result in results:
        torch.save(result.arrays.to_torch_state_dict(), models_dir / f"{file_safe(result.arm.key)}.pt")
    models = {result.arm.key: result.arrays for result in results}
    evaluations = (
        evaluate_across_sites(grid, nodes.sites, models, timeout_s=config.strategy.round_timeout_s) if models else {}
    )
    study = assemble_study(
        config,
        list(nodes.sites),
        results,
        evaluations,
        wall_time_s=time.monotonic() - started,
        discovery_failures=nodes.failures,
    )
    path = folder.path / STUDY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(study, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    for result in results:  # a card beside each model: models/<arm>.pt.json (SHA-256) and .md
        write_arm_card(models_dir / f"{file_safe(result.arm.key)}.pt", config, result, study)
    report = build_study_report(folder.path)
    logger.info("study report written to %s", report)
    return folder.path
