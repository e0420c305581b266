"""The hospital's gate: runs one task of the shipped app only if the hospital's policy allows it, and logs what leaves.

`deploy.hospital_exec` starts this process for each task instead of Flower's ``flwr-clientapp``. It is Flower's
own task runner (``flwr.supernode.runtime.run_clientapp``, flwr 1.41) with three of its steps wrapped:

1. after the task's message, context, run and bundle are pulled from the SuperNode, nothing else happens yet;
2. before the bundle is installed and imported, `deploy.policy.check_task` sees the bundle's SHA-256 (computed
   here from its bytes), the run's configuration and this run's history in the audit log. Counting the history,
   deciding and writing the decision happen under one lock on the log, so tasks that arrive together cannot all
   pass a cap meant for one. A refusal becomes Flower's error reply, whose reason the server records, and nothing
   of the bundle runs. An admitted bundle's own packages replace any the gate imported (its ``common`` included),
   so the code that runs is the code whose hash was approved;
3. before the reply is pushed, `deploy.reply_check.check_reply` sees it: a reply the policy does not allow is
   replaced by an error reply, and every reply is written to the audit log first. If the log cannot be written,
   or the task was never admitted, nothing is sent: what leaves is always on record.

The gate and the policy are hospital-installed code, imported before any of the bundle's code. An approved bundle
runs in this process and is trusted as the hospital's own code; the gate guards against a server that ships
another bundle or sends hostile inputs, not against a bundle the hospital approved (README's threat model). The
token arrives in the environment (`TOKEN_ENV`), not on the command line where other users could read it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message
from flwr.app.error import Error
from flwr.app.message_type import MessageType

from common import wire
from deploy.audit import AuditLog, describe_content
from deploy.policy import (
    EPSILON_KEY,
    HospitalPolicy,
    PolicyError,
    PolicyRefused,
    SiteHistory,
    TaskRequest,
    check_task,
    load_policy,
)
from deploy.reply_check import check_reply, reported

__all__ = ["POLICY_ERROR_CODE", "TOKEN_ENV", "GatedTask", "main", "run_gated_task"]

logger = logging.getLogger(__name__)

TOKEN_ENV = "FEDMAMMO_GATE_TOKEN"
POLICY_ERROR_CODE = 403
"""Error code of a reply the policy refused or withheld (Flower's own codes are below 100)."""
_GATE_PACKAGES = ("deploy",)
"""The gate's own package: kept as imported, whatever the bundle holds."""


def _trains(message: Message) -> bool:
    """A training message that carries a model: one round's training (SecAgg+'s key-exchange stages carry none)."""
    return message.metadata.message_type == MessageType.TRAIN and bool(message.content.array_records)


def _models_scored(message: Message) -> int:
    """Models an evaluate message asks to score: a study's request holds several."""
    if message.metadata.message_type != MessageType.EVALUATE:
        return 0
    return max(1, sum(1 for record in message.content.array_records.values() if len(record)))


def _server_round(message: Message) -> int | None:
    """The round the server numbered this message with (Flower's strategies put it in the config record)."""
    for record in message.content.config_records.values():
        value = record.get(wire.SERVER_ROUND)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    group = message.metadata.group_id
    return int(group) if group.isdigit() else None


def _history(entries: list[dict[str, Any]], run_id: int) -> SiteHistory:
    """This run's admitted training rounds and scored models, and the epsilon this site last reported (any run)."""
    rounds = scored = 0
    epsilon = None
    for line in entries:
        if line.get("decision") == "admitted" and line.get("run_id") == run_id:
            rounds += bool(line.get("trains"))
            scored += int(line.get("models_scored") or 0)
        if line.get("decision") == "sent" and line.get("trains") and isinstance(line.get(EPSILON_KEY), int | float):
            epsilon = float(line[EPSILON_KEY])
    return SiteHistory(rounds_trained=rounds, models_scored=scored, epsilon_spent=epsilon)


def _bundle_packages(fab_content: bytes) -> set[str]:
    """Top-level Python packages in the bundle."""
    with zipfile.ZipFile(io.BytesIO(fab_content)) as bundle:
        return {
            name.split("/")[0] for name in bundle.namelist() if name.count("/") == 1 and name.endswith("/__init__.py")
        }


def _forget_imported(packages: set[str]) -> None:
    """Drop the hospital's imports of the bundle's packages, so the bundle's own (approved) copies are imported."""
    for name in list(sys.modules):
        if name.split(".")[0] in packages and name.split(".")[0] not in _GATE_PACKAGES:
            del sys.modules[name]


@dataclass
class GatedTask:
    """One task's state across the wrapped steps; ``entry`` is what the audit lines will say about it."""

    policy: HospitalPolicy | None
    """None when the policy file could not be read: every task is then refused (`broken` says why)."""
    broken: str = ""
    log: AuditLog | None = field(init=False, default=None)
    message: Message | None = None
    context: Any = None
    entry: dict[str, Any] = field(default_factory=dict)
    admitted: bool = False
    refusal_logged: bool = False

    def __post_init__(self) -> None:
        self.log = AuditLog(self.policy.audit_log) if self.policy is not None else None

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
                "models_scored": _models_scored(message),
            }
            return message, context, run, fab

        return wrapper

    def _admit(self, fab_content: bytes) -> None:
        """Decide under the log's lock and write the decision; raise the refusal after it is on record."""
        if self.policy is None or self.log is None:
            raise PolicyRefused("the hospital's policy cannot be read, so nothing runs (see the gate's log)")
        policy, log = self.policy, self.log
        request = TaskRequest(
            app_hash=hashlib.sha256(fab_content).hexdigest(),  # the bytes about to run, whatever was claimed
            run_config=self.context.run_config,
            trains=self.entry["trains"],
            models_scored=self.entry["models_scored"],
        )
        refusal: list[PolicyRefused] = []

        def decide(entries: list[dict[str, Any]]) -> dict[str, Any]:
            try:
                check_task(policy, request, _history(entries, self.entry["run_id"]))
            except PolicyRefused as refused:
                refusal.append(refused)
                return {**self.entry, "app_hash": request.app_hash, "decision": "refused", "reason": str(refused)}
            return {**self.entry, "app_hash": request.app_hash, "decision": "admitted"}

        log.decide(decide)
        if refusal:
            self.refusal_logged = True
            raise refusal[0]
        self.admitted = True

    def install(self, install_from_fab: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(fab_content: bytes, *args: Any, **kwargs: Any) -> Any:
            try:
                self._admit(fab_content)
            except PolicyRefused as refused:
                logger.warning("policy refused run %s: %s", self.entry.get("run_id"), refused)
                raise
            except Exception as exc:  # a broken log or bundle: fixed words to the server, the detail here only
                logger.exception("the gate could not check run %s", self.entry.get("run_id"))
                raise PolicyRefused(
                    f"the hospital's gate could not check this task ({type(exc).__name__}); nothing runs"
                ) from None
            _forget_imported(_bundle_packages(fab_content))
            return install_from_fab(fab_content, *args, **kwargs)

        return wrapper

    def push(self, push_message: Callable[..., None]) -> Callable[..., None]:
        def wrapper(client: Any, reply: Message, context: Any) -> None:
            if not self.admitted:
                if self.refusal_logged and reply.has_error():  # Flower's error reply for our logged refusal
                    return push_message(client, reply, context)
                logger.error("run %s: nothing sent: the task was not admitted on record", self.entry.get("run_id"))
                return None
            assert self.policy is not None and self.log is not None  # admitted means both were there
            if reply.has_error():
                self.log.append({**self.entry, "decision": "error", "reason": reply.error.reason})
                return push_message(client, reply, context)
            try:
                train_message = self.entry["message_type"] == MessageType.TRAIN
                check_reply(self.policy, reply.content, trains=self.entry["trains"], train_message=train_message)
            except PolicyRefused as refusal:
                withheld = describe_content(reply.content)
                self.log.append({**self.entry, "decision": "withheld", "reason": str(refusal), "withheld": withheld})
                error = Error(code=POLICY_ERROR_CODE, reason=f"withheld by the hospital's policy: {refusal}")
                return push_message(client, Message(error, reply_to=self.message), context)
            sent = describe_content(reply.content)
            self.log.append({**self.entry, "decision": "sent", "sent": sent,
                             EPSILON_KEY: reported(reply.content, EPSILON_KEY)})  # fmt: skip
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
    except PolicyError as exc:  # the task still gets its reply: a refusal in fixed words; the detail is logged here
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
