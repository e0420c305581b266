"""SecAgg+: the secure aggregate is the plain one within the quantization error; no single update reaches the server."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.run import Run

from client.secure_aggregation import secure_aggregation_mod, secure_update
from common import wire
from common.config import AppConfig, load_config
from common.errors import ConfigError, ModelError
from server.report import RunDirectory
from server.secure_aggregation import SecureAggregationGrid
from server.strategy import build_strategy

SHAPES = {"conv.weight": (8, 1, 3, 3), "conv.bias": (8,), "fc.weight": (2, 32), "fc.bias": (2,)}
STEPS_KEY = "norm.num_batches_tracked"
"""An integer buffer (as frozen BatchNorm keeps): its update must come back whole, in its own dtype."""


class InProcessGrid(Grid):
    """A SuperLink in memory: each message goes through Flower's wire format to a node's ClientApp and back.

    ``silent`` holds (stage, node) pairs that do not answer (a node gone mid-round); ``seen`` every reply the
    server side received, to check none of them carries a site's update.
    """

    def __init__(self, apps: dict[int, tuple[ClientApp, Context]], silent: Iterable[tuple[str, int]] = ()) -> None:
        self.apps = apps
        self.silent = set(silent)
        self.seen: list[Message] = []

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        return Run.create_empty(1)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return list(self.apps)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            delivered = message_from_proto(message_to_proto(message))
            delivered.metadata.__dict__["_message_id"] = message.metadata.message_id
            configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
            stage = str(configs[Key.STAGE]) if configs is not None else ""
            node = message.metadata.dst_node_id
            if (stage, node) in self.silent:
                continue
            app, context = self.apps[node]
            replies.append(message_from_proto(message_to_proto(app(delivered, context))))
        self.seen += replies
        return replies


def _config(**overrides: object) -> AppConfig:
    values: dict[str, object] = {
        "federation.num_sites": 3,
        "strategy.min_nodes": 3,
        "strategy.fraction_evaluate": 0.0,
        "privacy.mode": "none",
        "secure_aggregation.enabled": True,
    }
    return load_config(values | {key.replace("__", "."): value for key, value in overrides.items()})


def _global_model(seed: int = 0) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    arrays = {name: Array(rng.normal(0, 0.3, shape).astype(np.float32)) for name, shape in SHAPES.items()}
    return ArrayRecord({**arrays, STEPS_KEY: Array(np.array(40, dtype=np.int64))})


def _site_updates(nodes: Iterable[int], seed: int = 1) -> dict[int, dict[str, np.ndarray]]:
    """What each site's training would add to the received weights (the steps buffer: 5 more steps each)."""
    rng = np.random.default_rng(seed)
    updates = {}
    for node in nodes:
        update = {name: rng.normal(0, 0.05, shape).astype(np.float32) for name, shape in SHAPES.items()}
        updates[node] = {**update, STEPS_KEY: np.array(5, dtype=np.int64)}
    return updates


def _stub_site(update: dict[str, np.ndarray], examples: int, failure: str | None = None) -> ClientApp:
    """A ClientApp whose training adds ``update`` (or fails with ``failure``), behind the real SecAgg+ mod."""
    app = ClientApp()

    @app.train(mods=[secure_aggregation_mod])
    def train(msg: Message, context: Context) -> Message:
        if failure is not None:
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=failure), reply_to=msg)
        received = msg.content[wire.ARRAYS_KEY]
        local = {name: Array(np.asarray(array.numpy() + update[name])) for name, array in received.items()}
        content = RecordDict(
            {
                wire.ARRAYS_KEY: ArrayRecord(local),
                wire.METRICS_KEY: MetricRecord({wire.NUM_EXAMPLES: examples, wire.TRAIN_LOSS: 0.25}),
                wire.SITE_KEY: ConfigRecord({wire.SITE_NAME: f"site-{context.node_id}"}),
            }
        )
        return Message(content, reply_to=msg)

    return app


def _federation(
    config: AppConfig,
    updates: dict[int, dict[str, np.ndarray]],
    examples: dict[int, int],
    failures: dict[int, str] | None = None,
    silent: Iterable[tuple[str, int]] = (),
) -> InProcessGrid:
    apps = {
        node: (
            _stub_site(updates[node], examples[node], (failures or {}).get(node)),
            Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config=config.to_flat()),
        )
        for node in updates
    }
    return InProcessGrid(apps, silent)


