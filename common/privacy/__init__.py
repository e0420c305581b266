"""Differential privacy for local training: Opacus wrapping and an accountant history that persists."""

from common.privacy.accounting import (
    HISTORY_KEYS,
    History,
    compute_epsilon,
    history_from_lists,
    history_to_lists,
)
from common.privacy.engine import make_private, new_privacy_engine

__all__ = [
    "HISTORY_KEYS",
    "History",
    "compute_epsilon",
    "history_from_lists",
    "history_to_lists",
    "make_private",
    "new_privacy_engine",
]
