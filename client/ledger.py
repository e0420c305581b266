"""A site's privacy ledger on its own disk: every DP step it ever trained on its data, across runs and restarts."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError
from common.file_log import file_log
from common.privacy import history_from_lists, history_to_lists

__all__ = ["LEDGER_FILE_NAME", "PrivacyLedger", "lock_path"]

logger = logging.getLogger(__name__)

LEDGER_FILE_NAME = "privacy_ledger.json"
_VERSION = 2
"""2: with a checksum. Version 1 (no checksum) is read once, then rewritten as version 2."""
_LEGACY_VERSION = 1
_SEAL = "fedmammo privacy ledger lock: this site writes checksummed ledgers (version 2)\n"
"""Written into the lock file with the first checksummed ledger, so a checksum stripped later is not
taken for an old ledger being migrated."""

_TAMPERED = (
    "the site's privacy ledger is tampered with (it fails its checksum); the site will not train until the ledger "
    "is restored from a backup"
)

History = list[tuple[float, float, int]]


def _steps(history: Sequence[tuple[float, float, int]]) -> Counter[tuple[float, float]]:
    steps: Counter[tuple[float, float]] = Counter()
    for noise, rate, count in history:
        steps[(float(noise), float(rate))] += int(count)
    return steps


def _covers(new: Sequence[tuple[float, float, int]], old: Sequence[tuple[float, float, int]]) -> bool:
    have = _steps(new)
    return all(have[key] >= count for key, count in _steps(old).items())


def _added(new: Sequence[tuple[float, float, int]], old: Sequence[tuple[float, float, int]]) -> History:
    """The steps of ``new`` beyond ``old`` (which it covers), in ``new``'s order."""
    left = _steps(old)
    added: History = []
    for noise, rate, count in new:
        key = (float(noise), float(rate))
        taken = min(left[key], int(count))
        left[key] -= taken
        if count > taken:
            added.append((key[0], key[1], int(count) - taken))
    return added


def _merged(history: Sequence[tuple[float, float, int]]) -> History:
    """Consecutive entries at one (noise, sample rate) as one, as Opacus' accountant keeps them."""
    merged: History = []
    for noise, rate, count in history:
        if merged and merged[-1][:2] == (noise, rate):
            merged[-1] = (noise, rate, merged[-1][2] + count)
        else:
            merged.append((float(noise), float(rate), int(count)))
    return merged