def _train_requests(model: ArrayRecord, nodes: Iterable[int], server_round: int = 1) -> list[Message]:
    record = RecordDict({wire.ARRAYS_KEY: model, wire.CONFIG_KEY: ConfigRecord({wire.SERVER_ROUND: server_round})})
    return [Message(content=record, dst_node_id=node, message_type=MessageType.TRAIN) for node in nodes]


def _fedavg() -> FedAvg:
    return FedAvg(weighted_by_key=wire.NUM_EXAMPLES, arrayrecord_key=wire.ARRAYS_KEY)


def _bound(config: AppConfig, updates: list[dict[str, np.ndarray]], examples: list[int], top: float) -> float:
    """How far the secure aggregate may lie from the plain weighted mean, derived from Flower's quantization.

    Site i enters the sum with weight w_i = round(n_i / M x Q) / Q (M = max_weight, Q = quantization_range) and each
    value of w_i x update_i is rounded stochastically to the grid of step 2c / Q (c = clipping_range): an error under
    one step per site. Unmasking divides the sum by W = sum(w_i), so k sites give at most k x 2c / (Q x W). Rounding
    the weights (|w_i - n_i / M| <= 1 / 2Q) moves a weighted mean by at most k x max|update| / (Q x W). The result is
    stored in float32: plus one ulp of the largest weight, ``top``.
    """
    secure = config.secure_aggregation
    q, c, k = secure.quantization_range, secure.clipping_range, len(examples)
    total = sum(round(n / secure.max_weight * q) / q for n in examples)
    largest = max(float(np.abs(array).max()) for update in updates for array in update.values())
    return k * (2 * c + largest) / (q * total) + float(np.spacing(np.float32(top)))


def _plain_mean(model: ArrayRecord, updates: list[dict[str, np.ndarray]], examples: list[int]) -> dict[str, np.ndarray]:
    """The plain FedAvg result in float64: received weights plus the example-weighted mean update."""
    total = sum(examples)
    return {
        name: array.numpy().astype(np.float64)
        + sum(n * u[name].astype(np.float64) for u, n in zip(updates, examples, strict=True)) / total
        for name, array in model.items()
    }


def _max_difference(arrays: ArrayRecord, reference: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(arrays[name].numpy().astype(np.float64) - ref).max()) for name, ref in reference.items())


@pytest.mark.usefixtures("flower_identity")
@pytest.mark.parametrize("num_sites", [3, 5])
def test_the_secure_aggregate_is_the_plain_weighted_mean_within_the_quantization_error(num_sites: int) -> None:
    config = _config(federation__num_sites=num_sites, strategy__min_nodes=num_sites)
    nodes = list(range(11, 11 + num_sites))
    updates = _site_updates(nodes)
    examples = dict(zip(nodes, [120, 45, 300, 80, 200][:num_sites], strict=True))
    grid = _federation(config, updates, examples)
    model = _global_model()

    replies = list(SecureAggregationGrid(grid, config).send_and_receive(_train_requests(model, nodes), timeout=60))
    secure, metrics = _fedavg().aggregate_train(1, replies)

    used = [updates[n] for n in nodes]
    weights = [examples[n] for n in nodes]
    reference = _plain_mean(model, used, weights)
    float_names = list(SHAPES)
    bound = _bound(config, used, weights, max(float(np.abs(reference[n]).max()) for n in float_names))
    difference = _max_difference(secure, {name: reference[name] for name in float_names})
    print(f"{num_sites} sites: max |secagg - plain| = {difference:.3g}, bound {bound:.3g}")
    assert 0 < difference <= bound  # 0 would mean no quantization happened: the update went in clear
    assert secure[STEPS_KEY].numpy() == 45  # the integer buffer's update comes back whole
    plain, _ = _fedavg().aggregate_train(1, _plain_replies(model, updates, examples))
    assert _max_difference(secure, {n: plain[n].numpy().astype(np.float64) for n in float_names}) <= bound + 1e-6
    assert metrics is not None and metrics[wire.TRAIN_LOSS] == pytest.approx(0.25)  # the sites' own metrics
    assert [dict(r.content[wire.SITE_KEY]) for r in replies] == [{wire.SITE_NAME: f"site-{n}"} for n in nodes]


