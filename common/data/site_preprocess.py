"""Preprocess a site's images through its cache: decode only what the cache lacks, remember what cannot be used."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.image_cache import SiteImageCache
from common.data.image_pipeline import ImageGeometry, ImagePipeline
from common.data.manifest import ManifestRow
from common.data.parallel_decode import DecodedImage, decode_rows
from common.errors import DicomError, public_text

__all__ = [
    "CHECKPOINT_SECONDS",
    "DEFAULT_CACHE_SUBDIR",
    "SkippedImage",
    "cache_root",
    "preprocess_site",
    "preprocess_site_with_geometry",
]

DEFAULT_CACHE_SUBDIR = Path(".cache") / "preprocessed"
"""Where preprocessed images are cached, relative to the manifest's folder, when no cache dir is given."""

CHECKPOINT_SECONDS = 30.0
"""While decoding, what is done is committed to the cache this often, so a crash loses at most this much work."""

REMEMBERED = "remembered from an earlier read: the file has not changed since"
"""Said of a bad file the cache remembers (:attr:`common.errors.DicomError.lasting`) instead of reading it again."""


@dataclass
class SkippedImage:
    """A manifest row whose image could not be used, and why.

    ``reason`` is the full message for the site's own log (it may name the file); ``public`` is the error's
    type and fixed public reason (:func:`common.errors.public_text`), which names no file and may be shown
    or sent anywhere.
    """

    row_number: int
    reason: str
    public: str = ""


def cache_root(manifest_path: str | Path, cache_dir: str | Path | None) -> Path:
    """The cache folder of a site: ``cache_dir``, or ``<manifest dir>/.cache/preprocessed`` when it is empty."""
    return Path(cache_dir).expanduser() if cache_dir else Path(manifest_path).expanduser().parent / DEFAULT_CACHE_SUBDIR


def preprocess_site(
    manifest_path: str | Path,
    rows: Sequence[ManifestRow],
    pipeline: ImagePipeline,
    cache_dir: str | Path,
    *,
    workers: int | None = None,
    progress: bool | None = None,
    collect: bool = True,
) -> tuple[dict[int, np.ndarray], list[SkippedImage]]:
    """:func:`preprocess_site_with_geometry` without the geometries (for callers that need only the pixels)."""
    images, _, skipped = preprocess_site_with_geometry(
        manifest_path, rows, pipeline, cache_dir, workers=workers, progress=progress, collect=collect
    )
    return images, skipped


def _stored_geometry(cache: SiteImageCache, key: str | None, size: int) -> ImageGeometry | None:
    """The geometry the cache holds for ``key``; None when it holds none that reads back (then decode again)."""
    stored = cache.geometry(key)
    if not stored:
        return None
    try:
        return ImageGeometry.from_ints(stored, size)
    except ValueError:
        return None


