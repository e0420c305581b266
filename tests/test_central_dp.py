"""privacy.mode=central: Flower's server-side clipping wrappers around FedAvg, equal weights, one accountant."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import Mock

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import strategy_utils

from common import wire
from common.config import load_config
from common.errors import ConfigError
from common.privacy import compute_epsilon
from server.central_dp import central_noise_multiplier
from server.report import RunDirectory
from server.strategy import build_strategy

pytestmark = pytest.mark.usefixtures("flower_identity")

SIZE = 20_000  # one array of this many weights: enough elements to measure the noise's spread


def _config(**overrides: object):
    base = {"federation.num_sites": 2, "strategy.min_nodes": 2, "privacy.mode": "central", "privacy.delta": 1e-5}
    return load_config({**base, **overrides})


def _grid(node_ids: tuple[int, ...] = (1, 2)) -> Grid:
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = list(node_ids)
    return grid


def _reply(query: Message, site: str, update: np.ndarray, n: int) -> Message:
    content = RecordDict(
        {
            wire.ARRAYS_KEY: ArrayRecord({"w": torch.from_numpy(update.astype(np.float32))}),
            wire.METRICS_KEY: MetricRecord({wire.NUM_EXAMPLES: n, wire.TRAIN_LOSS: 0.5}),
            wire.SITE_KEY: ConfigRecord({wire.SITE_NAME: site}),
        }
    )
    return Message(content=content, reply_to=query)


def _round(strategy, server_round: int, updates: list[np.ndarray], sizes: list[int], *, fail_second: bool = False):
    """Configure a training round from zero weights, answer it with ``updates``, aggregate."""
    start = ArrayRecord({"w": torch.zeros(SIZE)})
    queries = list(strategy.configure_train(server_round, start, ConfigRecord(), _grid()))
    replies = [_reply(q, f"site-{i}", u, n) for i, (q, u, n) in enumerate(zip(queries, updates, sizes, strict=True))]
    if fail_second:
        replies[1] = Message(Error(code=2, reason="site-1: DicomError: unreadable"), reply_to=queries[1])
    return strategy.aggregate_train(server_round, replies)


def _spike(index: int, value: float) -> np.ndarray:
    update = np.zeros(SIZE)
    update[index] = value
    return update


def test_each_site_update_is_clipped_and_sites_weigh_equally(tmp_path: Path) -> None:
    strategy = build_strategy(_config(**{"privacy.noise_multiplier": 1e-6}), RunDirectory(tmp_path))

    arrays, _ = _round(strategy, 1, [_spike(0, 10.0), _spike(1, 10.0)], sizes=[10, 1000])

    w = arrays["w"].numpy()
    # Norm 10 clipped to 1, then a plain mean: a site's 100x more images buy it no more influence.
    assert w[0] == pytest.approx(0.5, abs=1e-4) and w[1] == pytest.approx(0.5, abs=1e-4)


def test_the_aggregate_carries_gaussian_noise_of_sigma_clip_over_sites(tmp_path: Path) -> None:
    config = _config(**{"privacy.noise_multiplier": 1.0, "privacy.update_clip_norm": 0.2})
    strategy = build_strategy(config, RunDirectory(tmp_path))

    arrays, _ = _round(strategy, 1, [_spike(0, 1e-3), _spike(1, 1e-3)], sizes=[5, 5])

    assert np.std(arrays["w"].numpy()) == pytest.approx(1.0 * 0.2 / 2, rel=0.05)


def test_a_zero_update_skips_the_round_instead_of_crashing_the_server(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path)
    strategy = build_strategy(_config(), run_dir)

    arrays, _ = _round(strategy, 1, [np.zeros(SIZE), _spike(1, 1.0)], sizes=[5, 5])

    assert arrays is None and strategy.central.accountant.num_releases == 0
    assert "zero update" in next(r for r in run_dir.read_metrics() if "error" in r)["error"]


def test_federation_epsilon_is_recorded_and_replays_independently(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path)
    strategy = build_strategy(_config(**{"privacy.noise_multiplier": 2.0}), run_dir)

    for server_round in (1, 2, 3):
        _round(strategy, server_round, [_spike(0, 1.0), _spike(1, 1.0)], sizes=[5, 7])

    rows = [r for r in run_dir.read_metrics() if r["phase"] == "train"]
    pooled = [r["epsilon"] for r in rows if r["site"] == "pooled"]
    assert all("epsilon" not in r for r in rows if r["site"] != "pooled")  # no site claims a guarantee of its own
    assert pooled == sorted(pooled) and pooled[0] > 0
    # Opacus' RDP accountant (another library) on three un-subsampled Gaussian releases of sigma 2.
    assert pooled[-1] == pytest.approx(compute_epsilon([(2.0, 1.0, 3)], delta=1e-5), rel=0.02)
    assert [r["num_examples"] for r in rows if r["site"] == "pooled"] == [12, 12, 12]


def test_a_round_with_a_failed_site_is_not_released_nor_charged(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path)
    strategy = build_strategy(_config(), run_dir)

    arrays, _ = _round(strategy, 1, [_spike(0, 1.0), _spike(1, 1.0)], sizes=[5, 5], fail_second=True)

    assert arrays is None  # the noise was calibrated for two sites: one update alone would be under-protected
    assert strategy.central.accountant.num_releases == 0
    rows = run_dir.read_metrics()
    assert [r["error"] for r in rows if "error" in r] == [
        "site-1: DicomError: unreadable",
        "round skipped: 1 usable training reply; strategy.min_nodes is 2",
    ]
    assert [r for r in rows if r["site"] == "pooled"] == [r for r in rows if r.get("skipped")]  # nothing released


def test_adaptive_clipping_moves_the_clip_norm_and_is_accounted(tmp_path: Path) -> None:
    config = _config(
        **{"privacy.central_clipping": "adaptive", "privacy.noise_multiplier": 0.5, "privacy.update_clip_norm": 0.1}
    )
    strategy = build_strategy(config, RunDirectory(tmp_path))
    np.random.seed(0)  # Flower draws the noisy clipped count from numpy's global generator

    for server_round in (1, 2, 3):
        _round(strategy, server_round, [_spike(0, 5.0), _spike(1, 5.0)], sizes=[5, 5])

    # Every update exceeded the norm, so it must grow towards them (Flower's own rule would shrink it).
    assert strategy.inner.clipping_norm > 0.1
    assert strategy.central.epsilon() == pytest.approx(compute_epsilon([(0.5, 1.0, 3)], delta=1e-5), rel=0.02)


def test_adaptive_noise_is_calibrated_to_the_clip_norm_the_updates_were_clipped_with(tmp_path: Path) -> None:
    config = _config(
        **{"privacy.central_clipping": "adaptive", "privacy.noise_multiplier": 1.0, "privacy.update_clip_norm": 1.0}
    )
    strategy = build_strategy(config, RunDirectory(tmp_path))
    dp = strategy.inner
    np.random.seed(0)  # Flower draws the noisy clipped count and the noise from numpy's global generator

    arrays, _ = _round(strategy, 1, [_spike(0, 1e-6), _spike(1, 1e-6)], sizes=[5, 5])

    assert abs(dp.clipping_norm / 1.0 - 1) > 0.05  # the norm moved, so the two calibrations are told apart
    # Andrew et al.: the noise covers the sensitivity of this round's sum, i.e. the norm used to clip it.
    assert np.std(arrays["w"].numpy()) == pytest.approx(dp.noise_multiplier * 1.0 / 2, rel=0.02)


@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_a_surplus_node_is_left_out_so_the_round_is_released(tmp_path: Path, clipping: str) -> None:
    config = _config(**{"privacy.central_clipping": clipping, "privacy.noise_multiplier": 1.0})
    strategy = build_strategy(config, RunDirectory(tmp_path))
    start = ArrayRecord({"w": torch.zeros(SIZE)})

    queries = list(strategy.configure_train(1, start, ConfigRecord(), _grid((1, 2, 3))))
    replies = [_reply(q, f"site-{i}", _spike(i, 1.0), 5) for i, q in enumerate(queries)]
    arrays, _ = strategy.aggregate_train(1, replies)

    assert len(queries) == 2 and len({q.metadata.dst_node_id for q in queries}) == 2
    assert arrays is not None and strategy.central.epsilon() > 0


@pytest.mark.parametrize("clipping", ["fixed", "adaptive"])
def test_a_missing_node_makes_the_round_wait_instead_of_shrinking(
    tmp_path: Path, clipping: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(**{"federation.num_sites": 3, "privacy.central_clipping": clipping})
    from server import round_quorum

    strategy = build_strategy(config, RunDirectory(tmp_path))
    monkeypatch.setattr(strategy_utils, "sleep", Mock(side_effect=AssertionError("Flower's endless wait")))
    now = [0.0]
    monkeypatch.setattr(round_quorum.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(round_quorum.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))

    # Central DP needs all three planned sites: with two it waits the round's timeout, then skips the round.
    assert list(strategy.configure_train(1, ArrayRecord({"w": torch.zeros(4)}), ConfigRecord(), _grid((1, 2)))) == []
    assert now[0] == pytest.approx(config.strategy.round_timeout_s)
    assert (
        len(list(strategy.configure_train(2, ArrayRecord({"w": torch.zeros(4)}), ConfigRecord(), _grid((1, 2, 3)))))
        == 3
    )


def test_target_epsilon_sets_the_noise_that_spends_it_over_the_planned_rounds() -> None:
    config = _config(**{"privacy.target_epsilon": 4.0, "strategy.num_rounds": 10})

    sigma = central_noise_multiplier(config, num_sampled=2)

    assert compute_epsilon([(sigma, 1.0, 10)], delta=1e-5) == pytest.approx(4.0, rel=0.02)


def test_adaptive_clipping_also_releases_only_complete_rounds(tmp_path: Path) -> None:
    config = _config(**{"privacy.central_clipping": "adaptive", "privacy.noise_multiplier": 0.5})
    strategy = build_strategy(config, RunDirectory(tmp_path))

    arrays, _ = _round(strategy, 1, [_spike(0, 1.0), _spike(1, 1.0)], sizes=[5, 5], fail_second=True)

    assert arrays is None and strategy.central.epsilon() == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.norm": "frozen_bn"}, "'groupnorm' with privacy.mode=central"),
        ({"privacy.accountant": "prv"}, "'rdp' with privacy.mode=central"),
        ({"privacy.noise_multiplier": 0.0}, "> 0 with privacy.mode=central"),
    ],
)
def test_central_mode_rejects_what_it_cannot_protect(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**overrides)