def _checksum(lists: dict[str, list]) -> str:
    canonical = json.dumps({"version": _VERSION, "history": lists}, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def lock_path(path: Path) -> Path:
    """The sidecar file whose ``flock`` serializes every use of the ledger at ``path`` (kept, never deleted)."""
    return path.with_name(path.name + ".lock")


def _sealed(path: Path) -> bool:
    try:
        return lock_path(path).read_text(encoding="utf-8") == _SEAL
    except OSError:
        return False


def _read(path: Path) -> tuple[History, bool]:
    """The history in the file and whether it is a version-1 ledger still to be rewritten with a checksum.

    Raises
    ------
    ConfigError
        If the file cannot be read, or fails its checksum (fails closed: a hand edit could lower the spending).
    """
    if not path.exists():
        return [], False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.get("version")
        if version not in (_VERSION, _LEGACY_VERSION):
            raise ValueError(f"version {version!r}, expected {_VERSION}")
        history = history_from_lists(data["history"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
        raise ConfigError(
            f"privacy ledger {path} is unreadable ({exc}); the site will not train until it can tell how much "
            "privacy it has spent: restore the file from a backup (deleting it forgets the spent budget)",
            public="the site's privacy ledger is unreadable; the site will not train until it can tell how much "
            "privacy it has spent (restore the ledger from a backup)",
        ) from exc
    if version == _LEGACY_VERSION and _sealed(path):
        raise ConfigError(
            f"privacy ledger {path} is tampered with: it has no checksum, but this site has written checksummed "
            "ledgers (its lock file says so), so it was edited or replaced; the site will not train until the "
            "ledger is restored from a backup (delete the .lock file beside it only to accept an old ledger once)",
            public=_TAMPERED,
        )
    if version == _VERSION and data.get("checksum") != _checksum(history_to_lists(history)):
        raise ConfigError(
            f"privacy ledger {path} is tampered with: its content does not match its checksum, so it was changed "
            "outside fedmammo (an edit can lower the recorded spending); the site will not train until the "
            "ledger is restored from a backup",
            public=_TAMPERED,
        )
    return history, version == _LEGACY_VERSION


@dataclass
class PrivacyLedger:
    """The accountant history a site has spent, kept by the hospital rather than in memory or by the server.

    Flower's node state forgets everything when the SuperNode restarts or a new run starts, yet privacy
    loss composes over every use of the same patients; so the ledger is a file that only ever grows. Two
    trainings on one site at once (two nodes, two runs, a retry) must not lose each other's spending, so a
    round holds the ledger's lock (`locked`) from its budget check to its write, and every write re-reads
    the file under the lock and adds only its own new steps.
    """

    path: Path
    history: History = field(default_factory=list)
    _lock: int | None = field(default=None, repr=False, compare=False)
    """The locked file descriptor while this ledger is used inside `locked` (or `record` holds it)."""

    @classmethod
    def open(cls, path: str | Path) -> PrivacyLedger:
        """Read the ledger without holding its lock (an absent file is an empty ledger): a snapshot.

        Raises
        ------
        ConfigError
            If the file exists but cannot be read or fails its checksum: the site must not train while it
            cannot tell what it spent.
        """
        path = Path(path).expanduser()
        history, _ = _read(path)
        return cls(path, history)

    @classmethod
    @contextmanager
    def locked(cls, path: str | Path) -> Iterator[PrivacyLedger]:
        """Hold the ledger's exclusive lock, read it under the lock, and yield it; released on leaving.

        A round checks its budget against this history and records its steps before leaving, so a second
        round on the same site waits and then sees the first one's spending. A version-1 ledger (no
        checksum) is accepted here once and rewritten with one (logged).

        Raises
        ------
        ConfigError
            As `open`.
        """
        path = Path(path).expanduser()
        with _exclusive(path) as handle:
            history, legacy = _read(path)
            ledger = cls(path, history, _lock=handle)
            if legacy:
                file_log().warning("privacy ledger %s has no checksum (version 1): rewriting it with one", path)
                ledger._write(history)
            try:
                yield ledger
            finally:
                ledger._lock = None

    def record(self, history: Sequence[tuple[float, float, int]]) -> None:
        """Add this round's steps: ``history`` is the cumulative one and must hold every step read before.

        Opacus merges consecutive steps at the same (noise, sample rate) into one entry, so "extends" is
        checked as steps per (noise, sample rate), not as a list prefix. Only the steps beyond what this
        ledger was read with are added, to the file as it is now (re-read under the lock): spending written
        meanwhile by another process is kept, never overwritten.
        """
        history = [(float(s), float(q), int(n)) for s, q, n in history]
        if not _covers(history, self.history):
            raise ValueError(f"privacy ledger {self.path}: a new history must keep every recorded step, never drop one")
        added = _added(history, self.history)
        with self._held():
            current, _ = _read(self.path)
            self._write(_merged([*current, *added]))

    @contextmanager
    def _held(self) -> Iterator[None]:
        """The ledger's lock: the one `locked` holds, else taken for this block."""
        if self._lock is not None:
            yield
            return
        with _exclusive(self.path) as handle:
            self._lock = handle
            try:
                yield
            finally:
                self._lock = None

    def _write(self, history: History) -> None:
        """Replace the file atomically (temporary file, fsync, rename) with ``history`` and its checksum."""
        lists = history_to_lists(history)
        payload = {"version": _VERSION, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "history": lists, "checksum": _checksum(lists)}  # fmt: skip
        handle, temporary = tempfile.mkstemp(prefix=".ledger-", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(payload, stream, indent=1)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:  # the rename itself must survive a power cut, or the round's steps would be lost with it
            os.fsync(folder)
        finally:
            os.close(folder)
        if self._lock is not None and not _sealed(self.path):
            os.ftruncate(self._lock, 0)
            os.pwrite(self._lock, _SEAL.encode("utf-8"), 0)
        self.history = list(history)


@contextmanager
def _exclusive(path: Path) -> Iterator[int]:
    """An exclusive ``flock`` on the ledger's lock file (Linux/macOS), waiting for whoever holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file_log().info("privacy ledger %s is in use by another training on this site: waiting for it", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield handle
    finally:
        os.close(handle)  # closing the descriptor releases the lock
