"""Benchmark: where the demo's start-up goes, from the command's start to the end of round 1, and whose it is.

Run ``python -m simulations.benchmarks.startup [--repeats 3] [--rounds 1] [hydra overrides ...]``. Each repeat runs
``fedmammo simulate`` (the README's command, same code path) as a child process with every Python process of the
run traced (`trace_hook`), then places the milestones (process starts, imports, Ray, first data load, round 1)
on one clock. Prints a table of medians, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulations.benchmarks.trace_hook import read_trace, trace_environment

__all__ = ["MILESTONES", "import_seconds", "main", "milestones", "process_roles", "run_traced"]

APP_DIR = Path(__file__).resolve().parents[2]

MILESTONES: tuple[tuple[str, str], ...] = (
    ("command started", "ours"),
    ("SuperLink process started", "ours: imports, config, phantom check"),
    ("flwr run started (SuperLink ready)", "Flower: SuperLink start-up"),
    ("run submitted (app bundled)", "Flower: flwr run builds and uploads the app"),
    ("simulation process started", "Flower: SuperExec"),
    ("ServerApp imported", "ours: ServerApp imports (Flower holds one import lock)"),
    ("ClientApp loaded (simulation process)", "ours: ClientApp imports Flower test-loads"),
    ("first Ray worker started", "Ray"),
    ("Ray initialised", "Ray"),
    ("actor pool built", "Flower/Ray"),
    ("ClientApp imported (first actor)", "ours: ClientApp imports in the actor"),
    ("first site data loaded", "ours: first data load"),
    ("round 1 training aggregated", "ours: site training"),
    ("round 1 done (evaluated)", "ours: site evaluation"),
    ("report written", "ours: later rounds, report"),
    ("command exited", "Flower/Ray shutdown, run status"),
)
"""Milestones in the order they happen, each with whose time the interval before it mostly is."""


def process_roles(events: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Process id to role (``command``, ``superlink``, ``flwr-run``, ``simulation``, ``ray-worker``, ``other``)."""
    roles = {}
    for event in events:
        if event.get("event") != "process":
            continue
        argv = [str(part) for part in event.get("argv") or []]
        first = argv[0] if argv else ""
        if first in ("-m", "cli.py", "fedmammo") and "simulate" in argv:  # `python -m simulations.cli`: "-m" yet
            role = "command"
        elif first == "flower-superlink":
            role = "superlink"
        elif first == "flwr" and argv[1:2] == ["run"]:
            role = "flwr-run"
        elif first == "flwr-simulation":
            role = "simulation"
        elif first == "default_worker.py":
            role = "ray-worker"
        else:
            role = "other"
        roles[int(event["pid"])] = role
    return roles


def _first(events: Sequence[dict[str, Any]], key: str = "end", **match: Any) -> float | None:
    """The earliest ``key`` time among events whose fields equal ``match`` (``role`` matches the process role)."""
    times = [event[key] for event in events if all(event.get(k) == v for k, v in match.items())]
    return min(times) if times else None


def milestones(events: Sequence[dict[str, Any]], started: float, stdout_marks: dict[str, float],
               exited: float) -> dict[str, float | None]:  # fmt: skip
    """Seconds from ``started`` to each of `MILESTONES` (None where the trace lacks it).

    ``stdout_marks`` holds the arrival times of lines of the command's output (``run submitted``).
    """
    roles = process_roles(events)
    tagged = [{**event, "role": roles.get(int(event.get("pid", -1)), "other")} for event in events]
    first_actor = {"role": "ray-worker", "event": "import", "name": "client.client_app"}
    found = {
        "command started": _first(tagged, "start", event="process", role="command"),
        "SuperLink process started": _first(tagged, "start", event="process", role="superlink"),
        "flwr run started (SuperLink ready)": _first(tagged, "start", event="process", role="flwr-run"),
        "run submitted (app bundled)": stdout_marks.get("run submitted"),
        "simulation process started": _first(tagged, "start", event="process", role="simulation"),
        "ServerApp imported": _first(tagged, event="import", name="server.server_app"),
        "ClientApp loaded (simulation process)": _first(
            tagged, event="import", name="client.client_app", role="simulation"
        ),
        "first Ray worker started": _first(tagged, "start", event="process", role="ray-worker"),
        "Ray initialised": _first(tagged, event="call", name="RayBackend.init_ray"),
        "actor pool built": _first(tagged, event="call", name="RayBackend.build"),
        "ClientApp imported (first actor)": _first(tagged, **first_actor),
        "first site data loaded": _first(tagged, event="call", name="load_site_data"),
        "round 1 training aggregated": _first(tagged, event="call", name="strategy.aggregate_train", round=1),
        "round 1 done (evaluated)": _first(tagged, event="call", name="strategy.aggregate_evaluate", round=1),
        "report written": _first(tagged, event="call", name="build_report"),
        "command exited": exited,
    }
    return {name: None if at is None else at - started for name, at in found.items()}


