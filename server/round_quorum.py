"""The federation's quorum: a round needs ``strategy.min_nodes`` sites; with fewer it is skipped and recorded.

Flower's strategies wait for enough connected nodes without a time limit (``sample_nodes`` sleeps until they
come), and aggregate whatever replies arrive, however few. A federation that lost hospitals would then hang for
ever, or publish a model averaged over one site. Here a round waits at most ``strategy.round_timeout_s`` for its
sites to connect and needs ``min_nodes`` usable replies; otherwise it is skipped with a row that says why, the
global model stays as it was, and the run goes on to the next round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flwr.serverapp import Grid

__all__ = ["POLL_S", "skipped_row", "wait_for_nodes"]

logger = logging.getLogger(__name__)

POLL_S = 1.0
"""How often the connected nodes are counted while waiting (Flower's own wait polls every second)."""


def wait_for_nodes(
    grid: Grid,
    needed: int,
    limit_s: float,
    *,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> int:
    """Wait until ``needed`` nodes are connected or ``limit_s`` has passed; return how many are connected."""
    clock, sleep = clock or time.monotonic, sleep or time.sleep
    deadline = clock() + limit_s
    while (connected := len(list(grid.get_node_ids()))) < needed:
        if clock() >= deadline:
            return connected
        logger.info("waiting for sites to connect: %d of %d (strategy.min_nodes)", connected, needed)
        sleep(POLL_S)
    return connected


def skipped_row(server_round: int, phase: str, site: str, reason: str) -> dict[str, Any]:
    """The metrics row of a skipped round (``site`` is the pooled row's: the round as a whole), with the reason."""
    logger.warning("round %d %s skipped: %s", server_round, phase, reason)
    return {"round": server_round, "phase": phase, "site": site, "time": time.time(), "declined": False,
            "skipped": True, "error": f"round skipped: {reason}"}  # fmt: skip
