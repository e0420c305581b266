"""The privacy accountant's history as plain data, and epsilon recomputed from it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from opacus.accountants import create_accountant

from common.errors import ConfigError

__all__ = ["HISTORY_KEYS", "History", "compute_epsilon", "history_from_lists", "history_to_lists"]

History = list[tuple[float, float, int]]
"""Opacus accountant history: one ``(noise_multiplier, sample_rate, num_steps)`` per run of equal steps."""

HISTORY_KEYS = ("noise_multiplier", "sample_rate", "num_steps")


def history_to_lists(history: Iterable[Sequence[float]]) -> dict[str, list]:
    """Split an accountant history into three parallel lists of Python scalars.

    Flower's ``ConfigRecord`` stores lists of float or int, not tuples, so this is how a site's
    privacy ledger survives between rounds in ``context.state`` (and on disk).

    Parameters
    ----------
    history : iterable of (noise_multiplier, sample_rate, num_steps)
        ``PrivacyEngine.accountant.history`` or a `History`.

    Returns
    -------
    dict
        ``{"noise_multiplier": [float], "sample_rate": [float], "num_steps": [int]}``.
    """
    entries = [tuple(entry) for entry in history]
    return {
        "noise_multiplier": [float(e[0]) for e in entries],
        "sample_rate": [float(e[1]) for e in entries],
        "num_steps": [int(e[2]) for e in entries],
    }


def history_from_lists(lists: Mapping[str, Sequence[float]]) -> History:
    """Inverse of `history_to_lists` (exact round trip), checking the lists belong together.

    Raises
    ------
    ConfigError
        If a key is missing, the lists differ in length, or a value is out of range (a corrupt ledger
        must stop training rather than silently restart epsilon from zero).
    """
    missing = [key for key in HISTORY_KEYS if key not in lists]
    if missing:
        raise ConfigError(f"privacy history is missing list(s) {missing}; it needs {list(HISTORY_KEYS)}")
    noise, rates, steps = (list(lists[key]) for key in HISTORY_KEYS)
    if not len(noise) == len(rates) == len(steps):
        raise ConfigError(
            f"privacy history lists differ in length (noise_multiplier {len(noise)}, sample_rate {len(rates)}, "
            f"num_steps {len(steps)}); they must be parallel, as written by history_to_lists"
        )
    history = [(float(n), float(q), int(s)) for n, q, s in zip(noise, rates, steps, strict=True)]
    for index, (n, q, s) in enumerate(history):
        if n < 0 or not 0 < q <= 1 or s < 1:
            raise ConfigError(
                f"privacy history entry {index} = {(n, q, s)} is invalid: it must be "
                "(noise_multiplier >= 0, sample_rate in (0, 1], num_steps >= 1)"
            )
    return history


def compute_epsilon(history: Iterable[Sequence[float]], *, delta: float, accountant: str = "rdp") -> float:
    """Epsilon spent by a whole history, replayed in a fresh Opacus accountant.

    Parameters
    ----------
    history : iterable of (noise_multiplier, sample_rate, num_steps)
        Cumulative history across every round so far.
    delta : float
        Target delta of the (epsilon, delta) guarantee.
    accountant : str
        ``"rdp"`` or ``"prv"``: the same mechanism the training used, or the numbers will not agree.

    Returns
    -------
    float
        0.0 for an empty history; ``inf`` if any step had no noise (noise_multiplier 0 is not private).
    """
    entries = [(float(e[0]), float(e[1]), int(e[2])) for e in history]
    if not entries:
        return 0.0
    if any(noise == 0.0 for noise, _, _ in entries):
        return math.inf
    replay = create_accountant(mechanism=accountant)
    replay.history = entries
    with np.errstate(divide="ignore"):  # PRV takes log(1 - q), -inf at sample rate 1, and handles it
        return float(replay.get_epsilon(delta=delta))
