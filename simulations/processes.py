"""Starts the launcher's child processes in their own sessions and stops every process they started, on any exit."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

__all__ = [
    "ChildProcesses",
    "SimulationInterrupted",
    "descendants",
    "finish_despite_signal",
    "stop_on_signals",
    "stop_trees",
]

logger = logging.getLogger(__name__)

_PROC = Path("/proc")
_POLL_S = 0.05

Identity = tuple[int, int]
"""``(pid, start time in clock ticks)``: a pid alone may be reused by an unrelated process once it exits."""


class SimulationInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the launcher; everything it started has been stopped by the time callers see this.

    A `KeyboardInterrupt`, so no ``except Exception`` on the way out swallows it (as Ctrl-C itself).
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def finish_despite_signal(cleanup: Callable[[], None]) -> None:
    """Run ``cleanup`` to the end even if the first SIGINT/SIGTERM lands in the middle of it, then re-raise that.

    `stop_on_signals` raises only for the first signal, so the second attempt cannot be cut short: a Ctrl-C
    while a finished run shuts down still stops every process and removes the temporary Flower home.
    """
    interrupted: SimulationInterrupted | None = None
    for _ in range(2):
        try:
            cleanup()
            break
        except SimulationInterrupted as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def _stat(pid: int) -> tuple[int, int, str, int] | None:
    """``(ppid, pgid, state, start time)`` from ``/proc/<pid>/stat``; None once the process is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), int(fields[2]), fields[0], int(fields[19])


def _name(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return str(pid)


def _identity(pid: int) -> Identity | None:
    stat = _stat(pid)
    return (pid, stat[3]) if stat else None


def _alive(identity: Identity) -> bool:
    """Running and still the same process (a zombie, or a reused pid, counts as gone)."""
    stat = _stat(identity[0])
    return stat is not None and stat[2] not in ("Z", "X") and stat[3] == identity[1]


def descendants(roots: Iterable[int]) -> set[Identity]:
    """``roots`` and every process below them, read from ``/proc`` (Linux); just ``roots`` where there is no /proc.

    Why a walk and not only process groups: Ray, which Flower's simulation engine starts, moves its own
    processes into a process group of their own (``os.setpgrp``), out of the launcher's child's group.
    """
    roots = [pid for pid in roots if pid > 0]
    if not _PROC.is_dir():
        return {(pid, 0) for pid in roots}
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
    found: set[Identity] = set()
    pending = list(roots)
    while pending:
        pid = pending.pop()
        if (identity := _identity(pid)) is not None and identity not in found:
            found.add(identity)
            pending.extend(children.get(pid, ()))
    return found


def _signal_all(tree: set[Identity], signum: int) -> None:
    """Send ``signum`` to each process of ``tree`` that is still itself, and to each group one of them leads."""
    own_group = os.getpgrp()
    for identity in tree:
        if not _PROC.is_dir() or _alive(identity):
            stat = _stat(identity[0])
            try:
                if stat is not None and stat[1] == identity[0] and stat[1] != own_group:
                    os.killpg(identity[0], signum)  # a group leader: its whole group, members not yet seen too
                os.kill(identity[0], signum)
            except (ProcessLookupError, PermissionError):
                pass


def stop_trees(roots: Sequence[int], grace_s: float = 2.0) -> None:
    """Stop ``roots`` and all their descendants: SIGTERM, up to ``grace_s`` for them to exit, then SIGKILL.

    The tree is read before anything is signalled: once a parent exits its children are re-parented and
    could no longer be found. Processes started while it stops are added on each poll.
    """
    tree = descendants(roots)
    _signal_all(tree, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (alive := {i for i in tree if _alive(i)}) and time.monotonic() < deadline:
        tree |= descendants(pid for pid, _ in alive)
        time.sleep(_POLL_S)
    if alive:
        names = sorted(_name(pid) for pid, _ in alive)
        logger.info("%d process(es) still running %.0f s after SIGTERM, killed: %s", len(alive), grace_s, names)
        tree |= descendants(pid for pid, _ in alive)
        _signal_all(tree, signal.SIGKILL)
        deadline = time.monotonic() + 1.0
        while any(_alive(i) for i in tree) and time.monotonic() < deadline:
            time.sleep(_POLL_S)


class ChildProcesses:
    """The processes a launcher started, each in a session of its own; leaving the block stops all their trees.

    A session of its own keeps Ctrl-C in a terminal (sent to the whole foreground group) from reaching the
    children directly: the launcher alone decides how they stop, and nothing outlives it.
    """

    def __init__(self, grace_s: float = 2.0) -> None:
        self.grace_s = grace_s
        self._processes: list[subprocess.Popen[Any]] = []

    def start(self, command: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen(command, **popen)`` in a new session, remembered for `stop`."""
        process = subprocess.Popen(command, start_new_session=True, **popen)
        self._processes.append(process)
        return process

    def stop(self) -> None:
        """Stop every started process and its descendants, then reap the direct children (`finish_despite_signal`)."""
        finish_despite_signal(self._stop)

    def _stop(self) -> None:
        stop_trees([p.pid for p in self._processes if p.poll() is None], self.grace_s)
        for process in self._processes:
            try:
                process.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:  # only without /proc, where stop_trees cannot tell who is alive
                process.kill()
                process.wait()
        self._processes.clear()

    def __enter__(self) -> ChildProcesses:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `SimulationInterrupted` (once), so cleanup blocks run at once.

    Why: SIGTERM's default action ends Python without running ``finally`` blocks, which would leave the
    SuperLink, its SuperExec and the temporary Flower home behind. A second signal while stopping is ignored,
    so it cannot cut the cleanup short. Outside the main thread (where Python runs signal handlers) the
    block changes nothing. The previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if received:
            return
        received.append(signum)
        raise SimulationInterrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
