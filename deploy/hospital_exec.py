"""The hospital-run SuperExec: Flower's own, except that every task it launches goes through the hospital's gate.

With ``flower-supernode --isolation process`` the SuperNode starts no executor of its own; this process (run by
the hospital beside it) takes each task from the SuperNode's local Runtime API and launches `deploy.gate` for it
instead of Flower's ``flwr-clientapp``. The gate checks the hospital's policy before any of the shipped bundle
runs and writes the audit log before anything leaves (`deploy.gate`, `deploy.policy`)::

    flower-supernode --isolation process --superlink coordinator.example:8000 ... &
    python -m deploy.hospital_exec --policy /etc/fedmammo/policy.toml --runtime-api-address 127.0.0.1:9094 --insecure

The loop, task acquisition and authentication are Flower's (``flwr.supercore.superexec.run_superexec``, flwr 1.41);
only the plugin that launches a task is ours. The policy is validated once at start, so a broken file stops this
process with the reason instead of refusing every task later.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import LaunchResult
from flwr.supercore.superexec.plugin import AutoExecPlugin

from deploy.gate import TOKEN_ENV
from deploy.policy import PolicyError, load_policy

__all__ = ["GatedExecPlugin", "gate_command", "main"]


def gate_command(
    policy: Path, runtime_api_address: str, *, insecure: bool, root_certificates: str | None, parent_pid: int
) -> list[str]:
    """The command that runs one task through the gate (the token goes in the environment, not here)."""
    # -P: the working directory (writable, in the container) is not put first on the import path.
    command = [sys.executable, "-P", "-m", "deploy.gate", "--policy", str(policy)]
    command += ["--runtime-api-address", runtime_api_address, "--parent-pid", str(parent_pid)]
    if insecure:
        command.append("--insecure")
    elif root_certificates is not None:
        command += ["--root-certificates", root_certificates]
    return command


class GatedExecPlugin(AutoExecPlugin):
    """Launches ClientApp tasks through `deploy.gate`; refuses every other kind of task on a hospital node."""

    policy_path: Path = Path("policy.toml")

    def launch_task(self, token: str, task: Task) -> LaunchResult:
        """Start the gate for a ClientApp task, with the task's token in its environment."""
        if task.type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"a hospital node runs ClientApp tasks only, not {task.type!r}")
        command = gate_command(
            self.policy_path,
            self.runtime_api_address,
            insecure=self.insecure,
            root_certificates=self.root_certificates_path,
            parent_pid=os.getpid(),
        )
        subprocess.Popen(command, env={**os.environ, TOKEN_ENV: token})
        return LaunchResult.accepted()


def main(argv: Sequence[str] | None = None) -> int:
    """Validate the policy, then run Flower's SuperExec loop with the gated plugin."""
    parser = argparse.ArgumentParser(prog="python -m deploy.hospital_exec", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, type=Path, help="the hospital's policy file (TOML)")
    parser.add_argument("--runtime-api-address", default="127.0.0.1:9094", help="the SuperNode's --host:--port")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to the SuperNode on this machine")
    parser.add_argument("--root-certificates", default=None, help="CA of the SuperNode's Runtime API certificate")
    parser.add_argument("--health-server-address", default=None)
    parser.add_argument(
        "--superexec-auth-secret-file",
        default=None,
        help="the secret shared with `flower-supernode --superexec-auth-secret-file`: only a SuperExec holding it "
        "can take this node's tasks from its local Runtime API",
    )
    args = parser.parse_args(argv)
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stderr.write(
        f"hospital gate: {len(policy.approved_app_hashes)} approved bundle(s); audit log {policy.audit_log}\n"
    )
    from flwr.supercore.auth.superexec_secret import load_superexec_auth_secret
    from flwr.supercore.superexec import run_superexec as superexec

    try:
        secret = load_superexec_auth_secret(args.superexec_auth_secret_file)
    except ValueError as exc:
        sys.stderr.write(f"error: --superexec-auth-secret-file: {exc}\n")
        return 2

    GatedExecPlugin.policy_path = args.policy.resolve()
    superexec.AutoExecPlugin = GatedExecPlugin  # Flower's loop builds its plugin by this name (flwr 1.41)
    superexec.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates_path=args.root_certificates,
        health_server_address=args.health_server_address,
        superexec_auth_secret=secret,
        runtime_dependency_install=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
