"""Flower's round loop over the rounds a run has left, with the run's own round numbers and a checkpoint per phase.

Flower's ``Strategy.start`` numbers its rounds from 1 and cannot start later, and its loop is not ours to rewrite
(house rule 10). So a resumed run calls ``start`` for the rounds left through `CheckpointedRounds`, a thin wrapper
that hands the wrapped strategy the run's own round numbers: ``start``'s round 1 is the run's round ``k + 1``. The
sites see the true round in ``server-round`` (their training seeds derive from it, `client.task.round_seed`), and
so do round-dependent strategies (FedAdam's bias correction). Flower's own log still counts ``[ROUND 1/n]``.

A checkpoint (`server.checkpoint`) is written before round 1, after each round's training (when its aggregate is
released, before it is sent out for evaluation) and after its evaluation. A run stopped between the two continues
with that round's evaluation alone: a released central-DP aggregate is never drawn again under other noise, and the
accountant never misses a release. A run stopped during a round's training runs that round again; the sites'
ledgers recognise a round they trained before (`client.ledger_rounds`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from common.errors import ConfigError
from server.checkpoint import RunCheckpoint, capture_rng, save_checkpoint
from server.strategy_state import capture_state

__all__ = ["CheckpointedRounds"]

logger = logging.getLogger(__name__)


class CheckpointedRounds(Strategy):
    """Any strategy, run as rounds ``offset + 1 ...`` of its run, with a checkpoint after each round's phases.

    ``folder`` None writes no checkpoint (``output.save_checkpoints=false``); ``seeded`` says whether the run's
    random generators were seeded (a local simulation), so their states are saved and put back: otherwise a
    checkpoint would hold what predicts the server's next DP noise, and a resumed deployment draws fresh noise.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        initial: ArrayRecord,
        folder: Path | None,
        seeded: bool,
        resumed: RunCheckpoint | None = None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.folder = folder
        self.seeded = seeded
        self.run_key = resumed.run_key if resumed is not None else uuid.uuid4().hex
        self.arrays = resumed.arrays if resumed is not None else initial
        """The global model as it stands (what the next round is sent)."""
        self.released = resumed.released if resumed is not None else False
        self._replay = resumed if resumed is not None and not resumed.evaluated else None
        """A round whose training was aggregated before the stop: only its evaluation is left."""
        done = resumed.round if resumed is not None else 0
        self.offset = done - 1 if self._replay is not None else done
        self._elapsed_before = resumed.elapsed_s if resumed is not None else 0.0
        self._started = time.monotonic()
        self._warned = False

    @property
    def released_arrays(self) -> ArrayRecord:
        """The last global model a round released (empty when none did)."""
        return self.arrays if self.released else ArrayRecord()

    def rounds_left(self, num_rounds: int) -> int:
        """How many rounds ``start`` must run for the run to end after round ``num_rounds``.

        Raises
        ------
        ConfigError
            If the run is already past ``num_rounds`` (``strategy.num_rounds`` was lowered).
        """
        done = self.offset + (self._replay is not None)  # a round trained before the stop still needs evaluating
        if num_rounds < done:
            raise ConfigError(
                f"config key 'strategy.num_rounds' = {num_rounds} is below the {done} round(s) this run has already "
                "trained; a resumed run can only run on: give at least that many"
            )
        return num_rounds - self.offset

    def elapsed_s(self) -> float:
        """Seconds spent in this run's rounds, over every process that ran it."""
        return self._elapsed_before + time.monotonic() - self._started

    def checkpoint(self, server_round: int, *, evaluated: bool) -> None:
        """Save where the run stands after round ``server_round``'s training (or also its evaluation)."""
        if self.folder is None:
            return
        state = capture_state(self.inner)
        if state["problems"] and not self._warned:
            logger.warning("this run cannot be resumed: %s", "; ".join(state["problems"]))
            self._warned = True
        rng = capture_rng() if self.seeded else None
        save_checkpoint(
            self.folder,
            RunCheckpoint(
                self.run_key, server_round, evaluated, self.arrays, self.released, state, rng, self.elapsed_s()
            ),
        )

    def summary(self) -> None:
        """Log the wrapped strategy's configuration, and where a resumed run picks up."""
        if self.offset:
            logger.info("resuming after round %d: Flower's round n is the run's round n + %d", self.offset, self.offset)
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's train messages for the run's round; none for a round already trained."""
        run_round = server_round + self.offset
        self.arrays = arrays
        if self._replay is not None and run_round == self._replay.round:
            return []
        return self.inner.configure_train(run_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate through the wrapped strategy (a round trained before the stop gives its saved model), then save."""
        run_round = server_round + self.offset
        if self._replay is not None and run_round == self._replay.round:
            self._replay = None
            logger.info("round %d was trained and aggregated before the run stopped: evaluating it", run_round)
            return (self.arrays if self.released else None), None
        arrays, metrics = self.inner.aggregate_train(run_round, replies)
        if arrays is not None:
            self.arrays, self.released = arrays, True
        self.checkpoint(run_round, evaluated=False)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluate messages for the run's round."""
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate through the wrapped strategy, then save: the round is done."""
        run_round = server_round + self.offset
        metrics = self.inner.aggregate_evaluate(run_round, replies)
        self.checkpoint(run_round, evaluated=True)
        return metrics
