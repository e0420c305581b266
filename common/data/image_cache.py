"""Per-site cache of preprocessed images: one memory-mapped uint16 file per site and settings, plus its index."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from common.file_log import file_log

try:  # POSIX: serialise writers of one store; elsewhere a lost race only costs a re-decode
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["INDEX_FORMAT", "SiteImageCache", "dequantise", "quantise"]

logger = logging.getLogger(__name__)

INDEX_FORMAT = 2  # 2: each entry also holds its image's geometry (integers: shapes, flip, crop box)
"""Bump when the index or data layout changes; an index of another format is ignored (rebuilt)."""

_SCALE = 65535.0  # images in [0, 1] are stored as uint16: 1/65535 resolution, half of float32's size
_COMPACT_BELOW = 0.5  # rewrite the data file when fewer than this share of its slots are still referenced


def quantise(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as the uint16 the cache stores (NaN -> 0, clipped)."""
    values = np.asarray(image, dtype=np.float64)
    return np.rint(np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * _SCALE).astype(np.uint16)


def dequantise(stored: np.ndarray) -> np.ndarray:
    """The float32 image in [0, 1] of a stored uint16 array (any leading dimensions)."""
    return (np.asarray(stored).astype(np.float32) / np.float32(_SCALE)).astype(np.float32, copy=False)


