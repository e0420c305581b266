"""The privacy ceiling a hospital sets for itself on its SuperNode, and the check that declines a round past it."""

from __future__ import annotations

import logging
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.config import PrivacyConfig
from common.errors import ConfigError, PrivacyBudgetExceeded
from common.privacy import SPENT_TEMPLATE, compute_epsilon

__all__ = [
    "ACCOUNTANT_KEY",
    "DEFAULT_SITE_DELTA",
    "LIMITS_FILE_NAME",
    "MAX_DELTA_KEY",
    "MAX_EPSILON_KEY",
    "MIN_NOISE_KEY",
    "SITE_ACCOUNTANTS",
    "SiteBudget",
    "check_round",
    "declined_with_spending",
    "guarded_epsilon",
    "site_budget",
    "site_epsilon",
]

logger = logging.getLogger(__name__)

LIMITS_FILE_NAME = "privacy_limits.toml"
"""Optional file in the site's folder with the same keys as the node config (node config wins)."""

MAX_EPSILON_KEY = "max-epsilon"
MAX_DELTA_KEY = "max-delta"
MIN_NOISE_KEY = "min-noise-multiplier"
ACCOUNTANT_KEY = "accountant"
"""The accountant the site's ceiling is read with; the run's ``privacy.accountant`` has no say in it."""

SITE_ACCOUNTANTS = ("both", "rdp", "prv")
"""``both`` (the default): the larger of the RDP and PRV epsilons, so neither accountant's optimism counts."""

_PRV_ABOVE_RDP = 200.0
"""Above this RDP epsilon RDP's figure stands without computing PRV's (`guarded_epsilon`): PRV's grid (and memory,
gigabytes at epsilon in the thousands) grows with epsilon, and RDP's figure is an upper bound on its own, far past
any ceiling a hospital would set."""

DEFAULT_SITE_DELTA = 1e-5
"""The delta a site's ceiling is read at when it names none: its own, so the run config (the server's)
cannot make the same spending look cheaper by raising ``privacy.delta``."""


@dataclass(frozen=True)
class SiteBudget:
    """Limits from the site's own node config; the run config (the server's) cannot loosen them."""

    max_epsilon: float | None
    delta: float
    min_noise_multiplier: float
    accountant: str = "both"
    """The accountant the ceiling is read with: ``both`` (default), ``rdp`` or ``prv`` (see `site_epsilon`)."""


def _number(node_config: Mapping[str, object], key: str) -> float | None:
    if key not in node_config:
        return None
    try:
        if isinstance(node_config[key], bool):  # TOML's true would read as 1.0
            raise TypeError("a boolean")
        value = float(node_config[key])  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"node config '{key}' = {node_config[key]!r} is not a number") from exc
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"node config '{key}' = {value!r} is invalid: it must be a finite number >= 0")
    return value


_LIMITS_UNREADABLE = (
    "the site's privacy limits file is there but cannot be read (not a regular file, a dangling link, unreadable "
    "or not valid TOML); the site will not train until its limits can be read"
)


def _limits_file(site_dir: Path | None) -> dict[str, object]:
    """The limits file's keys; an absent file is no limits, but one that is there and cannot be read fails closed.

    A folder, a dangling link or an unreadable file where the limits should be means the hospital meant to set
    limits: reading that as "no limits" would train without them.
    """
    path = site_dir / LIMITS_FILE_NAME if site_dir is not None else None
    if path is None or not os.path.lexists(path):
        return {}
    if not path.is_file():
        kind = "a dangling link" if path.is_symlink() and not path.exists() else "not a regular file"
        raise ConfigError(
            f"privacy limits file {path} is {kind}; the site will not train until its limits can be read: "
            f"make it a TOML file with keys {MAX_EPSILON_KEY}, {MAX_DELTA_KEY}, {MIN_NOISE_KEY}, {ACCOUNTANT_KEY}",
            public=_LIMITS_UNREADABLE,
        )
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"privacy limits file {path} is unreadable ({exc}); the site will not train until its limits can be "
            "read: fix the file",
            public=_LIMITS_UNREADABLE,
        ) from exc
    unknown = sorted(set(values) - {MAX_EPSILON_KEY, MAX_DELTA_KEY, MIN_NOISE_KEY, ACCOUNTANT_KEY})
    if unknown:
        raise ConfigError(
            f"privacy limits file {path} has unknown key(s) {unknown}; it may hold {MAX_EPSILON_KEY}, "
            f"{MAX_DELTA_KEY}, {MIN_NOISE_KEY} and {ACCOUNTANT_KEY}",
            public="the site's privacy limits file has an unknown key; the site will not train until it is fixed",
        )
    return values


