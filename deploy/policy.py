"""The hospital's own policy, enforced outside the app: which app bundles may run and what may leave the site.

The app a SuperNode runs is shipped by the server, so checks inside it hold only against a misconfigured server.
These checks run in the hospital's gate (`deploy.gate`): hospital-installed code that sees each task before the
shipped app is installed or imported (`check_task`, here) and each reply before it leaves (`deploy.reply_check`).
Before a task, the bundle's SHA-256 (of the bytes the SuperNode received, not the hash the server claims) must be
one the hospital approved, and the run must stay within the hospital's caps and privacy floor and ceiling.

The policy is a TOML file the hospital writes (``python -m deploy.policy template`` prints one to start from).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import wire
from common.config import load_config
from common.errors import ConfigError, FedMammoError

__all__ = [
    "DEFAULT_ALLOWED_METRICS",
    "HospitalPolicy",
    "PolicyError",
    "PolicyRefused",
    "SiteHistory",
    "TaskRequest",
    "check_task",
    "load_policy",
]

EPSILON_KEY = wire.EPSILON
NOISE_KEY = wire.NOISE_MULTIPLIER

DEFAULT_ALLOWED_METRICS: tuple[str, ...] = (
    # training: size, loss, steps, time, privacy spent
    "num-examples", "num_examples", "train_loss", "num_steps", "seconds", "sat_out", EPSILON_KEY, NOISE_KEY,
    # evaluation: the test split's loss, operating threshold, confusion counts and fixed-size score histograms
    "loss", "threshold", "tp", "fp", "tn", "fn", "score_hist_neg", "score_hist_pos",
    "auc", "auc_ci_low", "auc_ci_high", "sensitivity", "specificity", "ppv", "npv", "f1", "balanced_accuracy",
    "accuracy", "sensitivity_at_specificity", "num_positives", "num_negatives",
    # more than two classes: per-class figures and histograms, the K x K confusion counts
    "num_classes", "confusion_matrix", "macro_auc", "auc_class*", "auc_ci_low_class*", "auc_ci_high_class*",
    "num_cases_class*", "class_hist_neg_*", "class_hist_pos_*",
    # a cross-site study: per-model histograms, reliability bins, subgroup figures, paired differences
    "hist_neg", "hist_pos", "cal.*", "sub.*", "difference", "ci_low", "ci_high",
    # personalization.fine_tune_epochs: the fine-tuned copy's headline figures (the model itself never leaves)
    "ft_loss", "ft_threshold", "ft_tp", "ft_fp", "ft_tn", "ft_fn", "ft_auc", "ft_auc_ci_low", "ft_auc_ci_high",
    "ft_sensitivity", "ft_specificity", "ft_ppv", "ft_npv", "ft_f1", "ft_balanced_accuracy", "ft_accuracy",
    "ft_sensitivity_at_specificity", "ft_num_positives", "ft_num_negatives", "ft_epsilon", "ft_epochs", "ft_seconds",
    "ft_declined",
    # exam level: per breast and per exam (study) the AUC, counts and fixed-size score histograms
    "breast_auc", "breast_num_cases", "breast_num_positives", "breast_num_negatives", "breast_hist_neg",
    "breast_hist_pos", "exam_auc", "exam_num_cases", "exam_num_positives", "exam_num_negatives", "exam_hist_neg",
    "exam_hist_pos", "exam_rule_fallback",
    # the site's data as counts per split (train, val, test) for the model card: images, patients, cases per class
    "data_*_images", "data_*_patients", "data_*_label_*",
    # evaluation.localization (final round): counts of lesion-marked test images the Grad-CAM peak / box / baselines hit
    *wire.LOCALIZATION_KEYS,
)  # fmt: skip
"""Every metric name fedmammo's app sends; all are counts, rates or fixed-size histograms, never per image."""