class SiteImageCache:
    """Preprocessed images of one site under one set of preprocessing settings, in one file.

    Layout in ``cache_dir`` (names are hashes: no patient identifier or path appears):
    ``<store>.index.json`` maps each image key to a slot and a CRC32, and names the data file
    ``<store>.<generation>.u16`` that holds the slots back to back (``slots x H x W`` uint16, read
    through a memory map). Each entry may also hold a few integers about its image (the preprocessing's
    geometry: shapes, flip and crop box, :meth:`common.data.image_pipeline.ImageGeometry.to_ints`), so lesion
    marks can be placed on a cached image without decoding its file again; integers only, never a name.
    ``<store>`` hashes the site (its manifest's resolved path), the settings
    and the image shape; an image key hashes the file's resolved path, size, mtime (ns) and a per-image
    ``extra`` (e.g. the manifest's laterality), so a changed file or setting misses and only that image
    is decoded again. The index also remembers, under the same keys, files that cannot be used for a
    lasting reason (:attr:`common.errors.DicomError.lasting`): their error type and fixed public reason, never
    the full message (which names the file), so a bad file is not read again every round until it changes.

    Crash safety: new slots are only appended past the slots the index references, and the data is
    fsync'ed before the index is replaced atomically (temporary file + ``os.replace``); compaction
    writes a new generation and switches the index to it. A crash at any point leaves the previous
    index and the slots it references intact, and every slot is checked against its CRC before use.

    Parameters
    ----------
    cache_dir : Path
        Folder of the cache; created on first write.
    settings : Mapping
        JSON-serialisable description of the preprocessing (:meth:`ImagePipeline.settings`).
    site : str
        Identity of the site (e.g. its manifest's resolved path); hashed, never written as is.
    image_shape : tuple of int
        ``(H, W)`` of every stored image.
    """

    def __init__(
        self, cache_dir: str | Path, settings: Mapping[str, object], *, site: str, image_shape: tuple[int, int]
    ):
        self.cache_dir = Path(cache_dir).expanduser()
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        identity = json.dumps(
            {"site": site, "settings": dict(settings), "shape": self.image_shape}, sort_keys=True, default=str
        )
        self.store = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:24]
        self.index_path = self.cache_dir / f"{self.store}.index.json"
        self._slot_items = self.image_shape[0] * self.image_shape[1]
        self._entries: dict[str, tuple[int, int]] = {}  # key -> (slot, crc32)
        self._geometries: dict[str, tuple[int, ...]] = {}  # key -> integers stored with the image (may be empty)
        self._failures: dict[str, tuple[str, str]] = {}  # key -> (error type, public reason) of an unusable file
        self._data_name = ""
        self._used = 0
        self._pixels: np.ndarray = np.zeros((0, *self.image_shape), dtype=np.uint16)

    @staticmethod
    def item_key(path: str | Path, extra: str = "") -> str | None:
        """The key of ``path`` as it is now (identity, size, mtime, ``extra``); ``None`` if it cannot be stat'ed."""
        try:
            resolved = Path(path).expanduser().resolve()
            stat = resolved.stat()
        except (OSError, RuntimeError, ValueError):  # missing, unreadable, a symbolic-link loop, a NUL in the name
            return None
        identity = json.dumps([str(resolved), stat.st_size, stat.st_mtime_ns, extra])
        return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's writer lock (blocking), so two processes building one site never interleave."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.cache_dir / f"{self.store}.lock", "a+b")  # noqa: SIM115 - held for the block
        except OSError as exc:
            logger.warning("the preprocessed-image cache folder is not writable (%s); building without a lock",
                           type(exc).__name__)  # fmt: skip
            file_log().warning("cache folder %s is not writable (%s)", self.cache_dir, exc)
            yield
            return
        try:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            yield
        finally:
            handle.close()  # closing releases the lock

    def open(self) -> None:
        """Read the index and map its data file; anything inconsistent means an empty cache (rebuilt, never trusted)."""
        self._entries, self._failures, self._data_name, self._used = {}, {}, "", 0
        self._geometries = {}
        self._pixels = np.zeros((0, *self.image_shape), dtype=np.uint16)
        try:
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
            if index.get("format") != INDEX_FORMAT or tuple(index.get("shape", ())) != self.image_shape:
                return
            data_name, used = str(index["data"]), int(index["slots"])
            if not re.fullmatch(rf"{self.store}\.\d+\.u16", data_name):
                raise ValueError(f"the index names a data file {data_name!r} that is not this store's")
            entries = {str(k): (int(v[0]), int(v[1])) for k, v in index["entries"].items()}
            geometries = {str(k): _integers(v[2]) for k, v in index["entries"].items()}
            failures = {str(k): (str(v[0]), str(v[1])) for k, v in index.get("failures", {}).items()}
            data_path = self.cache_dir / data_name
            if any(not 0 <= slot < used for slot, _ in entries.values()) or data_path.stat().st_size < self._bytes(
                used
            ):
                raise ValueError("the index references slots beyond the data file")
            pixels = self._map(data_path, used)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            logger.warning("preprocessed-image cache %s is unreadable (%s); rebuilding it", self.index_path.name,
                           type(exc).__name__)  # fmt: skip
            file_log().warning("preprocessed-image cache %s is unreadable: %s", self.index_path, exc)
            return
        self._entries, self._data_name, self._used, self._pixels = entries, data_name, used, pixels
        self._failures, self._geometries = failures, geometries

    def failure(self, key: str | None) -> tuple[str, str] | None:
        """``(error type, public reason)`` remembered for ``key`` (a file unusable for a lasting reason), else None."""
        return None if key is None else self._failures.get(key)

    def geometry(self, key: str | None) -> tuple[int, ...] | None:
        """The integers stored with ``key``'s image (empty when none were given), or None when it is not stored."""
        return None if key is None or key not in self._entries else self._geometries.get(key, ())

    def lookup(self, key: str | None) -> np.ndarray | None:
        """A copy of the stored uint16 image of ``key``, or ``None`` on a miss or a slot that fails its CRC."""
        return np.array(self.view(key)) if key is not None and self.verify(key) else None

    def verify(self, key: str | None) -> bool:
        """Whether ``key`` is stored and its slot passes its CRC (reads the slot, copies nothing)."""
        if key is None or key not in self._entries:
            return False
        slot, crc = self._entries[key]
        if zlib.crc32(np.ascontiguousarray(self._pixels[slot])) == crc:
            return True
        logger.warning("cache slot %d of %s fails its checksum; decoding the image again", slot, self.store)
        return False

    def view(self, key: str) -> np.ndarray | None:
        """The stored image of ``key`` as a read-only view of the memory map (no copy, no CRC: :meth:`verify` first).

        The view stays valid after a later commit or compaction, even by another process: slots are
        never rewritten in place, and a replaced data file stays mapped until its last view is gone.
        So a site far larger than memory trains from the page cache rather than from RAM.
        """
        if key not in self._entries:
            return None
        return self._pixels[self._entries[key][0]]

    def commit(
        self,
        keep: Iterable[str],
        new: Mapping[str, np.ndarray],
        failed: Mapping[str, tuple[str, str]] | None = None,
        geometries: Mapping[str, Sequence[int]] | None = None,
    ) -> bool:
        """Make the index hold exactly ``keep`` (cached keys still wanted) plus ``new`` (uint16 images to store).

        Keys not kept (files changed or gone from the manifest) are dropped; their slots are reclaimed
        by compaction once most of the file is dead. ``failed`` adds unusable files, each as ``(error type,
        public reason)``: fixed texts, never a message that names the file; kept failures stay. ``geometries``
        gives integers to store with some of ``new``'s images (kept entries keep theirs). Failures to
        write are logged, not raised: the images are then simply decoded again next time. Call under
        :meth:`locked`.

        Returns
        -------
        bool
            Whether ``new`` was written; ``False`` means the caller must keep those images itself.
        """
        keep = list(keep)
        entries = {key: self._entries[key] for key in keep if key in self._entries}
        failures = {key: self._failures[key] for key in keep if key in self._failures and key not in new}
        failures.update({key: (str(kind), str(reason)) for key, (kind, reason) in (failed or {}).items()})
        kept_geometries = {key: self._geometries.get(key, ()) for key in entries}
        new_geometries = {key: _integers((geometries or {}).get(key, ())) for key in new}
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            compact = self._used > 0 and len(entries) < _COMPACT_BELOW * self._used
            if compact or not self._data_name:
                entries = self._rewrite(entries)
            entries.update(self._append(new))
            self._write_index(entries, failures, {**kept_geometries, **new_geometries})
            self._remove_orphans()
        except OSError as exc:
            logger.warning("could not write the preprocessed-image cache (%s); continuing", type(exc).__name__)
            file_log().warning("could not write the preprocessed-image cache in %s (%s)", self.cache_dir, exc)
            self.open()
            return False
        self.open()
        return True

    def _rewrite(self, entries: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        """Copy the live slots into a new generation file; the index switches to it on the next write."""
        generation = int(self._data_name.rsplit(".", 2)[1]) + 1 if self._data_name else 0
        name = f"{self.store}.{generation}.u16"
        moved: dict[str, tuple[int, int]] = {}
        with open(self.cache_dir / name, "wb") as handle:
            for new_slot, (key, (slot, crc)) in enumerate(entries.items()):
                handle.write(np.ascontiguousarray(self._pixels[slot]).tobytes())
                moved[key] = (new_slot, crc)
            handle.flush()
            os.fsync(handle.fileno())
        self._data_name, self._used = name, len(moved)
        return moved

    def _append(self, new: Mapping[str, np.ndarray]) -> dict[str, tuple[int, int]]:
        """Write ``new`` after the referenced slots (overwriting any unreferenced tail) and fsync."""
        added: dict[str, tuple[int, int]] = {}
        if not new:
            return added
        with open(self.cache_dir / self._data_name, "r+b") as handle:
            handle.truncate(self._bytes(self._used))
            handle.seek(self._bytes(self._used))
            for key, image in new.items():
                data = np.ascontiguousarray(image, dtype=np.uint16)
                if data.shape != self.image_shape:
                    raise ValueError(f"image of shape {data.shape} does not fit a cache of shape {self.image_shape}")
                raw = data.tobytes()
                handle.write(raw)
                added[key] = (self._used, zlib.crc32(raw))
                self._used += 1
            handle.flush()
            os.fsync(handle.fileno())
        return added

    def _write_index(
        self,
        entries: Mapping[str, tuple[int, int]],
        failures: Mapping[str, tuple[str, str]],
        geometries: Mapping[str, tuple[int, ...]],
    ) -> None:
        index = {
            "format": INDEX_FORMAT,
            "shape": list(self.image_shape),
            "data": self._data_name,
            "slots": self._used,
            "entries": {key: [*value, list(geometries.get(key, ()))] for key, value in entries.items()},
            "failures": {key: list(value) for key, value in failures.items()},
        }
        temp_name = None
        try:
            with tempfile.NamedTemporaryFile("w", dir=self.cache_dir, prefix=".tmp-", delete=False) as handle:
                temp_name = handle.name
                json.dump(index, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, self.index_path)
            temp_name = None
        finally:
            if temp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temp_name)

    def _remove_orphans(self) -> None:
        """Delete this store's data files the index no longer names (left by compaction or a crash)."""
        for path in self.cache_dir.glob(f"{self.store}.*.u16"):
            if path.name != self._data_name:
                with contextlib.suppress(OSError):
                    path.unlink()

    def _map(self, path: Path, used: int) -> np.ndarray:
        if used == 0:
            return np.zeros((0, *self.image_shape), dtype=np.uint16)
        return np.memmap(path, dtype=np.uint16, mode="r", shape=(used, *self.image_shape))

    def _bytes(self, slots: int) -> int:
        return slots * self._slot_items * 2


def _integers(values: Iterable[object]) -> tuple[int, ...]:
    """``values`` as a tuple of ints; anything else (a float, a string) is an inconsistent index (ValueError)."""
    out = tuple(values)  # type: ignore[arg-type]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise ValueError(f"cache geometry {list(out)!r} is not a list of integers")
    return out
