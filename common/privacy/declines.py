"""The fixed form in which a site's decline carries its ledger's epsilon, written by the site, read by the server."""

from __future__ import annotations

import re

__all__ = ["SPENT_FIELD", "SPENT_TEMPLATE", "parse_spent"]

SPENT_FIELD = "ledger-epsilon"
"""A declined round replies with an error, and Flower's error replies carry only a reason string; this field in
it is how the site's cumulative epsilon still reaches the server's records."""

SPENT_TEMPLATE = "[ledger-epsilon={!r} at delta {:g}]"
"""The note's fixed text, filled with (epsilon, delta) only: numbers, so it may leave the site. A site appends it
with ``FedMammoError.extended(SPENT_TEMPLATE, epsilon, delta)`` (`client.budget.declined_with_spending`), which
keeps the template a literal and the figures numbers: ``[ledger-epsilon=2.17 at delta 0.0001]``, or
``[ledger-epsilon=inf at delta 1e-05]`` once a step had no noise."""

_NOTE = re.compile(rf"\[{SPENT_FIELD}=(inf|\d+(?:\.\d*)?(?:e[+-]?\d+)?) at delta \S+\]")


def parse_spent(reason: str) -> float | None:
    """The epsilon in a reason that carries :data:`SPENT_TEMPLATE` (the last one), or ``None`` if it carries none."""
    found = _NOTE.findall(reason)
    return float(found[-1]) if found else None