def preprocess_site_with_geometry(
    manifest_path: str | Path,
    rows: Sequence[ManifestRow],
    pipeline: ImagePipeline,
    cache_dir: str | Path,
    *,
    workers: int | None = None,
    progress: bool | None = None,
    collect: bool = True,
) -> tuple[dict[int, np.ndarray], dict[int, ImageGeometry], list[SkippedImage]]:
    """Preprocess every row through the site's cache: decode only what the cache lacks, in parallel threads.

    Decoded images are committed to the cache every :data:`CHECKPOINT_SECONDS` and at the end, under
    the store's lock (a second process building the same site waits, then finds everything cached). A file
    that cannot be used for a lasting reason (not DICOM, a header that rules it out, a size claim past
    :data:`common.data.dicom_io.MAX_PIXELS`) is remembered under the same key as an image (path, size,
    mtime, settings), so later loads skip it without reading it; an edited file is read again.

    Each image's geometry (:class:`common.data.image_pipeline.ImageGeometry`) is stored in the cache's index
    with it, so lesion marks are placed on a cached image without decoding its file again; an entry without
    a readable geometry is decoded again.

    Parameters
    ----------
    manifest_path : str or Path
        The site's manifest; its resolved path names the site's cache store (hashed).
    rows : sequence of ManifestRow
        The images to preprocess.
    pipeline : ImagePipeline
        The preprocessing; its settings key the cache.
    cache_dir : str or Path
        The cache folder (see :func:`cache_root`).
    workers : int or None
        Decoding threads; ``None`` uses up to 4 (bounded by the CPU count).
    progress : bool or None
        Progress bar on stderr; ``None`` shows it only when stderr is a terminal (quiet in tests and logs).
    collect : bool
        Return the images; ``False`` only fills the cache and reports bad rows (e.g. ``check-data``).

    Returns
    -------
    images : dict
        uint16 ``S x S`` image per usable row number: a read-only view of the cache's memory map, or an
        array in memory where the cache could not be written (see :func:`common.data.image_cache.dequantise`).
    geometries : dict
        Per row number in ``images``, where its pixels came from in the file.
    skipped : list of SkippedImage
        The rows that could not be used, by line number, with the reason.
    """
    size = pipeline.image_size
    site = str(Path(manifest_path).expanduser().resolve())
    cache = SiteImageCache(cache_dir, pipeline.settings(), site=site, image_shape=(size, size))
    in_memory: dict[str, np.ndarray] = {}  # images the cache could not take (unwritable folder, file not stat'able)
    geometries: dict[str, ImageGeometry] = {}  # key (or "row N") -> geometry of every image decoded or cached
    first_of: dict[str, int] = {}  # key -> the row decoded for it (a file listed twice is decoded once)
    todo: list[ManifestRow] = []
    with cache.locked():
        cache.open()
        keys = {row.row_number: cache.item_key(row.image_path, f"laterality={row.laterality}") for row in rows}
        for row in rows:
            key = keys[row.row_number]
            if cache.failure(key) is not None:
                continue
            geometry = _stored_geometry(cache, key, size) if cache.verify(key) else None
            if geometry is not None and key is not None:
                geometries[key] = geometry
                continue
            if key is None or first_of.setdefault(key, row.row_number) == row.row_number:
                todo.append(row)
        wanted = [key for key in keys.values() if key is not None]
        remembered = {key: cache.failure(key) for key in wanted}  # bad files of earlier loads, not read again
        pending: dict[str, np.ndarray] = {}
        failed: dict[str, tuple[str, str]] = {}
        last_commit = time.monotonic()

        def checkpoint() -> None:
            stored = {key: geometries[key].to_ints() for key in pending}
            if not cache.commit(wanted, pending, failed, geometries=stored):
                in_memory.update(pending)
            pending.clear()
            failed.clear()

        def store(number: int, result: DecodedImage | DicomError) -> None:
            nonlocal last_commit
            key = keys[number]
            if isinstance(result, DicomError):
                if result.lasting and key is not None:
                    failed[key] = (type(result).__name__, result.public_reason)
                return
            name = f"row {number}" if key is None else key
            geometries[name] = result.geometry
            if key is None:
                in_memory[name] = result.pixels
            else:
                pending[key] = result.pixels
            if time.monotonic() - last_commit >= CHECKPOINT_SECONDS:
                checkpoint()
                last_commit = time.monotonic()

        errors = decode_rows(todo, pipeline, workers=workers, progress=progress, on_result=store, keep_images=False)
        checkpoint()
        images: dict[int, np.ndarray] = {}
        placed: dict[int, ImageGeometry] = {}
        skipped: list[SkippedImage] = []
        for row in rows:
            key = keys[row.row_number]
            stored_as = f"row {row.row_number}" if key is None else key
            error = errors.get(row.row_number if key is None else first_of.get(key, row.row_number))
            earlier = remembered.get(stored_as)
            if error is not None:
                skipped.append(SkippedImage(row.row_number, str(error), public_text(error)))
            elif earlier is not None:
                public = f"{earlier[0]}: {earlier[1]}"
                skipped.append(SkippedImage(row.row_number, f"{public} ({REMEMBERED})", public))
            elif collect:
                image = in_memory.get(stored_as)
                image = cache.view(stored_as) if image is None else image
                if image is None:  # pragma: no cover - every usable row was either cached or kept in memory
                    raise RuntimeError(f"manifest line {row.row_number}: preprocessed image lost from the cache")
                images[row.row_number] = image
                placed[row.row_number] = geometries[stored_as]
    return images, placed, skipped
