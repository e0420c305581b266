"""A site's privacy ledger on its own disk: every DP step it ever trained on its data, across runs and restarts."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError
from common.privacy import history_from_lists, history_to_lists

__all__ = ["LEDGER_FILE_NAME", "PrivacyLedger"]

LEDGER_FILE_NAME = "privacy_ledger.json"
_VERSION = 1

History = list[tuple[float, float, int]]


def _steps(history: Sequence[tuple[float, float, int]]) -> Counter[tuple[float, float]]:
    steps: Counter[tuple[float, float]] = Counter()
    for noise, rate, count in history:
        steps[(float(noise), float(rate))] += int(count)
    return steps


def _covers(new: Sequence[tuple[float, float, int]], old: Sequence[tuple[float, float, int]]) -> bool:
    have = _steps(new)
    return all(have[key] >= count for key, count in _steps(old).items())


@dataclass
class PrivacyLedger:
    """The accountant history a site has spent, kept by the hospital rather than in memory or by the server.

    Flower's node state forgets everything when the SuperNode restarts or a new run starts, yet privacy
    loss composes over every use of the same patients; so the ledger is a file that only ever grows.
    """

    path: Path
    history: History = field(default_factory=list)

    @classmethod
    def open(cls, path: str | Path) -> PrivacyLedger:
        """Read the ledger (an absent file is an empty ledger).

        Raises
        ------
        ConfigError
            If the file exists but cannot be read: the site must not train while it cannot tell what it spent.
        """
        path = Path(path).expanduser()
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != _VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {_VERSION}")
            history = history_from_lists(data["history"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
            raise ConfigError(
                f"privacy ledger {path} is unreadable ({exc}); the site will not train until it can tell how much "
                "privacy it has spent: restore the file from a backup (deleting it forgets the spent budget)"
            ) from exc
        return cls(path, history)

    def record(self, history: Sequence[tuple[float, float, int]]) -> None:
        """Store the cumulative history after a round; it must hold at least every step already recorded.

        Opacus merges consecutive steps at the same (noise, sample rate) into one entry, so "extends" is
        checked as steps per (noise, sample rate), not as a list prefix.
        """
        history = [(float(s), float(q), int(n)) for s, q, n in history]
        if not _covers(history, self.history):
            raise ValueError(f"privacy ledger {self.path}: a new history must keep every recorded step, never drop one")
        payload = {"version": _VERSION, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "history": history_to_lists(history)}  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".ledger-", dir=self.path.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, self.path)
        self.history = list(history)  # type: ignore[arg-type]
