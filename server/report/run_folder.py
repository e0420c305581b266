"""Claims a fresh run folder for one run, atomically, so two runs never share (and interleave) one.

Both ways of starting a run claim through here: ``fedmammo simulate`` (its launcher claims before the SuperLink
starts, to print the folder and put Flower's log in it, and tells its ServerApp so through
`CLAIMED_RUN_DIR_ENV`), and ``flwr run .`` on a deployed SuperLink, whose ServerApp claims for itself
(`server_run_dir`).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

from common.errors import ConfigError
from server.report.run_files import METRICS_FILE

__all__ = [
    "CLAIMED_RUN_DIR_ENV",
    "CLAIM_FILE",
    "LATEST",
    "MAX_SUFFIX",
    "claim_run_dir",
    "server_run_dir",
    "timestamped_run_dir",
]

logger = logging.getLogger(__name__)

CLAIM_FILE = ".fedmammo-run"
"""Created exclusively (``O_EXCL``) in the claimed folder: of two runs, only one can create it."""
MAX_SUFFIX = 1000
"""``<name>-2`` ... ``<name>-1000`` are tried after ``<name>``; more runs than that in one second is a bug."""
LATEST = "latest"
"""A requested folder of this name (the default ``~/.fedmammo/runs/latest``) is a symbolic link, not a folder:
each run claims ``<parent>/<timestamp>`` and ``latest`` is pointed at it."""
CLAIMED_RUN_DIR_ENV = "FEDMAMMO_CLAIMED_RUN_DIR"
"""Set by the simulation launcher for its own SuperLink (and so its ServerApp process) to the folder it claimed
for the run: the ServerApp writes there instead of claiming another. A deployed SuperLink does not set it."""


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


def _claim_first_free(path: Path, requested: str | Path) -> Path:
    """Claim ``path`` or the first free ``<path>-2``, ``-3``, ...; its parent exists."""
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


def _point_latest(link: Path, folder: Path) -> None:
    """Point the symbolic link ``link`` at ``folder`` (a sibling), atomically: a new link renamed over the old.

    Readers never see ``latest`` missing or half-made. A real folder named ``latest`` (written by an older
    fedmammo) is left as it is, with a warning: the rename cannot replace a folder, and its run stays intact.
    """
    temporary = link.with_name(f".{link.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        os.symlink(folder.name, temporary)  # relative: the runs folder can be moved or copied whole
        os.replace(temporary, link)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        logger.warning("%s was not pointed at this run's folder %s (%s)", link, folder, exc)


def claim_run_dir(requested: str | Path) -> Path:
    """Claim ``requested`` for one run, or the first free ``<requested>-2``, ``-3``, ...; return the claimed folder.

    Why: run folders are named by the second (``runs/<timestamp>``), and the server appends to
    ``metrics.jsonl``, so two runs started within a second (or two runs given one fixed folder) would otherwise
    write into one folder. A folder is free when it does not exist yet or exists and is empty (a folder made
    for this run, such as a test's temporary one). Parent folders are created as needed.

    A folder named `LATEST` is not written into: the run claims ``<parent>/<timestamp>`` (``-N`` as above) and
    ``latest`` becomes a symbolic link to it, so the fixed default always opens the newest run and no run
    appends to an earlier one.

    Raises
    ------
    ConfigError
        If the parent folder cannot be created, or every candidate up to `MAX_SUFFIX` is taken.
    """
    path = Path(requested).expanduser()
    latest = path.name == LATEST
    # ``latest`` itself is not resolved: it is a link to an earlier run's folder.
    path = path.parent.resolve() / LATEST if latest else path.resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"config key 'output.run_dir' = {str(requested)!r}: cannot create its parent: {exc}") from exc
    if not latest:
        return _claim_first_free(path, requested)
    folder = _claim_first_free(timestamped_run_dir(path.parent), requested)
    _point_latest(path, folder)
    return folder


def server_run_dir(configured: str | Path) -> Path:
    """The folder the ServerApp writes this run into: the one its launcher claimed, else one it claims now.

    Why: ``flwr run .`` on a deployed SuperLink reaches the ServerApp without a launcher, and every run there
    is given the same ``output.run_dir``; writing into it as it is would append a second run's rows to the
    first's ``metrics.jsonl``. ``fedmammo simulate`` claims first (to print the folder and write Flower's
    log there) and names the folder in `CLAIMED_RUN_DIR_ENV`; that folder is used as it is, unless it already
    holds a ``metrics.jsonl`` (an earlier run's rows are never appended to).

    Raises
    ------
    ConfigError
        As `claim_run_dir`.
    """
    claimed = os.environ.get(CLAIMED_RUN_DIR_ENV, "")
    folder = Path(configured).expanduser().resolve()
    if claimed and Path(claimed).resolve() == folder and folder.is_dir() and not (folder / METRICS_FILE).exists():
        return folder
    folder = claim_run_dir(configured)
    logger.info("run folder: %s", folder)
    return folder
