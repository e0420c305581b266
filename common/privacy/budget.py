"""From a target (epsilon, delta) budget to the noise multiplier that spends exactly it over the round plan."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
from opacus.accountants.utils import get_noise_multiplier

from common.config import PrivacyConfig
from common.errors import ConfigError

__all__ = ["noise_multiplier_for_budget", "planned_sampling", "privacy_for_budget"]


def planned_sampling(num_examples: int, batch_size: int) -> tuple[float, int]:
    """Sample rate and steps per epoch exactly as Opacus will record them for this training set.

    Opacus' Poisson loader takes ``sample_rate = 1 / len(data_loader)`` and runs ``len(data_loader)`` steps
    per epoch, where the loader has ``ceil(N / batch)`` batches (``batch`` capped at ``N`` as `train_local`
    does). Using ``batch / N`` instead would disagree with the accountant whenever ``batch`` does not divide N.

    Parameters
    ----------
    num_examples : int
        Size of the site's training set (>= 1).
    batch_size : int
        ``training.batch_size`` (the logical batch).

    Returns
    -------
    tuple of (float, int)
        ``(sample_rate, steps_per_epoch)``.
    """
    if num_examples < 1 or batch_size < 1:
        raise ConfigError(
            f"planned_sampling needs num_examples >= 1 and batch_size >= 1, got {num_examples}, {batch_size}"
        )
    steps = math.ceil(num_examples / min(batch_size, num_examples))
    return 1.0 / steps, steps


def noise_multiplier_for_budget(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    epochs_total: int,
    steps_per_epoch: int | None = None,
    accountant: str = "rdp",
) -> float:
    """Smallest noise multiplier (to 1% of epsilon) whose whole training run spends at most ``target_epsilon``.

    A budget is what a data-protection officer signs off, not a noise level; this turns one into the other
    with Opacus' binary search (``opacus.accountants.utils.get_noise_multiplier``).

    Parameters
    ----------
    target_epsilon, delta : float
        The (epsilon, delta) guarantee the site must end at, after every planned step.
    sample_rate : float
        Poisson sampling rate of one step (see `planned_sampling`).
    epochs_total : int
        Epochs over the whole federation: ``strategy.num_rounds * training.local_epochs``.
    steps_per_epoch : int, optional
        Steps per epoch; ``None`` lets Opacus use ``int(1 / sample_rate)``.
    accountant : str
        ``"rdp"`` or ``"prv"``: the accountant that will report the spending.

    Returns
    -------
    float
        The noise multiplier; replaying ``epochs_total * steps_per_epoch`` steps at it gives epsilon
        in ``[target - tolerance, target]``.

    Raises
    ------
    ConfigError
        If the target is not positive or is too small to reach with any noise below 1e6.
    """
    if target_epsilon <= 0 or epochs_total < 1:
        raise ConfigError(
            f"privacy.target_epsilon = {target_epsilon!r} over {epochs_total} epoch(s) is invalid: "
            "a budget needs target_epsilon > 0 and at least one epoch"
        )
    kwargs: dict[str, int] = (
        {"steps": epochs_total * steps_per_epoch} if steps_per_epoch is not None else {"epochs": epochs_total}
    )
    try:
        with np.errstate(divide="ignore"), warnings.catch_warnings():  # PRV: log(1 - q) is -inf at q = 1
            # The binary search probes extreme noise levels, where RDP's best order sits at the grid's edge.
            warnings.filterwarnings("ignore", message="Optimal order is the", category=UserWarning)
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    accountant=accountant,
                    epsilon_tolerance=min(0.01, 0.01 * target_epsilon),
                    **kwargs,
                )
            )
    except ValueError as exc:
        raise ConfigError(
            f"privacy.target_epsilon = {target_epsilon!r} cannot be reached at delta {delta} over {kwargs} "
            f"at sample rate {sample_rate:.4g}: {exc}; raise the target or plan fewer rounds/epochs"
        ) from exc


def privacy_for_budget(
    privacy: PrivacyConfig, *, num_examples: int, batch_size: int, epochs_total: int
) -> PrivacyConfig:
    """The site's privacy settings with ``noise_multiplier`` derived from ``target_epsilon`` when one is set.

    The result depends only on the plan and the site's training-set size, so a site gets the same noise
    in every round and ends the federation at the target. Unchanged when DP is off or the target is 0.

    Parameters
    ----------
    privacy : PrivacyConfig
        The run's settings.
    num_examples : int
        Size of this site's training set.
    batch_size : int
        ``training.batch_size``.
    epochs_total : int
        ``strategy.num_rounds * training.local_epochs``.

    Returns
    -------
    PrivacyConfig
    """
    if not privacy.local or privacy.target_epsilon <= 0:
        return privacy
    sample_rate, steps = planned_sampling(num_examples, batch_size)
    sigma = noise_multiplier_for_budget(
        target_epsilon=privacy.target_epsilon,
        delta=privacy.delta,
        sample_rate=sample_rate,
        epochs_total=epochs_total,
        steps_per_epoch=steps,
        accountant=privacy.accountant,
    )
    return dataclasses.replace(privacy, noise_multiplier=sigma)
