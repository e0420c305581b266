"""The hospital's gate: runs one task of the shipped app only if the hospital's policy allows it, and logs what leaves.

`deploy.hospital_exec` starts this process for each task instead of Flower's ``flwr-clientapp``. It is Flower's
own task runner (``flwr.supernode.runtime.run_clientapp``, flwr 1.41) with three of its steps wrapped:

1. after the task's message, context, run and bundle are pulled from the SuperNode, nothing else happens yet;
2. before the bundle is installed and imported, `deploy.policy.check_task` sees the bundle's SHA-256 (computed
   here from its bytes), the run's configuration and this run's history in the audit log; a refusal becomes
   Flower's error reply, whose reason the server records, and nothing of the bundle runs;
3. before the reply is pushed, `deploy.policy.check_reply` sees it: a reply the policy does not allow is replaced
   by an error reply, and every reply is written to the audit log first. If the log cannot be written, nothing
   is sent: what leaves is always on record.

The gate and the policy are hospital-installed code, imported before any of the bundle's code, so a server that
ships another bundle cannot change them. The token arrives in the environment (`TOKEN_ENV`), not on the
command line where other users of the machine could read it.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message
from flwr.app.error import Error
from flwr.app.message_type import MessageType

from deploy.audit import AuditLog, describe_content
from deploy.policy import (
    EPSILON_KEY,
    HospitalPolicy,
    PolicyError,
    PolicyRefused,
    check_reply,
    check_task,
    load_policy,
    reported,
)

__all__ = ["POLICY_ERROR_CODE", "TOKEN_ENV", "GatedTask", "main", "run_gated_task"]

logger = logging.getLogger(__name__)

TOKEN_ENV = "FEDMAMMO_GATE_TOKEN"
POLICY_ERROR_CODE = 403
"""Error code of a reply the policy refused or withheld (Flower's own codes are below 100)."""


def _trains(message: Message) -> bool:
    """A training message that carries a model: one round's training (SecAgg+'s key-exchange stages carry none)."""
    return message.metadata.message_type == MessageType.TRAIN and bool(message.content.array_records)


def _server_round(message: Message) -> int | None:
    """The round the server numbered this message with (Flower's strategies put it in the config record)."""
    for record in message.content.config_records.values():
        value = record.get("server-round")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    group = message.metadata.group_id
    return int(group) if group.isdigit() else None


@dataclass
class GatedTask:
    """One task's state across the wrapped steps; ``entry`` is what the audit line will say about it."""

    policy: HospitalPolicy | None
    """None when the policy file could not be read: every task is then refused (`broken` says why)."""
    broken: str = ""
    log: AuditLog | None = field(init=False, default=None)
    message: Message | None = None
    context: Any = None
    entry: dict[str, Any] = field(default_factory=dict)
    refused: bool = False

    def __post_init__(self) -> None:
        self.log = AuditLog(self.policy.audit_log) if self.policy is not None else None

    def _append(self, entry: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.append(entry)

    def _history(self, run_id: int) -> tuple[int, int, float | None]:
        """Training rounds and evaluations of this run answered here, and the epsilon this site last reported."""
        rounds, evaluations, epsilon = 0, 0, None
        for line in self.log.entries() if self.log is not None else ():
            if line.get("decision") != "sent":
                continue
            if line.get("run_id") == run_id:
                rounds += bool(line.get("trains"))
                evaluations += line.get("message_type") == MessageType.EVALUATE
            if line.get("trains") and isinstance(line.get("epsilon"), int | float):
                epsilon = float(line["epsilon"])
        return rounds, evaluations, epsilon

    def pulled(self, pull: Callable[..., tuple[Any, ...]]) -> Callable[..., tuple[Any, ...]]:
        def wrapper(client: Any) -> tuple[Any, ...]:
            message, context, run, fab = pull(client)
            self.message, self.context = message, context
            self.entry = {
                "server": self.policy.server if self.policy is not None else "",
                "run_id": run.run_id,
                "app": f"{run.fab_id}=={run.fab_version}",
                "app_hash": hashlib.sha256(fab.content).hexdigest(),
                "message_type": message.metadata.message_type,
                "round": _server_round(message),
                "trains": _trains(message),
            }
            return message, context, run, fab

        return wrapper

    def install(self, install_from_fab: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(fab_content: bytes, *args: Any, **kwargs: Any) -> Any:
            app_hash = hashlib.sha256(fab_content).hexdigest()  # the bytes about to run, whatever was claimed
            rounds, evaluations, epsilon = self._history(self.entry["run_id"])
            try:
                if self.policy is None:
                    raise PolicyRefused(f"the hospital's policy cannot be read, so nothing runs: {self.broken}")
                check_task(
                    self.policy,
                    app_hash=app_hash,
                    run_config=self.context.run_config,
                    trains=self.entry["trains"],
                    rounds_trained=rounds,
                    epsilon_spent=epsilon,
                    evaluates=self.entry["message_type"] == MessageType.EVALUATE,
                    evaluations=evaluations,
                )
            except PolicyRefused as refusal:
                self.refused = True
                self._append({**self.entry, "app_hash": app_hash, "decision": "refused", "reason": str(refusal)})
                logger.warning("policy refused run %s: %s", self.entry["run_id"], refusal)
                raise
            return install_from_fab(fab_content, *args, **kwargs)

        return wrapper

    def push(self, push_message: Callable[..., None]) -> Callable[..., None]:
        def wrapper(client: Any, reply: Message, context: Any) -> None:
            if self.refused:  # Flower's error reply for our refusal: already on record
                return push_message(client, reply, context)
            if reply.has_error():
                self._append({**self.entry, "decision": "error", "reason": reply.error.reason})
                return push_message(client, reply, context)
            assert self.policy is not None  # a task without a policy is refused before it runs
            try:
                check_reply(self.policy, reply.content, trains=self.entry.get("trains", False))
            except PolicyRefused as refusal:
                withheld = describe_content(reply.content)
                self._append({**self.entry, "decision": "withheld", "reason": str(refusal), "withheld": withheld})
                reason = f"withheld by the hospital's policy: {refusal}"
                return push_message(
                    client, Message(Error(code=POLICY_ERROR_CODE, reason=reason), reply_to=self.message), context
                )
            self._append(
                {
                    **self.entry,
                    "decision": "sent",
                    "sent": describe_content(reply.content),
                    EPSILON_KEY: reported(reply.content, EPSILON_KEY),
                }
            )
            return push_message(client, reply, context)

        return wrapper


def run_gated_task(
    policy: HospitalPolicy | None,
    *,
    broken: str = "",
    runtime_api_address: str,
    token: str,
    insecure: bool,
    certificates: bytes | None,
    parent_pid: int | None,
) -> None:
    """Run one task through Flower's task runner with the policy's steps wrapped in (exits the process)."""
    from flwr.supernode.runtime import run_clientapp as runner

    task = GatedTask(policy, broken)
    runner.pull_task_input = task.pulled(runner.pull_task_input)
    runner.install_from_fab = task.install(runner.install_from_fab)
    runner.push_message = task.push(runner.push_message)
    runner.run_clientapp(
        runtime_api_address=runtime_api_address,
        token=token,
        insecure=insecure,
        certificates=certificates,
        parent_pid=parent_pid,
        runtime_dependency_install=False,  # the hospital's environment is the one it reviewed
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point `deploy.hospital_exec` starts per task (the token in ``FEDMAMMO_GATE_TOKEN``)."""
    parser = argparse.ArgumentParser(prog="python -m deploy.gate", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="the hospital's policy file")
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's local Runtime API")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP to the SuperNode on this machine")
    parser.add_argument("--root-certificates", default=None, help="CA of the SuperNode's Runtime API certificate")
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)
    token = os.environ.pop(TOKEN_ENV, "")
    if not token:
        parser.error(f"the task token is missing from the environment ({TOKEN_ENV})")
    policy, broken = None, ""
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:  # the task still gets its reply: a refusal that says why
        broken = str(exc)
        logger.error("%s", exc)
    certificates = None
    if not args.insecure:
        if args.root_certificates is None:
            parser.error("--root-certificates is needed unless --insecure")
        with open(args.root_certificates, "rb") as handle:
            certificates = handle.read()
    run_gated_task(
        policy,
        broken=broken,
        runtime_api_address=args.runtime_api_address,
        token=token,
        insecure=args.insecure,
        certificates=certificates,
        parent_pid=args.parent_pid,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
