"""The launcher's child processes: every descendant stopped, signals turned into a prompt, complete cleanup."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from simulations.processes import (
    ChildProcesses,
    SimulationInterrupted,
    descendants,
    finish_despite_signal,
    stop_on_signals,
)

_SPAWNS_A_DETACHED_GRANDCHILD = """
import subprocess, sys, time
# Like Ray under Flower's simulation engine: a grandchild in a process group (and session) of its own.
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc (Linux)")
def test_stopping_reaches_a_grandchild_that_left_the_process_group(tmp_path: Path) -> None:
    import subprocess

    children = ChildProcesses(grace_s=2.0)
    parent = children.start([sys.executable, "-c", _SPAWNS_A_DETACHED_GRANDCHILD], stdout=subprocess.PIPE, text=True)
    grandchild = int(parent.stdout.readline())
    try:
        assert {pid for pid, _ in descendants([parent.pid])} == {parent.pid, grandchild}
        assert os.getpgid(grandchild) != os.getpgid(parent.pid)

        started = time.monotonic()
        children.stop()

        assert not _running(parent.pid) and not _running(grandchild)
        assert time.monotonic() - started < 2.0  # both exit on SIGTERM: no wait for the grace period
    finally:
        for pid in (parent.pid, grandchild):
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        parent.stdout.close()


_SPAWNS_A_GRANDCHILD_AND_DIES = """
import subprocess, sys
# Like a crashing SuperLink: it started its SuperExec (same session), then died before the launcher stopped it.
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
"""


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads sessions from /proc (Linux)")
def test_stopping_reaches_what_a_dead_child_left_in_its_session() -> None:
    import subprocess

    # Prepare: the child exits at once; its grandchild, in the child's session, is re-parented away from it
    children = ChildProcesses(grace_s=2.0)
    parent = children.start([sys.executable, "-c", _SPAWNS_A_GRANDCHILD_AND_DIES], stdout=subprocess.PIPE, text=True)
    grandchild = int(parent.stdout.readline())
    try:
        assert parent.wait(timeout=30) == 0
        assert _running(grandchild) and _parent_pid(grandchild) != parent.pid
        assert os.getsid(grandchild) == parent.pid
        # Execute
        children.stop()
        # Assert
        deadline = time.monotonic() + 2.0
        while _running(grandchild) and time.monotonic() < deadline:  # reaped by whoever adopted it
            time.sleep(0.05)
        assert not _running(grandchild)
    finally:
        if _running(grandchild):
            os.kill(grandchild, signal.SIGKILL)
        parent.stdout.close()


def test_a_signal_in_the_block_raises_once_and_the_old_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)

    with pytest.raises(SimulationInterrupted) as raised, stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # a second signal while cleaning up is ignored
            time.sleep(0.1)

    assert raised.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_cleanup_cut_short_by_the_first_signal_is_finished_then_the_signal_is_raised() -> None:
    calls: list[int] = []

    def cleanup() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise SimulationInterrupted(signal.SIGINT)

    with pytest.raises(SimulationInterrupted):
        finish_despite_signal(cleanup)

    assert len(calls) == 2
