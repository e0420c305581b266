"""Load one site: manifest -> patient-level splits -> decoded, preprocessed, cached tensors; bad files are skipped."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.data.image_cache import SiteImageCache
from common.data.image_pipeline import ImagePipeline
from common.data.manifest import SPLITS, ManifestRow, read_manifest
from common.data.parallel_decode import decode_rows
from common.data.site_images import SiteImages
from common.data.splits import split_by_patient
from common.errors import DicomError, ManifestError

__all__ = [
    "CHECKPOINT_SECONDS",
    "DEFAULT_CACHE_SUBDIR",
    "SiteData",
    "SiteImages",
    "SkippedImage",
    "cache_root",
    "load_site",
    "preprocess_site",
]

logger = logging.getLogger(__name__)

DEFAULT_CACHE_SUBDIR = Path(".cache") / "preprocessed"
"""Where preprocessed images are cached, relative to the manifest's folder, when no cache dir is given."""

CHECKPOINT_SECONDS = 30.0
"""While decoding, what is done is committed to the cache this often, so a crash loses at most this much work."""


@dataclass
class SkippedImage:
    """A manifest row whose image could not be used, and why (the reason may name the file: keep it on site)."""

    row_number: int
    reason: str


@dataclass
class SiteData:
    """A site's splits, each a :class:`SiteImages` (images read from the cache as they are needed)."""

    train: SiteImages
    val: SiteImages
    test: SiteImages
    skipped: list[SkippedImage] = field(default_factory=list)
    num_patients: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """Counts per split and label, and the number skipped: safe to log or send (no ids, no paths)."""
        out: dict[str, object] = {}
        for name in SPLITS:
            labels = getattr(self, name).labels.tolist()
            counts = Counter(int(label) for label in labels)
            out[name] = {
                "images": len(labels),
                "patients": int(self.num_patients.get(name, 0)),
                "labels": {str(label): counts[label] for label in sorted(counts)},
            }
        out["skipped"] = len(self.skipped)
        return out


