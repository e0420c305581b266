"""Load one site: manifest -> patient-level splits -> decoded, preprocessed, cached tensors; bad files are skipped."""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from common.errors import DicomError, ManifestError
from common.image_cache import PreprocessedImageCache
from common.image_pipeline import ImagePipeline
from common.manifest import SPLITS, ManifestRow, read_manifest
from common.splits import split_by_patient

__all__ = ["DEFAULT_CACHE_SUBDIR", "SiteData", "SkippedImage", "load_site"]

logger = logging.getLogger(__name__)

DEFAULT_CACHE_SUBDIR = Path(".cache") / "preprocessed"
"""Where preprocessed images are cached, relative to the manifest's folder, when no cache dir is given."""


@dataclass
class SkippedImage:
    """A manifest row whose image could not be used, and why (the reason may name the file: keep it on site)."""

    row_number: int
    reason: str


@dataclass
class SiteData:
    """A site's images as tensors (``N x 1 x S x S`` float32 in [0, 1]) and labels (``N`` int64) per split."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    skipped: list[SkippedImage] = field(default_factory=list)
    num_patients: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """Counts per split and label, and the number skipped: safe to log or send (no ids, no paths)."""
        out: dict[str, object] = {}
        for name in SPLITS:
            labels = getattr(self, name).tensors[1].tolist()
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
) -> SiteData:
    """Read a site's manifest and turn its images into train/val/test tensors.

    A hospital archive always holds a few bad files; one of them must not stop the site. So an
    image that cannot be read (missing, not DICOM, no pixels, undecodable, wrong modality...) is
    skipped: logged with its manifest line and reason and listed in ``skipped``. Splitting happens
    on the manifest (by patient) before reading, so a skipped image never moves a patient.

    Parameters
    ----------
    manifest_path : str or Path
        The site's CSV (see :mod:`common.manifest`).
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
    root = Path(cache_dir).expanduser() if cache_dir else manifest_path.parent / DEFAULT_CACHE_SUBDIR
    pipeline = ImagePipeline(image_size=image_size, require_mg=require_mg)
    cache = PreprocessedImageCache(root, pipeline.settings())
    ordered = [row for name in SPLITS for row in splits[name]]
    max_workers = workers or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        results = list(pool.map(lambda row: _load_one(row, cache, pipeline), ordered))
    images: dict[int, np.ndarray] = {}
    skipped: list[SkippedImage] = []
    for row, result in zip(ordered, results, strict=True):
        if isinstance(result, str):
            skipped.append(SkippedImage(row.row_number, result))
        else:
            images[row.row_number] = result
    skipped.sort(key=lambda item: item.row_number)
    for item in skipped:
        logger.warning("manifest %s line %d skipped: %s", manifest_path.name, item.row_number, item.reason)
    if not images:
        reasons = "\n  ".join(f"line {s.row_number}: {s.reason}" for s in skipped[:10])
        raise DicomError(
            f"manifest {manifest_path}: none of its {len(rows)} image(s) could be used; first reasons:\n  {reasons}"
        )
    usable = {name: [row for row in splits[name] if row.row_number in images] for name in SPLITS}
    datasets = {name: _tensors(usable[name], images, image_size) for name in SPLITS}
    patients = {name: len({row.patient_id for row in usable[name]}) for name in SPLITS}
    counts = {name: len(datasets[name]) for name in SPLITS}
    for name in ("train", "test"):
        if counts[name] == 0:
            raise ManifestError(
                f"manifest {manifest_path}: the {name} split has no usable image (images per split {counts}, "
                f"{len(skipped)} skipped); add patients or readable images, or fix the manifest's 'split' column"
            )
    data = SiteData(datasets["train"], datasets["val"], datasets["test"], skipped, patients)
    logger.info("site loaded: %s", data.summary())
    return data


def _load_one(row: ManifestRow, cache: PreprocessedImageCache, pipeline: ImagePipeline) -> np.ndarray | str:
    """The preprocessed image of one row, or the reason it cannot be used."""
    try:
        return cache.get_or_compute(
            row.image_path,
            lambda: pipeline.load(row.image_path, row.laterality),
            extra_key=f"laterality={row.laterality}",
        )
    except (DicomError, ValueError, OSError) as exc:
        return str(exc) if isinstance(exc, DicomError) else f"{row.image_path}: {type(exc).__name__}: {exc}"


def _tensors(rows: list[ManifestRow], images: dict[int, np.ndarray], size: int) -> TensorDataset:
    if not rows:
        return TensorDataset(torch.empty((0, 1, size, size), dtype=torch.float32), torch.empty(0, dtype=torch.int64))
    stacked = np.stack([images[row.row_number] for row in rows]).astype(np.float32, copy=False)
    labels = torch.tensor([row.label for row in rows], dtype=torch.int64)
    return TensorDataset(torch.from_numpy(stacked).unsqueeze(1), labels)
