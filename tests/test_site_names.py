"""Two nodes reporting one site name keep apart in the records instead of overwriting each other."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common import wire
from common.config import load_config
from server.report import RunDirectory
from server.strategy import build_strategy

pytestmark = pytest.mark.usefixtures("flower_identity")


def _train_reply(node: int, site: str) -> Message:
    query = Message(content=RecordDict({wire.CONFIG_KEY: ConfigRecord()}), message_type="train", dst_node_id=node)
    content = RecordDict(
        {
            wire.ARRAYS_KEY: ArrayRecord({"w": torch.ones(3)}),
            wire.METRICS_KEY: MetricRecord({wire.NUM_EXAMPLES: 4, wire.TRAIN_LOSS: 0.5, wire.EPSILON: 1.0}),
            wire.SITE_KEY: ConfigRecord({wire.SITE_NAME: site}),
        }
    )
    return Message(content=content, reply_to=query)


def test_a_site_name_used_by_two_nodes_is_told_apart(tmp_path: Path) -> None:
    # Prepare
    run_dir = RunDirectory(tmp_path / "run")
    strategy = build_strategy(load_config({"federation.num_sites": 3}), run_dir)
    replies = [_train_reply(11, "st-marys"), _train_reply(12, "st-marys"), _train_reply(13, "general")]
    # Execute: two rounds, so the names stay stable
    strategy.aggregate_train(1, replies)
    strategy.aggregate_train(2, replies)
    # Assert
    rows = [r for r in run_dir.read_metrics() if r["site"] != "pooled"]
    assert {(r["round"], r["site"]) for r in rows} == {
        (rnd, site) for rnd in (1, 2) for site in ("st-marys", "st-marys@node-12", "general")
    }
