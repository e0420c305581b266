"""Claims a fresh run folder for one simulation, atomically, so two runs never share (and interleave) one."""

from __future__ import annotations

import os
import time
from pathlib import Path

from common.errors import ConfigError

__all__ = ["CLAIM_FILE", "MAX_SUFFIX", "claim_run_dir", "timestamped_run_dir"]

CLAIM_FILE = "flower.log"
"""Created exclusively (``O_EXCL``) in the claimed folder: of two runs, only one can create it (the launcher then
writes Flower's log into it)."""
MAX_SUFFIX = 1000
"""``<name>-2`` ... ``<name>-1000`` are tried after ``<name>``; more runs than that in one second is a bug."""


def timestamped_run_dir(parent: str | Path = "runs") -> Path:
    """``parent/<YYYYmmdd-HHMMSS>``: the default run folder name (one-second resolution; `claim_run_dir` adds
    a ``-N`` suffix when another run took that second)."""
    return Path(parent) / time.strftime("%Y%m%d-%H%M%S")


def _claim(path: Path) -> bool:
    """Whether this process now owns ``path``: the folder is new or empty, and this process created its claim file.

    The claim file is created with ``open(..., "x")`` (``O_EXCL``), atomic on a local file system: when two
    processes race for one folder, exactly one creates it, whichever of them made the folder. A folder with
    anything in it (an earlier run's files, or another run's claim) is never taken.
    """
    try:
        os.mkdir(path)
    except FileExistsError:
        if not path.is_dir() or any(path.iterdir()):
            return False
    try:
        with (path / CLAIM_FILE).open("x", encoding="utf-8"):
            return True
    except FileExistsError:
        return False


def claim_run_dir(requested: str | Path) -> Path:
    """Claim ``requested`` for one run, or the first free ``<requested>-2``, ``-3``, ...; return the claimed folder.

    Why: run folders are named by the second (``runs/<timestamp>``), and the server appends to
    ``metrics.jsonl``, so two runs started within a second would otherwise write into one folder. A folder
    is free when it does not exist yet or exists and is empty (a folder made for this run, such as a test's
    temporary one). Parent folders are created as needed.

    Raises
    ------
    ConfigError
        If the parent folder cannot be created, or every candidate up to `MAX_SUFFIX` is taken.
    """
    path = Path(requested).expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"config key 'output.run_dir' = {str(requested)!r}: cannot create its parent: {exc}") from exc
    for candidate in (path, *(path.with_name(f"{path.name}-{n}") for n in range(2, MAX_SUFFIX + 1))):
        try:
            if _claim(candidate):
                return candidate
        except OSError as exc:  # e.g. a read-only parent: no candidate can work
            raise ConfigError(f"config key 'output.run_dir' = {str(requested)!r}: cannot create it: {exc}") from exc
    raise ConfigError(
        f"config key 'output.run_dir' = {str(requested)!r}: it and {path.name}-2 ... -{MAX_SUFFIX} are all taken; "
        "choose another folder"
    )
