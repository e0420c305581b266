"""server.strategies: each strategy.name is Flower's own class, whose aggregate matches the formula done by hand."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from unittest.mock import Mock

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
)

from common import wire
from common.config import AppConfig, StrategyConfig, load_config
from common.errors import ConfigError
from server.central_dp import ExactSampleFedAvg
from server.report import RunDirectory
from server.strategies import EXACT_SAMPLE_CLASSES, STRATEGY_CLASSES, ExactSampleFedProx
from server.strategy import build_strategy

pytestmark = pytest.mark.usefixtures("flower_identity")

Arrays = dict[str, np.ndarray]

START: Arrays = {"w": np.array([1.0, -2.0, 0.5]), "b": np.array([0.25, 3.0])}
"""The global model the first round starts from: two tiny float64 arrays."""

ROUNDS: list[tuple[list[Arrays], list[int]]] = [
    (
        [
            {"w": np.array([1.5, -1.0, 0.5]), "b": np.array([0.0, 3.5])},
            {"w": np.array([0.5, -2.5, 1.0]), "b": np.array([1.0, 2.0])},
            {"w": np.array([2.0, -2.0, 0.0]), "b": np.array([0.5, 4.0])},
        ],
        [10, 30, 60],
    ),
    (
        [
            {"w": np.array([0.0, 1.0, 2.0]), "b": np.array([-1.0, 0.0])},
            {"w": np.array([3.0, -3.0, 1.0]), "b": np.array([2.0, 1.0])},
            {"w": np.array([1.0, 0.0, -1.0]), "b": np.array([0.5, 5.0])},
        ],
        [40, 40, 20],
    ),
]
"""Each round: what three sites send back (whatever the model they received) and their example counts."""

PARAMETERS: dict[str, dict[str, float]] = {
    "fedavg": {},
    "fedprox": {"proximal_mu": 0.3},
    "fedavgm": {"server_learning_rate": 0.7, "server_momentum": 0.5},
    "fedadam": {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 0.01},
    "fedyogi": {"eta": 0.02, "beta_1": 0.7, "beta_2": 0.9, "tau": 0.05},
    "fedadagrad": {"eta": 0.3, "tau": 0.02},
}
"""Values other than the defaults, so a parameter that did not reach Flower's class would show."""


def _config(name: str, **overrides: object) -> AppConfig:
    base = {"federation.num_sites": 3, "strategy.min_nodes": 3, "privacy.mode": "none", "strategy.name": name}
    return load_config({**base, **{f"strategy.{k}": v for k, v in PARAMETERS[name].items()}, **overrides})


def _grid(nodes: int = 3) -> Grid:
    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = list(range(1, nodes + 1))
    return grid


def _record(arrays: Arrays) -> ArrayRecord:
    return ArrayRecord({key: Array(np.asarray(value)) for key, value in arrays.items()})


def _reply(query: Message, arrays: Arrays, examples: int) -> Message:
    content = RecordDict(
        {
            wire.ARRAYS_KEY: _record(arrays),
            wire.METRICS_KEY: MetricRecord({wire.NUM_EXAMPLES: examples, wire.TRAIN_LOSS: 0.5}),
            wire.SITE_KEY: ConfigRecord({wire.SITE_NAME: f"site-{query.metadata.dst_node_id}"}),
        }
    )
    return Message(content=content, reply_to=query)


def _run(strategy, rounds: list[tuple[list[Arrays], list[int]]]) -> tuple[list[Arrays], list[Message]]:
    """Configure each round from the last global model, answer it with the round's arrays, aggregate."""
    current, results, queries = _record(START), [], []
    for server_round, (sent_back, examples) in enumerate(rounds, start=1):
        queries = list(strategy.configure_train(server_round, current, ConfigRecord(), _grid()))
        replies = [_reply(q, a, n) for q, a, n in zip(queries, sent_back, examples, strict=True)]
        current, _ = strategy.aggregate_train(server_round, replies)
        results.append({key: current[key].numpy() for key in START})
    return results, queries