def load_site(
    manifest_path: str | Path,
    *,
    image_size: int,
    cache_dir: str | Path | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    require_mg: bool = True,
    workers: int | None = None,
    pipeline: ImagePipeline | None = None,
    progress: bool | None = None,
) -> SiteData:
    """Read a site's manifest and turn its images into train/val/test datasets.

    A hospital archive always holds a few bad files; one of them must not stop the site. So an
    image that cannot be read (missing, not DICOM, no pixels, undecodable, wrong modality...) is
    skipped: logged with its manifest line and reason and listed in ``skipped``. Splitting happens
    on the manifest (by patient) before reading, so a skipped image never moves a patient.

    Parameters
    ----------
    manifest_path : str or Path
        The site's CSV (see :mod:`common.data.manifest`).
    image_size : int
        Side of the square images fed to the model.
    cache_dir : str, Path or None
        Cache of preprocessed images; ``None`` or ``""`` means ``<manifest dir>/.cache/preprocessed``.
    val_fraction, test_fraction : float
        Patient shares of val and test when the manifest has no ``split`` column values.
    seed : int
        Seed of the patient split.
    require_mg : bool
        Reject DICOM files whose Modality is not MG.
    workers : int or None
        Threads decoding in parallel; ``None`` uses up to 4 (bounded by the CPU count).
    pipeline : ImagePipeline or None
        The preprocessing (e.g. :meth:`ImagePipeline.from_config`); ``None`` builds one from
        ``image_size`` and ``require_mg``.
    progress : bool or None
        Show a progress bar while decoding; ``None`` shows it only when stderr is a terminal.

    Returns
    -------
    SiteData

    Raises
    ------
    ManifestError
        If the manifest is invalid, or after skipping, the train or test split has no image.
    DicomError
        If no image of the manifest could be used at all.
    """
    manifest_path = Path(manifest_path).expanduser()
    rows = read_manifest(manifest_path)
    splits = split_by_patient(rows, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    pipeline = pipeline or ImagePipeline(image_size=image_size, require_mg=require_mg)
    size = pipeline.image_size
    images, skipped = preprocess_site(
        manifest_path, rows, pipeline, cache_root(manifest_path, cache_dir), workers=workers, progress=progress
    )
    for item in skipped:
        logger.warning("manifest %s line %d skipped: %s", manifest_path.name, item.row_number, item.reason)
    if not images:
        reasons = "\n  ".join(f"line {s.row_number}: {s.reason}" for s in skipped[:10])
        raise DicomError(
            f"manifest {manifest_path}: none of its {len(rows)} image(s) could be used; first reasons:\n  {reasons}"
        )
    usable = {name: [row for row in splits[name] if row.row_number in images] for name in SPLITS}
    datasets = {
        name: SiteImages([images[row.row_number] for row in usable[name]], [row.label for row in usable[name]], size)
        for name in SPLITS
    }
    patients = {name: len({row.patient_id for row in usable[name]}) for name in SPLITS}
    counts = {name: len(datasets[name]) for name in SPLITS}
    for name in ("train", "test"):
        if counts[name] == 0:
            raise ManifestError(
                f"manifest {manifest_path}: the {name} split has no usable image (images per split {counts}, "
                f"{len(skipped)} skipped); add patients or readable images, or fix the manifest's 'split' column"
            )
    data = SiteData(datasets["train"], datasets["val"], datasets["test"], skipped, patients)
    held = sum(split.bytes_in_memory for split in (data.train, data.val, data.test))
    logger.info("site loaded: %s; %.1f MB of images held in memory", data.summary(), held / 1e6)
    return data


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
    """Preprocess every row through the site's cache: decode only what the cache lacks, in parallel threads.

    Decoded images are committed to the cache every :data:`CHECKPOINT_SECONDS` and at the end, under
    the store's lock (a second process building the same site waits, then finds everything cached).

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
    skipped : list of SkippedImage
        The rows that could not be used, by line number, with the reason (it may name the file).
    """
    size = pipeline.image_size
    site = str(Path(manifest_path).expanduser().resolve())
    cache = SiteImageCache(cache_dir, pipeline.settings(), site=site, image_shape=(size, size))
    in_memory: dict[str, np.ndarray] = {}  # images the cache could not take (unwritable folder, file not stat'able)
    first_of: dict[str, int] = {}  # key -> the row decoded for it (a file listed twice is decoded once)
    todo: list[ManifestRow] = []
    with cache.locked():
        cache.open()
        keys = {row.row_number: cache.item_key(row.image_path, f"laterality={row.laterality}") for row in rows}
        for row in rows:
            key = keys[row.row_number]
            if cache.verify(key):
                continue
            if key is None or first_of.setdefault(key, row.row_number) == row.row_number:
                todo.append(row)
        wanted = [key for key in keys.values() if key is not None]
        pending: dict[str, np.ndarray] = {}
        last_commit = time.monotonic()

        def checkpoint() -> None:
            if not cache.commit(wanted, pending):
                in_memory.update(pending)
            pending.clear()

        def store(number: int, result: np.ndarray | str) -> None:
            nonlocal last_commit
            if isinstance(result, str):
                return
            key = keys[number]
            if key is None:
                in_memory[f"row {number}"] = result
            else:
                pending[key] = result
            if time.monotonic() - last_commit >= CHECKPOINT_SECONDS:
                checkpoint()
                last_commit = time.monotonic()

        reasons = decode_rows(todo, pipeline, workers=workers, progress=progress, on_result=store, keep_images=False)
        checkpoint()
        images: dict[int, np.ndarray] = {}
        skipped: list[SkippedImage] = []
        for row in rows:
            key = keys[row.row_number]
            stored_as = f"row {row.row_number}" if key is None else key
            reason = reasons.get(row.row_number if key is None else first_of.get(key, row.row_number))
            if reason is not None:
                skipped.append(SkippedImage(row.row_number, str(reason)))
            elif collect:
                image = in_memory.get(stored_as)
                image = cache.view(stored_as) if image is None else image
                if image is None:  # pragma: no cover - every usable row was either cached or kept in memory
                    raise RuntimeError(f"manifest line {row.row_number}: preprocessed image lost from the cache")
                images[row.row_number] = image
    return images, skipped
