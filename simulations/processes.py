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
from typing import Any, NamedTuple

__all__ = [
    "ChildProcesses",
    "SimulationInterrupted",
    "descendants",
    "finish_despite_signal",
    "session_members",
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


class _Stat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` used here."""

    ppid: int
    pgid: int
    session: int
    state: str
    start: int


def _stat(pid: int) -> _Stat | None:
    """Parent, group, session, state and start time from ``/proc/<pid>/stat``; None once the process is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return _Stat(int(fields[1]), int(fields[2]), int(fields[3]), fields[0], int(fields[19]))


def _name(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return str(pid)


def _identity(pid: int) -> Identity | None:
    stat = _stat(pid)
    return (pid, stat.start) if stat else None


def _alive(identity: Identity) -> bool:
    """Running and still the same process (a zombie, or a reused pid, counts as gone)."""
    stat = _stat(identity[0])
    return stat is not None and stat.state not in ("Z", "X") and stat.start == identity[1]


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
            children.setdefault(stat.ppid, []).append(int(entry.name))
    found: set[Identity] = set()
    pending = list(roots)
    while pending:
        pid = pending.pop()
        if (identity := _identity(pid)) is not None and identity not in found:
            found.add(identity)
            pending.extend(children.get(pid, ()))
    return found


def session_members(leaders: Iterable[Identity]) -> set[Identity]:
    """Every process in the session of one of ``leaders`` (each a started child, ``(pid, start time)``), read from
    ``/proc`` (Linux; none without it), the leaders themselves included while they run.

    Why: the launcher starts each child as a session leader, and everything it starts stays in that session
    unless it calls ``setsid`` itself. When a child dies first (a crashed SuperLink), its SuperExec, apps and Ray
    workers are re-parented to init, out of reach of a walk down parent links; their session id still names it.
    A session id is a pid, so a member is taken only if it started no earlier than the leader, and not when the
    leader's pid now belongs to another process (the pid was reused).
    """
    starts = {pid: start for pid, start in leaders if pid > 0}
    if not starts or not _PROC.is_dir():
        return set()
    reused = {pid for pid, start in starts.items() if (now := _identity(pid)) is not None and now[1] != start}
    found: set[Identity] = set()
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or (stat := _stat(int(entry.name))) is None:
            continue
        start = starts.get(stat.session)
        if start is not None and stat.session not in reused and stat.start >= start:
            found.add((int(entry.name), stat.start))
    return found


def _signal_all(tree: set[Identity], signum: int) -> None:
    """Send ``signum`` to each process of ``tree`` that is still itself, and to each group one of them leads."""
    own_group = os.getpgrp()
    for identity in tree:
        if not _PROC.is_dir() or _alive(identity):
            stat = _stat(identity[0])
            try:
                if stat is not None and stat.pgid == identity[0] and stat.pgid != own_group:
                    os.killpg(identity[0], signum)  # a group leader: its whole group, members not yet seen too
                os.kill(identity[0], signum)
            except (ProcessLookupError, PermissionError):
                pass


def stop_trees(roots: Sequence[int], grace_s: float = 2.0, *, sessions: Sequence[Identity] = ()) -> None:
    """Stop ``roots``, all their descendants and every member of the ``sessions`` of these leaders (see
    `session_members`): SIGTERM, up to ``grace_s`` for them to exit, then SIGKILL.

    The tree is read before anything is signalled: once a parent exits its children are re-parented and
    could no longer be found. Processes started while it stops are added on each poll.
    """

    def everything(pids: Iterable[int]) -> set[Identity]:
        return descendants([*pids, *(pid for pid, _ in session_members(sessions))])

    tree = everything(roots)
    _signal_all(tree, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (alive := {i for i in tree if _alive(i)}) and time.monotonic() < deadline:
        tree |= everything(pid for pid, _ in alive)
        time.sleep(_POLL_S)
    if alive:
        names = sorted(_name(pid) for pid, _ in alive)
        logger.info("%d process(es) still running %.0f s after SIGTERM, killed: %s", len(alive), grace_s, names)
        tree |= everything(pid for pid, _ in alive)
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
        self._sessions: list[Identity] = []

    def start(self, command: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen(command, **popen)`` in a new session, remembered for `stop` (with its start time,
        read while it cannot have exited unreaped, so its session can be told from a later one of a reused pid)."""
        process = subprocess.Popen(command, start_new_session=True, **popen)
        self._processes.append(process)
        if (identity := _identity(process.pid)) is not None:
            self._sessions.append(identity)
        return process

    def stop(self) -> None:
        """Stop every started process and its descendants, then reap the direct children (`finish_despite_signal`)."""
        finish_despite_signal(self._stop)

    def _stop(self) -> None:
        # A child that already died is not signalled (its pid may be reused once reaped), but what it started is
        # still found by its session: a crashed SuperLink's SuperExec, apps and Ray workers, re-parented to init.
        running = [p.pid for p in self._processes if p.poll() is None]
        stop_trees(running, self.grace_s, sessions=self._sessions)
        for process in self._processes:
            try:
                process.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:  # only without /proc, where stop_trees cannot tell who is alive
                process.kill()
                process.wait()
        self._processes.clear()
        self._sessions.clear()

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