def _mean(sent_back: list[Arrays], examples: list[int]) -> Arrays:
    total = sum(examples)
    return {key: sum(n / total * arrays[key] for arrays, n in zip(sent_back, examples, strict=True)) for key in START}


# The formulas by hand, per array, one round at a time: (global before, sites' weighted mean, state) -> global after.
Step = Callable[[np.ndarray, np.ndarray, dict, int], np.ndarray]


def _fedavg(x: np.ndarray, mean: np.ndarray, state: dict, t: int) -> np.ndarray:
    return mean


def _fedavgm(x: np.ndarray, mean: np.ndarray, state: dict, t: int) -> np.ndarray:
    p = PARAMETERS["fedavgm"]
    gradient = x - mean  # the pseudo-gradient; the first round's is the momentum itself
    state["v"] = gradient if t == 1 else p["server_momentum"] * state["v"] + gradient
    return x - p["server_learning_rate"] * state["v"]


def _fedadam(x: np.ndarray, mean: np.ndarray, state: dict, t: int) -> np.ndarray:
    p = PARAMETERS["fedadam"]
    delta = mean - x
    state["m"] = p["beta_1"] * state.get("m", 0.0) + (1 - p["beta_1"]) * delta
    state["v"] = p["beta_2"] * state.get("v", 0.0) + (1 - p["beta_2"]) * delta**2
    # Flower's bias correction counts from round + 1 (Kingma & Ba's would be 1 - beta^t).
    eta = p["eta"] * np.sqrt(1 - p["beta_2"] ** (t + 1)) / (1 - p["beta_1"] ** (t + 1))
    return x + eta * state["m"] / (np.sqrt(state["v"]) + p["tau"])


def _fedyogi(x: np.ndarray, mean: np.ndarray, state: dict, t: int) -> np.ndarray:
    p = PARAMETERS["fedyogi"]
    delta = mean - x
    state["m"] = p["beta_1"] * state.get("m", 0.0) + (1 - p["beta_1"]) * delta
    v = state.get("v", np.zeros_like(x))
    state["v"] = v - (1 - p["beta_2"]) * delta**2 * np.sign(v - delta**2)
    return x + p["eta"] * state["m"] / (np.sqrt(state["v"]) + p["tau"])


def _fedadagrad(x: np.ndarray, mean: np.ndarray, state: dict, t: int) -> np.ndarray:
    p = PARAMETERS["fedadagrad"]
    delta = mean - x  # no momentum: the first moment is this round's update
    state["v"] = state.get("v", 0.0) + delta**2
    return x + p["eta"] * delta / (np.sqrt(state["v"]) + p["tau"])


BY_HAND: dict[str, Step] = {
    "fedavg": _fedavg,
    "fedprox": _fedavg,  # FedProx differs on the sites only
    "fedavgm": _fedavgm,
    "fedadam": _fedadam,
    "fedyogi": _fedyogi,
    "fedadagrad": _fedadagrad,
}


def _by_hand(step: Step, rounds: list[tuple[list[Arrays], list[int]]]) -> list[Arrays]:
    current, states, results = dict(START), {key: {} for key in START}, []
    for t, (sent_back, examples) in enumerate(rounds, start=1):
        mean = _mean(sent_back, examples)
        current = {key: step(current[key], mean[key], states[key], t) for key in START}
        results.append(current)
    return results


@pytest.mark.parametrize("name", StrategyConfig.NAMES)
def test_two_rounds_aggregate_as_the_formula_by_hand(name: str, tmp_path: Path) -> None:
    # Prepare
    strategy = build_strategy(_config(name), RunDirectory(tmp_path))

    # Execute
    results, _ = _run(strategy, ROUNDS)

    # Assert
    assert type(strategy.inner) is STRATEGY_CLASSES[name]
    for got, expected in zip(results, _by_hand(BY_HAND[name], ROUNDS), strict=True):
        for key in START:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, atol=1e-12)


