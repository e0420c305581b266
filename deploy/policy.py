"""The hospital's own policy, enforced outside the app: which app bundles may run and what may leave the site.

The app a SuperNode runs is shipped by the server, so checks inside it hold only against a misconfigured server.
These checks run in the hospital's gate (`deploy.gate`), hospital-installed code that sees each task before the
shipped app is installed or imported, and each reply before it leaves:

- before: the bundle's SHA-256 (of the bytes the SuperNode received, not the hash the server claims) must be one
  the hospital approved; a training message may not exceed the rounds a run may train here; the run's privacy
  settings must give at least the smallest noise multiplier and at most the largest epsilon;
- after: only allowed metric names leave, arrays only in a training reply, and a trained model only with the
  epsilon it cost (and noise multiplier, when the run derived it from a target epsilon) within the limits.

The policy is a TOML file the hospital writes (``python -m deploy.policy template`` prints one to start from).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common import wire
from common.config import load_config
from common.errors import ConfigError, FedMammoError

__all__ = [
    "DEFAULT_ALLOWED_METRICS",
    "HospitalPolicy",
    "PolicyError",
    "PolicyRefused",
    "check_reply",
    "check_task",
    "load_policy",
    "main",
]

EPSILON_KEY = wire.EPSILON
NOISE_KEY = wire.NOISE_MULTIPLIER
MASKED_PARAMETERS = "masked_params"
"""The SecAgg+ record's key for a site's masked model (flwr's ``Key.MASKED_PARAMETERS``)."""

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
)  # fmt: skip
"""Every metric name fedmammo's app sends; all are counts, rates or fixed-size histograms, never per image."""

PROTOCOL_RECORDS = frozenset({"site", "fitres.status", "secaggplus_configs"})
"""Config records that carry no metrics: the site's chosen name, the legacy status, the SecAgg+ protocol."""

METRIC_CONFIG_RECORDS = frozenset({"fitres.metrics", "evaluateres.metrics"})
"""Config records that carry metrics (the legacy format SecAgg+ replies use): checked like metric records."""
SECAGG_METRICS, SECAGG_SITE = f"{wire.METRICS_KEY}.", f"{wire.SITE_KEY}."
"""Prefixes of the site's metrics and site record in a SecAgg+ reply (`common.wire.SECAGG_METRICS_PREFIX`)."""