def _plain_replies(
    model: ArrayRecord, updates: dict[int, dict[str, np.ndarray]], examples: dict[int, int]
) -> list[Message]:
    """What the sites would have replied without SecAgg+: their trained weights in clear."""
    replies = []
    for request in _train_requests(model, updates):
        node = request.metadata.dst_node_id
        local = {name: Array(np.asarray(array.numpy() + updates[node][name])) for name, array in model.items()}
        metrics = MetricRecord({wire.NUM_EXAMPLES: examples[node]})
        replies.append(
            Message(RecordDict({wire.ARRAYS_KEY: ArrayRecord(local), wire.METRICS_KEY: metrics}), reply_to=request)
        )
    return replies


@pytest.mark.usefixtures("flower_identity")
def test_no_message_the_server_handles_holds_one_sites_update() -> None:
    config = _config()
    nodes = [11, 12, 13]
    grid = _federation(config, _site_updates(nodes), dict.fromkeys(nodes, 100))

    replies = list(
        SecureAggregationGrid(grid, config).send_and_receive(_train_requests(_global_model(), nodes), timeout=60)
    )

    # What came back from the sites: keys, key shares and masked integer vectors, never an array of weights.
    masked = [
        m
        for m in grid.seen
        if RECORD_KEY_CONFIGS in m.content.config_records
        and Key.MASKED_PARAMETERS in m.content.config_records[RECORD_KEY_CONFIGS]
    ]
    assert len(masked) == 3 and all(not len(r) for m in grid.seen for r in m.content.array_records.values())
    # What the strategy gets: one reply per site, all carrying the same arrays (the aggregate).
    first = replies[0].content[wire.ARRAYS_KEY]
    assert all(all(r.content[wire.ARRAYS_KEY][k].data == first[k].data for k in first) for r in replies)


DECLINE = (
    "site-14: PrivacyBudgetExceeded: declined: this round would breach one of the site's own privacy limits "
    "[ledger-epsilon=4.5 at delta 0.0001]"
)


@pytest.mark.usefixtures("flower_identity")
def test_sites_lost_at_any_step_get_error_replies_and_the_others_are_still_aggregated() -> None:
    # 5 shares, 2 of them unmask a site
    config = _config(federation__num_sites=5, strategy__min_nodes=5, secure_aggregation__reconstruction_threshold=2)
    nodes = [11, 12, 13, 14, 15]
    updates = _site_updates(nodes)
    examples = dict(zip(nodes, [120, 45, 300, 80, 200], strict=True))
    # 13 is gone before the key exchange, 14 declines to train, 15 is gone after sending its masked update.
    grid = _federation(config, updates, examples, failures={14: DECLINE}, silent=[("setup", 13), ("unmask", 15)])
    model = _global_model()

    replies = {
        r.metadata.src_node_id: r
        for r in SecureAggregationGrid(grid, config).send_and_receive(_train_requests(model, nodes), timeout=60)
    }

    assert sorted(replies) == nodes
    assert replies[13].error.reason.startswith("no reply to the secure-aggregation step 'setup' within 600 s")
    assert replies[14].error.reason == DECLINE  # as the site said it: the strategy reads the decline and its epsilon
    summed = [11, 12, 15]  # 15's masks are removed with its neighbours' key shares
    assert not any(replies[n].has_error() for n in summed)
    secure, _ = _fedavg().aggregate_train(1, [replies[n] for n in summed])
    used, weights = [updates[n] for n in summed], [examples[n] for n in summed]
    reference = _plain_mean(model, used, weights)
    bound = _bound(config, used, weights, max(float(np.abs(reference[n]).max()) for n in SHAPES))
    assert _max_difference(secure, {name: reference[name] for name in SHAPES}) <= bound


