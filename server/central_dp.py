"""Central DP for ``privacy.mode=central``: Flower's server-side clipping wrappers and one federation accountant."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import (
    GaussianPrivacyEvent,
    Grid,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from common.config import AppConfig
from common.errors import ConfigError

__all__ = ["CentralDP", "ExactSampleFedAvg", "central_noise_multiplier", "wrap_with_central_dp"]

logger = logging.getLogger(__name__)

_BISECTION_STEPS = 60


class ExactSampleFedAvg(FedAvg):
    """FedAvg that trains on exactly ``sample_size`` nodes each round, waiting until that many are connected.

    Flower's FedAvg samples a fraction of whoever is connected, but the DP wrappers calibrate the noise
    (``sigma x clip / sample_size``) and the accountant for one fixed number of sites: a surplus node made
    the fixed wrapper raise and the adaptive one drop every round, a missing one shrank the round. Here a
    surplus node simply sits the round out, and a missing one makes the round wait (Flower's
    ``min_available_nodes`` behaviour). Aggregation is FedAvg's own, which Flower's accountant requires.
    """

    def __init__(self, *, sample_size: int, **kwargs: Any) -> None:
        kwargs["min_available_nodes"] = max(kwargs.get("min_available_nodes", 0), sample_size)
        super().__init__(**kwargs)
        self.sample_size = sample_size

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One train message for each of ``sample_size`` nodes drawn from those connected."""
        if self.fraction_train == 0.0:
            return []
        node_ids, connected = sample_nodes(grid, self.min_available_nodes, self.sample_size)
        logger.info("configure_train: sampled %d of %d connected node(s)", len(node_ids), len(connected))
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, node_ids, MessageType.TRAIN)