def import_seconds(events: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per role (command, simulation, first ray-worker that imported the ClientApp), each watched module's import
    seconds. Nested: a module imported first by another includes it (opacus holds torch when it comes first)."""
    roles = process_roles(events)
    actor = next((e["pid"] for e in events if e.get("name") == "client.client_app"
                  and roles.get(e["pid"]) == "ray-worker"), None)  # fmt: skip
    table: dict[str, dict[str, float]] = {}
    for event in events:
        role = roles.get(event.get("pid", -1))
        if event.get("event") != "import" or role not in ("command", "simulation", "ray-worker"):
            continue
        if role == "ray-worker" and event["pid"] != actor:
            continue
        table.setdefault(role, {})[event["name"]] = round(event["end"] - event["start"], 3)
    return table


def run_traced(overrides: Sequence[str], rounds: int, folder: Path) -> dict[str, Any]:
    """Run ``fedmammo simulate`` once with tracing into ``folder``; return its milestones and import times."""
    trace = folder / "trace.jsonl"
    env = {**os.environ, **trace_environment(folder / "hook", trace, APP_DIR), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "simulations.cli", "simulate", "-v", f"output.run_dir={folder / 'run'}",
               f"strategy.num_rounds={rounds}", *overrides]  # fmt: skip
    marks: dict[str, float] = {}
    started = time.time()
    process = subprocess.Popen(command, cwd=APP_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)  # fmt: skip
    assert process.stdout is not None
    tail: list[str] = []
    for line in process.stdout:
        if "Successfully started run" in line:
            marks.setdefault("run submitted", time.time())
        tail = [*tail[-40:], line]
    code = process.wait()
    exited = time.time()
    if code != 0:
        raise RuntimeError(f"fedmammo simulate exited with {code}:\n{''.join(tail)}")
    events = read_trace(trace)
    return {"milestones": milestones(events, started, marks, exited), "imports": import_seconds(events)}


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the demo settings")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the table shows medians")
    parser.add_argument("--rounds", type=int, default=1, help="strategy.num_rounds of each run")
    parser.add_argument("--json", default="runs/benchmarks/startup.json", help="where to write the figures")
    args = parser.parse_args(argv)
    runs = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="fedmammo-startup-") as tmp:
            runs.append(run_traced(args.overrides, args.rounds, Path(tmp)))
        print(f"run {repeat + 1}/{args.repeats}: round 1 done at "
              f"{runs[-1]['milestones']['round 1 done (evaluated)'] or float('nan'):.1f} s", flush=True)  # fmt: skip
    print(f"\n{'milestone':<40} {'median s':>9} {'step s':>7}  {'min-max s':>11}  the step is mostly")
    previous = 0.0
    for name, whose in MILESTONES:
        values = [run["milestones"][name] for run in runs]
        median = _median(values)
        if median is None:
            print(f"{name:<40} {'n/a':>9}")
            continue
        present = [v for v in values if v is not None]
        spread = f"{min(present):.1f}-{max(present):.1f}"
        print(f"{name:<40} {median:>9.2f} {median - previous:>7.2f}  {spread:>11}  {whose}")
        previous = median
    for role in ("command", "simulation", "ray-worker"):
        seconds = {name: _median([run["imports"].get(role, {}).get(name) for run in runs]) for name in
                   sorted({n for run in runs for n in run["imports"].get(role, {})})}  # fmt: skip
        shown = ", ".join(f"{name} {value:.2f}" for name, value in seconds.items() if value and value >= 0.05)
        print(f"imports in the {role} process (s, nested): {shown or 'none over 0.05 s'}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"overrides": args.overrides, "rounds": args.rounds, "runs": runs}, indent=2))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