def site_budget(node_config: Mapping[str, object], site_dir: Path | None = None) -> SiteBudget:
    """The site's limits: ``max-epsilon``, ``max-delta`` (default :data:`DEFAULT_SITE_DELTA`), ``min-noise-multiplier``
    and ``accountant`` (default ``both``).

    They come from the SuperNode's ``--node-config`` or from ``privacy_limits.toml`` in the site's folder
    (node config wins), both under the hospital's control; the run config cannot set or loosen them.

    Raises
    ------
    ConfigError
        If a value is invalid, or the limits file is there but is not a readable TOML file of these keys.
    """
    node_config = {**_limits_file(site_dir), **node_config}
    delta = _number(node_config, MAX_DELTA_KEY)
    if delta is not None and not 0 < delta < 1:
        raise ConfigError(f"node config '{MAX_DELTA_KEY}' = {delta!r} is invalid: it must be in (0, 1)")
    accountant = node_config.get(ACCOUNTANT_KEY, SITE_ACCOUNTANTS[0])
    if accountant not in SITE_ACCOUNTANTS:
        raise ConfigError(
            f"node config '{ACCOUNTANT_KEY}' = {accountant!r} is invalid: it must be one of {list(SITE_ACCOUNTANTS)}"
        )
    return SiteBudget(
        max_epsilon=_number(node_config, MAX_EPSILON_KEY),
        delta=delta if delta is not None else DEFAULT_SITE_DELTA,
        min_noise_multiplier=_number(node_config, MIN_NOISE_KEY) or 0.0,
        accountant=str(accountant),
    )


def guarded_epsilon(history: Sequence[tuple[float, float, int]], *, delta: float, accountant: str) -> float:
    """Epsilon of ``history`` at ``delta`` by ``accountant`` (``rdp``, ``prv`` or ``both``), PRV kept in bounds.

    PRV is computed only where RDP's figure is finite and at most :data:`_PRV_ABOVE_RDP`, and a PRV that fails
    numerically leaves RDP's figure (logged): RDP is an analytic upper bound on its own, so the answer never
    reads lower than the truth, and a huge history cannot take the site's memory while it holds its ledger.
    ``both`` takes the larger of the two.
    """
    entries = list(history)
    rdp = compute_epsilon(entries, delta=delta, accountant="rdp")
    if accountant == "rdp" or not math.isfinite(rdp) or rdp > _PRV_ABOVE_RDP:
        return rdp
    try:
        prv = compute_epsilon(entries, delta=delta, accountant="prv")
    except (ValueError, ArithmeticError) as exc:
        logger.warning("PRV accountant failed (%s: %s); RDP's epsilon stands", type(exc).__name__, exc)
        return rdp
    return max(rdp, prv) if accountant == "both" else prv


def site_epsilon(budget: SiteBudget, history: Sequence[tuple[float, float, int]]) -> float:
    """Epsilon of ``history`` as the site reads its ceiling: at its own delta, by its own accountant.

    ``both`` takes the larger of RDP's and PRV's figures. Both are upper bounds on the true epsilon, but
    neither is provably the smaller one, and the run (the server) could otherwise pick whichever reads lower;
    the larger costs the site at most the gap between them (PRV is usually about 10% lower). PRV is guarded
    as `guarded_epsilon` says.
    """
    return guarded_epsilon(history, delta=budget.delta, accountant=budget.accountant)