def test_the_server_optimizers_differ_from_fedavg_on_these_arrays() -> None:
    """Guards the test above: on these arrays every formula gives its own answer (no accidental coincidence)."""
    finals = {name: _by_hand(step, ROUNDS)[-1]["w"] for name, step in BY_HAND.items() if name != "fedprox"}

    for name, final in finals.items():
        others = [other for other in finals if other != name]
        assert all(not np.allclose(final, finals[other]) for other in others), name


@pytest.mark.parametrize("name", StrategyConfig.NAMES)
def test_a_float32_model_stays_float32(name: str, tmp_path: Path) -> None:
    """Flower's FedAdam alone would return float64 (its step size is a NumPy float64): twice the bytes each round."""
    # Prepare
    strategy = build_strategy(_config(name), RunDirectory(tmp_path))
    start = ArrayRecord({key: Array(value.astype(np.float32)) for key, value in START.items()})
    queries = list(strategy.configure_train(1, start, ConfigRecord(), _grid()))
    sent_back = [{key: value.astype(np.float32) for key, value in arrays.items()} for arrays in ROUNDS[0][0]]

    # Execute
    arrays, _ = strategy.aggregate_train(1, [_reply(q, a, 10) for q, a in zip(queries, sent_back, strict=True)])

    # Assert
    assert {arrays[key].numpy().dtype for key in START} == {np.dtype(np.float32)}


def test_fedprox_sends_its_mu_in_every_train_request(tmp_path: Path) -> None:
    strategy = build_strategy(_config("fedprox"), RunDirectory(tmp_path))

    _, queries = _run(strategy, ROUNDS)

    assert [float(q.content[wire.CONFIG_KEY][wire.PROXIMAL_MU]) for q in queries] == [0.3, 0.3, 0.3]


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_secure_aggregation_replies_give_the_aggregate_to_the_server_optimizer(name: str, tmp_path: Path) -> None:
    """Under SecAgg+ each site's reply carries the same securely summed model (`server.secure_aggregation`): the
    weighted mean of identical arrays is that model, so the server optimizer steps from it as from FedAvg's mean."""
    # Prepare
    secure_rounds = [([_mean(*r)] * 3, examples) for r, examples in zip(ROUNDS, ([7, 1, 2], [3, 3, 50]), strict=True)]
    strategy = build_strategy(_config(name), RunDirectory(tmp_path))

    # Execute
    results, _ = _run(strategy, secure_rounds)

    # Assert
    for got, expected in zip(results, _by_hand(BY_HAND[name], ROUNDS), strict=True):
        for key in START:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, atol=1e-12)


def test_each_strategy_gets_exactly_its_parameters_under_flowers_names(tmp_path: Path) -> None:
    for name, cls in STRATEGY_CLASSES.items():
        accepted = set(inspect.signature(cls.__init__).parameters)
        assert set(StrategyConfig.PARAMETERS[name]) <= accepted, name
        inner = build_strategy(_config(name), RunDirectory(tmp_path / name)).inner
        for key, value in PARAMETERS[name].items():
            assert getattr(inner, key) == value, (name, key)
    fedadam = build_strategy(_config("fedadam", **{"training.learning_rate": 0.02}), RunDirectory(tmp_path)).inner
    assert isinstance(fedadam, FedAdam) and fedadam.eta_l == 0.02  # the sites' own learning rate, for Flower's log


def test_the_factory_covers_every_name_and_central_dp_only_fedavgs_aggregate() -> None:
    assert set(STRATEGY_CLASSES) == set(StrategyConfig.NAMES) == set(StrategyConfig.PARAMETERS)
    assert set(EXACT_SAMPLE_CLASSES) == set(StrategyConfig.CENTRAL_DP_NAMES)
    for name, cls in EXACT_SAMPLE_CLASSES.items():
        assert issubclass(cls, STRATEGY_CLASSES[name]) and issubclass(cls, ExactSampleFedAvg)
        assert cls.aggregate_train is FedAvg.aggregate_train  # what Flower's fixed-clipping accountant requires
    assert {FedAvgM, FedAdam, FedYogi, FedAdagrad}.isdisjoint(EXACT_SAMPLE_CLASSES.values())
    assert issubclass(ExactSampleFedProx, FedProx)


