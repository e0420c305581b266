"""Each site's and the pooled epsilon at the end of a run, read from its metrics rows: one rule for all readers.

``summary.json`` (`server.summary`) and the report built without it (an interrupted run) both take their figures
from `final_epsilons`, so the two cannot disagree on what a site has spent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from common import wire
from server.report.metrics_rows import PHASES, POOLED_SITE

__all__ = ["final_epsilons", "spent_epsilons"]

_FINE_TUNED_EPSILON = wire.fine_tuned_key(wire.EPSILON)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def spent_epsilons(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each site's largest epsilon over its train rows, declined ones included (they carry the ledger's), and over
    its evaluation rows' ``ft_epsilon`` (the ledger's after the last round's fine-tuning).

    Why declined rows count: a site that declined its later rounds (or all of them) has still spent what its
    ledger holds; epsilon only grows, so the largest figure is the latest one. Failed rows carry no figure.
    """
    spent: dict[str, float] = {}
    for row in rows:
        if row.get("phase") == "train" and wire.EPSILON in row and ("error" not in row or row.get("declined")):
            site = str(row["site"])
            spent[site] = max(spent.get(site, 0.0), float(row[wire.EPSILON]))
        elif row.get("phase") == "evaluate" and "error" not in row and _finite(row.get(_FINE_TUNED_EPSILON)):
            # The last round's fine-tuning (personalization.fine_tune_epochs) spends privacy too, after every round.
            site = str(row["site"])
            spent[site] = max(spent.get(site, 0.0), float(row[_FINE_TUNED_EPSILON]))
    return spent


def _federation_epsilon(rows: Sequence[Mapping[str, Any]]) -> float:
    """The latest successful pooled train row's epsilon (central DP's one site-level guarantee); 0 if none."""
    latest: Mapping[str, Any] = {}
    for row in rows:
        pooled = row.get("phase") == "train" and row.get("site") == POOLED_SITE and "error" not in row
        if pooled and (not latest or row["round"] >= latest["round"]):
            latest = row
    return float(latest.get(wire.EPSILON, 0.0))


def final_epsilons(rows: Sequence[Mapping[str, Any]], *, central: bool) -> dict[str, float]:
    """The epsilon of every site (and of `POOLED_SITE`) at the end of the run, as ``summary.json`` gives it.

    Sites are those with a successful row of either phase, or a declined train row carrying its ledger's figure.
    Local DP (and no DP): each site's `spent_epsilons` figure (0 when it reported none), and the pooled figure is
    the worst site's, a site that declined late rounds included. Central DP: one federation-level figure for
    every site and the pooled row, from the latest pooled train row.

    Parameters
    ----------
    rows : sequence of mappings
        The run's metrics rows (``metrics.jsonl``).
    central : bool
        Whether the run used central DP (``privacy.mode = "central"``).

    Returns
    -------
    dict of str to float
        Site name (``"pooled"`` included when there is any site) to epsilon.
    """
    spent = spent_epsilons(rows)
    names = {str(row["site"]) for row in rows if row.get("phase") in PHASES and "error" not in row} | set(spent)
    if central:
        federation = _federation_epsilon(rows)
        return {name: federation for name in names}
    epsilons = {name: spent.get(name, 0.0) for name in names}
    sites = [epsilon for name, epsilon in epsilons.items() if name != POOLED_SITE]
    if sites:  # the worst site overall: one that declined late rounds still counts
        epsilons[POOLED_SITE] = max(sites)
    return epsilons
