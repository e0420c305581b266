"""A hospital's machine dies during a round of a deployed run (flwr 1.41, TLS, SuperNode authentication).

Three SuperNodes serve tiny phantom sites; a three-round run with ``strategy.min_nodes=2`` is submitted in a
background thread, and once round 1 is recorded one SuperNode is killed with SIGKILL together with everything it
started (its flower-superexec and ClientApp), as a machine losing power would. Flower's SuperLink answers the
in-flight message for it with a ``NODE_UNAVAILABLE`` error once its heartbeat expires (at most 2 x 30 s after the
last one) and lists it offline, so the round goes on with the two others and later rounds sample only them. The
test checks that the run completes and that the dropout is recorded, under the site's name, in ``metrics.jsonl``,
``summary.json`` and the report. Every wait has a deadline; every process is stopped however the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from deploy.pki import create_node_key
from simulations.processes import descendants
from tests.integration.harness import (
    CONNECTION,
    SuperLink,
    needs_flower,
    node_statuses,
    register,
    run_config,
    superlink_fixture,
    wait_for_status,
)

superlink = superlink_fixture

ROUND_TIMEOUT_S = 90  # above the SuperLink's heartbeat expiry (2 x 30 s after the last heartbeat, ~20 s apart)
ROUND_1_WITHIN_S = 120.0
RUN_WITHIN_S = 240.0
KILLED = "hospital-c"


Hospitals = dict[str, tuple[subprocess.Popen[bytes], str]]
"""Site name -> (its SuperNode process, its node id)."""


@pytest.fixture
def hospitals(superlink: SuperLink, tmp_path_factory: pytest.TempPathFactory) -> Hospitals:
    """Three registered, online SuperNodes on tiny phantom sites.

    Started through the SuperLink's `ChildProcesses`, so the module's teardown stops whatever is left of them.
    """
    from simulations.phantoms import generate_federation

    data = tmp_path_factory.mktemp("hospitals")
    manifests = generate_federation(data, num_sites=3, images_per_site=24, seed=5, matrix_scale=0.25)
    started = {}
    for index, manifest in enumerate(manifests):
        name = f"hospital-{'abc'[index]}"
        private_key, public_key = create_node_key(data / "keys", name)
        node_id = register(superlink, public_key)
        config = f'manifest="{manifest}" site-name="{name}" cache-dir="{data / "cache" / name}"'
        process, log = superlink.supernode(
            name,
            "--root-certificates", str(superlink.pki / "ca.crt"),
            "--auth-supernode-private-key", str(private_key),
            "--node-config", config,
        )  # fmt: skip
        wait_for_status(superlink, node_id, "online", log)
        started[name] = (process, node_id)
    return started


def _running(identity: tuple[int, int]) -> bool:
    """Whether the process ``(pid, start time)`` still runs (not a zombie, not a reused pid)."""
    try:
        text = Path(f"/proc/{identity[0]}/stat").read_text()
    except OSError:
        return False
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0] not in ("Z", "X") and int(fields[19]) == identity[1]


def kill_machine(process: subprocess.Popen[bytes]) -> list[tuple[int, int]]:
    """SIGKILL a SuperNode and everything it started (its process group, and each descendant found in /proc);
    what was killed, each as ``(pid, start time)``."""
    tree = sorted(descendants([process.pid]))
    os.killpg(process.pid, signal.SIGKILL)  # its own session, so its own group: flower-superexec and apps too
    for pid, _ in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)
    deadline = time.monotonic() + 5.0
    while (alive := [i for i in tree if _running(i)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"still running after SIGKILL: {alive}"
    return tree


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete lines of ``metrics.jsonl`` so far (none before the run writes it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


class BackgroundRun:
    """`deploy.submit.submit` in a daemon thread: its outcome (run or exception), Flower's output and run id."""

    def __init__(self, link: SuperLink, config: Path) -> None:
        from deploy.submit import submit
        from simulations.launcher import APP_DIR
        from simulations.run_outcome import parse_run_id

        self.output: list[str] = []
        self.run_id: int | None = None
        self.outcome: Any = None

        def on_output(line: str) -> None:
            self.output.append(line)
            self.run_id = self.run_id if self.run_id is not None else parse_run_id(line)

        def target() -> None:
            try:
                self.outcome = submit(APP_DIR, CONNECTION, run_config=config, env=link.env, on_output=on_output)
            except BaseException as exc:  # handed to the test thread, which raises it
                self.outcome = exc

        self.thread = threading.Thread(target=target, name="submit", daemon=True)
        self.thread.start()

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output[-lines:])