@pytest.mark.usefixtures("flower_identity")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # Flower divides by the summed weights, 0 here, and we discard it
def test_a_round_every_site_sat_out_leaves_the_global_model_as_it_was() -> None:
    config = _config()
    nodes = [11, 12, 13]
    grid = _federation(config, _site_updates(nodes), dict.fromkeys(nodes, 0))  # 0 examples: sat out, weight 0
    model = _global_model()

    replies = list(SecureAggregationGrid(grid, config).send_and_receive(_train_requests(model, nodes), timeout=60))

    assert not any(r.has_error() for r in replies)
    assert all(r.content[wire.ARRAYS_KEY][k].data == model[k].data for r in replies for k in model)


@pytest.mark.usefixtures("flower_identity")
def test_too_few_sites_left_to_unmask_is_an_error_reply_for_every_site() -> None:
    config = _config(federation__num_sites=4, strategy__min_nodes=4)  # 4 shares, 3 unmask a site
    nodes = [11, 12, 13, 14]
    grid = _federation(
        config, _site_updates(nodes), dict.fromkeys(nodes, 50), silent=[("setup", 13), ("collect_masked_vectors", 14)]
    )

    replies = list(
        SecureAggregationGrid(grid, config).send_and_receive(_train_requests(_global_model(), nodes), timeout=60)
    )

    assert all(r.has_error() for r in replies)
    reasons = {r.metadata.src_node_id: r.error.reason for r in replies}
    assert reasons[11].startswith("secure aggregation halted") and reasons[12] == reasons[11]
    assert "'collect_masked_vectors' within 60 s" in reasons[14]  # training waits the round's timeout


@pytest.mark.usefixtures("flower_identity")
def test_the_recording_strategy_runs_unchanged_on_the_secure_grid(tmp_path: Path) -> None:
    config = _config(federation__num_sites=4, strategy__min_nodes=3)
    nodes = [11, 12, 13, 14]
    grid = _federation(config, _site_updates(nodes), dict.fromkeys(nodes, 60), failures={14: DECLINE})
    run_dir = RunDirectory(tmp_path / "run")
    strategy = build_strategy(config, run_dir)

    result = strategy.start(
        grid=SecureAggregationGrid(grid, config), initial_arrays=_global_model(), num_rounds=2, timeout=60
    )

    rows = [r for r in run_dir.read_metrics() if r["phase"] == "train"]
    trained = {(r["round"], r["site"]) for r in rows if "error" not in r}
    assert trained == {(rnd, site) for rnd in (1, 2) for site in ("site-11", "site-12", "site-13", "pooled")}
    declined = [r for r in rows if r.get("declined")]
    assert [(r["round"], r["epsilon"]) for r in declined] == [(1, 4.5), (2, 4.5)]
    # Two rounds of 5 steps on the initial 40 (FedAvg hands integer buffers back as float64, so round 2 quantizes it).
    assert result.arrays[STEPS_KEY].numpy() == pytest.approx(50, abs=1e-3)


@pytest.mark.usefixtures("flower_identity")
def test_central_dp_noises_the_secure_aggregate_of_updates_each_site_clipped(tmp_path: Path) -> None:
    config = _config(privacy__mode="central", privacy__noise_multiplier=0.5, privacy__update_clip_norm=0.1)
    nodes = [11, 12, 13]
    grid = _federation(config, _site_updates(nodes), dict.fromkeys(nodes, 60))
    run_dir = RunDirectory(tmp_path / "run")
    strategy = build_strategy(config, run_dir)
    model = _global_model()

    result = strategy.start(grid=SecureAggregationGrid(grid, config), initial_arrays=model, num_rounds=1, timeout=60)

    pooled = [r for r in run_dir.read_metrics() if r["site"] == "pooled" and r["phase"] == "train"]
    assert len(pooled) == 1 and pooled[0]["epsilon"] > 0  # released and accounted by Flower's wrapper
    moved = np.sqrt(sum(np.sum((result.arrays[n].numpy() - model[n].numpy()) ** 2.0) for n in SHAPES))
    noise = 0.5 * 0.1 / 3 * np.sqrt(sum(np.prod(shape) for shape in SHAPES.values()))
    assert moved < 0.1 + 3 * noise  # each ~0.9-norm update was clipped to 0.1 on its site before masking


