"""The start-up benchmark's pure parts: process roles, milestones and import times from a trace (no timed run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from simulations.benchmarks.startup import MILESTONES, import_seconds, milestones, process_roles
from simulations.benchmarks.trace_hook import TRACE_ENV, read_trace, trace_environment


def _process(pid: int, *argv: str, start: float) -> dict[str, Any]:
    return {"event": "process", "pid": pid, "start": start, "argv": list(argv)}


def _trace() -> list[dict[str, Any]]:
    return [
        _process(1, "-m", "simulate", "-v", start=100.2),
        _process(2, "flower-superlink", "--insecure", start=100.5),
        _process(3, "flwr", "run", "/tmp/app", start=102.0),
        _process(4, "flwr-simulation", "--runtime-api-address", start=104.0),
        {"event": "import", "pid": 4, "name": "server.server_app", "start": 104.5, "end": 106.0},
        {"event": "import", "pid": 4, "name": "client.client_app", "start": 106.0, "end": 106.2},
        {"event": "import", "pid": 4, "name": "torch", "start": 104.6, "end": 105.6},
        _process(5, "default_worker.py", "--node-ip-address", start=107.0),
        {"event": "import", "pid": 5, "name": "client.client_app", "start": 108.0, "end": 111.0},
        {"event": "call", "pid": 5, "name": "load_site_data", "start": 111.0, "end": 111.1, "site": "site-0"},
        {"event": "call", "pid": 4, "name": "strategy.aggregate_train", "start": 114.0, "end": 114.1, "round": 1},
        {"event": "call", "pid": 4, "name": "strategy.aggregate_train", "start": 118.0, "end": 118.1, "round": 2},
        {"event": "call", "pid": 4, "name": "strategy.aggregate_evaluate", "start": 115.0, "end": 115.1, "round": 1},
    ]


def test_process_roles_come_from_each_process_arguments() -> None:
    roles = process_roles(_trace())
    assert roles == {1: "command", 2: "superlink", 3: "flwr-run", 4: "simulation", 5: "ray-worker"}


def test_milestones_are_seconds_from_the_start_and_none_where_the_trace_lacks_them() -> None:
    # Execute
    found = milestones(_trace(), started=100.0, stdout_marks={"run submitted": 103.0}, exited=120.0)
    # Assert
    assert set(found) == {name for name, _ in MILESTONES}
    assert found["command started"] == pytest.approx(0.2)
    assert found["ServerApp imported"] == pytest.approx(6.0)
    assert found["ClientApp loaded (simulation process)"] == pytest.approx(6.2)
    assert found["ClientApp imported (first actor)"] == pytest.approx(11.0)
    assert found["round 1 training aggregated"] == pytest.approx(14.1)  # round 1's, not round 2's
    assert found["round 1 done (evaluated)"] == pytest.approx(15.1)
    assert found["run submitted (app bundled)"] == pytest.approx(3.0)
    assert found["Ray initialised"] is None and found["command exited"] == pytest.approx(20.0)


def test_import_seconds_are_per_role() -> None:
    table = import_seconds(_trace())
    assert table["simulation"] == {"server.server_app": 1.5, "client.client_app": 0.2, "torch": 1.0}
    assert table["ray-worker"] == {"client.client_app": 3.0}


def test_a_traced_process_records_its_start_and_watched_imports(tmp_path: Path) -> None:
    # Prepare: the environment a benchmark gives the command it starts
    trace = tmp_path / "trace.jsonl"
    env = trace_environment(tmp_path / "hook", trace, Path(__file__).resolve().parents[1])
    # Execute
    subprocess.run([sys.executable, "-c", "import hydra"], env=env, check=True)
    # Assert
    events = read_trace(trace)
    assert [e["event"] for e in events] == ["process", "import"]
    assert events[1]["name"] == "hydra" and events[1]["end"] >= events[1]["start"]
    assert env[TRACE_ENV] == str(trace)


def test_read_trace_skips_a_half_written_line(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"event": "process", "start": 2.0}\n{"event": "process", "start": 1.0}\n{"event": "imp', "utf-8")
    assert [e["start"] for e in read_trace(path)] == [1.0, 2.0]
