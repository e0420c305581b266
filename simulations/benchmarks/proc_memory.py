"""Benchmark instrumentation: peak memory of a run's processes, found by a marker in their environment (Linux /proc).

Every process a simulation starts (SuperLink, SuperExec, the simulation, Ray's daemons and workers) inherits the
environment, so a variable only the run has (the trace file's path) finds them all, however they were forked.
Memory is PSS (each shared page split among the processes that map it, so the sum is what the run holds); RSS
(shared pages counted in every process) is kept too, as an upper bound.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["MemoryPeak", "MemorySampler", "process_memory_kb"]

_PROC = Path("/proc")


def process_memory_kb(smaps_rollup: str) -> tuple[int, int]:
    """``(rss_kb, pss_kb)`` from the text of ``/proc/<pid>/smaps_rollup`` (0 for a field it lacks)."""
    values = {"Rss:": 0, "Pss:": 0}
    for line in smaps_rollup.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in values:
            values[parts[0]] = int(parts[1])
    return values["Rss:"], values["Pss:"]


@dataclass
class MemoryPeak:
    """The largest total over the samples taken, in MiB, and how many processes made it up."""

    pss_mib: float = 0.0
    rss_mib: float = 0.0
    processes: int = 0
    samples: int = 0
    largest_process_rss_mib: float = 0.0
    errors: list[str] = field(default_factory=list)


class MemorySampler:
    """Samples, every ``interval_s`` in a thread, the memory of processes whose environment holds ``marker``
    (``NAME=value``); use as a context manager, then read `peak`."""

    def __init__(self, marker: str, interval_s: float = 0.5) -> None:
        self._marker = marker.encode()
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._ours: dict[int, bool] = {}
        self.peak = MemoryPeak()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _is_ours(self, pid: int) -> bool:
        if pid not in self._ours:
            try:
                self._ours[pid] = self._marker in (_PROC / str(pid) / "environ").read_bytes().split(b"\0")
            except OSError:  # gone, or not ours to read
                return False
        return self._ours[pid]

    def sample(self) -> None:
        """Take one sample now and raise `peak` where it is exceeded."""
        rss = pss = count = largest = 0
        for entry in os.scandir(_PROC):
            if not entry.name.isdigit() or int(entry.name) == os.getpid() or not self._is_ours(int(entry.name)):
                continue
            try:
                one_rss, one_pss = process_memory_kb((Path(entry.path) / "smaps_rollup").read_text())
            except OSError:
                continue
            rss, pss, count, largest = rss + one_rss, pss + one_pss, count + 1, max(largest, one_rss)
        peak = self.peak
        peak.samples += 1
        if pss / 1024 > peak.pss_mib:
            peak.pss_mib, peak.rss_mib, peak.processes = pss / 1024, rss / 1024, count
        peak.largest_process_rss_mib = max(peak.largest_process_rss_mib, largest / 1024)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sample()
            except Exception as exc:  # a sampler must never end the benchmark; the JSON says what went wrong
                self.peak.errors.append(f"{type(exc).__name__}: {exc}")
