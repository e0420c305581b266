"""On-disk cache of preprocessed images, so each file is decoded and preprocessed once per site and settings."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

__all__ = ["PreprocessedImageCache"]

logger = logging.getLogger(__name__)

_SCALE = 65535.0  # images in [0, 1] are stored as uint16: 1/65535 resolution, a quarter of float32's size


class PreprocessedImageCache:
    """Store one quantised ``.npy`` per (image file, preprocessing settings) under ``cache_dir``.

    The key is the sha256 of the resolved path, the file's size and modification time (ns), the
    settings (JSON, sorted keys) and an optional per-image ``extra_key``, so editing or replacing
    a file, or changing the pipeline, silently recomputes. File names are hashes: no patient
    identifiers or paths appear in the cache directory. Writes are atomic (temporary file +
    ``os.replace``), so concurrent workers and crashes never leave a half-written entry, and an
    unreadable entry is recomputed rather than fatal.

    Parameters
    ----------
    cache_dir : Path
        Folder for the entries; created on first write.
    settings : Mapping
        JSON-serialisable description of the preprocessing (see
        :func:`common.preprocess.preprocess_settings`).
    """

    def __init__(self, cache_dir: str | Path, settings: Mapping[str, object]) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self._settings_json = json.dumps(dict(settings), sort_keys=True, default=str)

    def key(self, path: str | Path, extra_key: str = "") -> str | None:
        """Return the cache key of ``path`` as it is now, or ``None`` if the file cannot be stat'ed."""
        try:
            resolved = Path(path).expanduser().resolve()
            stat = resolved.stat()
        except OSError:
            return None
        identity = json.dumps(
            {
                "path": str(resolved),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "settings": self._settings_json,
                "extra": extra_key,
            },
            sort_keys=True,
        )
        return hashlib.sha256(identity.encode("utf-8")).hexdigest()

    def get_or_compute(self, path: str | Path, compute: Callable[[], np.ndarray], *, extra_key: str = "") -> np.ndarray:
        """Return the cached image for ``path``, computing and storing it on a miss.

        Parameters
        ----------
        path : str or Path
            The source image file; its identity (path, size, mtime) is part of the key.
        compute : callable
            Produces the preprocessed float image in [0, 1] on a miss. Its exceptions propagate
            (nothing is cached), so a bad file is reported by the caller, not hidden here.
        extra_key : str
            Anything else the result depends on that is per-image (e.g. the manifest's laterality).

        Returns
        -------
        numpy.ndarray
            float32 image in [0, 1]. Hits and misses return the same quantised values, so a
            run is reproducible whether or not the cache was warm.
        """
        key = self.key(path, extra_key)
        if key is None:  # missing file: let compute() raise its own, clearer error
            return _dequantise(_quantise(compute()))
        entry = self.cache_dir / f"{key}.npy"
        cached = self._load(entry)
        if cached is not None:
            return _dequantise(cached)
        stored = _quantise(compute())
        self._store(entry, stored)
        return _dequantise(stored)

    def _load(self, entry: Path) -> np.ndarray | None:
        if not entry.is_file():
            return None
        try:
            array = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            logger.warning("cache entry %s is unreadable (%s); recomputing it", entry.name, exc)
            return None
        if array.dtype != np.uint16 or array.ndim != 2:
            logger.warning(
                "cache entry %s has dtype %s and %d dims; recomputing it", entry.name, array.dtype, array.ndim
            )
            return None
        return array

    def _store(self, entry: Path, array: np.ndarray) -> None:
        temp_name = None
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=entry.parent, prefix=".tmp-", suffix=".npy", delete=False) as handle:
                temp_name = handle.name
                np.save(handle, array, allow_pickle=False)
            os.replace(temp_name, entry)
            temp_name = None
        except OSError as exc:
            logger.warning("could not write cache entry in %s (%s); continuing without caching", self.cache_dir, exc)
        finally:
            if temp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temp_name)


def _quantise(image: np.ndarray) -> np.ndarray:
    values = np.asarray(image, dtype=np.float64)
    return np.rint(np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * _SCALE).astype(np.uint16)


def _dequantise(stored: np.ndarray) -> np.ndarray:
    return (stored.astype(np.float32) / np.float32(_SCALE)).astype(np.float32, copy=False)
