"""Step arithmetic on accountant histories, counted per (noise, sample rate) as Opacus merges consecutive steps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from common.privacy import History

__all__ = ["added_steps", "covers", "merged", "step_counts"]


def step_counts(history: Sequence[tuple[float, float, int]]) -> Counter[tuple[float, float]]:
    """How many steps ``history`` took at each (noise multiplier, sample rate)."""
    steps: Counter[tuple[float, float]] = Counter()
    for noise, rate, count in history:
        steps[(float(noise), float(rate))] += int(count)
    return steps


def covers(new: Sequence[tuple[float, float, int]], old: Sequence[tuple[float, float, int]]) -> bool:
    """Whether ``new`` holds every step of ``old`` (order aside: Opacus may merge them into fewer entries)."""
    have = step_counts(new)
    return all(have[key] >= count for key, count in step_counts(old).items())


def added_steps(new: Sequence[tuple[float, float, int]], old: Sequence[tuple[float, float, int]]) -> History:
    """The steps of ``new`` beyond ``old`` (which it covers), in ``new``'s order."""
    left = step_counts(old)
    added: History = []
    for noise, rate, count in new:
        key = (float(noise), float(rate))
        taken = min(left[key], int(count))
        left[key] -= taken
        if count > taken:
            added.append((key[0], key[1], int(count) - taken))
    return added


def merged(history: Sequence[tuple[float, float, int]]) -> History:
    """Consecutive entries at one (noise, sample rate) as one, as Opacus' accountant keeps them."""
    result: History = []
    for noise, rate, count in history:
        if result and result[-1][:2] == (noise, rate):
            result[-1] = (noise, rate, result[-1][2] + count)
        else:
            result.append((float(noise), float(rate), int(count)))
    return result