@pytest.mark.parametrize("name", StrategyConfig.NAMES)
@pytest.mark.parametrize(
    ("fraction_train", "min_nodes", "fraction_evaluate", "trained", "evaluated"),
    [(0.6, 2, 0.0, 3, 0), (0.2, 4, 1.0, 4, 5), (1.0, 2, 0.4, 5, 2)],
)
def test_every_strategy_samples_a_fraction_of_sites_with_a_minimum(
    name: str,
    fraction_train: float,
    min_nodes: int,
    fraction_evaluate: float,
    trained: int,
    evaluated: int,
    tmp_path: Path,
) -> None:
    # Prepare
    config = _config(
        name,
        **{
            "federation.num_sites": 5,
            "strategy.min_nodes": min_nodes,
            "strategy.fraction_train": fraction_train,
            "strategy.fraction_evaluate": fraction_evaluate,
        },
    )
    strategy = build_strategy(config, RunDirectory(tmp_path))

    # Execute
    train = list(strategy.configure_train(1, _record(START), ConfigRecord(), _grid(5)))
    evaluate = list(strategy.configure_evaluate(1, _record(START), ConfigRecord(), _grid(5)))

    # Assert
    assert len(train) == trained and len({m.metadata.dst_node_id for m in train}) == trained
    assert len(evaluate) == evaluated