@needs_flower
def test_a_supernode_killed_in_round_two_drops_out_and_the_run_completes_with_the_other_two(
    superlink: SuperLink, hospitals: Hospitals
) -> None:
    run_dir = superlink.home / "runs" / "dropout"
    overrides = {"strategy.num_rounds": 3, "strategy.min_nodes": 2, "strategy.round_timeout_s": ROUND_TIMEOUT_S}
    config = run_config(superlink.home / "dropout.toml", run_dir, overrides)
    survivors = sorted(set(hospitals) - {KILLED})
    started = time.monotonic()

    run = BackgroundRun(superlink, config)
    try:
        # Round 1 is recorded once its evaluation rows are in: round 2's train messages go out right after.
        deadline = started + ROUND_1_WITHIN_S
        while {r["site"] for r in read_rows(run_dir / "metrics.jsonl") if r["phase"] == "evaluate"} < {*hospitals}:
            if not run.thread.is_alive():
                pytest.fail(f"the run ended before round 1 was recorded: {run.outcome!r}\n{run.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"round 1 was not recorded within {ROUND_1_WITHIN_S:.0f} s:\n{run.tail()}")
            time.sleep(0.2)
        killed_at = time.monotonic() - started
        killed_tree = kill_machine(hospitals[KILLED][0])

        run.thread.join(timeout=max(1.0, started + RUN_WITHIN_S - time.monotonic()))
        assert not run.thread.is_alive(), f"the run did not finish within {RUN_WITHIN_S:.0f} s:\n{run.tail()}"
    finally:
        if run.thread.is_alive() and run.run_id is not None:  # a failed wait: stop the run, so `flwr run` ends
            superlink.flwr("stop", str(run.run_id), CONNECTION)
            run.thread.join(timeout=30)
    seconds = time.monotonic() - started

    if isinstance(run.outcome, BaseException):
        raise AssertionError(f"the run failed:\n{run.tail()}") from run.outcome
    assert run.outcome.status.status == "finished:completed"
    assert len(killed_tree) >= 2, killed_tree  # the SuperNode and at least its flower-superexec
    assert node_statuses(superlink)[hospitals[KILLED][1]] == "offline"

    rows = read_rows(run_dir / "metrics.jsonl")
    ok = {(r["round"], r["phase"], r["site"]) for r in rows if "error" not in r and r["site"] != "pooled"}
    assert {(1, phase, site) for phase in ("train", "evaluate") for site in hospitals} <= ok
    # Round 2 trains on the survivors; from then on the dead node is offline and no longer sampled.
    after_kill = {(n, phase) for n in (2, 3) for phase in ("train", "evaluate")}
    assert {x for x in ok if x[:2] in after_kill} == {(*x, site) for x in after_kill for site in survivors}
    pooled = {(r["round"], r["phase"]) for r in rows if r["site"] == "pooled" and "error" not in r}
    assert after_kill <= pooled, pooled
    dropouts = [r for r in rows if r["site"] == KILLED and "error" in r]
    assert [(r["round"], r["phase"], r["declined"]) for r in dropouts] == [(2, "train", False)], dropouts
    assert "Node Unavailable" in dropouts[0]["error"], dropouts  # the SuperLink's reply once the heartbeat expired
    assert not [r for r in rows if "error" in r and r["site"] != KILLED], rows

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert [(f["site"], f["round"], f["phase"]) for f in summary["failures"]] == [(KILLED, 2, "train")]
    assert summary["final_round"] == 3
    assert "Node Unavailable" in summary["sites"][KILLED]["not_in_final_round"]
    assert all(summary["sites"][site]["round"] == 3 for site in survivors)
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Failed site replies" in report and f"site {KILLED}: Error: Node Unavailable" in report
    sys.stderr.write(  # shown with -s
        f"dropout run: {KILLED} killed at {killed_at:.1f} s ({len(killed_tree)} processes); "
        f"three rounds completed in {seconds:.1f} s; recorded: {dropouts[0]['error']}\n"
    )
