"""The federation's Flower ServerApp: FedAvg over the sites (central DP optional), then the run directory and report;
or, with ``study.enabled``, a cross-site generalization study (`server.study`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from common.config import AppConfig, load_config
from common.privacy.noise_seed import simulation_noise_seed
from server.model_arrays import final_weights, initial_arrays
from server.report import RunDirectory, build_report
from server.report.run_folder import server_run_dir
from server.secure_aggregation import SecureAggregationGrid
from server.strategy import build_strategy
from server.summary import build_summary

__all__ = ["app", "final_weights", "initial_arrays", "run_federation"]

logger = logging.getLogger(__name__)

app = ServerApp()


def run_federation(grid: Grid, config: AppConfig) -> Path:
    """Run all rounds, then write final weights, ROC data, summary and report; return the run directory.

    The run writes into a folder of its own (`server_run_dir`): the one ``fedmammo simulate`` claimed for it,
    else a fresh one claimed from ``output.run_dir``, so runs given one folder (``flwr run .`` with the
    default ``~/.fedmammo/runs/latest``) never mix their rows.
    """
    run_dir = RunDirectory(server_run_dir(config.output.run_dir))
    run_dir.write_config(config.to_nested())
    strategy = build_strategy(config, run_dir)
    noise_seed = simulation_noise_seed()
    if strategy.central is not None and noise_seed is not None and not config.privacy.secure_mode:
        # Flower's DP wrappers draw their noise and noisy counts from numpy's global generator. Only a
        # local simulation seeds it (for reproducibility), through its SuperLink's environment: a seed
        # in the run config would reach every site, which could then subtract the noise.
        np.random.seed(noise_seed)
    if config.secure_aggregation.enabled:  # training through SecAgg+: the strategy sees only the aggregate
        grid = SecureAggregationGrid(grid, config)
    started = time.monotonic()
    initial = initial_arrays(config)
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=config.strategy.num_rounds,
        timeout=config.strategy.round_timeout_s,
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
    )
    duration = time.monotonic() - started
    torch.save(final_weights(result.arrays, initial).to_torch_state_dict(), run_dir.path / "global_model.pt")
    if strategy.latest_histograms:
        run_dir.write_roc(strategy.latest_round, strategy.latest_histograms, strategy.latest_class_histograms)
    summary = build_summary(config, run_dir.read_metrics(), duration_s=duration)
    if strategy.central is not None:  # the noise the server used (derived when target_epsilon is set)
        summary["privacy"]["noise_multiplier"] = strategy.central.noise_multiplier
    run_dir.write_summary(summary)
    report = build_report(run_dir.path)
    logger.info("report written to %s", report)
    return run_dir.path


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: read the run config once into the typed schema, then run."""
    config = load_config(context.run_config)
    if config.study.enabled:
        from server.study import run_study

        run_study(grid, config)
    else:
        run_federation(grid, config)