@pytest.mark.usefixtures("flower_identity")
def test_a_site_refuses_a_plain_train_request_when_the_run_asks_for_secure_aggregation() -> None:
    config = _config()
    app = _stub_site(_site_updates([1])[1], 10)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=config.to_flat())
    plain = _train_requests(_global_model(), [1])[0]

    reply = app(plain, context)

    assert reply.has_error() and "refused a plain train request" in reply.error.reason
    opened = Context(
        run_id=1,
        node_id=1,
        node_config={},
        state=RecordDict(),
        run_config=_config(secure_aggregation__enabled=False, federation__num_sites=1).to_flat(),
    )
    assert not app(plain, opened).has_error()  # without SecAgg+ the mod lets plain training through


def _trained(update: dict[str, np.ndarray], received: list[np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.asarray(r + update[name])) for name, r in zip(update, received, strict=True)})


def test_the_update_a_site_masks_is_clipped_under_central_dp_and_weighs_what_fedavg_would() -> None:
    received = [np.ones(4, np.float32), np.zeros((2, 2), np.float32)]
    update = {"a": np.full(4, 3.0, np.float32), "b": np.full((2, 2), 4.0, np.float32)}  # L2 norm 10
    names, local = list(update), _trained(update, received)
    metrics = MetricRecord({wire.NUM_EXAMPLES: 70})
    central = _config(privacy__mode="central", privacy__update_clip_norm=2.0)

    clipped, weight = secure_update(received, local, names, metrics, central)
    plain, plain_weight = secure_update(received, local, names, metrics, _config())
    _, idle = secure_update(received, local, names, MetricRecord({wire.NUM_EXAMPLES: 0}), _config())

    assert weight == 1 and np.sqrt(sum(np.sum(a**2) for a in clipped)) == pytest.approx(2.0)
    assert plain_weight == 70 and np.allclose(plain[1], 4.0) and plain[1].dtype == np.float64
    assert idle == 0  # a site that sat the round out adds nothing to the sum


