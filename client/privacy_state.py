"""Keeps a node's DP accountant history in Flower's per-node state, so epsilon composes across rounds."""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict

from common.privacy import history_from_lists, history_to_lists

__all__ = ["LEDGER_KEY", "load_history", "save_history"]

LEDGER_KEY = "privacy-ledger"


def load_history(state: RecordDict) -> list[tuple[float, float, int]]:
    """The accountant history recorded in this node's state (empty on the node's first round)."""
    record = state.get(LEDGER_KEY)
    if record is None:
        return []
    return history_from_lists(
        {
            "noise_multiplier": list(record["noise_multiplier"]),
            "sample_rate": list(record["sample_rate"]),
            "num_steps": list(record["num_steps"]),
        }
    )


def save_history(state: RecordDict, history: list[tuple[float, float, int]]) -> None:
    """Replace the stored history with ``history`` (the cumulative one the round returned)."""
    state[LEDGER_KEY] = ConfigRecord(history_to_lists(history))
