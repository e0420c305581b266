"""Personalization: FedBN keeps each site's normalization layers at the site; fine-tuning is charged and reported."""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from pathlib import Path
from unittest.mock import Mock

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from torch import nn

import client.client_app as client_app
from client.client_app import app
from client.fine_tune import FINE_TUNED_FIGURES
from client.ledger import PrivacyLedger
from client.local_layers import LOCAL_LAYERS_DIR, secure_sum_arrays
from client.secure_aggregation import secure_update
from client.task import planned_epochs
from common import wire
from common.config import AppConfig, load_config
from common.errors import ConfigError
from common.models import NORM_POLICIES, FrozenBatchNorm2d, available_models, build_model
from common.models.norm_layers import model_norm_state_names, norm_state_names
from common.privacy import compute_epsilon
from deploy.policy import DEFAULT_ALLOWED_METRICS
from server.report import RunDirectory
from server.report.epsilons import final_epsilons
from server.report.personalization_section import render_personalization_section
from server.strategy import build_strategy

pytestmark = pytest.mark.usefixtures("flower_identity")

NO_NORM_LAYERS = {"vgg16", "vgg19", "alexnet"}
NORM_TYPE = {"groupnorm": nn.GroupNorm, "frozen_bn": FrozenBatchNorm2d}
NORM_ENTRIES = {
    "groupnorm": {"weight", "bias"},
    "frozen_bn": {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"},
}


# --- which entries are normalization layers -------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORM_POLICIES)
@pytest.mark.parametrize("name", available_models())
def test_norm_state_names_are_every_entry_of_the_models_norm_layers_and_nothing_else(name: str, norm: str) -> None:
    model = build_model(name, num_classes=2, in_channels=1, norm=norm)
    norm_modules = {prefix for prefix, module in model.named_modules() if isinstance(module, NORM_TYPE[norm])}

    names = norm_state_names(model)

    expected = {key for key in model.state_dict() if key.rpartition(".")[0] in norm_modules}
    assert names == expected
    assert (not names) == (name in NO_NORM_LAYERS)
    assert {key.rpartition(".")[2] for key in names} == (set() if name in NO_NORM_LAYERS else NORM_ENTRIES[norm])
    assert not any(isinstance(model.get_submodule(k.rpartition(".")[0]), (nn.Conv2d, nn.Linear)) for k in names)
    assert model_norm_state_names(name, norm=norm) == names  # the structure-only build a site and the server use


def test_layer_norm_instance_norm_and_batch_norm_count_as_normalization_layers() -> None:
    nested = nn.Sequential(nn.InstanceNorm1d(4, affine=True))
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.BatchNorm1d(4), nested)

    names = norm_state_names(model)

    assert names == {
        "1.weight", "1.bias",
        "2.weight", "2.bias", "2.running_mean", "2.running_var", "2.num_batches_tracked",
        "3.0.weight", "3.0.bias",
    }  # fmt: skip


# --- the site: FedBN through the real ClientApp ---------------------------------------------------------------------


def _config(data_dir: Path, tmp_path: Path, **overrides: object) -> AppConfig:
    values = {
        "federation.data_dir": str(data_dir),
        "federation.num_sites": 2,
        "data.image_size": 32,
        "data.cache_dir": str(tmp_path / "cache"),
        "model.name": "small_cnn",
        "training.batch_size": 8,
        "training.local_epochs": 1,
        "strategy.num_rounds": 2,
        "privacy.mode": "local",
        "privacy.noise_multiplier": 1.0,
        "personalization.fedbn": True,
    }
    values.update(overrides)
    return load_config(values)


def _context(config: AppConfig, partition: int = 0, run_id: int = 1, **node_config: object) -> Context:
    """A simulated node with a fresh node state each call (as a restarted SuperNode has)."""
    node_config.setdefault("ledger", str(Path(config.data.cache_dir).parent / f"ledger_{partition}.json"))
    return Context(
        run_id=run_id,
        node_id=partition + 1,
        node_config={"partition-id": partition, "num-partitions": 2, **node_config},
        state=RecordDict(),
        run_config=config.to_flat(),
    )