class _ServerSideAdaptiveClipping(DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping with the clip-norm update pointing the right way, made in time.

    Flower 1.41 counts *clipped* updates but applies Andrew et al.'s rule, which is written for the share
    of *unclipped* ones: ``C *= exp(-lr * (clipped - target))`` shrinks the norm when too many updates are
    clipped, so it runs away to zero (every update clipped, ever harder). Here ``C`` grows while more than
    ``target_clipped_quantile`` of the updates are clipped and shrinks while fewer are: Andrew et al.'s
    rule with the unclipped share ``1 - clipped`` and quantile ``1 - target``. The privacy analysis is
    unchanged (the count is noised the same way).

    Flower also updates ``C`` before it adds the noise, so the noise was scaled to the *next* round's norm,
    not the one this round's updates were clipped to (too little noise whenever the norm shrank). Andrew
    et al. noise with the norm used for clipping: the new norm is held back until the noise is added, and
    kept only for a released round.

    Like the fixed-clipping wrapper with an accountant, it releases a round only when every sampled site
    replied: the noise is calibrated for ``num_sampled_clients`` updates, and a mean over fewer would give
    each site more influence than the noise covers.
    """

    _next_clipping_norm: float | None = None

    def _geometric_update(self, clipped_fraction: float) -> None:
        self._next_clipping_norm = self.clipping_norm * math.exp(
            self.clip_norm_lr * (clipped_fraction - self.target_clipped_quantile)
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if len(replies) != self.num_sampled_clients or any(reply.has_error() for reply in replies):
            return None, None
        self._next_clipping_norm = None
        try:
            arrays, metrics = super().aggregate_train(server_round, replies)
            if arrays is not None and self._next_clipping_norm is not None:
                self.clipping_norm = self._next_clipping_norm
        finally:
            self._next_clipping_norm = None
        return arrays, metrics


def _accountant(delta: float, population: int) -> RdpAccountant:
    """Site-level accounting: a neighbouring federation differs by one whole site; every site takes part."""
    return RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )


def _epsilon_after(noise_multiplier: float, releases: int, delta: float, sites: int) -> float:
    accountant = _accountant(delta, sites)
    accountant.compose(GaussianPrivacyEvent(noise_multiplier, sites, sites), count=releases)
    return float(accountant.get_epsilon(delta))


def central_noise_multiplier(config: AppConfig, num_sampled: int) -> float:
    """``privacy.noise_multiplier``, or with ``privacy.target_epsilon > 0`` the smallest noise spending at most
    that epsilon (at ``privacy.delta``) over ``strategy.num_rounds`` releases, found by bisection on Flower's
    own accountant so the figure the server reports after the last round is the target.
    """
    privacy, rounds = config.privacy, config.strategy.num_rounds
    if privacy.target_epsilon <= 0:
        return privacy.noise_multiplier
    low, high = 1e-3, 1.0
    while _epsilon_after(high, rounds, privacy.delta, num_sampled) > privacy.target_epsilon:
        low, high = high, high * 2
        if high > 1e6:
            raise ConfigError(f"config key 'privacy.target_epsilon' = {privacy.target_epsilon!r} is unreachable")
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if _epsilon_after(middle, rounds, privacy.delta, num_sampled) > privacy.target_epsilon:
            low = middle
        else:
            high = middle
    return high


@dataclass
class CentralDP:
    """The DP-wrapped strategy and the federation's accountant (one guarantee for every site, not one per site).

    With fixed clipping Flower's wrapper composes each release into ``accountant`` itself (and checks equal
    weights and a full set of replies first). Flower's adaptive wrapper keeps no accountant; there the
    released rounds are composed here, with the configured ``noise_multiplier``: Flower splits it between the
    update noise and the clipped-count noise so that together they are that Gaussian mechanism
    (Andrew et al. 2019, Theorem 1).
    """

    strategy: Strategy
    accountant: RdpAccountant
    noise_multiplier: float
    num_sampled: int
    composes_itself: bool

    def released(self) -> float:
        """Account one released aggregate and return the federation's cumulative epsilon."""
        if not self.composes_itself:
            population = self.accountant.config.population_size
            self.accountant.compose(GaussianPrivacyEvent(self.noise_multiplier, self.num_sampled, population))
        return self.epsilon()

    def epsilon(self) -> float:
        """Cumulative epsilon at the configured delta (0 before any release)."""
        if self.accountant.num_releases == 0:
            return 0.0
        return float(self.accountant.get_epsilon(self.accountant.config.target_delta))


def wrap_with_central_dp(strategy: Strategy, config: AppConfig, num_sampled: int) -> CentralDP:
    """Wrap ``strategy`` (an :class:`ExactSampleFedAvg`) in Flower's server-side fixed or adaptive clipping wrapper.

    ``num_sampled`` is the number of sites each round trains on (the strategy must sample exactly that many):
    the noise on the mean update is ``noise_multiplier x clip / num_sampled``, and a round in which any of
    them fails is not released.
    """
    privacy = config.privacy
    sigma = central_noise_multiplier(config, num_sampled)
    accountant = _accountant(privacy.delta, max(num_sampled, config.federation.num_sites))
    if privacy.central_clipping == "fixed":
        wrapped: Strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy, sigma, privacy.update_clip_norm, num_sampled, accountant=accountant
        )
    else:
        wrapped = _ServerSideAdaptiveClipping(
            strategy,
            sigma,
            num_sampled,
            initial_clipping_norm=privacy.update_clip_norm,
            target_clipped_quantile=privacy.target_clipped_quantile,
            clip_norm_lr=privacy.clip_norm_lr,
            # Flower's default (sites / 20) only admits sigma < 0.1 x sites; this keeps the update noise
            # within 1.16 x sigma for any federation size.
            clipped_count_stddev=max(num_sampled / 20, sigma),
        )
    logger.info(
        "central DP: %s clipping at %.3g, noise multiplier %.4g over %d site(s) per round",
        privacy.central_clipping,
        privacy.update_clip_norm,
        sigma,
        num_sampled,
    )
    return CentralDP(wrapped, accountant, sigma, num_sampled, composes_itself=privacy.central_clipping == "fixed")
