"""SIGTERM or SIGINT to `fedmammo simulate` stops every process it started, at once, and removes its Flower home."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

FEDMAMMO = Path(sys.executable).parent / "fedmammo"
START_TIMEOUT_S = 150.0
STOP_WITHIN_S = 10.0
"""Generous for 2 shared cores; the launcher itself waits 2 s after SIGTERM before it kills (Ray ignores SIGTERM)."""

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc (Linux)")

Identity = tuple[int, int]


def _stat(pid: int) -> tuple[int, str, int] | None:
    """``(ppid, state, start time)`` of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[19])


def _alive(identity: Identity) -> bool:
    stat = _stat(identity[0])
    return stat is not None and stat[1] not in ("Z", "X") and stat[2] == identity[1]


def _descendants(root: int) -> set[Identity]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            children.setdefault(stat[0], []).append(int(entry.name))
    found, pending = set(), list(children.get(root, []))
    while pending:
        pid = pending.pop()
        if (stat := _stat(pid)) is not None:
            found.add((pid, stat[2]))
            pending.extend(children.get(pid, []))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _holding(flwr_home: Path) -> set[Identity]:
    """Processes still alive whose environment names this Flower home (every process the run started has it)."""
    needle = f"FLWR_HOME={flwr_home}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and (stat := _stat(int(entry.name))) and stat[1] not in ("Z", "X"):
            found.add((int(entry.name), stat[2]))
    return found


def _kill(identities: set[Identity]) -> None:
    for identity in identities:
        if _alive(identity):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(identity[0], signal.SIGKILL)


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_every_process_the_simulation_started_and_removes_its_flower_home(
    signum: int, exit_code: int, tiny_federation: Path, tmp_path: Path
) -> None:
    # Prepare: a federation running for real (SuperLink, SuperExec, the apps and Ray all started)
    data = tmp_path / "phantoms"
    shutil.copytree(tiny_federation, data, ignore=shutil.ignore_patterns(".cache", "privacy_ledger*"))
    run_dir = tmp_path / "run"
    temp = Path(tempfile.mkdtemp(prefix="fm-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    overrides = [
        "privacy=none", "federation.num_sites=2", f"federation.data_dir={data}", "federation.synthetic=false",
        "data.image_size=32", "training.batch_size=8", "strategy.num_rounds=3", "strategy.min_nodes=2",
        f"output.run_dir={run_dir}",
    ]  # fmt: skip
    process = subprocess.Popen(
        [str(FEDMAMMO), "simulate", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(temp), "COLUMNS": "200"},
        cwd=tmp_path,
        start_new_session=True,
    )
    seen: set[Identity] = set()
    homes: list[Path] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            seen |= _descendants(process.pid)
            if any("ClientApp" in _cmdline(pid) or "raylet" in _cmdline(pid) for pid, _ in seen):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the federation did not start within {START_TIMEOUT_S:.0f} s")
        time.sleep(1.0)
        seen |= _descendants(process.pid)
        homes = list(temp.glob("fedmammo-flwr-*"))
        assert len(homes) == 1 and _holding(homes[0])

        # Execute
        started = time.monotonic()
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
        elapsed = time.monotonic() - started

        # Assert
        assert process.returncode == exit_code, (out, err)
        assert elapsed < STOP_WITHIN_S
        assert not {i for i in seen if _alive(i)}, [_cmdline(pid) for pid, _ in seen if _alive((pid, _))]
        assert not _holding(homes[0])
        assert not homes[0].exists()
        assert "Traceback" not in err and "Traceback" not in out, err
        assert f"stopped by {signal.Signals(signum).name}" in out.strip().splitlines()[-1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        _kill(seen | (_holding(homes[0]) if homes else set()))
        shutil.rmtree(temp, ignore_errors=True)