def _global(config: AppConfig, norm_value: float | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = build_model(config.model.name, num_classes=2, in_channels=1, norm=config.model.norm).state_dict()
    if norm_value is not None:
        for key in model_norm_state_names(config.model.name, norm=config.model.norm):
            state[key] = torch.full_like(state[key], norm_value)
    return state


def _message(kind: str, state: dict[str, torch.Tensor], server_round: int, run_key: str = "run-a") -> Message:
    config = ConfigRecord({wire.SERVER_ROUND: server_round, **({wire.RUN_KEY: run_key} if run_key else {})})
    content = RecordDict({wire.ARRAYS_KEY: ArrayRecord(state), wire.CONFIG_KEY: config})
    return Message(content=content, message_type=kind, dst_node_id=1)


def _ok(reply: Message) -> Message:
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return reply


def _saved_layers(tmp_path: Path, run: str = "run-a", server_round: int = 1) -> dict[str, torch.Tensor]:
    return torch.load(tmp_path / LOCAL_LAYERS_DIR / f"site-0.run-{run}.round-{server_round}.pt", weights_only=True)


def test_a_fedbn_train_reply_holds_no_normalization_entry(tiny_federation: Path, tmp_path: Path) -> None:
    config = _config(tiny_federation, tmp_path)
    received = _global(config)
    norms = model_norm_state_names("small_cnn", norm="groupnorm")

    reply = _ok(app(_message("train", received, 1), _context(config)))

    sent = set(reply.content[wire.ARRAYS_KEY].keys())
    assert norms and not sent & norms
    assert sent == set(received) - norms
    assert set(_saved_layers(tmp_path)) == norms  # kept on the site's disk, beside its ledger


def test_without_fedbn_the_reply_holds_every_entry(tiny_federation: Path, tmp_path: Path) -> None:
    config = _config(tiny_federation, tmp_path, **{"personalization.fedbn": False})

    reply = _ok(app(_message("train", _global(config), 1), _context(config)))

    assert set(reply.content[wire.ARRAYS_KEY].keys()) == set(_global(config))
    assert not (tmp_path / LOCAL_LAYERS_DIR).exists()


def test_local_layers_survive_a_restart_and_are_the_ones_trained_and_evaluated(
    tiny_federation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tiny_federation, tmp_path)
    norms = model_norm_state_names("small_cnn", norm="groupnorm")
    seen: dict[str, dict[str, torch.Tensor]] = {}
    real_train, real_evaluate = client_app.train_on_site, client_app.evaluate_on_site

    def train_spy(site, cfg, state_dict, *args, **kwargs):
        seen["train"] = {k: v.clone() for k, v in state_dict.items()}
        return real_train(site, cfg, state_dict, *args, **kwargs)

    def evaluate_spy(site, cfg, state_dict, *args, **kwargs):
        seen["evaluate"] = {k: v.clone() for k, v in state_dict.items()}
        return real_evaluate(site, cfg, state_dict, *args, **kwargs)

    monkeypatch.setattr(client_app, "train_on_site", train_spy)
    monkeypatch.setattr(client_app, "evaluate_on_site", evaluate_spy)
    first = _global(config)
    _ok(app(_message("train", first, 1), _context(config)))
    assert all(torch.equal(seen["train"][k], first[k]) for k in first)  # round 1: the received layers
    local = _saved_layers(tmp_path)
    second = _global(config, norm_value=7.0)  # the server's copy of the norms, unlike any the site trained

    _ok(app(_message("train", second, 2), _context(config)))  # a fresh node state: a restarted SuperNode
    after = _saved_layers(tmp_path, server_round=2)
    _ok(app(_message("evaluate", second, 2), _context(config)))

    assert all(torch.equal(seen["train"][k], local[k] if k in norms else second[k]) for k in second)
    assert all(torch.equal(seen["evaluate"][k], after[k] if k in norms else second[k]) for k in second)
    assert not any(torch.equal(after[k], local[k]) or torch.equal(after[k], second[k]) for k in norms)


def test_layers_are_kept_per_run_key_so_a_resumed_run_finds_them(
    tiny_federation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tiny_federation, tmp_path)
    norms = model_norm_state_names("small_cnn", norm="groupnorm")
    seen: dict[str, torch.Tensor] = {}
    real_evaluate = client_app.evaluate_on_site

    def evaluate_spy(site, cfg, state_dict, *args, **kwargs):
        seen.update(state_dict)
        return real_evaluate(site, cfg, state_dict, *args, **kwargs)

    monkeypatch.setattr(client_app, "evaluate_on_site", evaluate_spy)
    _ok(app(_message("train", _global(config), 1, run_key="run-a"), _context(config, run_id=1)))
    _ok(app(_message("train", _global(config), 1, run_key="run-b"), _context(config, run_id=2)))  # another run
    _ok(app(_message("train", _global(config), 1, run_key=""), _context(config, run_id=3)))  # a server without a key

    _ok(app(_message("evaluate", _global(config), 2, run_key="run-a"), _context(config, run_id=4)))  # run-a resumed

    names = {path.name for path in (tmp_path / LOCAL_LAYERS_DIR).glob("*.pt")}
    assert names == {"site-0.run-run-a.round-1.pt", "site-0.run-run-b.round-1.pt", "site-0.run-flwr-3.round-1.pt"}
    assert all(torch.equal(seen[k], _saved_layers(tmp_path, "run-a")[k]) for k in norms)


def test_a_round_sent_again_after_a_resume_starts_from_the_layers_it_started_from(
    tiny_federation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its update is then the one released before, which the ledger does not charge twice."""
    config = _config(tiny_federation, tmp_path, **{"strategy.num_rounds": 4})
    norms = model_norm_state_names("small_cnn", norm="groupnorm")
    replies = [_ok(app(_message("train", _global(config), n), _context(config))) for n in (1, 2, 3)]
    seen: dict[str, torch.Tensor] = {}
    real_train = client_app.train_on_site

    def train_spy(site, cfg, state_dict, *args, **kwargs):
        seen.update(state_dict)
        return real_train(site, cfg, state_dict, *args, **kwargs)

    monkeypatch.setattr(client_app, "train_on_site", train_spy)
    before = _saved_layers(tmp_path, server_round=2)

    again = _ok(app(_message("train", _global(config), 3), _context(config, run_id=2)))  # round 3 again, resumed

    assert all(torch.equal(seen[k], before[k]) for k in norms)
    names = {path.name for path in (tmp_path / LOCAL_LAYERS_DIR).glob("*.pt")}
    assert names == {"site-0.run-run-a.round-2.pt", "site-0.run-run-a.round-3.pt"}  # older rounds removed
    spent = replies[-1].content[wire.METRICS_KEY][wire.EPSILON]
    assert again.content[wire.METRICS_KEY][wire.EPSILON] == pytest.approx(spent, rel=1e-12)  # not charged again


def test_local_layers_that_do_not_fit_the_model_are_refused_in_fixed_words(tiny_federation: Path, tmp_path: Path):
    config = _config(tiny_federation, tmp_path)
    (tmp_path / LOCAL_LAYERS_DIR).mkdir()
    torch.save({"features.1.weight": torch.ones(3)}, tmp_path / LOCAL_LAYERS_DIR / "site-0.run-run-a.round-0.pt")

    reply = app(_message("train", _global(config), 1), _context(config))

    assert reply.has_error() and "local normalization layers (personalization.fedbn) do not fit" in reply.error.reason
    assert str(tmp_path) not in reply.error.reason


# --- the server: replies completed with the sent normalization layers -----------------------------------------------


def _train_reply(query: Message, state: dict[str, torch.Tensor], site: str, n: int) -> Message:
    content = RecordDict(
        {
            wire.ARRAYS_KEY: ArrayRecord(state),
            wire.METRICS_KEY: MetricRecord({wire.NUM_EXAMPLES: n, wire.TRAIN_LOSS: 0.5}),
            wire.SITE_KEY: ConfigRecord({wire.SITE_NAME: site}),
        }
    )
    return Message(content=content, reply_to=query)


def _server_round(
    tmp_path: Path, fedbn: bool, states: list[dict[str, torch.Tensor]], start: dict[str, torch.Tensor], **more: object
):
    config = load_config({"federation.num_sites": 2, "personalization.fedbn": fedbn, **more})
    strategy = build_strategy(config, RunDirectory(tmp_path / f"run-{fedbn}"))
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [1, 2]
    queries = list(strategy.configure_train(1, ArrayRecord(start), ConfigRecord(), grid))
    replies = [
        _train_reply(q, s, f"site-{i}", n) for i, (q, s, n) in enumerate(zip(queries, states, (10, 30), strict=True))
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays


def test_the_server_fills_the_sent_norms_and_averages_the_shared_layers_as_plain_fedavg(tmp_path: Path) -> None:
    start = _global(load_config({}))
    norms = model_norm_state_names("small_cnn", norm="groupnorm")
    trained = [{k: v + (i + 1) * 0.1 if v.is_floating_point() else v for k, v in start.items()} for i in range(2)]
    shared_only = [{k: v for k, v in state.items() if k not in norms} for state in trained]

    fedbn = _server_round(tmp_path, True, shared_only, start)
    plain = _server_round(tmp_path, False, trained, start)

    assert list(fedbn.keys()) == list(start)  # the global model's keys, in its order
    for key in start:
        expected = start[key].numpy() if key in norms else plain[key].numpy()
        np.testing.assert_array_equal(fedbn[key].numpy(), expected, err_msg=key)
    assert not all(np.array_equal(plain[k].numpy(), start[k].numpy()) for k in norms)  # FedAvg would move them


def test_norm_entries_a_reply_carries_are_replaced_by_the_sent_ones(tmp_path: Path) -> None:
    """A SecAgg+ aggregate brings the norms back only up to quantization; a site may send what it should keep."""
    start = _global(load_config({}))
    carried = [{k: v + 0.5 if v.is_floating_point() else v for k, v in start.items()} for _ in range(2)]

    arrays = _server_round(tmp_path, True, carried, start)

    for key in model_norm_state_names("small_cnn", norm="groupnorm"):
        np.testing.assert_array_equal(arrays[key].numpy(), start[key].numpy())
    np.testing.assert_allclose(arrays["fc.weight"].numpy(), start["fc.weight"].numpy() + 0.5, rtol=1e-6)


def test_under_central_dp_the_global_norms_stay_exactly_as_sent(tmp_path: Path) -> None:
    """Flower's wrapper noises every array it releases; the sent norms are put back (post-processing)."""
    start = _global(load_config({}))
    norms = model_norm_state_names("small_cnn", norm="groupnorm")
    shared_only = [{k: v + 0.01 for k, v in start.items() if k not in norms} for _ in range(2)]

    arrays = _server_round(tmp_path, True, shared_only, start, **{"privacy.mode": "central"})

    assert list(arrays.keys()) == list(start)
    for key in start:
        assert np.array_equal(arrays[key].numpy(), start[key].numpy()) == (key in norms), key


def test_under_secagg_a_site_masks_a_zero_update_for_its_local_layers() -> None:
    config = load_config({"personalization.fedbn": True, "privacy.mode": "none"})
    start = _global(config)
    norms = model_norm_state_names("small_cnn", norm="groupnorm")
    names = list(start)
    received = [v.numpy() for v in start.values()]
    reply = ArrayRecord({k: v + 1.0 for k, v in start.items() if k not in norms and v.is_floating_point()})

    arrays = secure_sum_arrays(reply, names, received, config)
    update, weight = secure_update(received, arrays, names, MetricRecord({wire.NUM_EXAMPLES: 5}), config)

    assert weight == 5
    for name, delta in zip(names, update, strict=True):
        if name in norms:
            assert np.all(delta == 0.0), name  # exactly: the received values themselves
        else:
            np.testing.assert_allclose(delta, 1.0, rtol=1e-6, err_msg=name)


def test_a_fedbn_round_through_secagg_plus_keeps_the_norms_local_and_trains_the_rest(
    tiny_federation: Path, tmp_path: Path
) -> None:
    """The real ClientApp on three nodes (site-0 twice, each with its own folder) behind Flower's SecAgg+."""
    from server.secure_aggregation import SecureAggregationGrid
    from tests.test_secure_aggregation import InProcessGrid

    config = _config(
        tiny_federation,
        tmp_path,
        **{"federation.num_sites": 3, "strategy.min_nodes": 3, "strategy.num_rounds": 1},
        **{"strategy.fraction_evaluate": 0.0, "secure_aggregation.enabled": True, "privacy.mode": "none"},
    )
    folders = [tmp_path / f"node-{node}" for node in (1, 2, 3)]
    apps = {}
    for node, (folder, partition) in enumerate(zip(folders, (0, 1, 0), strict=True), start=1):
        folder.mkdir()
        context = _context(config, partition, ledger=str(folder / "ledger.json"))
        apps[node] = (app, Context(1, node, context.node_config, RecordDict(), context.run_config))
    grid = InProcessGrid(apps)
    start = _global(config)
    norms = model_norm_state_names("small_cnn", norm="groupnorm")

    result = build_strategy(config, RunDirectory(tmp_path / "run")).start(
        grid=SecureAggregationGrid(grid, config), initial_arrays=ArrayRecord(start), num_rounds=1, timeout=120
    )

    for key in start:
        same = np.array_equal(result.arrays[key].numpy(), start[key].numpy())
        assert same == (key in norms), key  # the norms exactly as sent, every shared layer trained
    assert all(not len(r) for reply in grid.seen for r in reply.content.array_records.values())
    for folder in folders:
        assert norms == set(torch.load(next((folder / LOCAL_LAYERS_DIR).glob("*.pt")), weights_only=True))


def test_secagg_without_fedbn_is_left_as_it_was() -> None:
    config = load_config({"privacy.mode": "none"})
    reply = ArrayRecord({"w": Array(np.zeros(2, np.float32))})

    assert secure_sum_arrays(reply, ["w", "v"], [np.zeros(2), np.zeros(2)], config) is reply


# --- fine-tuning: charged to the ledger, both models' figures in the reply ------------------------------------------


def _fine_tune_config(data_dir: Path, tmp_path: Path, **overrides: object) -> AppConfig:
    return _config(
        data_dir, tmp_path, **{"personalization.fedbn": False, "personalization.fine_tune_epochs": 1, **overrides}
    )


def test_the_last_round_fine_tunes_charges_the_ledger_and_replies_both_sets(tiny_federation: Path, tmp_path: Path):
    config = _fine_tune_config(tiny_federation, tmp_path)
    ledger = tmp_path / "ledger_0.json"

    early = _ok(app(_message("evaluate", _global(config), 1), _context(config)))
    assert not any(k.startswith(wire.FINE_TUNED_PREFIX) for k in early.content[wire.METRICS_KEY])
    assert not ledger.exists()  # an evaluation before the last round spends nothing

    reply = _ok(app(_message("evaluate", _global(config), 2), _context(config)))

    metrics = reply.content[wire.METRICS_KEY]
    assert {wire.fine_tuned_key(k) for k in FINE_TUNED_FIGURES} <= set(metrics.keys())
    assert "auc" in metrics and wire.fine_tuned_key("auc") in metrics
    assert metrics[wire.FINE_TUNE_DECLINED] == 0 and metrics[wire.FINE_TUNE_EPOCHS] == 1
    history = PrivacyLedger.open(ledger).history
    assert history  # DP-SGD steps recorded, as a training round's are
    spent = compute_epsilon(history, delta=config.privacy.delta)
    assert metrics[wire.fine_tuned_key(wire.EPSILON)] == pytest.approx(spent, rel=1e-9) and spent > 0
    for name in metrics:  # everything in the reply is a name the hospital's gate lets leave by default
        assert any(fnmatchcase(name, p) for p in DEFAULT_ALLOWED_METRICS), name


def test_a_fine_tuning_past_the_sites_ceiling_is_declined_and_spends_nothing(tiny_federation: Path, tmp_path: Path):
    config = _fine_tune_config(tiny_federation, tmp_path)
    first = _ok(app(_message("train", _global(config), 1), _context(config)))
    spent = first.content[wire.METRICS_KEY][wire.EPSILON]
    before = (tmp_path / "ledger_0.json").read_text()

    reply = _ok(app(_message("evaluate", _global(config), 2), _context(config, **{"max-epsilon": spent * 1.01})))

    metrics = reply.content[wire.METRICS_KEY]
    assert metrics[wire.FINE_TUNE_DECLINED] == 1 and math.isnan(metrics[wire.fine_tuned_key("auc")])
    assert not math.isnan(metrics["auc"])  # the global model's figures are still there
    assert metrics[wire.fine_tuned_key(wire.EPSILON)] == pytest.approx(spent, rel=1e-9)
    assert (tmp_path / "ledger_0.json").read_text() == before


def test_a_target_epsilon_covers_the_fine_tuning_epochs() -> None:
    config = load_config({"strategy.num_rounds": 3, "training.local_epochs": 2, "personalization.fine_tune_epochs": 4})

    assert planned_epochs(config) == 3 * 2 + 4


def test_the_final_epsilon_counts_the_fine_tuning_and_the_report_shows_both_models() -> None:
    rows = [
        {"round": 2, "phase": "train", "site": "a", "epsilon": 1.0},
        {"round": 2, "phase": "evaluate", "site": "a", "auc": 0.71, "ft_auc": 0.83, "ft_epsilon": 1.4,
         "ft_declined": 0},
        {"round": 2, "phase": "evaluate", "site": "b", "auc": 0.6, "ft_auc": float("nan"), "ft_epsilon": 0.9,
         "ft_declined": 1},
    ]  # fmt: skip
    results = {row["site"]: row for row in rows if row["phase"] == "evaluate"}

    epsilons = final_epsilons(rows, central=False)
    html = render_personalization_section(results, {"personalization": {"fedbn": True, "fine_tune_epochs": 3}})

    assert epsilons["a"] == pytest.approx(1.4) and epsilons["pooled"] == pytest.approx(1.4)
    assert "0.830" in html and "+0.120" in html and "declined by the site" in html and "FedBN" in html
    assert render_personalization_section(results, {}) != ""  # figures recorded, config lost: still shown
    assert render_personalization_section({"a": {"auc": 0.7}}, {"personalization": {"fedbn": False}}) == ""


# --- configuration -------------------------------------------------------------------------------------------------


def test_personalization_defaults_are_off() -> None:
    config = load_config({})

    assert not config.personalization.fedbn and config.personalization.fine_tune_epochs == 0
    assert not config.personalization.enabled


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"personalization.fine_tune_epochs": -1}, "personalization.fine_tune_epochs"),
        ({"personalization.fedbn": True, "study.enabled": True}, "personalization.fedbn"),
        ({"personalization.fine_tune_epochs": 2, "study.enabled": True}, "personalization.fine_tune_epochs"),
        ({"personalization.fedbn": "yes"}, "personalization.fedbn"),
    ],
)
def test_personalization_that_cannot_work_is_refused_naming_the_key(values: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(values)