_KEYS = {
    "approved-app-hashes",
    "audit-log",
    "server",
    "max-rounds-per-run",
    "max-evaluations-per-run",
    "min-noise-multiplier",
    "max-epsilon",
    "max-delta",
    "allowed-metrics",
    "allow-central-dp",
    "require-secure-aggregation",
    "min-subgroup",
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PolicyError(ConfigError):
    """The policy file is missing, unreadable, or a key breaks its rule (named with the file)."""


class PolicyRefused(FedMammoError, PermissionError):
    """The hospital's policy refused a task or withheld a reply; the message is the reason the server sees."""


@dataclass(frozen=True)
class HospitalPolicy:
    """What the hospital allows; read from its own file, which the server cannot reach."""

    approved_app_hashes: frozenset[str]
    audit_log: Path
    server: str = ""
    """The SuperLink this SuperNode joins as the hospital names it (a label in every audit line, not checked)."""
    max_rounds_per_run: int | None = None
    max_evaluations_per_run: int | None = None
    """Models scored on the test split per run (a study's request scores several at once). Evaluation replies
    are not differentially private: each scores the test split with a model the server chose."""
    min_noise_multiplier: float = 0.0
    max_epsilon: float | None = None
    max_delta: float | None = None
    """The delta the reported epsilon is computed at comes from the run config (the server's): without a ceiling
    on it, a server could make any spending look small against ``max_epsilon`` by raising it."""
    allowed_metrics: tuple[str, ...] = DEFAULT_ALLOWED_METRICS
    allow_central_dp: bool = False
    """Central DP adds its noise on the server: allowed only if the hospital says so, and then without a noise
    floor or an epsilon ceiling, which the hospital could not check."""
    require_secure_aggregation: bool = False
    """Train only in SecAgg+ rounds: no model leaves this site except masked."""
    min_subgroup: int = 10
    """The smallest group of test images a study may report a figure for (the run's ``study.min_subgroup``)."""
    source: Path = field(default=Path("policy.toml"), compare=False)


@dataclass(frozen=True)
class TaskRequest:
    """What the gate knows about a task before any of the bundle runs."""

    app_hash: str
    """SHA-256 of the bundle's bytes as received."""
    run_config: Mapping[str, Any]
    """The run's configuration as this node will run it (the bundle's defaults with the server's overrides)."""
    trains: bool = False
    """A training message that carries the model (one round's training)."""
    models_scored: int = 0
    """Models an evaluate message asks this site to score (0 for other messages)."""


@dataclass(frozen=True)
class SiteHistory:
    """From the audit log: what this run has had here, and what the site has spent."""

    rounds_trained: int = 0
    models_scored: int = 0
    epsilon_spent: float | None = None


def _fail(path: Path, key: str, value: object, rule: str) -> PolicyError:
    return PolicyError(f"policy file {path}: '{key}' = {value!r} is invalid: {rule}")


def _number(path: Path, values: Mapping[str, Any], key: str, *, integer: bool = False) -> Any:
    if key not in values:
        return None
    value = values[key]
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value < 0:
        raise _fail(path, key, value, f"it must be a finite {'whole ' if integer else ''}number >= 0")
    return value


def _flag(path: Path, values: Mapping[str, Any], key: str) -> bool:
    value = values.get(key, False)
    if not isinstance(value, bool):
        raise _fail(path, key, value, "true or false")
    return value


def load_policy(path: Path) -> HospitalPolicy:
    """Read and validate the hospital's policy file; every broken rule names the file and the key."""
    path = Path(path).expanduser()
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"policy file {path} cannot be read ({exc}): the gate refuses every task without it") from exc
    unknown = sorted(set(values) - _KEYS)
    if unknown:
        raise PolicyError(f"policy file {path} has unknown key(s) {unknown}; it may hold {sorted(_KEYS)}")
    hashes = values.get("approved-app-hashes")
    if not isinstance(hashes, list) or not hashes or not all(isinstance(h, str) and _SHA256.match(h) for h in hashes):
        raise _fail(path, "approved-app-hashes", hashes, "a non-empty list of SHA-256 hex digests (lower case)")
    audit_log = values.get("audit-log")
    if not isinstance(audit_log, str) or not audit_log:
        raise _fail(path, "audit-log", audit_log, "the path of the audit log file, on the hospital's disk")
    metrics = values.get("allowed-metrics", list(DEFAULT_ALLOWED_METRICS))
    if not isinstance(metrics, list) or not all(isinstance(m, str) and m for m in metrics):
        raise _fail(path, "allowed-metrics", metrics, "a list of metric names (shell-style patterns allowed)")
    server = values.get("server", "")
    if not isinstance(server, str):
        raise _fail(path, "server", server, "a string such as 'coordinator.example:8000'")
    max_delta = _number(path, values, "max-delta")
    if max_delta is not None and not 0 < max_delta < 1:
        raise _fail(path, "max-delta", max_delta, "it must be in (0, 1)")
    min_subgroup = _number(path, values, "min-subgroup", integer=True)
    policy = HospitalPolicy(
        approved_app_hashes=frozenset(hashes),
        audit_log=Path(audit_log).expanduser(),
        server=server,
        max_rounds_per_run=_number(path, values, "max-rounds-per-run", integer=True),
        max_evaluations_per_run=_number(path, values, "max-evaluations-per-run", integer=True),
        min_noise_multiplier=float(_number(path, values, "min-noise-multiplier") or 0.0),
        max_epsilon=_number(path, values, "max-epsilon"),
        max_delta=max_delta,
        allowed_metrics=tuple(metrics),
        allow_central_dp=_flag(path, values, "allow-central-dp"),
        require_secure_aggregation=_flag(path, values, "require-secure-aggregation"),
        min_subgroup=10 if min_subgroup is None else max(int(min_subgroup), 1),
        source=path,
    )
    if policy.allow_central_dp and (policy.min_noise_multiplier > 0 or policy.max_epsilon is not None):
        raise _fail(path, "allow-central-dp", True, "it cannot be combined with min-noise-multiplier or max-epsilon")
    if policy.max_epsilon is not None and policy.max_delta is None:
        raise _fail(path, "max-delta", None, "a max-epsilon needs the delta it is read at: set max-delta too")
    return policy


