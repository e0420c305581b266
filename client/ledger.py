"""A site's privacy ledger on its own disk: every DP step it ever trained on its data, across runs and restarts."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from client.ledger_file import LEDGER_KEY, check_folder, exclusive, lock_path, not_writable, real_path, seal, sealed
from client.ledger_rounds import (
    RoundEntry,
    RoundRelease,
    entries_from_json,
    entries_to_json,
    history_for_round,
    settle,
)
from client.ledger_steps import added_steps, covers, merged
from common.errors import ConfigError
from common.file_log import file_log
from common.privacy import history_from_lists, history_to_lists

__all__ = ["LEDGER_FILE_NAME", "LEDGER_KEY", "PrivacyLedger", "lock_path"]

logger = logging.getLogger(__name__)

LEDGER_FILE_NAME = "privacy_ledger.json"
_VERSION = 3
"""3: with a checksum and the run and round of each round's spending (`client.ledger_rounds`). Version 2 (a checksum,
no rounds) is read as spending of no known round; version 1 (no checksum) is read once; both are rewritten as 3."""
_UNKEYED_VERSION = 2
_LEGACY_VERSION = 1

_MISSING = (
    "the site's privacy ledger is missing although this site kept one (its lock file says so); the site will not "
    "train until the ledger is restored from a backup"
)
_TAMPERED = (
    "the site's privacy ledger is tampered with (it fails its checksum); the site will not train until the ledger "
    "is restored from a backup"
)

History = list[tuple[float, float, int]]


def _checksum(lists: dict[str, list], rounds: list[dict[str, object]] | None, version: int = _VERSION) -> str:
    body: dict[str, object] = {"version": version, "history": lists}
    if rounds is not None:  # version 2 had none, and its checksum covers only the history
        body["rounds"] = rounds
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _read(path: Path) -> tuple[History, list[RoundEntry], bool]:
    """The history in the file, its round entries, and whether it is a version-1 ledger still to be rewritten with
    a checksum.

    Raises
    ------
    ConfigError
        If the file cannot be read, or fails its checksum (fails closed: a hand edit could lower the spending), or
        is absent where "nothing spent" cannot be told from "spending lost": its folder is missing, or the lock
        file's seal says this site has written a ledger there.
    """
    if not path.exists():
        check_folder(path)
        if sealed(path):
            raise ConfigError(
                f"privacy ledger {path} is missing, but its lock file {lock_path(path)} says this site has written "
                "one there: it was deleted or moved, and reading it as 'nothing spent' would forget the site's "
                "spending; the site will not train until the ledger is restored from a backup (delete the lock "
                "file as well only to start counting from zero on purpose)",
                public=_MISSING,
            )
        return [], [], False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.get("version")
        if version not in (_VERSION, _UNKEYED_VERSION, _LEGACY_VERSION):
            raise ValueError(f"version {version!r}, expected {_VERSION}")
        history = history_from_lists(data["history"])
        rounds = entries_from_json(data["rounds"]) if version == _VERSION else []
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
        raise ConfigError(
            f"privacy ledger {path} is unreadable ({exc}); the site will not train until it can tell how much "
            "privacy it has spent: restore the file from a backup (deleting it forgets the spent budget)",
            public="the site's privacy ledger is unreadable; the site will not train until it can tell how much "
            "privacy it has spent (restore the ledger from a backup)",
        ) from exc
    if version == _LEGACY_VERSION and sealed(path):
        raise ConfigError(
            f"privacy ledger {path} is tampered with: it has no checksum, but this site has written checksummed "
            "ledgers (its lock file says so), so it was edited or replaced; the site will not train until the "
            "ledger is restored from a backup (delete the .lock file beside it only to accept an old ledger once)",
            public=_TAMPERED,
        )
    keyed = entries_to_json(rounds) if version == _VERSION else None
    checked = version != _LEGACY_VERSION
    if checked and data.get("checksum") != _checksum(history_to_lists(history), keyed, version):
        raise ConfigError(
            f"privacy ledger {path} is tampered with: its content does not match its checksum, so it was changed "
            "outside fedmammo (an edit can lower the recorded spending); the site will not train until the "
            "ledger is restored from a backup",
            public=_TAMPERED,
        )
    if not covers(history, [step for entry in rounds for step in entry.history]):
        raise ConfigError(
            f"privacy ledger {path} is inconsistent: its rounds hold steps its history does not; the site will not "
            "train until the ledger is restored from a backup",
            public=_TAMPERED,
        )
    return history, rounds, version == _LEGACY_VERSION


@dataclass
class PrivacyLedger:
    """The accountant history a site has spent, kept by the hospital rather than in memory or by the server.

    Flower's node state forgets everything when the SuperNode restarts or a new run starts, yet privacy
    loss composes over every use of the same patients; so the ledger is a file that only ever grows. Two
    trainings on one site at once (two nodes, two runs, a retry) must not lose each other's spending, so a
    round holds the ledger's lock (`locked`) from its budget check to its write, and every write re-reads
    the file under the lock and adds only its own new steps. ``path`` is the real file, links followed.
    """

    path: Path
    history: History = field(default_factory=list)
    rounds: list[RoundEntry] = field(default_factory=list)
    """Which run and round recorded which of ``history``'s steps (empty for spending older than version 3)."""
    _lock: int | None = field(default=None, repr=False, compare=False)
    """The locked file descriptor while this ledger is used inside `locked` (or `record` holds it)."""

    @classmethod
    def open(cls, path: str | Path) -> PrivacyLedger:
        """Read the ledger without holding its lock (an absent file is an empty ledger): a snapshot.

        Raises
        ------
        ConfigError
            If the file exists but cannot be read or fails its checksum, or is absent though the lock file's
            seal says the site kept one, or its folder is missing: the site must not train while it cannot tell
            what it spent.
        """
        path = real_path(path)
        history, rounds, _ = _read(path)
        return cls(path, history, rounds)

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
            As `open`; also if the ledger's folder is not writable (checked before the round trains).
        """
        path = real_path(path)
        with exclusive(path, writable=True) as handle:
            history, rounds, legacy = _read(path)
            ledger = cls(path, history, rounds, _lock=handle)
            if legacy:
                file_log().warning("privacy ledger %s has no checksum (version 1): rewriting it with one", path)
                ledger._write(history, rounds)
            try:
                yield ledger
            finally:
                ledger._lock = None

    def history_for(self, run: str, server_round: int, *, seeded: bool) -> History:
        """The history round ``server_round`` of run ``run`` trains from: this ledger's, less an earlier attempt of
        the same round when the noise is seeded (`client.ledger_rounds.history_for_round`)."""
        return history_for_round(self.history, self.rounds, run, server_round, seeded=seeded)

    def record(
        self,
        history: Sequence[tuple[float, float, int]],
        *,
        base: Sequence[tuple[float, float, int]] | None = None,
        release: RoundRelease | None = None,
    ) -> None:
        """Add this round's steps: ``history`` is the cumulative one and must hold every step of ``base``.

        ``base`` is the history the round trained from (`history_for`); by default the one this ledger was read
        with. Opacus merges consecutive steps at the same (noise, sample rate) into one entry, so "extends" is
        checked as steps per (noise, sample rate), not as a list prefix. Only the steps beyond ``base`` are added,
        to the file as it is now (re-read under the lock): spending written meanwhile by another process is kept,
        never overwritten. With ``release`` (a run key from the server) they are recorded as that run's round, and
        a round trained again is settled by `client.ledger_rounds.settle`: an identical update adds nothing.

        Raises
        ------
        PrivacyBudgetExceeded
            From `client.ledger_rounds.settle`: a second, different update for one round under seeded noise.
        """
        history = [(float(s), float(q), int(n)) for s, q, n in history]
        start = self.history if base is None else [(float(s), float(q), int(n)) for s, q, n in base]
        if not covers(history, start):
            raise ValueError(f"privacy ledger {self.path}: a new history must keep every recorded step, never drop one")
        added = added_steps(history, start)
        with self._held():
            current, rounds, _ = _read(self.path)
            if release is not None and release.run:
                rounds, added = settle(rounds, release, added)
            self._write(merged([*current, *added]), rounds)

    @contextmanager
    def _held(self) -> Iterator[None]:
        """The ledger's lock: the one `locked` holds, else taken for this block."""
        if self._lock is not None:
            yield
            return
        with exclusive(self.path) as handle:
            self._lock = handle
            try:
                yield
            finally:
                self._lock = None

    def _write(self, history: History, rounds: list[RoundEntry]) -> None:
        """Replace the file atomically (temporary file, fsync, rename) with ``history``, ``rounds`` and a checksum."""
        lists, keyed = history_to_lists(history), entries_to_json(rounds)
        payload = {"version": _VERSION, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "history": lists, "rounds": keyed, "checksum": _checksum(lists, keyed)}  # fmt: skip
        try:
            handle, temporary = tempfile.mkstemp(prefix=".ledger-", dir=self.path.parent)
        except OSError as exc:
            raise not_writable(self.path, exc) from exc
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(payload, stream, indent=1)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)
        except BaseException as exc:
            Path(temporary).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise not_writable(self.path, exc) from exc
            raise
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:  # the rename itself must survive a power cut, or the round's steps would be lost with it
            os.fsync(folder)
        finally:
            os.close(folder)
        if self._lock is not None and not sealed(self.path):
            seal(self._lock)
        self.history = list(history)
        self.rounds = list(rounds)
