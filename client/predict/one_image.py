"""Score one image: read it, preprocess it as training did, run the model with Grad-CAM, map the heatmap back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import torch

from client.predict.model_file import PredictModel
from common.data.dicom_io import IMAGE_SUFFIXES, Mammogram, read_mammogram
from common.data.geometry_inverse import box_to_source, content_box, point_to_source
from common.data.image_pipeline import ImageGeometry
from common.data.preprocessing import preprocess_with_geometry
from common.errors import DicomError
from common.explain import peak_location, scores_and_maps, suspicious_box
from common.file_log import file_log

__all__ = ["BOX_FRACTION", "ImagePrediction", "dicom_identifiers", "predict_image"]

BOX_FRACTION = 0.5
"""The suspicious box holds the connected region around the peak where the heatmap is at least this share of it."""

_UID_KEYWORDS = {"study_uid": "StudyInstanceUID", "series_uid": "SeriesInstanceUID", "sop_uid": "SOPInstanceUID"}


@dataclass
class ImagePrediction:
    """One image's result, in the original file's pixels.

    Attributes
    ----------
    path : Path
        The file.
    mammogram : Mammogram
        The decoded image (``pixels`` in [0, 1], bright = dense) with its header fields.
    geometry : ImageGeometry
        Where the model's input pixels came from in the file.
    probabilities : numpy.ndarray
        Softmax probability per class.
    cam : numpy.ndarray
        The headline class's Grad-CAM over the model's input (``size x size``, [0, 1], zero in the padding).
    box : tuple of int
        ``(row0, col0, row1, col1)`` of the suspicious region in the file's pixels (exclusive ends).
    peak : tuple of int
        ``(row, col)`` of the heatmap's maximum in the file's pixels.
    identifiers : dict
        ``study_uid``, ``series_uid``, ``sop_uid`` of a DICOM file (empty for a plain image).
    seconds : dict
        Time per step: ``read``, ``preprocess``, ``model_cam``, ``map_back``.
    """

    path: Path
    mammogram: Mammogram
    geometry: ImageGeometry
    probabilities: np.ndarray
    cam: np.ndarray
    box: tuple[int, int, int, int]
    peak: tuple[int, int]
    identifiers: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def is_dicom(self) -> bool:
        """Whether the file was read as DICOM (results can then be filed with its study)."""
        return self.path.suffix.lower() not in IMAGE_SUFFIXES


def dicom_identifiers(path: Path) -> dict[str, str]:
    """The study, series and SOP instance UIDs of a DICOM file (its header only); empty for a plain image file."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return {}
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # it was just decoded, so this is a vanished or changed file
        raise DicomError(f"{path}: header could not be read again for its identifiers ({exc})") from exc
    return {key: str(header.get(keyword, "") or "") for key, keyword in _UID_KEYWORDS.items()}


def _preprocessed(model: PredictModel, path: Path, mammogram: Mammogram) -> tuple[np.ndarray, ImageGeometry]:
    """`ImagePipeline.load_with_geometry`'s preprocessing of an already decoded image (the display needs the pixels)."""
    pipeline = model.pipeline
    if pipeline.pixel_spacing_mm > 0 and mammogram.pixel_spacing_mm is None:
        file_log().info("%s has no pixel spacing; used at its own resolution", path.name)
    try:
        image, geometry = preprocess_with_geometry(
            mammogram.pixels,
            mammogram.laterality,
            size=pipeline.image_size,
            spacing_mm=mammogram.pixel_spacing_mm,
            target_spacing_mm=pipeline.pixel_spacing_mm,
        )
    except ValueError as exc:
        raise DicomError(f"{path}: could not be preprocessed ({exc})") from exc
    shape = np.shape(mammogram.pixels)
    return image, ImageGeometry((int(shape[0]), int(shape[1])), geometry)


def predict_image(model: PredictModel, path: str | Path) -> ImagePrediction:
    """Score ``path`` with ``model``, and find where the headline class's evidence lies in the file's own pixels.

    The image goes through the model card's preprocessing (`common.data.preprocessing.preprocess_with_geometry` with
    the card's size, pixel spacing and presentation intent: what training's `ImagePipeline` runs). The Grad-CAM map of
    the headline class is zeroed in the square padding (no image there), renormalised, and its peak and suspicious
    box (`common.explain`) are mapped back through the crop, flip and resampling (`common.data.geometry_inverse`).

    Raises
    ------
    DicomError
        If the file cannot be read or preprocessed (a colour DICOM, a corrupt file...): the message names it.
    """
    path = Path(path).expanduser()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    mammogram = read_mammogram(
        path, require_mg=model.pipeline.require_mg, presentation_intent=model.pipeline.presentation_intent
    )
    identifiers = dicom_identifiers(path)
    seconds["read"] = time.perf_counter() - start
    start = time.perf_counter()
    image, geometry = _preprocessed(model, path, mammogram)
    seconds["preprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    device = next(model.model.parameters()).device
    batch = torch.from_numpy(image)[None, None].to(device)
    probabilities, maps = scores_and_maps(model.model, batch, target_class=model.headline_class)
    seconds["model_cam"] = time.perf_counter() - start
    start = time.perf_counter()
    row0, col0, row1, col1 = content_box(geometry)
    cam = np.zeros_like(maps[0])
    cam[row0:row1, col0:col1] = maps[0][row0:row1, col0:col1]
    if cam.max() > 0:
        cam /= cam.max()
    peak_row, peak_col = peak_location(cam)
    box = box_to_source(suspicious_box(cam, BOX_FRACTION), geometry)
    source_row, source_col = point_to_source(peak_row, peak_col, geometry)
    height, width = geometry.source_shape
    peak = (int(np.clip(round(source_row), 0, height - 1)), int(np.clip(round(source_col), 0, width - 1)))
    seconds["map_back"] = time.perf_counter() - start
    return ImagePrediction(path, mammogram, geometry, probabilities[0], cam, box, peak, identifiers, seconds)
