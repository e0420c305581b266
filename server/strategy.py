"""FedAvg that also records every site's reply per round (metrics.jsonl, checkpoints) through Flower's hooks."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from common import wire
from common.config import AppConfig
from common.metrics import ScoreHistogram
from server.pooling import pool_evaluate_metrics, pool_train_metrics, reply_histogram
from server.report import POOLED_SITE, RunDirectory

__all__ = ["POOLED_SITE", "RecordingFedAvg", "build_strategy"]

logger = logging.getLogger(__name__)

DECLINED_MARK = "PrivacyBudgetExceeded"

_HISTOGRAM_KEYS = (wire.SCORE_HIST_NEG, wire.SCORE_HIST_POS)


def _reported_site_name(msg: Message) -> str | None:
    if msg.has_error() or not msg.has_content():
        return None
    site = msg.content.get(wire.SITE_KEY)
    return str(site[wire.SITE_NAME]) if site is not None and wire.SITE_NAME in site else None


def _scalars(metrics: MetricRecord) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in _HISTOGRAM_KEYS and not isinstance(v, list)}


def _row(server_round: int, phase: str, site: str, metrics: MetricRecord) -> dict[str, Any]:
    values = _scalars(metrics)
    values["num_examples"] = values.pop(wire.NUM_EXAMPLES, 0)
    return {"round": server_round, "phase": phase, "site": site, "time": time.time(), **values}


class RecordingFedAvg(FedAvg):
    """FedAvg whose aggregation hooks write one row per site and round, plus the pooled row.

    Failed replies (a site whose round raised) are recorded with their reason and left out of the
    aggregate, so one broken hospital never stops the federation.
    """

    def __init__(self, *, run_dir: RunDirectory, save_checkpoints: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("train_metrics_aggr_fn", pool_train_metrics)
        kwargs.setdefault("evaluate_metrics_aggr_fn", pool_evaluate_metrics)
        super().__init__(**kwargs)
        self.run_dir = run_dir
        self.save_checkpoints = save_checkpoints
        self.latest_histograms: dict[str, ScoreHistogram] = {}
        self.latest_round = 0
        self._site_names: dict[int, str] = {}

    def _site_name(self, msg: Message) -> str:
        """The name a node reported; a failed reply carries none, so use the one it sent before."""
        node = msg.metadata.src_node_id
        reported = _reported_site_name(msg)
        if reported is not None:
            self._site_names[node] = reported
        return self._site_names.get(node, f"node-{node}")

    def _record_failures(self, server_round: int, phase: str, replies: list[Message]) -> list[dict[str, Any]]:
        return [
            {
                "round": server_round,
                "phase": phase,
                "site": self._site_name(m),
                "time": time.time(),
                # A site refusing to spend more privacy is doing its job, not failing: mark it apart.
                "declined": DECLINED_MARK in m.error.reason,
                "error": m.error.reason,
            }
            for m in replies
            if m.has_error()
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, pooled = super().aggregate_train(server_round, replies)
        rows = [
            _row(server_round, "train", self._site_name(m), m.content[wire.METRICS_KEY])
            for m in replies
            if not m.has_error()
        ]
        rows += self._record_failures(server_round, "train", replies)
        if pooled is not None:
            rows.append(_row(server_round, "train", POOLED_SITE, pooled))
        self.run_dir.append_metrics(rows)
        if arrays is not None and self.save_checkpoints:
            torch.save(arrays.to_torch_state_dict(), self.run_dir.checkpoints_dir / "global_latest.pt")
        return arrays, pooled

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        pooled = super().aggregate_evaluate(server_round, replies)
        ok = [m for m in replies if not m.has_error()]
        rows = [_row(server_round, "evaluate", self._site_name(m), m.content[wire.METRICS_KEY]) for m in ok]
        rows += self._record_failures(server_round, "evaluate", replies)
        if pooled is not None:
            rows.append(_row(server_round, "evaluate", POOLED_SITE, pooled))
            self.latest_histograms = {self._site_name(m): reply_histogram(m.content) for m in ok}
            self.latest_round = server_round
            auc = float(pooled.get("auc", math.nan))
            logger.info("round %d: pooled test AUC %.3f over %d site(s)", server_round, auc, len(ok))
        self.run_dir.append_metrics(rows)
        return pooled


def build_strategy(config: AppConfig, run_dir: RunDirectory) -> RecordingFedAvg:
    """The configured strategy; every site must answer (min nodes capped by the federation size)."""
    min_nodes = min(config.strategy.min_nodes, config.federation.num_sites)
    return RecordingFedAvg(
        run_dir=run_dir,
        save_checkpoints=config.output.save_checkpoints,
        fraction_train=config.strategy.fraction_train,
        fraction_evaluate=config.strategy.fraction_evaluate,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes if config.strategy.fraction_evaluate > 0 else 0,
        min_available_nodes=min_nodes,
        weighted_by_key=wire.NUM_EXAMPLES,
        arrayrecord_key=wire.ARRAYS_KEY,
        configrecord_key=wire.CONFIG_KEY,
    )
