"""Score one image: read it, preprocess it as training did, run the model with Grad-CAM, map the heatmap back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import torch

from client.predict.model_file import PredictModel
from common.data.dicom_io import IMAGE_SUFFIXES, Mammogram
from common.data.geometry_inverse import box_to_source, content_box, point_to_source
from common.data.image_cache import dequantise, quantise
from common.data.image_pipeline import ImageGeometry
from common.errors import DicomError, ModelError
from common.explain import headline_region, scores_and_maps

__all__ = ["ImagePrediction", "dicom_identifiers", "model_input", "predict_image"]

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
        The headline class's Grad-CAM over the model's input (``size x size``, [0, 1], zero in the padding; all
        zero when flat), from `common.explain.headline_region`.
    box : tuple of int or None
        ``(row0, col0, row1, col1)`` of the suspicious region in the file's pixels (exclusive ends); None when the
        heatmap is flat (:attr:`flat`).
    peak : tuple of int or None
        ``(row, col)`` of the heatmap's maximum in the file's pixels; None when the heatmap is flat.
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
    box: tuple[int, int, int, int] | None
    peak: tuple[int, int] | None
    identifiers: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def flat(self) -> bool:
        """Whether the heatmap holds no evidence for the headline class (all zero in the image), hence no box or peak.

        Grad-CAM's ReLU keeps only what raises the class's score: an image that argues against the class gets a zero
        map, and a box around "the hottest spot" of it would frame the whole breast, a false alarm.
        """
        return self.box is None

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


def model_input(model: PredictModel, path: Path, mammogram: Mammogram) -> tuple[np.ndarray, ImageGeometry]:
    """The model's input for a decoded image, bit for bit what training fed it, and where its pixels came from.

    `ImagePipeline.preprocess` is training's own preprocessing (`ImagePipeline.load_with_geometry` runs it after
    `ImagePipeline.read`); training then reads every image back from the site cache, stored as uint16
    (`common.data.image_cache.quantise`), so predict makes the same round trip.
    """
    image, geometry = model.pipeline.preprocess(mammogram, name=path)
    return dequantise(quantise(image)), geometry


def predict_image(model: PredictModel, path: str | Path) -> ImagePrediction:
    """Score ``path`` with ``model``, and find where the headline class's evidence lies in the file's own pixels.

    The image is read and preprocessed by the model card's `ImagePipeline` (size, pixel spacing, presentation intent),
    as training read it (:func:`model_input`). The headline class's Grad-CAM map gets `common.explain.headline_region`
    inside the image's content (not the square padding): its peak and suspicious box, mapped back through the crop,
    flip and resampling (`common.data.geometry_inverse`), or none at all when the map is flat.

    Raises
    ------
    DicomError
        If the file cannot be read or preprocessed (a colour DICOM, a corrupt file...): the message names it.
    ModelError
        If the model's scores are not finite (NaN weights): no score of it can be shown.
    """
    path = Path(path).expanduser()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    mammogram = model.pipeline.read(path)
    identifiers = dicom_identifiers(path)
    seconds["read"] = time.perf_counter() - start
    start = time.perf_counter()
    image, geometry = model_input(model, path, mammogram)
    seconds["preprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    device = next(model.model.parameters()).device
    batch = torch.from_numpy(image)[None, None].to(device)
    probabilities, maps = scores_and_maps(model.model, batch, target_class=model.headline_class)
    seconds["model_cam"] = time.perf_counter() - start
    if not np.isfinite(probabilities[0]).all():
        raise ModelError(
            f"{path}: the model gives non-finite scores ({', '.join(f'{float(v):g}' for v in probabilities[0])}); "
            f"its weights in '{model.path}' hold NaN or infinite values (a diverged run, or a file that is not the "
            "one its card describes). Use a model file whose training converged"
        )
    start = time.perf_counter()
    region = headline_region(maps[0], content=content_box(geometry))
    box: tuple[int, int, int, int] | None = None
    peak: tuple[int, int] | None = None
    if region.box is not None and region.peak is not None:  # both, unless the map is flat
        box = box_to_source(region.box, geometry)
        source_row, source_col = point_to_source(*region.peak, geometry)
        height, width = geometry.source_shape
        peak = (int(np.clip(round(source_row), 0, height - 1)), int(np.clip(round(source_col), 0, width - 1)))
    seconds["map_back"] = time.perf_counter() - start
    return ImagePrediction(path, mammogram, geometry, probabilities[0], region.cam, box, peak, identifiers, seconds)
