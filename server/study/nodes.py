"""Which node serves which site, and a Grid that shows a strategy only some of them (one study model's sites)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common import wire
from server.delegating_grid import DelegatingGrid

__all__ = ["SiteNodes", "SubsetGrid", "discover_sites"]

logger = logging.getLogger(__name__)

_POLL_S = 0.5
OPTIONAL_WAIT_S = 15.0
RESERVED_NAME = "pooled"
"""The study's all-sites column: a site that calls itself so is renamed ``pooled@node-<id>``."""


class SubsetGrid(DelegatingGrid):
    """A view of ``grid`` in which only ``node_ids`` exist, so Flower's own strategy (and its ``start`` loop) trains
    one study model on its sites: a site's local model on that site alone, a leave-one-out model on the others.

    Everything but ``get_node_ids`` is the wrapped grid's; a node of the subset that disconnected is not listed.
    """

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        super().__init__(grid)
        self._node_ids = tuple(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        """The subset's nodes that the wrapped grid still lists."""
        connected = set(self._grid.get_node_ids())
        return [node for node in self._node_ids if node in connected]


@dataclass
class SiteNodes:
    """The federation's nodes by the site name each reported; ``pooled`` holds every site's data (simulation)."""

    sites: dict[str, int] = field(default_factory=dict)
    pooled: int | None = None
    failures: list[str] = field(default_factory=list)
    """Why a node gave no usable answer (its error reason), one entry per such node."""


def _wait_for_nodes(grid: Grid, expected: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < expected and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    return nodes


def discover_sites(grid: Grid, *, expected: int, timeout_s: float, optional: int = 0) -> SiteNodes:
    """Ask every node which site it serves (a query message; the reply carries only the site's chosen name).

    Waits up to ``timeout_s`` for ``expected`` nodes, then up to `OPTIONAL_WAIT_S` for ``optional`` more (the
    pooled node a simulation starts with the sites; a deployment has none, and need not wait for it long). Two
    nodes naming one site keep the first name and get ``<name>@node-<id>`` for the second, as the strategy's rows
    do; a site named ``pooled`` (the all-sites column) is renamed so.
    """
    nodes = _wait_for_nodes(grid, expected, timeout_s)
    if len(nodes) < expected:
        logger.warning("%d node(s) connected of the %d expected; the study goes on with them", len(nodes), expected)
    elif optional:
        nodes = _wait_for_nodes(grid, expected + optional, OPTIONAL_WAIT_S)
    asked = RecordDict({wire.CONFIG_KEY: ConfigRecord({wire.STUDY_QUERY: wire.STUDY_DESCRIBE})})
    messages = [Message(content=asked, message_type=MessageType.QUERY, dst_node_id=node) for node in nodes]
    found = SiteNodes()
    replies = sorted(grid.send_and_receive(messages, timeout=timeout_s), key=lambda m: m.metadata.src_node_id)
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error() or wire.SITE_KEY not in reply.content.config_records:
            found.failures.append(reply.error.reason if reply.has_error() else f"node {node}: no site record")
            continue
        record = reply.content.config_records[wire.SITE_KEY]
        if int(record.get(wire.SITE_POOLED, 0)):
            found.pooled = node
            continue
        name = str(record[wire.SITE_NAME])
        if name in found.sites or name == RESERVED_NAME:
            logger.warning("node %d reports site name %r, already used by another node", node, name)
            name = f"{name}@node-{node}"
        found.sites[name] = node
    answered = {m.metadata.src_node_id for m in replies}
    found.failures += [f"node {node}: no answer within {timeout_s:.0f}s" for node in nodes if node not in answered]
    found.sites = dict(sorted(found.sites.items()))
    return found