_KEYS = {
    "approved-app-hashes",
    "audit-log",
    "server",
    "max-rounds-per-run",
    "max-evaluations-per-run",
    "min-noise-multiplier",
    "max-epsilon",
    "allowed-metrics",
    "allow-central-dp",
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
    """The SuperLink this SuperNode joins, as the hospital names it: recorded in every audit line."""
    max_rounds_per_run: int | None = None
    max_evaluations_per_run: int | None = None
    """Evaluation replies are not differentially private: each scores the test split with a model the server
    chose, so their number is a limit of its own."""
    min_noise_multiplier: float = 0.0
    max_epsilon: float | None = None
    allowed_metrics: tuple[str, ...] = DEFAULT_ALLOWED_METRICS
    allow_central_dp: bool = False
    """Central DP adds its noise on the server: allowed only if the hospital says so (and then only without a
    noise floor, which the hospital could not check)."""
    source: Path = field(default=Path("policy.toml"), compare=False)


def _fail(path: Path, key: str, value: object, rule: str) -> PolicyError:
    return PolicyError(f"policy file {path}: '{key}' = {value!r} is invalid: {rule}")


def _positive_number(path: Path, values: Mapping[str, Any], key: str, *, integer: bool = False) -> Any:
    if key not in values:
        return None
    value = values[key]
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value < 0:
        raise _fail(path, key, value, f"it must be a finite {'whole ' if integer else ''}number >= 0")
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
    central = values.get("allow-central-dp", False)
    if not isinstance(server, str):
        raise _fail(path, "server", server, "a string such as 'coordinator.example:8000'")
    if not isinstance(central, bool):
        raise _fail(path, "allow-central-dp", central, "true or false")
    policy = HospitalPolicy(
        approved_app_hashes=frozenset(hashes),
        audit_log=Path(audit_log).expanduser(),
        server=server,
        max_rounds_per_run=_positive_number(path, values, "max-rounds-per-run", integer=True),
        max_evaluations_per_run=_positive_number(path, values, "max-evaluations-per-run", integer=True),
        min_noise_multiplier=float(_positive_number(path, values, "min-noise-multiplier") or 0.0),
        max_epsilon=_positive_number(path, values, "max-epsilon"),
        allowed_metrics=tuple(metrics),
        allow_central_dp=central,
        source=path,
    )
    if policy.allow_central_dp and policy.min_noise_multiplier > 0:
        raise _fail(path, "allow-central-dp", True, "it cannot be combined with min-noise-multiplier > 0")
    return policy


def check_task(
    policy: HospitalPolicy,
    *,
    app_hash: str,
    run_config: Mapping[str, Any],
    trains: bool,
    rounds_trained: int,
    epsilon_spent: float | None,
    evaluates: bool = False,
    evaluations: int = 0,
) -> None:
    """Refuse a task before the shipped app is installed or imported.

    Parameters
    ----------
    app_hash : str
        SHA-256 of the bundle's bytes as received.
    run_config : Mapping
        The run's configuration as this node will run it (the bundle's defaults with the server's overrides).
    trains : bool
        Whether the message asks this site to train (a training message that carries the model).
    rounds_trained : int
        Training messages of this run already answered here (from the audit log).
    epsilon_spent : float or None
        The site's cumulative epsilon as last reported (from the audit log), if any.
    evaluates, evaluations : bool, int
        Whether the message asks for an evaluation, and how many this run already got here.

    Raises
    ------
    PolicyRefused
        With the reason, which the server sees.
    """
    if app_hash not in policy.approved_app_hashes:
        raise PolicyRefused(f"app bundle sha256 {app_hash} is not approved by this hospital's policy")
    if evaluates and policy.max_evaluations_per_run is not None and evaluations >= policy.max_evaluations_per_run:
        raise PolicyRefused(
            f"this run has had {evaluations} evaluation(s) at this site; the hospital's policy allows at most "
            f"{policy.max_evaluations_per_run} per run"
        )
    if not trains:
        return
    if policy.max_rounds_per_run is not None and rounds_trained >= policy.max_rounds_per_run:
        raise PolicyRefused(
            f"this run has trained {rounds_trained} round(s) at this site; the hospital's policy allows at most "
            f"{policy.max_rounds_per_run} per run"
        )
    if policy.max_epsilon is not None and epsilon_spent is not None and epsilon_spent >= policy.max_epsilon:
        raise PolicyRefused(
            f"this site has spent epsilon {epsilon_spent:.4g}; the hospital's policy allows at most "
            f"{policy.max_epsilon:g}"
        )
    try:
        config = load_config(dict(run_config))
    except ConfigError as exc:
        raise PolicyRefused(f"the run's configuration is invalid, so its privacy cannot be checked: {exc}") from exc
    privacy = config.privacy
    if policy.max_rounds_per_run is not None and config.strategy.num_rounds > policy.max_rounds_per_run:
        raise PolicyRefused(
            f"the run plans strategy.num_rounds = {config.strategy.num_rounds}; the hospital's policy allows at "
            f"most {policy.max_rounds_per_run} per run"
        )
    if privacy.mode == "central":
        if not policy.allow_central_dp:
            raise PolicyRefused(
                "privacy.mode = 'central' adds the noise on the server, which this hospital cannot check; its "
                "policy requires local DP-SGD (allow-central-dp = true would accept central DP)"
            )
    elif privacy.mode != "local":
        if policy.min_noise_multiplier > 0 or policy.max_epsilon is not None:
            raise PolicyRefused(
                f"privacy.mode = {privacy.mode!r} trains without differential privacy; the hospital's policy "
                "requires local DP-SGD"
            )
    elif privacy.target_epsilon <= 0:
        if privacy.noise_multiplier < policy.min_noise_multiplier:
            raise PolicyRefused(
                f"privacy.noise_multiplier = {privacy.noise_multiplier:g} is below the hospital's policy minimum "
                f"{policy.min_noise_multiplier:g}"
            )
    elif policy.max_epsilon is not None and privacy.target_epsilon > policy.max_epsilon:
        raise PolicyRefused(
            f"privacy.target_epsilon = {privacy.target_epsilon:g} is above the hospital's policy maximum "
            f"{policy.max_epsilon:g}"
        )


def _metric_records(content: RecordDict) -> list[tuple[str, Mapping[str, Any]]]:
    """Every record of metrics, by record name. A SecAgg+ reply carries the site's metrics in the legacy config
    record as ``metrics.<name>`` and its site record as ``site.<name>``: the metrics are checked by their own names."""
    records: list[tuple[str, Mapping[str, Any]]] = []
    for key, record in content.items():
        if isinstance(record, MetricRecord):
            records.append((key, record))
        elif isinstance(record, ConfigRecord) and key in METRIC_CONFIG_RECORDS:
            metrics = {n.removeprefix(SECAGG_METRICS): v for n, v in record.items() if not n.startswith(SECAGG_SITE)}
            records.append((key, metrics))
    return records


def reported(content: RecordDict, key: str) -> float | None:
    """A number the reply reports under ``key`` in any of its metric records (epsilon, noise multiplier)."""
    for _, record in _metric_records(content):
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def check_reply(policy: HospitalPolicy, content: RecordDict, *, trains: bool) -> None:
    """Withhold a reply that would send what the policy does not allow.

    Raises
    ------
    PolicyRefused
        Naming the record and key (never the value) and the rule.
    """
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            if not trains and len(record):
                raise PolicyRefused(f"record {key!r} would send model arrays in a reply that is not a training one")
        elif isinstance(record, ConfigRecord) and key not in PROTOCOL_RECORDS | METRIC_CONFIG_RECORDS:
            raise PolicyRefused(f"config record {key!r} is not one the hospital's policy lets leave")
    for key, record in _metric_records(content):
        for name in record:
            if not any(fnmatchcase(name, pattern) for pattern in policy.allowed_metrics):
                raise PolicyRefused(f"metric {name!r} in record {key!r} is not in the hospital's allowed-metrics")
    masked = content.get("secaggplus_configs")
    sends_model = any(isinstance(r, ArrayRecord) and len(r) for r in content.values()) or (
        isinstance(masked, ConfigRecord) and MASKED_PARAMETERS in masked  # SecAgg+: the model, masked
    )
    if not (trains and sends_model):
        return
    epsilon, noise = reported(content, EPSILON_KEY), reported(content, NOISE_KEY)
    if (policy.max_epsilon is not None or policy.min_noise_multiplier > 0) and epsilon is None:
        raise PolicyRefused("a trained model would leave without the epsilon it cost; the hospital's policy needs it")
    if policy.max_epsilon is not None and epsilon is not None and epsilon > policy.max_epsilon:
        raise PolicyRefused(f"epsilon {epsilon:.4g} is above the hospital's policy maximum {policy.max_epsilon:g}")
    if policy.min_noise_multiplier > 0 and noise is None:
        raise PolicyRefused("a trained model would leave without the noise multiplier it was trained with")
    if noise is not None and noise < policy.min_noise_multiplier:
        raise PolicyRefused(
            f"noise multiplier {noise:.4g} is below the hospital's policy minimum {policy.min_noise_multiplier:g}"
        )


_TEMPLATE = """# The hospital's policy for fedmammo runs (read by `python -m deploy.hospital_exec --policy THIS_FILE`).
# The server cannot change it: it lives on the hospital's disk, outside the app the server ships.

# SHA-256 of every app bundle the hospital reviewed and approved: `python -m deploy.app_hash APP_DIR`
# (the same digest `flwr build` names its .fab file after and `sha256sum` prints).
approved-app-hashes = [{hashes}]

# Where every message's decision and what left is appended (hash-chained; `python -m deploy.audit verify`).
audit-log = "/var/lib/fedmammo/audit.jsonl"

# The SuperLink this node joins, as recorded in the audit log.
server = "coordinator.example:8000"

max-rounds-per-run = 50
max-evaluations-per-run = 60     # evaluation replies (metrics on the test split) are not differentially private
min-noise-multiplier = 0.8
max-epsilon = 8.0
allow-central-dp = false

# Names of the metrics that may leave (shell-style patterns). The default is every name fedmammo sends:
allowed-metrics = [
{metrics}
]
"""


def main(argv: Sequence[str] | None = None) -> int:
    """``template`` prints a policy file to start from; ``check`` validates one."""
    parser = argparse.ArgumentParser(prog="python -m deploy.policy", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("template", "check"))
    parser.add_argument("policy", nargs="?", type=Path, help="the policy file (check)")
    parser.add_argument("--approve", action="append", default=[], help="an app hash to list (template)")
    args = parser.parse_args(argv)
    if args.action == "template":
        hashes = ", ".join(f'"{h}"' for h in args.approve) or '"<sha256 of the approved bundle>"'
        print(_TEMPLATE.format(hashes=hashes, metrics="\n".join(f'  "{m}",' for m in DEFAULT_ALLOWED_METRICS)), end="")
        return 0
    if args.policy is None:
        parser.error("check needs the policy file")
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.policy}: {len(policy.approved_app_hashes)} approved bundle(s), audit log {policy.audit_log}, "
        f"max rounds/run {policy.max_rounds_per_run}, min noise {policy.min_noise_multiplier:g}, "
        f"max epsilon {policy.max_epsilon}, {len(policy.allowed_metrics)} allowed metric pattern(s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