def _check_training(policy: HospitalPolicy, request: TaskRequest, history: SiteHistory, config: Any) -> None:
    """A training round: the caps, then the run's privacy against the floor and ceilings."""
    if policy.max_rounds_per_run is not None and history.rounds_trained >= policy.max_rounds_per_run:
        raise PolicyRefused(
            f"this run has trained {history.rounds_trained} round(s) at this site; the hospital's policy allows at "
            f"most {policy.max_rounds_per_run} per run"
        )
    spent = history.epsilon_spent
    if policy.max_epsilon is not None and spent is not None and not spent < policy.max_epsilon:
        raise PolicyRefused(f"this site has spent epsilon {spent:.4g}; the hospital's policy allows at most "
                            f"{policy.max_epsilon:g}")  # fmt: skip
    if policy.max_rounds_per_run is not None and config.strategy.num_rounds > policy.max_rounds_per_run:
        raise PolicyRefused(
            f"the run plans strategy.num_rounds = {config.strategy.num_rounds}; the hospital's policy allows at "
            f"most {policy.max_rounds_per_run} per run"
        )
    if policy.require_secure_aggregation and not config.secure_aggregation.enabled:
        raise PolicyRefused("the hospital's policy trains only under secure aggregation (secure_aggregation.enabled)")
    _check_privacy(policy, config)


def _check_privacy(policy: HospitalPolicy, config: Any) -> None:
    """Whatever trains on the site's data (a round, or the final evaluation's fine-tuning): floor and ceilings."""
    privacy = config.privacy
    if policy.max_delta is not None and not privacy.delta <= policy.max_delta:
        raise PolicyRefused(f"privacy.delta = {privacy.delta:g} is above the hospital's policy maximum "
                            f"{policy.max_delta:g}")  # fmt: skip
    if privacy.mode == "central":
        if not policy.allow_central_dp:
            raise PolicyRefused(
                "privacy.mode = 'central' adds the noise on the server, which this hospital cannot check; its "
                "policy requires local DP-SGD (allow-central-dp = true would accept central DP)"
            )
    elif privacy.mode != "local":
        if policy.min_noise_multiplier > 0 or policy.max_epsilon is not None:
            raise PolicyRefused(f"privacy.mode = {privacy.mode!r} trains without differential privacy; the "
                                "hospital's policy requires local DP-SGD")  # fmt: skip
    elif privacy.target_epsilon <= 0:
        if not privacy.noise_multiplier >= policy.min_noise_multiplier:
            raise PolicyRefused(
                f"privacy.noise_multiplier = {privacy.noise_multiplier:g} is below the hospital's policy minimum "
                f"{policy.min_noise_multiplier:g}"
            )
    elif policy.max_epsilon is not None and not privacy.target_epsilon <= policy.max_epsilon:
        raise PolicyRefused(f"privacy.target_epsilon = {privacy.target_epsilon:g} is above the hospital's policy "
                            f"maximum {policy.max_epsilon:g}")  # fmt: skip


def check_task(policy: HospitalPolicy, request: TaskRequest, history: SiteHistory) -> None:
    """Refuse a task before the shipped app is installed or imported.

    Raises
    ------
    PolicyRefused
        With the reason, which the server sees.
    """
    if request.app_hash not in policy.approved_app_hashes:
        raise PolicyRefused(f"app bundle sha256 {request.app_hash} is not approved by this hospital's policy")
    try:
        config = load_config(dict(request.run_config))
    except ConfigError as exc:
        raise PolicyRefused(f"the run's configuration is invalid, so it cannot be checked: {exc}") from exc
    if request.models_scored:
        cap = policy.max_evaluations_per_run
        if cap is not None and history.models_scored + request.models_scored > cap:
            raise PolicyRefused(
                f"this run has had {history.models_scored} model(s) scored at this site and asks for "
                f"{request.models_scored} more; the hospital's policy allows at most {cap} per run"
            )
        if config.study.min_subgroup < policy.min_subgroup:
            raise PolicyRefused(
                f"study.min_subgroup = {config.study.min_subgroup} is below the hospital's policy minimum "
                f"{policy.min_subgroup}: smaller groups could describe single patients"
            )
    if request.trains:
        _check_training(policy, request, history, config)
    elif request.models_scored and config.personalization.fine_tune_epochs > 0:
        _check_privacy(policy, config)  # the final evaluation fine-tunes on the site's data first


if __name__ == "__main__":  # `python -m deploy.policy template|check`: the command line is in deploy.policy_cli
    import sys

    from deploy.policy_cli import main

    sys.exit(main())
