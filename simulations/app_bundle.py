"""Copies the files `flwr run` would bundle from the app folder into a folder of their own, for a fast start.

`flwr run <folder>` (flwr 1.41) lists and resolves every file under the folder before its .gitignore applies, so
run on the clone it walked ``.venv`` and every past run in ``runs/`` (about 50,000 files, 3 s of each start, more
as runs accumulate). Here folders the .gitignore (or Flower) excludes are never entered, and the files left pass
Flower's own rules (`APP_PUBLISH_INCLUDE_PATTERNS`, `APP_PUBLISH_EXCLUDE_PATTERNS`, then .gitignore), so the
staged folder bundles into the same app, file for file, as the clone.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import pathspec
from flwr.supercore.constant import APP_PUBLISH_EXCLUDE_PATTERNS, APP_PUBLISH_INCLUDE_PATTERNS

__all__ = ["app_files", "stage_app", "staged_app"]

logger = logging.getLogger(__name__)


def _gitignore_patterns(app_dir: Path) -> list[str]:
    """The app's top-level .gitignore lines, read as Flower reads them (nested .gitignore files are not)."""
    try:
        text = (app_dir / ".gitignore").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _spec(lines: Sequence[str]) -> pathspec.PathSpec:
    """Patterns compiled as Flower 1.41 compiles them ("gitwildmatch", which pathspec now calls deprecated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pathspec.PathSpec.from_lines("gitwildmatch", lines)


def app_files(app_dir: Path) -> list[str]:
    """The POSIX paths, relative to ``app_dir``, of the files Flower bundles into the app, sorted.

    A folder is skipped whole when the .gitignore or Flower's exclusions match it, unless the .gitignore has
    a ``!`` pattern (which could re-include a file below it): then every folder is walked, as Flower does.
    Symbolic links are skipped, as Flower skips them.
    """
    root = Path(app_dir).resolve()
    patterns = _gitignore_patterns(root)
    ignored, excluded, included = (
        _spec(lines) for lines in (patterns, APP_PUBLISH_EXCLUDE_PATTERNS, APP_PUBLISH_INCLUDE_PATTERNS)
    )
    prune = not any(pattern.startswith("!") for pattern in patterns)
    found: list[str] = []
    for folder, subfolders, names in os.walk(root, followlinks=False):
        relative = Path(folder).relative_to(root).as_posix()
        prefix = "" if relative == "." else f"{relative}/"
        if prune:
            subfolders[:] = [
                name
                for name in subfolders
                if not (ignored.match_file(f"{prefix}{name}/") or excluded.match_file(f"{prefix}{name}/"))
            ]
        found.extend(f"{prefix}{name}" for name in names if not os.path.islink(os.path.join(folder, name)))
    kept = included.match_files(found)
    kept = excluded.match_files(kept, negate=True)
    return sorted(ignored.match_files(kept, negate=True))


def stage_app(app_dir: Path, dest: Path) -> Path:
    """Copy the files of `app_files` from ``app_dir`` into ``dest`` (created; must not exist); return ``dest``."""
    root = Path(app_dir).resolve()
    dest.mkdir(parents=True)
    for relative in app_files(root):
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / relative, target)
    return dest


def staged_app(app_dir: Path, dest: Path) -> Path:
    """`stage_app`, or ``app_dir`` itself if staging fails: an optimization only, so `flwr run` then bundles from
    the clone exactly as before (and says best what is wrong with it)."""
    try:
        return stage_app(app_dir, dest)
    except Exception:
        logger.warning("could not stage the app for flwr run; bundling from %s", app_dir, exc_info=True)
        return Path(app_dir)
