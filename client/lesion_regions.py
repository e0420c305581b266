"""Which of a site's images localization scores, and each one's lesion (mask, box or circle) in the model's pixels."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.misc import is_dicom
from pydicom.pixels import pixel_array

from client.site import SiteSpec
from common.config import AppConfig
from common.data import ImageGeometry, ManifestRow, SiteImages, read_manifest
from common.file_log import file_log
from common.metrics.localization import LesionRegion

__all__ = ["MarkedImage", "lesion_mask_in_source", "marked_images"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MarkedImage:
    """One image to score: its index in the split and its lesion in the model's input pixels."""

    index: int
    region: LesionRegion


def lesion_mask_in_source(row: ManifestRow, shape: tuple[int, int]) -> np.ndarray | None:
    """``row``'s lesion as a boolean map of its file's pixels (``shape``): its mask, else its box; None if neither.

    The box covers the pixels whose centre lies in it, corners included (x = column, y = row). A mask is an image
    file (DICOM, decoded through ``pydicom.pixels``; PNG, TIFF, JPEG through Pillow) whose non-zero pixels are the
    lesion.

    Raises
    ------
    ValueError
        If the mask's shape is not the image's: a mask of another size (or of another image) has no known place.
    Exception
        Whatever reading the mask file raises: OSError for a missing or unreadable file, AttributeError for a DICOM
        without pixel data, RuntimeError for a compressed one no installed plugin decodes, and so on.
    """
    if row.mask_path is not None:
        path = Path(row.mask_path)
        if is_dicom(path):
            values = pixel_array(path)
        else:
            with Image.open(path) as image:
                values = np.asarray(image)
        mask = np.asarray(values) != 0
        mask = mask.any(axis=-1) if mask.ndim == 3 else mask  # an RGB(A) mask: any channel marks the lesion
        if mask.shape != tuple(shape):
            raise ValueError(f"mask {path} is {mask.shape[0]} x {mask.shape[1]}, its image {shape[0]} x {shape[1]}")
        return mask
    if row.lesion_box is not None:
        x0, y0, x1, y1 = row.lesion_box
        mask = np.zeros(shape, dtype=bool)
        mask[max(int(np.ceil(y0)), 0) : int(np.floor(y1)) + 1, max(int(np.ceil(x0)), 0) : int(np.floor(x1)) + 1] = True
        return mask
    return None


def _source_regions(
    site: SiteSpec, rows: dict[int, tuple[ManifestRow, ImageGeometry | None]]
) -> dict[int, LesionRegion]:
    """The mask or box of each of ``rows`` (by manifest line) carried onto the model's input with its geometry.

    The geometries are the ones `common.data.load_site` kept on the split (`SiteImages.geometries`), so no file is
    decoded and the site is not preprocessed again. A row whose mark cannot be placed (its mask file unreadable in
    any way, of another size, or the mark outside the crop) is left out, with the reason in the site's own log: one
    bad mask file costs its image, not the site's localization.
    """
    regions: dict[int, LesionRegion] = {}
    unplaced: list[int] = []
    for number, (row, geometry) in rows.items():
        region = None
        try:
            source = None if geometry is None else lesion_mask_in_source(row, geometry.source_shape)
            if source is not None and geometry is not None:
                region = LesionRegion.from_coverage(geometry.preprocess.apply(source.astype(np.float32)))
        except Exception as exc:  # any failure of one row's mark: that row is unplaced, the others still count
            file_log().warning("manifest %s line %d: lesion mask not used (%s: %s)", site.manifest, number,
                               type(exc).__name__, exc)  # fmt: skip
        if region is None:
            unplaced.append(number)
        else:
            regions[number] = region
    if unplaced:  # which lines have lesions says which images are abnormal: the lines stay in the site's own log
        logger.warning("%d lesion box(es) or mask(s) could not be placed on the model's input; not scored",
                       len(unplaced))  # fmt: skip
        file_log().warning("lesion boxes or masks not placed (outside the crop, unreadable or mismatched): "
                           "manifest lines %s", ", ".join(str(n) for n in unplaced))  # fmt: skip
    return regions


def marked_images(site: SiteSpec, config: AppConfig, split: SiteImages, limit: int) -> list[MarkedImage]:
    """The images of ``split`` localization scores, at most ``limit`` of them, each with its lesion.

    Scored: images whose label is the last class (the headline one, malignant; "abnormal" in a normal-vs-abnormal
    task) with a lesion mark. Images of other classes are left out, even marked ones (a benign mass): the heatmap
    explains the last class's score, and asking where the model saw malignancy in a benign image has no right
    answer. Taken in the split's order (itself a seeded shuffle of patients), the first ``limit``.

    Each lesion is the most precise mark its manifest row gives: a mask, else a box, else the circle (centre and
    radius) already placed on the image when the site was loaded (`SiteImages.lesions`).
    """
    last = config.model.num_classes - 1
    labels = split.labels.tolist()
    manifest = {row.row_number: row for row in read_manifest(site.manifest)} if split.row_numbers else {}
    chosen: list[tuple[int, ManifestRow | None]] = []
    for index, label in enumerate(labels):
        row = manifest.get(split.row_numbers[index]) if split.row_numbers else None
        precise = row is not None and (row.mask_path is not None or row.lesion_box is not None)
        if label == last and (precise or split.lesions[index] is not None):
            chosen.append((index, row if precise else None))
        if len(chosen) == limit:
            break
    geometries = split.geometries
    precise_rows = {
        row.row_number: (row, geometries[index] if geometries is not None else None)
        for index, row in chosen
        if row is not None
    }
    placed = _source_regions(site, precise_rows) if precise_rows else {}
    shape = (split.size, split.size)
    marked: list[MarkedImage] = []
    for index, row in chosen:
        if row is not None:
            if row.row_number in placed:
                marked.append(MarkedImage(index, placed[row.row_number]))
            continue
        lesion = split.lesions[index]
        if lesion is not None:
            marked.append(MarkedImage(index, LesionRegion.from_circle(shape, lesion.row, lesion.col, lesion.radius)))
    return marked
