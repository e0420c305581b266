"""Load one site: manifest -> patient-level splits -> decoded, preprocessed, cached tensors; bad files are skipped."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common.data.duplicates import duplicate_rows
from common.data.image_pipeline import ImageGeometry, ImagePipeline, Lesion, source_lesion
from common.data.manifest import SPLITS, ManifestRow, read_manifest
from common.data.site_images import SiteImages
from common.data.site_preprocess import (
    CHECKPOINT_SECONDS,
    DEFAULT_CACHE_SUBDIR,
    SkippedImage,
    cache_root,
    preprocess_site,
    preprocess_site_with_geometry,
)
from common.data.splits import split_by_patient
from common.errors import DicomError, ManifestError
from common.file_log import file_log

__all__ = [
    "CHECKPOINT_SECONDS",
    "DEFAULT_CACHE_SUBDIR",
    "SiteData",
    "SiteImages",
    "SkippedImage",
    "cache_root",
    "load_site",
    "place_lesions",
    "preprocess_site",
]

logger = logging.getLogger(__name__)


@dataclass
class SiteData:
    """A site's splits, each a :class:`SiteImages` (images read from the cache as they are needed)."""

    train: SiteImages
    val: SiteImages
    test: SiteImages
    skipped: list[SkippedImage] = field(default_factory=list)
    num_patients: dict[str, int] = field(default_factory=dict)
    duplicates: dict[int, int] = field(default_factory=dict)
    """``{manifest line: earlier line}`` of rows listing an image already listed; each image is used once."""
    parts: list[SiteData] = field(default_factory=list)
    """A pooled (centralized) site's member sites' own data, in member order, whose splits are concatenated
    here; empty for one site. Per-site analyses that need each image's manifest row (lesion masks and boxes) read
    the parts, as manifest lines are per site."""

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
        out["duplicates"] = len(self.duplicates)
        return out


def place_lesions(rows: list[ManifestRow], geometries: dict[int, ImageGeometry]) -> dict[int, Lesion]:
    """Each row's lesion mark in its preprocessed image's pixels, by row number; marks outside the crop are dropped.

    A mark outside the breast crop (a typo, or a mark for another image) cannot be trained on; it is left out
    rather than stopping the site. Which lines have lesions says which images are abnormal, so the lines go to
    the site's own log only and the shared log gets the count.
    """
    placed: dict[int, Lesion] = {}
    dropped: list[int] = []
    for row in rows:
        lesion = source_lesion(row)
        if lesion is None or row.row_number not in geometries:
            continue
        where = geometries[row.row_number].place(lesion)
        if where is None:
            dropped.append(row.row_number)
        else:
            placed[row.row_number] = where
    if dropped:
        logger.warning("%d lesion mark(s) lie outside the breast crop after preprocessing; left out", len(dropped))
        file_log().warning("lesion marks outside the breast crop after preprocessing, left out: manifest lines %s",
                           ", ".join(str(line) for line in dropped))  # fmt: skip
    return placed


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
    on the manifest (by patient) before reading, so a skipped image never moves a patient. A row that
    lists an image an earlier row already lists (the same path, or the same file by another path) is
    logged and left out (``duplicates``): differential privacy protects one image, used once.

    The site's shared log gets each skipped line with its error type and fixed reason; the full reason,
    which names the file, goes to the site's own log only (:mod:`common.file_log`).

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
    listed = read_manifest(manifest_path)
    repeats = duplicate_rows(listed)
    for line, first in repeats.items():
        logger.warning("manifest line %d lists the same image as line %d; the image is used once", line, first)
    rows = [row for row in listed if row.row_number not in repeats]
    splits = split_by_patient(rows, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    pipeline = pipeline or ImagePipeline(image_size=image_size, require_mg=require_mg)
    size = pipeline.image_size
    images, geometries, skipped = preprocess_site_with_geometry(
        manifest_path, rows, pipeline, cache_root(manifest_path, cache_dir), workers=workers, progress=progress
    )
    for item in skipped:
        logger.warning("manifest line %d skipped: %s", item.row_number, item.public)
        file_log().warning("manifest %s line %d skipped: %s", manifest_path, item.row_number, item.reason)
    if not images:
        reasons = "\n  ".join(f"line {s.row_number}: {s.reason}" for s in skipped[:10])
        raise DicomError(
            f"manifest {manifest_path}: none of its {len(rows)} image(s) could be used; first reasons:\n  {reasons}",
            public="none of the manifest's {} image(s) could be used (`fedmammo check-data` on the site lists each "
            "line with its reason)",
            figures=(len(rows),),
        )
    usable = {name: [row for row in splits[name] if row.row_number in images] for name in SPLITS}
    lesions = place_lesions([row for name in SPLITS for row in usable[name]], geometries)
    datasets = {
        name: SiteImages(
            [images[row.row_number] for row in usable[name]],
            [row.label for row in usable[name]],
            size,
            [lesions.get(row.row_number) for row in usable[name]],
            [row.row_number for row in usable[name]],
            [geometries[row.row_number] for row in usable[name]],
        )
        for name in SPLITS
    }
    patients = {name: len({row.patient_id for row in usable[name]}) for name in SPLITS}
    counts = {name: len(datasets[name]) for name in SPLITS}
    for name in ("train", "test"):
        if counts[name] == 0:
            raise ManifestError(
                f"manifest {manifest_path}: the {name} split has no usable image (images per split {counts}, "
                f"{len(skipped)} skipped); add patients or readable images, or fix the manifest's 'split' column",
                public="the train split has no usable image ({} image(s) in all, {} skipped)"
                if name == "train"
                else "the test split has no usable image ({} image(s) in all, {} skipped)",
                figures=(sum(counts.values()), len(skipped)),
            )
    data = SiteData(datasets["train"], datasets["val"], datasets["test"], skipped, patients, repeats)
    held = sum(split.bytes_in_memory for split in (data.train, data.val, data.test))
    logger.info("site loaded: %s; %.1f MB of images held in memory", data.summary(), held / 1e6)
    return data
