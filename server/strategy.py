"""The federation's strategy: FedAvg (inside Flower's DP wrapper for central DP), recorded per site and round."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common import wire
from common.config import AppConfig
from common.metrics import ScoreHistogram
from common.privacy import parse_spent
from server.central_dp import CentralDP, wrap_with_central_dp
from server.personalization import SharedLayers
from server.pooling import metric_classes, pool_evaluate_metrics, pool_train_metrics, reply_classes, reply_histogram
from server.report import POOLED_SITE, RunDirectory
from server.round_quorum import skipped_row, wait_for_nodes
from server.strategies import build_aggregator

__all__ = ["POOLED_SITE", "SAT_OUT_EMPTY", "SAT_OUT_PATCH", "RecordingStrategy", "build_strategy", "sat_out"]

logger = logging.getLogger(__name__)

DECLINED_MARK = "PrivacyBudgetExceeded"

_OMITTED_KEYS = (wire.SCORE_HIST_NEG, wire.SCORE_HIST_POS, wire.UNIFORM_WEIGHT)

SAT_OUT_PATCH = "patch stage: no lesion mark in the site's training split"
"""The ``sat_out`` of a metrics row whose site said it sat the round out (`common.wire.SAT_OUT`)."""
SAT_OUT_EMPTY = "no training examples"
"""The ``sat_out`` of a metrics row whose site trained on nothing without saying why."""


def sat_out(msg: Message) -> bool:
    """Whether a successful train reply trained on nothing (``num-examples`` 0): it has no place in the average.

    FedAvg would give it weight 0 at best, and under central DP (equal weights) the full weight of a site that
    sent the global model back unchanged; with every site at 0 the weighted mean divides by zero.
    """
    if msg.has_error() or not msg.has_content() or wire.METRICS_KEY not in msg.content:
        return False
    return float(msg.content[wire.METRICS_KEY].get(wire.NUM_EXAMPLES, 1)) == 0


def _reported_site_name(msg: Message) -> str | None:
    if msg.has_error() or not msg.has_content():
        return None
    site = msg.content.get(wire.SITE_KEY)
    return str(site[wire.SITE_NAME]) if site is not None and wire.SITE_NAME in site else None


def _has_non_finite_weights(msg: Message) -> bool:
    """Whether any array of a successful reply holds NaN or inf (which ``min(1, C / nan)`` clipping lets through)."""
    if msg.has_error() or not msg.has_content():
        return False
    return any(
        not np.isfinite(array).all()
        for record in msg.content.array_records.values()
        for array in record.to_numpy_ndarrays()
    )


def _scalars(metrics: MetricRecord) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in _OMITTED_KEYS and not isinstance(v, list)}


def _row(server_round: int, phase: str, site: str, metrics: MetricRecord) -> dict[str, Any]:
    values = _scalars(metrics)
    values["num_examples"] = values.pop(wire.NUM_EXAMPLES, 0)
    classes = metric_classes(metrics) if phase == "evaluate" else None
    if classes is not None:  # the K x K counts are small and the summary needs them; histograms go to roc.json
        values[wire.CONFUSION_MATRIX] = classes.confusion.tolist()
    return {"round": server_round, "phase": phase, "site": site, "time": time.time(), **values}


class RecordingStrategy(Strategy):
    """Any strategy, plus one row per site and round (and the pooled row) in ``metrics.jsonl``.

    A wrapper rather than a FedAvg subclass, in the way Flower's own DP wrappers wrap a strategy: the
    aggregation stays the library's (which Flower's privacy accountant insists on), and the rows are
    written from the sites' replies as they arrived, before any wrapper clips them. Failed replies (a site
    whose round raised or declined, or whose weights hold NaN or inf) are recorded with their reason and
    left out of the aggregate; one broken hospital never stops the federation. So is a node that dropped out:
    the SuperLink answers for a node whose heartbeat expired (an error reply under the SuperLink's own node
    id, named here after the node it was sent to), and a node that stays silent past the round's timeout
    gets a row of its own.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        run_dir: RunDirectory,
        save_checkpoints: bool = True,
        central: CentralDP | None = None,
        round_timeout_s: float | None = None,
        min_nodes: int = 1,
        shared_layers: SharedLayers | None = None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.shared_layers = shared_layers
        """Under ``personalization.fedbn``: completes train replies with the sent normalization layers."""
        self.min_nodes = min_nodes
        """The quorum: fewer connected sites, or fewer usable training replies, skip the round (`round_quorum`)."""
        self._skipped: dict[tuple[int, str], str] = {}
        self.run_dir = run_dir
        self.save_checkpoints = save_checkpoints
        self.central = central
        self.latest_histograms: dict[str, ScoreHistogram] = {}
        self.latest_class_histograms: dict[str, tuple[ScoreHistogram, ...]] = {}
        """Per site, the final round's one-vs-rest histogram of each class (only with more than two classes)."""
        self.latest_round = 0
        self.round_timeout_s = round_timeout_s
        self._site_names: dict[int, str] = {}
        self._sent: dict[str, list[Metadata]] = {}
        """Per phase, the metadata of the messages last sent (the grid sets their ids as it pushes them)."""
        self._recipients: dict[str, int] = {}
        """The node each message of the phase being aggregated went to, by message id."""

    def summary(self) -> None:
        """Log the wrapped strategy's configuration."""
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's train messages, once enough sites are connected (else none: a skipped round)."""
        if not self._quorum(server_round, "train", grid):
            return []
        if self.shared_layers is not None:  # FedBN: replies will lack the normalization layers sent here
            self.shared_layers.remember(arrays)
        return self._remember("train", self.inner.configure_train(server_round, arrays, config, grid))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluate messages, once enough sites are connected (else none)."""
        if not self._quorum(server_round, "evaluate", grid):
            return []
        return self._remember("evaluate", self.inner.configure_evaluate(server_round, arrays, config, grid))

    def _quorum(self, server_round: int, phase: str, grid: Grid) -> bool:
        """Wait (at most the round's timeout) for ``min_nodes`` connected sites; Flower's own wait has no end."""
        limit = self.round_timeout_s if self.round_timeout_s is not None else 3600.0
        connected = wait_for_nodes(grid, self.min_nodes, limit)
        if connected < self.min_nodes:
            self._skipped[(server_round, phase)] = (
                f"{connected} site(s) connected after {limit:g} s (strategy.round_timeout_s); "
                f"strategy.min_nodes is {self.min_nodes}"
            )
            return False
        return True

    def _remember(self, phase: str, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        self._sent[phase] = [m.metadata for m in messages]  # not the messages: their weights can be freed
        return messages

    def _unanswered(self, server_round: int, phase: str, replies: list[Message]) -> list[dict[str, Any]]:
        """A row for each node sent this phase's message that did not answer within the round's timeout (it
        dropped out, and the SuperLink had not yet seen its heartbeat expire); learns who each reply is about."""
        self._recipients = {m.message_id: m.dst_node_id for m in self._sent.pop(phase, []) if m.message_id}
        answered = {m.metadata.reply_to_message_id for m in replies}
        within = f" = {self.round_timeout_s:g} s" if self.round_timeout_s is not None else ""
        rows = []
        for message_id, node in self._recipients.items():
            if message_id not in answered:
                site = self._site_names.get(node, f"node-{node}")
                reason = f"no reply within strategy.round_timeout_s{within}; left out of round {server_round}"
                logger.warning("round %d %s: %s: %s", server_round, phase, site, reason)
                rows.append({"round": server_round, "phase": phase, "site": site, "time": time.time(),
                             "declined": False, "error": reason})  # fmt: skip
        return rows

    def _site_name(self, msg: Message) -> str:
        """The name a node reported; a failed reply carries none, so use the one it sent before."""
        # The node the message went to: the SuperLink answers for an unavailable node under its own id.
        node = self._recipients.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
        reported = _reported_site_name(msg)
        if reported is not None:
            if any(name == reported for other, name in self._site_names.items() if other != node):
                # Two hospitals chose one name: without this their rows and histograms would merge.
                logger.warning("node %d reports site name %r, already used by another node", node, reported)
                reported = f"{reported}@node-{node}"
            self._site_names[node] = reported
        return self._site_names.get(node, f"node-{node}")

    def _weigh_uniformly(self, replies: list[Message]) -> None:
        """Under central DP every site's update must weigh the same, or the noise would not cover the largest
        site's influence; the server (not the sites) sets the weight FedAvg reads."""
        if self.central is None:
            return
        for reply in replies:
            if not reply.has_error() and wire.METRICS_KEY in reply.content:
                reply.content[wire.METRICS_KEY][wire.UNIFORM_WEIGHT] = 1

    def _record_failures(self, server_round: int, phase: str, replies: list[Message]) -> list[dict[str, Any]]:
        rows = []
        for m in replies:
            if not m.has_error():
                continue
            # A site refusing to spend more privacy is doing its job, not failing: mark it apart.
            declined = DECLINED_MARK in m.error.reason
            row = {"round": server_round, "phase": phase, "site": self._site_name(m), "time": time.time(),
                   "declined": declined, "error": m.error.reason}  # fmt: skip
            spent = parse_spent(m.error.reason) if declined else None
            if spent is not None:  # what its ledger has spent: a declined site has not spent nothing
                row[wire.EPSILON] = spent
            rows.append(row)
        return rows

    def _sat_out_row(self, server_round: int, msg: Message) -> dict[str, Any]:
        """A site that sat the round out is neither a failure nor a contribution: its row says so, with its epsilon."""
        metrics = msg.content[wire.METRICS_KEY]
        row = _row(server_round, "train", self._site_name(msg), metrics)
        row.pop(wire.TRAIN_LOSS, None)  # no step, no loss: NaN would only gap the loss plot
        row[wire.SAT_OUT] = SAT_OUT_PATCH if wire.SAT_OUT in metrics else SAT_OUT_EMPTY
        return row

    def _non_finite_row(self, server_round: int, msg: Message) -> dict[str, Any]:
        """A reply carrying NaN or inf would poison the global model (clipping passes it): it is a failed site."""
        site = self._site_name(msg)
        reason = f"{site}: non-finite weights (NaN or inf) in its update; left out of round {server_round}"
        logger.warning("round %d: %s", server_round, reason)
        return {"round": server_round, "phase": "train", "site": site, "time": time.time(), "declined": False,
                "error": reason}  # fmt: skip

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record each site's training reply, aggregate through the wrapped strategy, record the pooled row.

        Replies that trained on nothing (:func:`sat_out`, e.g. a site without lesion marks in the patch stage) are
        recorded as sat out and left out of the average; when every site sat out the global weights stay as they
        were. Under central DP a round someone sat out is not released (its noise is calibrated for every
        sampled site's update).
        """
        replies = list(replies)
        if (skipped := self._skipped.pop((server_round, "train"), None)) is not None:
            self.run_dir.append_metrics([skipped_row(server_round, "train", POOLED_SITE, skipped)])
            return None, None
        silent = self._unanswered(server_round, "train", replies)
        poisoned = [_has_non_finite_weights(m) for m in replies]
        non_finite = [m for m, bad in zip(replies, poisoned, strict=True) if bad]
        replies = [m for m, bad in zip(replies, poisoned, strict=True) if not bad]
        idle = [m for m in replies if sat_out(m)]
        replies = [m for m in replies if not sat_out(m)]
        rows = [
            _row(server_round, "train", self._site_name(m), m.content[wire.METRICS_KEY])
            for m in replies
            if not m.has_error()
        ]
        idle_rows = [self._sat_out_row(server_round, m) for m in idle]
        if idle:
            logger.info("round %d: %d site(s) sat out (trained on nothing); left out of the average",
                        server_round, len(idle))  # fmt: skip
        failures = self._record_failures(server_round, "train", replies)
        rows += idle_rows + failures + [self._non_finite_row(server_round, m) for m in non_finite] + silent
        if self.shared_layers is not None:  # FedBN: every strategy gets whole models, the sites' norms left out
            self.shared_layers.complete(server_round, replies)
        self._weigh_uniformly(replies)
        # Sites that answered: trained, or sat the round out (they took part and spent nothing); failures do not count.
        usable = sum(not m.has_error() for m in replies) + len(idle)
        if usable < self.min_nodes:  # too few sites to average: publishing it would expose (or overfit) them
            reason = (
                f"{usable} usable training repl{'y' if usable == 1 else 'ies'}; strategy.min_nodes is {self.min_nodes}"
            )
            rows.append(skipped_row(server_round, "train", POOLED_SITE, reason))
            self.run_dir.append_metrics(rows)
            return None, None
        try:
            arrays, pooled = self.inner.aggregate_train(server_round, replies)
        except ZeroDivisionError:
            if self.central is None:
                raise
            # Flower's clipping divides by each update's norm: a site that sent the global model back unchanged
            # (a zero update) would take the server down. The round is skipped instead, and said so.
            reason = "central DP could not clip a zero update (a site sent the global model back unchanged)"
            rows.append({"round": server_round, "phase": "train", "site": POOLED_SITE, "time": time.time(),
                         "declined": False, "error": reason})  # fmt: skip
            arrays, pooled = None, None
        if self.shared_layers is not None:  # FedBN: the global model's norms stay exactly as sent
            arrays = self.shared_layers.restore(arrays)
        if self.central is not None:
            if arrays is None:
                logger.warning(
                    "round %d: central DP releases a round only when every sampled site replies; the global "
                    "model is unchanged this round",
                    server_round,
                )
            else:
                pooled = MetricRecord({**(pooled or {}), wire.EPSILON: self.central.released()})
        # What declined and idle sites' ledgers hold counts too: they spent it, if not this round.
        declined_spent = [float(row[wire.EPSILON]) for row in failures + idle_rows if wire.EPSILON in row]
        if self.central is None and pooled is not None and wire.EPSILON in pooled and declined_spent:
            # Local DP: the pooled epsilon is the worst site's, and a site that declined has still spent its ledger.
            pooled = MetricRecord({**pooled, wire.EPSILON: max([float(pooled[wire.EPSILON]), *declined_spent])})
        if pooled is not None and arrays is not None:
            rows.append(_row(server_round, "train", POOLED_SITE, pooled))
        self.run_dir.append_metrics(rows)
        if arrays is not None and self.save_checkpoints:
            torch.save(arrays.to_torch_state_dict(), self.run_dir.checkpoints_dir / "global_latest.pt")
        return arrays, pooled

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Record each site's evaluation and the pooled metrics of all sites' test images together."""
        replies = list(replies)
        if (skipped := self._skipped.pop((server_round, "evaluate"), None)) is not None:
            self.run_dir.append_metrics([skipped_row(server_round, "evaluate", POOLED_SITE, skipped)])
            return None
        silent = self._unanswered(server_round, "evaluate", replies)
        self._weigh_uniformly(replies)
        pooled = self.inner.aggregate_evaluate(server_round, replies)
        ok = [m for m in replies if not m.has_error()]
        rows = [_row(server_round, "evaluate", self._site_name(m), m.content[wire.METRICS_KEY]) for m in ok]
        rows += self._record_failures(server_round, "evaluate", replies) + silent
        if pooled is not None:
            rows.append(_row(server_round, "evaluate", POOLED_SITE, pooled))
            self.latest_histograms = {self._site_name(m): reply_histogram(m.content) for m in ok}
            classes = {self._site_name(m): reply_classes(m.content) for m in ok}
            self.latest_class_histograms = {site: c.histograms for site, c in classes.items() if c is not None}
            self.latest_round = server_round
            auc = float(pooled.get("auc", math.nan))
            logger.info("round %d: pooled test AUC %.3f over %d site(s)", server_round, auc, len(ok))
        self.run_dir.append_metrics(rows)
        return pooled


def _sites_per_round(config: AppConfig) -> int:
    """How many sites FedAvg samples each round when the whole federation is connected."""
    sites = config.federation.num_sites
    return min(sites, max(int(sites * config.strategy.fraction_train), min(config.strategy.min_nodes, sites)))


def build_strategy(config: AppConfig, run_dir: RunDirectory) -> RecordingStrategy:
    """FedAvg over the sites (min nodes capped by the federation size), inside Flower's central-DP wrapper
    when ``privacy.mode=central``, recorded per site and round."""
    min_nodes = min(config.strategy.min_nodes, config.federation.num_sites)
    planned = _sites_per_round(config)
    # Central DP's noise and accountant are calibrated for exactly ``planned`` sites a round.
    fedavg = build_aggregator(  # Flower's class for strategy.name (a FedAvg subclass)
        config,
        sample_size=planned if config.privacy.central else None,
        fraction_train=config.strategy.fraction_train,
        fraction_evaluate=config.strategy.fraction_evaluate,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes if config.strategy.fraction_evaluate > 0 else 0,
        min_available_nodes=min_nodes,
        weighted_by_key=wire.UNIFORM_WEIGHT if config.privacy.central else wire.NUM_EXAMPLES,
        arrayrecord_key=wire.ARRAYS_KEY,
        configrecord_key=wire.CONFIG_KEY,
        train_metrics_aggr_fn=pool_train_metrics,
        evaluate_metrics_aggr_fn=pool_evaluate_metrics,
    )
    central = wrap_with_central_dp(fedavg, config, planned) if config.privacy.central else None
    return RecordingStrategy(
        central.strategy if central is not None else fedavg,
        run_dir=run_dir,
        save_checkpoints=config.output.save_checkpoints,
        central=central,
        round_timeout_s=config.strategy.round_timeout_s,
        # Central DP's noise is calibrated for exactly `planned` sites: fewer and the round cannot be released.
        min_nodes=planned if config.privacy.central else min_nodes,
        shared_layers=SharedLayers.from_config(config),
    )
