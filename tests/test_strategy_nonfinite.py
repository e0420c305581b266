"""A site reply whose weights hold NaN or inf is a failed site: recorded, and kept out of the global model."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import Mock

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from common import wire
from common.config import load_config
from server.report import RunDirectory
from server.strategy import build_strategy

pytestmark = pytest.mark.usefixtures("flower_identity")


def _reply(query: Message, site: str, weights: list[float]) -> Message:
    content = RecordDict(
        {
            wire.ARRAYS_KEY: ArrayRecord({"w": torch.tensor(weights, dtype=torch.float32)}),
            wire.METRICS_KEY: MetricRecord({wire.NUM_EXAMPLES: 10, wire.TRAIN_LOSS: 0.5}),
            wire.SITE_KEY: ConfigRecord({wire.SITE_NAME: site}),
        }
    )
    return Message(content=content, reply_to=query)


def _round(mode: str, bad: float, run_dir: RunDirectory):
    """Three sites answer round 1 from zero weights; site-1 sends ``bad`` in its first weight."""
    config = load_config(
        {"federation.num_sites": 3, "strategy.min_nodes": 2, "privacy.mode": mode, "privacy.noise_multiplier": 1.0}
    )
    strategy = build_strategy(config, run_dir)
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2, 3]
    queries = list(strategy.configure_train(1, ArrayRecord({"w": torch.zeros(4)}), ConfigRecord(), grid))
    weights = [[0.1] * 4, [bad, 0.0, 0.0, 0.0], [0.3] * 4]
    replies = [_reply(q, f"site-{i}", w) for i, (q, w) in enumerate(zip(queries, weights, strict=True))]
    arrays, _ = strategy.aggregate_train(1, replies)
    return strategy, arrays


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_local_dp_aggregates_the_finite_sites_and_records_the_other(tmp_path: Path, bad: float) -> None:
    run_dir = RunDirectory(tmp_path)

    _, arrays = _round("local", bad, run_dir)

    w = arrays["w"].numpy()
    assert np.all(np.isfinite(w)) and w == pytest.approx([0.2] * 4)  # the mean of site-0 and site-2 only
    failures = [r for r in run_dir.read_metrics() if "error" in r]
    assert [r["site"] for r in failures] == ["site-1"] and not failures[0]["declined"]
    assert "site-1" in failures[0]["error"] and "non-finite weights" in failures[0]["error"]
    assert not any(r["site"] == "site-1" and "error" not in r for r in run_dir.read_metrics())


def test_central_dp_keeps_the_global_model_and_charges_nothing(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path)

    strategy, arrays = _round("central", np.nan, run_dir)

    # The noise is calibrated for three sites: two alone would be under-protected, so nothing is released.
    assert arrays is None and strategy.central.accountant.num_releases == 0
    failures = [r for r in run_dir.read_metrics() if "error" in r and not r.get("skipped")]
    assert [r["site"] for r in failures] == ["site-1"] and "non-finite weights" in failures[0]["error"]
