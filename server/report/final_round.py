"""Which round a run's final results are from, and which sites' figures are older than that round (and why).

A site that fails or declines after round 1 keeps its last successful evaluation, from an earlier round, while
the other sites' figures and the pooled row are from the last round. Shown side by side without a mark they
would read as one comparable set (and the pooled row, over fewer sites, would disagree with them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from server.report.run_files import POOLED_SITE

__all__ = ["FINAL_ROUND", "NOT_IN_FINAL_ROUND", "ROUND", "final_round", "mark_final_round", "sites_in_final_round"]

FINAL_ROUND = "final_round"
"""summary.json key: the last round any site was evaluated in (the pooled row's round)."""
ROUND = "round"
"""Key of each site's (and the pooled) entry: the round its evaluation figures are from."""
NOT_IN_FINAL_ROUND = "not_in_final_round"
"""Key of a site entry whose figures are not from the final round: why (its last round, and what failed)."""


def _round(entry: Mapping[str, Any]) -> int | None:
    value = entry.get(ROUND)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value else None


def final_round(results: Mapping[str, Mapping[str, Any]]) -> int | None:
    """The latest evaluated round over all entries (sites and pooled); None when nothing was evaluated."""
    rounds = [r for entry in results.values() if (r := _round(entry)) is not None]
    return max(rounds) if rounds else None


def sites_in_final_round(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The sites whose figures are from the final round: the ones the pooled row of that round covers."""
    last = final_round(results)
    if last is None:
        return []
    return [site for site, entry in results.items() if site != POOLED_SITE and _round(entry) == last]


def _reason(site: str, entry: Mapping[str, Any], last: int, rows: Sequence[Mapping[str, Any]]) -> str:
    evaluated = _round(entry)
    after = evaluated or 0
    problems = [
        f"round {row.get('round')} {row.get('phase')}: {row.get('error')}"
        for row in rows
        if str(row.get("site")) == site and "error" in row and _round(row) is not None and _round(row) > after
    ]
    where = f"figures from round {evaluated}, its last evaluation" if evaluated else "never evaluated"
    why = "; ".join(problems) if problems else f"no evaluation reply in round {last}"
    return f"{where}; {why}"


def mark_final_round(results: Mapping[str, dict[str, Any]], rows: Sequence[Mapping[str, Any]] = ()) -> int | None:
    """Add `NOT_IN_FINAL_ROUND` (why, from the failure rows of ``rows``) to each site entry not from the final round.

    ``results`` maps site (and ``pooled``) to its entry, changed in place; returns the final round, or None
    when nothing was evaluated (then nothing is marked). An entry marked before is left as it is.
    """
    last = final_round(results)
    if last is None:
        return None
    for site, entry in results.items():
        if site != POOLED_SITE and _round(entry) != last and NOT_IN_FINAL_ROUND not in entry:
            entry[NOT_IN_FINAL_ROUND] = _reason(site, entry, last, rows)
    return last