def test_a_non_finite_update_is_refused_on_the_site() -> None:
    received = [np.zeros(3, np.float32)]
    local = ArrayRecord({"a": Array(np.array([0.0, np.nan, 1.0], np.float32))})

    with pytest.raises(ModelError, match="NaN or inf"):
        secure_update(received, local, ["a"], MetricRecord({wire.NUM_EXAMPLES: 5}), _config())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"secure_aggregation.num_shares": 2},
            r"'secure_aggregation.num_shares' = 2.0 is invalid: it must be a fraction",
        ),
        ({"secure_aggregation.num_shares": 1.5}, r"'secure_aggregation.num_shares' = 1.5 is invalid"),
        (
            {"secure_aggregation.reconstruction_threshold": 0},
            r"'secure_aggregation.reconstruction_threshold' = 0.0 is invalid",
        ),
        (
            {"secure_aggregation.num_shares": 3, "secure_aggregation.reconstruction_threshold": 3},
            r"'secure_aggregation.reconstruction_threshold' = 3.0 is invalid: it must be smaller than "
            r"secure_aggregation.num_shares = 3",
        ),
        (
            {"secure_aggregation.clipping_range": 0},
            r"'secure_aggregation.clipping_range' = 0.0 is invalid: it must be > 0",
        ),
        (
            {"secure_aggregation.quantization_range": 2**32},
            r"'secure_aggregation.quantization_range' = 4294967296 is invalid",
        ),
        ({"secure_aggregation.timeout_s": 0}, r"'secure_aggregation.timeout_s' = 0.0 is invalid: it must be > 0"),
        (
            {"federation.num_sites": 2, "strategy.min_nodes": 2},
            r"'secure_aggregation.enabled' = True is invalid: it must be false unless at least 3 sites train each "
            r"round .* give 2\)",
        ),
        ({"strategy.fraction_train": 0.5, "strategy.min_nodes": 1, "federation.num_sites": 5}, r"give 2\)"),
        (
            {"study.enabled": True},
            r"'secure_aggregation.enabled' = True is invalid: it must be false with study.enabled = true",
        ),
        (
            {"privacy.mode": "central", "privacy.central_clipping": "adaptive"},
            r"'privacy.central_clipping' = 'adaptive' is invalid: it must be 'fixed' with secure_aggregation.enabled",
        ),
        (
            {"secure_aggregation.num_shares": 4},
            r"'secure_aggregation.num_shares' = 4.0 is invalid: it must be <= the 3 sites",
        ),
        (
            {"secure_aggregation.quantization_range": 2**31},
            r"'secure_aggregation.quantization_range' = 2147483648 is invalid: it must be < 4294967296 / 3",
        ),
    ],
)
def test_secure_aggregation_settings_that_cannot_work_are_refused_naming_the_key(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(
            {
                "federation.num_sites": 3,
                "strategy.min_nodes": 3,
                "secure_aggregation.enabled": True,
                "privacy.mode": "none",
            }
            | overrides
        )


def test_secure_aggregation_is_off_by_default_and_takes_central_dp_with_fixed_clipping() -> None:
    assert AppConfig().secure_aggregation.enabled is False
    assert load_config({"federation.num_sites": 2}).secure_aggregation.enabled is False  # two sites train in clear
    central = _config(privacy__mode="central", privacy__central_clipping="fixed")
    assert central.secure_aggregation.enabled and central.privacy.central


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny phantom hospitals (SecAgg+ needs three); a fresh folder, so fresh privacy ledgers."""
    from simulations.phantoms import generate_federation

    root = tmp_path_factory.mktemp("secagg_phantoms")
    generate_federation(root, num_sites=3, images_per_site=24, seed=7, matrix_scale=0.25)
    return root


def test_a_federation_with_secure_aggregation_and_local_dp_sgd_runs_end_to_end(
    three_sites: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from simulations.launcher import run_simulation

    config = load_config(
        {
            "federation.num_sites": 3,
            "federation.data_dir": str(three_sites),
            "data.image_size": 32,
            "training.batch_size": 8,
            "training.local_epochs": 1,
            "privacy.mode": "local",
            "privacy.noise_multiplier": 1.0,
            "strategy.num_rounds": 2,
            "strategy.min_nodes": 3,
            "secure_aggregation.enabled": True,
        }
    )
    lines: list[str] = []

    run_dir = run_simulation(config, tmp_path_factory.mktemp("secagg_run"), on_output=lines.append)

    rows = RunDirectory(run_dir).read_metrics()
    assert not [r for r in rows if "error" in r]
    train = {(r["round"], r["site"]) for r in rows if r["phase"] == "train"}
    assert train == {(rnd, site) for rnd in (1, 2) for site in ("site-0", "site-1", "site-2", "pooled")}
    epsilons = [
        r["epsilon"] for r in sorted(rows, key=lambda r: r["round"]) if r["site"] == "site-0" and r["phase"] == "train"
    ]
    assert 0 < epsilons[0] < epsilons[1]  # the same DP-SGD and ledger as a plain round
    # Both rounds went through SecAgg+ (the pooled train rows above say both were aggregated). Flower logs a line once
    # or twice depending on which handlers its processes set up, so its lines are counted as at least one a round.
    assert sum("Secure aggregation completed" in line for line in lines) >= 2
    assert not any("Secure aggregation halted" in line for line in lines)
    assert (run_dir / "global_model.pt").is_file()


@pytest.mark.usefixtures("flower_identity")
@pytest.mark.parametrize(
    ("active", "dead", "refused"), [([2, 3], [4], False), ([2, 3], [3, 4], True), ([2], [1], True)]
)
def test_an_unmask_request_that_would_expose_one_update_is_refused(active: list, dead: list, refused: bool) -> None:
    """A server naming a node both active and dead (or this node, 1, dead) would collect both of its secrets."""
    from flwr.common.secure_aggregation.secaggplus_constants import Stage

    from client.secure_aggregation import _check_unmask_request

    configs = ConfigRecord({Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: active, Key.DEAD_NODE_ID_LIST: dead})
    msg = Message(RecordDict({RECORD_KEY_CONFIGS: configs}), dst_node_id=1, message_type=MessageType.TRAIN)
    if refused:
        with pytest.raises(ConfigError, match="both active and dead, or this node dead"):
            _check_unmask_request(msg)
    else:
        _check_unmask_request(msg)
