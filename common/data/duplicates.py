"""Manifest rows that list one image twice: the same path, or one file reached by two paths (links, ``..``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from common.data.manifest import ManifestRow

__all__ = ["duplicate_rows", "file_identity"]


def file_identity(path: str | Path) -> tuple[object, ...]:
    """What makes two paths one file: its device and inode, else (unreadable) its absolute path, links resolved.

    Never raises: a path that cannot be resolved or stat'ed (a symbolic-link loop, a missing file, a name
    with a NUL byte) is identified by its spelling, and the image reader reports why it cannot be used.
    """
    try:
        real = os.path.realpath(os.path.expanduser(os.fspath(path)))
    except (OSError, RuntimeError, ValueError):
        return ("path", os.fspath(path))
    try:
        stat = os.stat(real)
    except (OSError, ValueError):
        return ("path", real)
    return ("file", stat.st_dev, stat.st_ino)


def duplicate_rows(rows: Sequence[ManifestRow]) -> dict[int, int]:
    """Map each row that repeats an earlier row's image to that first row's line number.

    Differential privacy protects one image, and a model trained twice on one image per epoch (or on it in
    two splits, under two patients) would quietly weigh it double and leak it from train into test, so a
    site uses each image once: the first row that lists it.

    Returns
    -------
    dict
        ``{line of the repeat: line of the first row with that image}``; empty when every image is listed once.
    """
    first: dict[tuple[object, ...], int] = {}
    repeats: dict[int, int] = {}
    for row in rows:
        identity = file_identity(row.image_path)
        if identity in first:
            repeats[row.row_number] = first[identity]
        else:
            first[identity] = row.row_number
    return repeats
