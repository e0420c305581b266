"""Decides whether a `flwr run` federation finished, from Flower's own run status (its exit code cannot tell)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COMPLETED", "RunStatus", "failure_message", "parse_run_id", "read_run_status"]

logger = logging.getLogger(__name__)

COMPLETED = "finished:completed"
"""The one status of a run whose ServerApp returned normally (others: ``finished:failed``, ``finished:stopped``)."""

_STARTED = re.compile(r"Successfully started run (\d+)")
_STATUS_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RunStatus:
    """A run's status as the SuperLink reports it (``flwr ls --format json``): e.g. ``finished:failed`` and why."""

    status: str
    details: str = ""


def parse_run_id(line: str) -> int | None:
    """The run id from `flwr run`'s "Successfully started run <id>" line, else None."""
    match = _STARTED.search(line)
    return int(match.group(1)) if match else None


def read_run_status(flwr: str, connection: str, run_id: int, *, env: Mapping[str, str], cwd: Path) -> RunStatus | None:
    """Ask the SuperLink (through ``flwr ls``) how run ``run_id`` ended; None when it cannot say.

    Why: ``flwr run --stream`` exits 0 even when the ServerApp raised (see FLOWER-1.41-DEPLOYMENT.md), so
    only the run's status tells a finished federation from a failed one.
    """
    command = [flwr, "ls", connection, "--run-id", str(run_id), "--format", "json"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=dict(env), cwd=cwd, timeout=_STATUS_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("could not read the status of run %d (%s)", run_id, exc)
        return None
    start = done.stdout.find("{")
    try:
        runs = json.loads(done.stdout[start:])["runs"] if start >= 0 else []
    except (json.JSONDecodeError, KeyError, TypeError):
        runs = []
    if not runs or not isinstance(runs[0], Mapping):
        logger.warning("`flwr ls` gave no status for run %d (exit code %d)", run_id, done.returncode)
        return None
    return RunStatus(str(runs[0].get("status", "")), str(runs[0].get("status-details") or ""))


def failure_message(
    code: int,
    run_id: int | None,
    status: RunStatus | None,
    *,
    summary_written: bool,
    log_path: Path,
    result_file: str = "summary.json",
) -> str | None:
    """Why the federation did not finish, in one sentence naming the log to read; None when it finished.

    It finished when `flwr run` exited 0, Flower reports the run ``finished:completed`` (or, when the status
    cannot be read, the ServerApp wrote this run's result) and its result file (``result_file``: summary.json, or a
    study's study.json) exists.
    """
    if code != 0:
        return f"`flwr run` exited with code {code} before the federation finished; see {log_path}"
    if run_id is None:
        return f"`flwr run` did not start a run (no run id in its output); see {log_path}"
    if status is not None and status.status != COMPLETED:
        why = f": {status.details}" if status.details else ""
        return f"the federation failed: Flower reports run {run_id} as {status.status}{why}; see {log_path}"
    if not summary_written:
        return (
            f"the federation did not finish: the ServerApp wrote no {result_file} for run {run_id}"
            f"{'' if status else ' and its status could not be read'}; see {log_path}"
        )
    return None
