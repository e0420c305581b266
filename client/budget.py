"""The privacy ceiling a hospital sets for itself on its SuperNode, and the check that declines a round past it."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError, PrivacyBudgetExceeded
from common.privacy import compute_epsilon

__all__ = [
    "DEFAULT_SITE_DELTA",
    "LIMITS_FILE_NAME",
    "MAX_DELTA_KEY",
    "MAX_EPSILON_KEY",
    "MIN_NOISE_KEY",
    "SiteBudget",
    "check_round",
    "site_budget",
]

LIMITS_FILE_NAME = "privacy_limits.toml"
"""Optional file in the site's folder with the same keys as the node config (node config wins)."""

MAX_EPSILON_KEY = "max-epsilon"
MAX_DELTA_KEY = "max-delta"
MIN_NOISE_KEY = "min-noise-multiplier"

DEFAULT_SITE_DELTA = 1e-5
"""The delta a site's ceiling is read at when it names none: its own, so the run config (the server's)
cannot make the same spending look cheaper by raising ``privacy.delta``."""


@dataclass(frozen=True)
class SiteBudget:
    """Limits from the site's own node config; the run config (the server's) cannot loosen them."""

    max_epsilon: float | None
    delta: float
    min_noise_multiplier: float


def _number(node_config: Mapping[str, object], key: str) -> float | None:
    if key not in node_config:
        return None
    try:
        value = float(node_config[key])  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"node config '{key}' = {node_config[key]!r} is not a number") from exc
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"node config '{key}' = {value!r} is invalid: it must be a finite number >= 0")
    return value


def _limits_file(site_dir: Path | None) -> dict[str, object]:
    path = site_dir / LIMITS_FILE_NAME if site_dir is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"privacy limits file {path} is unreadable ({exc}); fix it before this site trains") from exc
    unknown = sorted(set(values) - {MAX_EPSILON_KEY, MAX_DELTA_KEY, MIN_NOISE_KEY})
    if unknown:
        raise ConfigError(f"privacy limits file {path} has unknown key(s) {unknown}")
    return values


def site_budget(node_config: Mapping[str, object], site_dir: Path | None = None) -> SiteBudget:
    """The site's limits: ``max-epsilon``, ``max-delta`` (default :data:`DEFAULT_SITE_DELTA`), ``min-noise-multiplier``.

    They come from the SuperNode's ``--node-config`` or from ``privacy_limits.toml`` in the site's folder
    (node config wins), both under the hospital's control; the run config cannot set or loosen them.
    """
    node_config = {**_limits_file(site_dir), **node_config}
    delta = _number(node_config, MAX_DELTA_KEY)
    if delta is not None and not 0 < delta < 1:
        raise ConfigError(f"node config '{MAX_DELTA_KEY}' = {delta!r} is invalid: it must be in (0, 1)")
    return SiteBudget(
        max_epsilon=_number(node_config, MAX_EPSILON_KEY),
        delta=delta if delta is not None else DEFAULT_SITE_DELTA,
        min_noise_multiplier=_number(node_config, MIN_NOISE_KEY) or 0.0,
    )


def check_round(
    budget: SiteBudget,
    *,
    mode: str,
    history: Sequence[tuple[float, float, int]],
    planned: tuple[float, float, int],
    accountant: str,
    poisson_sampling: bool = True,
) -> None:
    """Decline the round (raise) if it would breach the site's own limits; ``planned`` is this round's entry.

    Raises
    ------
    PrivacyBudgetExceeded
        With the reason a hospital and the server's log should read: which limit, the figures, what to change.
    """
    limited = budget.max_epsilon is not None or budget.min_noise_multiplier > 0
    if limited and mode == "central":
        raise PrivacyBudgetExceeded(
            "declined: this run uses central DP (privacy.mode=central): the server, not this site, adds the noise, "
            "so this site's un-noised update would leave the hospital; this site only trains under local DP "
            "(its node config sets a privacy limit)"
        )
    if limited and mode != "local":
        raise PrivacyBudgetExceeded(
            f"declined: this run has differential privacy off (privacy.mode={mode}) and this site only trains "
            "under DP (its node config sets a privacy limit)"
        )
    if limited and not poisson_sampling:
        raise PrivacyBudgetExceeded(
            "declined: this run turns Poisson sampling off (privacy.poisson_sampling=false), so the accountant's "
            "epsilon would not bound this site's privacy loss; this site only trains with Poisson sampling"
        )
    noise = planned[0]
    if noise < budget.min_noise_multiplier:
        raise PrivacyBudgetExceeded(
            f"declined: the run's noise multiplier {noise:.3g} is below this site's minimum "
            f"{MIN_NOISE_KEY}={budget.min_noise_multiplier:g}"
        )
    if budget.max_epsilon is None:
        return
    spent = compute_epsilon(list(history), delta=budget.delta, accountant=accountant)
    projected = compute_epsilon([*history, planned], delta=budget.delta, accountant=accountant)
    if projected > budget.max_epsilon:
        raise PrivacyBudgetExceeded(
            f"declined: this round would bring the site's epsilon from {spent:.3g} to {projected:.3g} at delta "
            f"{budget.delta:g}, above its ceiling {MAX_EPSILON_KEY}={budget.max_epsilon:g}; the site trains no more "
            "on this data unless its ceiling is raised"
        )
