"""The federation's Flower ServerApp: FedAvg over the sites (central DP optional), then the run directory and report;
or, with ``study.enabled``, a cross-site generalization study (`server.study`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from common import wire
from common.config import AppConfig, load_config
from common.privacy.noise_seed import simulation_noise_seed
from server.model_arrays import final_weights, initial_arrays
from server.model_card import federation_card_fields, write_model_card
from server.report import RunDirectory, build_report
from server.report.run_folder import server_run_dir
from server.resume import checkpointed_rounds, resume_point
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
    default ``~/.fedmammo/runs/latest``) never mix their rows. With ``output.resume_from`` it continues that
    stopped run in its folder from its last checkpoint (`server.resume`).
    """
    resumed = resume_point(config) if config.output.resume_from else None
    run_dir = resumed[0] if resumed is not None else RunDirectory(server_run_dir(config.output.run_dir))
    run_dir.write_config(config.to_nested())
    strategy = build_strategy(config, run_dir)
    noise_seed = simulation_noise_seed()
    seeded = noise_seed is not None and not config.privacy.secure_mode  # a checkpoint then holds the random state
    if strategy.central is not None and seeded:
        # Flower's DP wrappers draw their noise and noisy counts from numpy's global generator. Only a
        # local simulation seeds it (for reproducibility), through its SuperLink's environment: a seed
        # in the run config would reach every site, which could then subtract the noise.
        np.random.seed(noise_seed)
    if config.secure_aggregation.enabled:  # training through SecAgg+: the strategy sees only the aggregate
        grid = SecureAggregationGrid(grid, config)
    initial = initial_arrays(config)
    checkpoint = resumed[1] if resumed is not None else None
    rounds = checkpointed_rounds(strategy, run_dir, config, initial, seeded=seeded, resumed=checkpoint)
    rounds.start(
        grid=grid,
        initial_arrays=rounds.arrays,
        num_rounds=rounds.rounds_left(config.strategy.num_rounds),
        timeout=config.strategy.round_timeout_s,
        # The run key (kept by the checkpoint) lets a site's ledger tell a round it trained before the run stopped,
        # and a FedBN site find its own normalization layers again after a resume (`client.local_layers`).
        train_config=ConfigRecord({wire.RUN_KEY: rounds.run_key}),
        evaluate_config=ConfigRecord({wire.RUN_KEY: rounds.run_key}),
    )
    duration = rounds.elapsed_s()
    torch.save(final_weights(rounds.released_arrays, initial).to_torch_state_dict(), run_dir.path / "global_model.pt")
    if strategy.latest_histograms:
        run_dir.write_roc(strategy.latest_round, strategy.latest_histograms, strategy.latest_class_histograms)
    summary = build_summary(config, run_dir.read_metrics(), duration_s=duration)
    if strategy.central is not None:  # the noise the server used (derived when target_epsilon is set)
        summary["privacy"]["noise_multiplier"] = strategy.central.noise_multiplier
    run_dir.write_summary(summary)
    card = federation_card_fields(config, summary, run_dir.read_metrics(), trained=len(rounds.released_arrays) > 0)
    write_model_card(run_dir.path / "global_model.pt", card)  # global_model.pt.json (SHA-256) and .md beside it
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