def declined_with_spending(
    declined: PrivacyBudgetExceeded, history: Sequence[tuple[float, float, int]], privacy: PrivacyConfig
) -> PrivacyBudgetExceeded:
    """The decline with the ledger's epsilon appended, in its message and its public reason, in the fixed form
    the server reads (:data:`common.privacy.SPENT_TEMPLATE`, parsed by `common.privacy.parse_spent`).

    A declined round sends no metrics, only a reason; without this the server would show the site as having
    spent nothing. The figure is at the run's ``privacy.delta`` by its ``privacy.accountant``, as a trained
    round reports it, so a site's epsilon column stays one quantity (the decline's own text keeps the site's).
    It is computed as the budget check computes (`guarded_epsilon`), as this runs while the round holds the
    ledger's lock; should it fail anyway, the decline goes out without the figure rather than as a crash.
    """
    try:
        epsilon = guarded_epsilon(history, delta=privacy.delta, accountant=privacy.accountant)
        return declined.extended(SPENT_TEMPLATE, epsilon, privacy.delta)
    except Exception:  # the decline is what the hospital decided: it must reach the server whatever else fails
        logger.exception("could not compute the ledger's epsilon for the decline; it goes out without the figure")
        return declined


def check_round(
    budget: SiteBudget,
    *,
    mode: str,
    history: Sequence[tuple[float, float, int]],
    planned: tuple[float, float, int],
    accountant: str | None = None,
    poisson_sampling: bool = True,
) -> None:
    """Decline the round (raise) if it would breach the site's own limits; ``planned`` is this round's entry.

    The ceiling is read at the site's delta by the site's accountant (``budget``); ``accountant`` (the run's
    ``privacy.accountant``) is accepted and ignored, as nothing in the run config may decide whether a
    site's limit holds.

    Raises
    ------
    PrivacyBudgetExceeded
        With the reason a hospital and the server's log should read: which limit, the figures, what to change.
    """
    del accountant  # the run's choice: deliberately unused
    limited = budget.max_epsilon is not None or budget.min_noise_multiplier > 0
    if limited and mode == "central":
        raise PrivacyBudgetExceeded(
            "declined: this run uses central DP (privacy.mode=central): the server, not this site, adds the noise, "
            "so this site's un-noised update would leave the hospital; this site only trains under local DP "
            "(its node config sets a privacy limit)",
            public="declined: this run uses central DP (privacy.mode=central): the server, not this site, adds the "
            "noise, so this site's un-noised update would leave the hospital; this site only trains under local DP",
        )
    if limited and mode != "local":
        raise PrivacyBudgetExceeded(
            f"declined: this run has differential privacy off (privacy.mode={mode}) and this site only trains "
            "under DP (its node config sets a privacy limit)",
            public="declined: this run has differential privacy off and this site only trains under DP",
        )
    if limited and not poisson_sampling:
        raise PrivacyBudgetExceeded(
            "declined: this run turns Poisson sampling off (privacy.poisson_sampling=false), so the accountant's "
            "epsilon would not bound this site's privacy loss; this site only trains with Poisson sampling",
            public="declined: this run turns Poisson sampling off (privacy.poisson_sampling=false), so the "
            "accountant's epsilon would not bound this site's privacy loss; this site only trains with Poisson "
            "sampling",
        )
    noise = planned[0]
    if noise < budget.min_noise_multiplier:
        raise PrivacyBudgetExceeded(
            f"declined: the run's noise multiplier {noise:.3g} is below this site's minimum "
            f"{MIN_NOISE_KEY}={budget.min_noise_multiplier:g}",
            public="declined: the run's noise multiplier {:.3g} is below this site's minimum min-noise-multiplier={:g}",
            figures=(noise, budget.min_noise_multiplier),
        )
    if budget.max_epsilon is None:
        return
    projected = site_epsilon(budget, [*history, planned])
    if projected > budget.max_epsilon:
        spent = site_epsilon(budget, history)
        raise PrivacyBudgetExceeded(
            f"declined: this round would bring the site's epsilon from {spent:.3g} to {projected:.3g} at delta "
            f"{budget.delta:g}, above its ceiling {MAX_EPSILON_KEY}={budget.max_epsilon:g} (by the site's "
            f"{ACCOUNTANT_KEY}={budget.accountant}); the site trains no more on this data unless its ceiling is raised",
            public="declined: this round would bring the site's epsilon from {:.3g} to {:.3g} at delta {:g}, above "
            "its ceiling max-epsilon={:g} (by the site's own accountant); the site trains no more on this data "
            "unless its ceiling is raised",
            figures=(spent, projected, budget.delta, budget.max_epsilon),
        )
