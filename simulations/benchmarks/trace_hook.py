"""Benchmark instrumentation: when each process of a simulation started, and how long chosen imports and calls took.

A benchmark puts a ``sitecustomize.py`` that calls `install` on ``PYTHONPATH`` (`trace_environment`) and names a
file in `TRACE_ENV`; every Python process of the run (the command, the SuperLink, the simulation, Ray's workers)
inherits both and appends one JSON line per event to that file. No app code changes; outside a benchmark
(`TRACE_ENV` unset) nothing is installed.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["TIMED_CALLS", "TRACE_ENV", "WATCHED_IMPORTS", "install", "read_trace", "trace_environment"]

TRACE_ENV = "FEDMAMMO_TRACE"

WATCHED_IMPORTS = frozenset(
    {
        "torch", "torchvision", "opacus", "sklearn", "scipy", "matplotlib", "pydicom", "skimage", "hydra", "flwr",
        "ray", "server.server_app", "client.client_app", "client.task", "server.strategy", "server.report.builder",
    }
)  # fmt: skip
"""Modules whose import (first time in a process) is recorded with its duration."""

TIMED_CALLS: dict[str, tuple[str, ...]] = {
    "client.task": ("load_site_data", "train_on_site", "evaluate_on_site"),
    "server.model_arrays": ("initial_arrays",),
    "server.report.builder": ("build_report",),
    "server.strategy": ("build_strategy",),
    "flwr.server.superlink.fleet.vce.backend.raybackend": ("RayBackend.init_ray", "RayBackend.build",
                                                          "RayBackend.process_message"),
    "flwr.clientapp.client_app": ("ClientApp.__call__",),  # in the Ray actor: the app's handling of one message
}  # fmt: skip
"""Per module, the functions (or ``Class.method``) whose calls are recorded, patched right after the module runs."""

STRATEGY_METHODS = ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate")
"""Timed on the strategy `server.strategy.build_strategy` returns (the instance, so a subclass's super() calls
inside are not counted twice)."""


def _record(event: str, **fields: Any) -> None:
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    line = json.dumps({"event": event, "pid": os.getpid(), "thread": threading.current_thread().name, **fields})
    with open(path, "a", encoding="utf-8") as handle:  # one short append per event: lines never interleave
        handle.write(line + "\n")


def _timed(function: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.time()
        try:
            return function(*args, **kwargs)
        finally:
            _record("call", name=name, start=start, end=time.time(), **_call_details(name, args))

    return timed


def _call_details(name: str, args: Sequence[Any]) -> dict[str, Any]:
    """The round (strategy methods) or site (site functions) a call was about, when its arguments say."""
    if name.startswith("strategy.") and args and isinstance(args[0], int):
        return {"round": args[0]}
    site = getattr(args[0], "name", None) if args else None
    return {"site": site} if isinstance(site, str) else {}


def _wrap_strategy(build: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(build)
    def build_and_time(*args: Any, **kwargs: Any) -> Any:
        strategy = build(*args, **kwargs)
        for method in STRATEGY_METHODS:
            if hasattr(strategy, method):
                setattr(strategy, method, _timed(getattr(strategy, method), f"strategy.{method}"))
        return strategy

    return build_and_time


def _patch(module: ModuleType, names: Sequence[str]) -> None:
    for dotted in names:
        owner_name, _, attribute = dotted.rpartition(".")
        owner = getattr(module, owner_name, None) if owner_name else module
        function = getattr(owner, attribute, None)
        if owner is None or function is None:
            continue  # renamed upstream: that figure is simply missing from the trace
        wrapped = _wrap_strategy(function) if dotted == "build_strategy" else _timed(function, dotted)
        setattr(owner, attribute, wrapped)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of watched modules to time them and patch their calls."""

    def __init__(self) -> None:
        self._busy: set[str] = set()

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if (name not in WATCHED_IMPORTS and name not in TIMED_CALLS) or name in self._busy:
            return None
        self._busy.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._busy.discard(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            start = time.time()
            run(module)
            if name in WATCHED_IMPORTS:
                _record("import", name=name, start=start, end=time.time())
            _patch(module, TIMED_CALLS.get(name, ()))

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Record this process's start and install the import hook, if `TRACE_ENV` names a trace file."""
    if not os.environ.get(TRACE_ENV):
        return
    _record("process", start=time.time(), argv=[Path(sys.argv[0]).name, *sys.argv[1:3]] if sys.argv else [])
    sys.meta_path.insert(0, _Finder())


def trace_environment(folder: Path, trace_file: Path, app_dir: Path) -> dict[str, str]:
    """Environment additions that trace every Python process of a run into ``trace_file``.

    Writes ``folder/sitecustomize.py`` (which imports this module from ``app_dir``) and returns ``PYTHONPATH``
    and `TRACE_ENV` to add to the environment of the command that starts the run.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "from simulations.benchmarks.trace_hook import install\n\ninstall()\n", encoding="utf-8"
    )
    paths = [str(folder), str(app_dir), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p), TRACE_ENV: str(trace_file)}


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The trace's events, oldest first (by start time); a half-written last line is skipped."""
    events = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return sorted(events, key=lambda event: event.get("start", 0.0))
