"""``python -m deploy.policy template|check``: a policy file to start from, and a check of one."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from deploy.policy import DEFAULT_ALLOWED_METRICS, PolicyError, load_policy

__all__ = ["TEMPLATE", "main"]

TEMPLATE = """# The hospital's policy for fedmammo runs (read by `python -m deploy.hospital_exec --policy THIS_FILE`).
# The server cannot change it: it lives on the hospital's disk, outside the app the server ships.

# SHA-256 of every app bundle the hospital reviewed and approved: `python -m deploy.app_hash APP_DIR`
# (the same digest `flwr build` names its .fab file after and `sha256sum` prints).
approved-app-hashes = [{hashes}]

# Where every message's decision and what left is appended (hash-chained; `python -m deploy.audit verify`).
audit-log = "/var/lib/fedmammo/audit.jsonl"

# The SuperLink this node joins, as recorded in the audit log (a label: the SuperNode's --superlink decides).
server = "coordinator.example:8000"

max-rounds-per-run = 50
max-evaluations-per-run = 60     # models scored on the test split; evaluation replies are not DP
min-noise-multiplier = 0.8
max-epsilon = 8.0
max-delta = 1e-4                 # the delta max-epsilon is read at (the run's privacy.delta may not exceed it)
min-subgroup = 10                # the smallest group a study may report a figure for
allow-central-dp = false
require-secure-aggregation = false

# Names of the metrics that may leave (shell-style patterns). The default is every name fedmammo sends:
allowed-metrics = [
{metrics}
]
"""


def main(argv: Sequence[str] | None = None) -> int:
    """``template`` prints a policy file to start from; ``check`` validates one (exit 2 naming the key)."""
    parser = argparse.ArgumentParser(prog="python -m deploy.policy", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("template", "check"))
    parser.add_argument("policy", nargs="?", type=Path, help="the policy file (check)")
    parser.add_argument("--approve", action="append", default=[], help="an app hash to list (template)")
    args = parser.parse_args(argv)
    if args.action == "template":
        hashes = ", ".join(f'"{h}"' for h in args.approve) or '"<sha256 of the approved bundle>"'
        metrics = "\n".join(f'  "{m}",' for m in DEFAULT_ALLOWED_METRICS)
        sys.stdout.write(TEMPLATE.format(hashes=hashes, metrics=metrics))
        return 0
    if args.policy is None:
        parser.error("check needs the policy file")
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(
        f"{args.policy}: {len(policy.approved_app_hashes)} approved bundle(s), audit log {policy.audit_log}, "
        f"max rounds/run {policy.max_rounds_per_run}, max models scored/run {policy.max_evaluations_per_run}, "
        f"min noise {policy.min_noise_multiplier:g}, max epsilon {policy.max_epsilon} at delta {policy.max_delta}, "
        f"{len(policy.allowed_metrics)} allowed metric pattern(s)\n"
    )
    return 0