def test_fedprox_under_central_dp_samples_exactly_the_planned_sites_and_sends_mu(tmp_path: Path) -> None:
    # Prepare: four sites connected, three planned (a surplus node must sit the round out, not break the noise)
    config = _config("fedprox", **{"privacy.mode": "central", "privacy.noise_multiplier": 1e-6})
    strategy = build_strategy(config, RunDirectory(tmp_path))

    # Execute
    queries = list(strategy.configure_train(1, _record(START), ConfigRecord(), _grid(4)))
    sent_back = [{key: value + 0.01 * (i + 1) for key, value in START.items()} for i in range(3)]
    replies = [_reply(q, a, n) for q, a, n in zip(queries, sent_back, [1, 10, 100], strict=True)]
    arrays, _ = strategy.aggregate_train(1, replies)

    # Assert
    assert isinstance(strategy.inner, DifferentialPrivacyServerSideFixedClipping)  # its accountant accepted FedProx
    assert isinstance(strategy.inner.strategy, ExactSampleFedProx)
    assert len(queries) == 3 and all(float(q.content[wire.CONFIG_KEY][wire.PROXIMAL_MU]) == 0.3 for q in queries)
    # Unclipped small updates, equal weights under central DP: the plain mean of the updates (0.02), tiny noise.
    np.testing.assert_allclose(arrays["w"].numpy(), START["w"] + 0.02, atol=1e-4)
    assert strategy.central is not None and strategy.central.epsilon() > 0


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_a_server_optimizer_under_central_dp_is_refused_naming_the_key(name: str, tmp_path: Path) -> None:
    config = _config(name, **{"privacy.mode": "central"})

    with pytest.raises(ConfigError, match=rf"'strategy.name' = '{name}' is invalid: it must be one of fedavg, fedprox "
                       r"with privacy.mode=central"):  # fmt: skip
        build_strategy(config, RunDirectory(tmp_path))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"strategy.name": "fedsgd"}, r"'strategy.name' = 'fedsgd' is invalid: it must be one of fedavg, fedprox, "),
        ({"strategy.name": "fedprox", "strategy.proximal_mu": 0.0}, r"'strategy.proximal_mu' = 0.0 .* use strategy"),
        ({"strategy.proximal_mu": -1.0}, r"'strategy.proximal_mu' = -1.0 is invalid: it must be >= 0"),
        ({"strategy.server_learning_rate": 0.0}, r"'strategy.server_learning_rate' = 0.0 is invalid: it must be > 0"),
        ({"strategy.server_momentum": 1.0}, r"'strategy.server_momentum' = 1.0 is invalid: it must be in \[0, 1\)"),
        ({"strategy.eta": -0.1}, r"'strategy.eta' = -0.1 is invalid: it must be > 0"),
        ({"strategy.beta_1": 1.0}, r"'strategy.beta_1' = 1.0 is invalid: it must be in \[0, 1\)"),
        ({"strategy.beta_2": -0.5}, r"'strategy.beta_2' = -0.5 is invalid: it must be in \[0, 1\)"),
        ({"strategy.tau": 0.0}, r"'strategy.tau' = 0.0 is invalid: it must be > 0"),
        ({"strategy.tau": float("inf")}, r"'strategy.tau' = inf is invalid: it must be a finite number"),
        ({"strategy.eta": "fast"}, r"'strategy.eta' = 'fast' has the wrong type: expected float"),
    ],
)
def test_a_bad_strategy_value_is_a_config_error_naming_the_key(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(values)


@pytest.mark.parametrize(
    ("name", "key", "value", "readers"),
    [
        ("fedavg", "eta", 0.5, "fedadam, fedyogi and fedadagrad do"),
        ("fedavg", "proximal_mu", 0.1, "fedprox does"),
        ("fedprox", "server_momentum", 0.5, "fedavgm does"),
        ("fedadam", "proximal_mu", 0.1, "fedprox does"),
        ("fedadagrad", "beta_1", 0.5, "fedadam and fedyogi do"),
        ("fedavgm", "tau", 0.1, "fedadam, fedyogi and fedadagrad do"),
    ],
)
def test_a_parameter_the_strategy_does_not_use_is_refused_not_ignored(
    name: str, key: str, value: float, readers: str
) -> None:
    with pytest.raises(
        ConfigError,
        match=rf"'strategy.{key}' = {value!r} is invalid: it must be left at its default .* with strategy.name = "
        rf"'{name}', which does not use it \(only {readers}\)",
    ):
        load_config({"strategy.name": name, f"strategy.{key}": value})


def test_central_dp_check_is_on_the_strategy_section_too() -> None:
    StrategyConfig(name="fedprox").check_central_dp(True)
    StrategyConfig(name="fedadam").check_central_dp(False)
    with pytest.raises(ConfigError, match=r"'strategy.name' = 'fedyogi' is invalid"):
        StrategyConfig(name="fedyogi").check_central_dp(True)


@pytest.mark.parametrize("name", StrategyConfig.NAMES)
def test_each_hydra_strategy_group_composes_with_its_own_keys_only(name: str) -> None:
    import yaml

    from simulations.hydra_config import CONF_DIR, compose_simulation

    config, _ = compose_simulation([f"strategy={name}", "privacy=none", "output.run_dir=unused"])
    group = yaml.safe_load((CONF_DIR / "strategy" / f"{name}.yaml").read_text())

    assert config.strategy.name == name
    own = set(group) - {"defaults", "name", "num_rounds", "fraction_train", "fraction_evaluate", "min_nodes",
                        "round_timeout_s"}  # fmt: skip
    assert own == set(StrategyConfig.PARAMETERS[name])
    for key in own:
        assert getattr(config.strategy, key) == group[key], key
    # The round plan is fedavg's, which the schema's defaults mirror.
    plan = AppConfig().strategy
    assert (config.strategy.num_rounds, config.strategy.fraction_train, config.strategy.min_nodes) == (
        plan.num_rounds, plan.fraction_train, plan.min_nodes)  # fmt: skip


def test_a_hydra_override_of_a_key_the_strategy_does_not_use_fails() -> None:
    from simulations.hydra_config import compose_simulation

    with pytest.raises(ConfigError, match=r"strategy\.eta"):
        compose_simulation(["strategy=fedavgm", "strategy.eta=0.5"])
    with pytest.raises(ConfigError, match=r"'strategy.eta' = 0.5 is invalid: it must be left at its default"):
        compose_simulation(["strategy=fedavgm", "+strategy.eta=0.5"])
    config, _ = compose_simulation(["strategy=fedadam", "strategy.eta=0.5", "experiment=mias_scratch"])
    assert config.strategy.name == "fedadam" and config.strategy.eta == 0.5 and config.strategy.num_rounds == 15
