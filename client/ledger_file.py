"""Where a site's privacy ledger lives on disk: its real file, a folder that must exist and be writable, its lock."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.errors import ConfigError
from common.file_log import file_log

__all__ = ["LEDGER_KEY", "check_folder", "exclusive", "lock_path", "not_writable", "real_path", "seal", "sealed"]

LEDGER_KEY = "ledger"
"""The SuperNode's node-config key naming the ledger file (else it lives beside the manifest, `client.site`)."""

_SEAL = "fedmammo privacy ledger lock: this site writes checksummed ledgers (version 2)\n"
"""Written into the lock file with the first checksummed ledger, so a checksum stripped later is not taken for an
old ledger being migrated, and a ledger deleted later is not taken for a site that has spent nothing."""

_NO_FOLDER = (
    "the folder of the site's privacy ledger does not exist (node config 'ledger', else the manifest's folder); the "
    "site will not train until it does, as a new ledger there would start from zero"
)
_NOT_WRITABLE = (
    "the site's privacy ledger cannot be written (node config 'ledger'): the ledger must be writable; point ledger= "
    "at a writable place"
)


def real_path(path: str | Path) -> Path:
    """The file a ledger path stands for, links followed: one lock and one file, whichever link leads to it.

    Locking and replacing the link itself would split the ledger in two: the rename turns the link into a plain
    file, and a lock beside the link does not exclude one beside the real file.

    Raises
    ------
    ConfigError
        If the path cannot be followed (a symbolic link loop), naming node-config key ``ledger``.
    """
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop (Python 3.11)
        raise ConfigError(
            f"privacy ledger {path} cannot be followed to a file ({exc}): node config '{LEDGER_KEY}' (or the "
            "manifest's folder) must lead to the ledger's real place; fix the link",
            public="the site's privacy ledger path cannot be followed to a file (node config 'ledger'); the site "
            "will not train until it can",
        ) from exc


def lock_path(path: str | Path) -> Path:
    """The sidecar file whose ``flock`` serializes every use of the ledger at ``path`` (kept, never deleted).

    It lies beside the real file (links followed), so every path that leads to one ledger shares its lock.
    """
    real = real_path(path)
    return real.with_name(real.name + ".lock")


def sealed(path: Path) -> bool:
    """Whether the lock file says this site has written a checksummed ledger at ``path``."""
    try:
        return lock_path(path).read_text(encoding="utf-8") == _SEAL
    except OSError:
        return False


def seal(handle: int) -> None:
    """Write the seal into the lock file open as ``handle`` (held), once a checksummed ledger is written."""
    os.ftruncate(handle, 0)
    os.pwrite(handle, _SEAL.encode("utf-8"), 0)


def check_folder(path: Path) -> None:
    """Refuse a ledger whose folder is missing rather than create it: often a drive that is not mounted.

    A ledger started there would read "nothing spent" while the site's spending is recorded on the absent drive.
    The default ledger lives in the manifest's folder, which exists wherever the site has data.

    Raises
    ------
    ConfigError
        If the folder is missing, naming node-config key ``ledger``.
    """
    if not path.parent.is_dir():
        raise ConfigError(
            f"privacy ledger {path}: its folder {path.parent} does not exist, and fedmammo does not create it (a "
            "missing folder is often a drive that is not mounted, and a new ledger there would start from zero): "
            f"mount or create the folder, or point node config '{LEDGER_KEY}' at the ledger's real place (without "
            f"'{LEDGER_KEY}' the ledger lives beside the manifest: check 'manifest' too)",
            public=_NO_FOLDER,
        )


def not_writable(path: Path, exc: OSError) -> ConfigError:
    """The error for a ledger the OS will not let us write (a read-only data mount, a folder we may not write)."""
    return ConfigError(
        f"privacy ledger {path} cannot be written in {path.parent} ({exc}): the ledger must be writable, as every "
        f"round records its spending there before it replies; point node config '{LEDGER_KEY}=' at a writable place "
        "(a data mount is often read-only), with a copy of the existing ledger and its .lock file if there is one, "
        "or the site starts counting from zero",
        public=_NOT_WRITABLE,
    )


@contextmanager
def exclusive(path: Path, *, writable: bool = False) -> Iterator[int]:
    """An exclusive ``flock`` on the ledger's lock file (Linux/macOS), waiting for whoever holds it.

    ``path`` is the real file (`real_path`), so every link to one ledger takes the same lock. With ``writable``
    a temporary file is also created and removed beside the ledger, so a read-only folder stops a round before it
    trains rather than when it records.

    Raises
    ------
    ConfigError
        If the ledger's folder is missing (`check_folder`) or not writable (`not_writable`).
    """
    check_folder(path)
    try:
        handle = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise not_writable(path, exc) from exc
    try:
        if writable:
            try:
                with tempfile.TemporaryFile(prefix=".ledger-", dir=path.parent):
                    pass
            except OSError as exc:
                raise not_writable(path, exc) from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file_log().info("privacy ledger %s is in use by another training on this site: waiting for it", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield handle
    finally:
        os.close(handle)  # closing the descriptor releases the lock
