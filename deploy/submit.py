"""Submit the Flower app to a deployed SuperLink and fail loudly unless Flower reports the run completed.

``flwr run --stream`` exits 0 even when the ServerApp raised (`FLOWER-1.41-DEPLOYMENT.md`), so a script or a
scheduler that trusts its exit code takes a failed federation for a finished one. This wrapper streams Flower's
output, then asks the SuperLink how the run ended (``flwr ls --run-id``) and exits 1 with Flower's reason unless it
is ``finished:completed``::

    python -m deploy.submit . coordinator --run-config run.toml
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from common.errors import FedMammoError
from simulations.run_outcome import COMPLETED, RunStatus, parse_run_id, read_run_status

__all__ = ["RunFailed", "SubmittedRun", "main", "submit"]


class RunFailed(FedMammoError, RuntimeError):
    """The run did not complete: `flwr run` failed, started no run, or Flower reports it failed or stopped."""


@dataclass(frozen=True)
class SubmittedRun:
    """A run Flower reports as ``finished:completed``."""

    run_id: int
    status: RunStatus


def _flwr() -> str:
    beside = Path(sys.executable).parent / "flwr"
    found = str(beside) if beside.exists() else shutil.which("flwr")
    if not found:
        raise RunFailed(f"`flwr` was not found next to {sys.executable} or on PATH; install flwr")
    return found


def submit(
    app: Path,
    connection: str,
    *,
    run_config: Path | None = None,
    env: Mapping[str, str] | None = None,
    on_output: Callable[[str], None] | None = None,
    timeout_s: float | None = None,
) -> SubmittedRun:
    """Run ``flwr run APP CONNECTION --stream`` and return the run only if Flower reports it completed.

    With ``timeout_s``, a run still going after that long is stopped (``flwr stop``) and reported as failed: a
    federation waiting for a hospital that never answers should not hold a scheduler (or a test) forever.

    Raises
    ------
    RunFailed
        With the reason: `flwr run`'s exit code, no run started, the time limit, the status unreadable, or
        Flower's status (``finished:failed`` and its details, ``finished:stopped``).
    """
    flwr = _flwr()
    environment = dict(os.environ if env is None else env)
    command = [flwr, "run", str(app), connection, "--stream"]
    if run_config is not None:
        command += ["--run-config", str(run_config)]
    seen: list[int] = []

    def follow(stream: IO[str]) -> None:
        for line in stream:
            if not seen and (found := parse_run_id(line)) is not None:
                seen.append(found)
            if on_output is not None:
                on_output(line.rstrip("\n"))

    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment) as run:
        assert run.stdout is not None
        reader = threading.Thread(target=follow, args=(run.stdout,), daemon=True)
        reader.start()
        try:
            code = run.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            if seen:
                stop = [flwr, "stop", str(seen[0]), connection]
                subprocess.run(stop, env=environment, capture_output=True, timeout=60, check=False)
            run.kill()
            run.wait()
            reader.join(timeout=5)
            raise RunFailed(
                f"run {seen[0] if seen else '(no id yet)'} did not finish within {timeout_s:g} s and was stopped"
            ) from None
        reader.join(timeout=5)
    run_id = seen[0] if seen else None
    if code != 0:
        raise RunFailed(f"`flwr run` exited with code {code}{f' (run {run_id})' if run_id is not None else ''}")
    if run_id is None:
        raise RunFailed("`flwr run` started no run (no run id in its output)")
    status = read_run_status(flwr, connection, run_id, env=environment, cwd=Path.cwd())
    if status is None:
        raise RunFailed(f"the status of run {run_id} could not be read from the SuperLink (`flwr ls`)")
    if status.status != COMPLETED:
        raise RunFailed(
            f"Flower reports run {run_id} as {status.status}{f': {status.details}' if status.details else ''}"
        )
    return SubmittedRun(run_id, status)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry: 0 when the run completed, 1 (with Flower's reason on stderr) when it did not."""
    parser = argparse.ArgumentParser(prog="python -m deploy.submit", description=__doc__.split("\n\n")[0])
    parser.add_argument("app", type=Path, help="the Flower app folder (this repository)")
    parser.add_argument("connection", help="the connection's name in $FLWR_HOME/config.toml")
    parser.add_argument("--run-config", type=Path, help="a TOML run config (dotted keys, as pyproject's)")
    parser.add_argument("--timeout", type=float, default=None, help="stop the run after this many seconds (failed)")
    args = parser.parse_args(argv)
    try:
        done = submit(
            args.app,
            args.connection,
            run_config=args.run_config,
            on_output=lambda line: sys.stdout.write(f"{line}\n"),
            timeout_s=args.timeout,
        )
    except RunFailed as exc:
        sys.stderr.write(f"deploy.submit: the run failed: {exc}\n")
        return 1
    sys.stdout.write(f"run {done.run_id}: {done.status.status}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
