"""The aggregation strategy ``strategy.name`` asks for: Flower's own class, configured from the typed config."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from common.config import AppConfig
from server.central_dp import ExactSampleFedAvg

__all__ = [
    "EXACT_SAMPLE_CLASSES",
    "STRATEGY_CLASSES",
    "ExactSampleFedProx",
    "FedAdamKeepingDtypes",
    "build_aggregator",
    "strategy_options",
]


class ExactSampleFedProx(FedProx, ExactSampleFedAvg):
    """Flower's FedProx that trains on exactly ``sample_size`` nodes a round, for central DP.

    The method order puts `ExactSampleFedAvg` between FedProx and FedAvg: FedProx's ``configure_train`` adds
    ``proximal-mu`` to the round's config, then exact sampling stands in for FedAvg's. Aggregation stays
    ``FedAvg.aggregate_train`` itself, which Flower's fixed-clipping accountant checks for.
    """

    def __init__(self, *, sample_size: int, proximal_mu: float, **kwargs: Any) -> None:
        # FedProx's own __init__ would call ExactSampleFedAvg's without the sample size; all it adds is mu.
        ExactSampleFedAvg.__init__(self, sample_size=sample_size, **kwargs)
        self.proximal_mu = proximal_mu


class FedAdamKeepingDtypes(FedAdam):
    """Flower's FedAdam, whose new global arrays keep the dtypes of the ones it sent.

    Flower's bias-corrected step size is a NumPy float64 scalar, and NumPy 2 promotes a float32 array times it to
    float64: the global model would double its bytes on the wire every round and be checkpointed as float64.
    The step itself is Flower's; only the result is cast back (integer buffers rounded).
    """

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's FedAdam step, in the dtypes of the arrays sent this round."""
        sent = self.current_arrays
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or sent is None:
            return arrays, metrics
        return ArrayRecord(
            {key: Array(_as_dtype(array.numpy(), sent[key].dtype)) for key, array in arrays.items()}
        ), metrics


def _as_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.asarray(np.rint(values) if np.issubdtype(dtype, np.integer) else values, dtype=dtype)


STRATEGY_CLASSES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadam": FedAdamKeepingDtypes,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
}
"""Flower's class for each ``strategy.name`` (FedAdam's returning the model in its own dtypes)."""

EXACT_SAMPLE_CLASSES: dict[str, type[FedAvg]] = {"fedavg": ExactSampleFedAvg, "fedprox": ExactSampleFedProx}
"""The exact-sample variant for central DP, for each strategy central DP allows (`StrategyConfig.CENTRAL_DP_NAMES`)."""

_FEDOPT = ("fedadam", "fedyogi", "fedadagrad")


def strategy_options(config: AppConfig) -> dict[str, float]:
    """The chosen strategy's own keyword arguments: its `StrategyConfig.PARAMETERS` under Flower's names.

    FedAdam, FedYogi and FedAdagrad also take the clients' learning rate ``eta_l``, which Flower only logs: it is
    ``training.learning_rate`` here (no separate key that could disagree with what the sites use).
    """
    strategy = config.strategy
    options = {key: getattr(strategy, key) for key in strategy.PARAMETERS[strategy.name]}
    if strategy.name in _FEDOPT:
        options["eta_l"] = config.training.learning_rate
    return options


def build_aggregator(config: AppConfig, *, sample_size: int | None = None, **fedavg_kwargs: Any) -> FedAvg:
    """Flower's strategy for ``strategy.name`` with its parameters from ``config`` and FedAvg's ``fedavg_kwargs``.

    Parameters
    ----------
    config : AppConfig
        The run's config (``strategy`` section; ``privacy.mode`` decides whether central DP applies).
    sample_size : int, optional
        Under central DP, the number of sites each round must train on, exactly (`ExactSampleFedAvg`).
    **fedavg_kwargs
        The keyword arguments every one of these Flower classes shares with FedAvg (sampling, record keys,
        ``weighted_by_key``, metric aggregation functions).

    Raises
    ------
    ConfigError
        Under ``privacy.mode=central`` with a server-side optimizer (`StrategyConfig.check_central_dp`).
    """
    config.strategy.check_central_dp(config.privacy.central)
    name = config.strategy.name
    options = strategy_options(config)
    if sample_size is None:
        return STRATEGY_CLASSES[name](**fedavg_kwargs, **options)
    return EXACT_SAMPLE_CLASSES[name](sample_size=sample_size, **fedavg_kwargs, **options)
