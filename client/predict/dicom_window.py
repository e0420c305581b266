"""The display window a presentation state gives its source image: the source's own, or one from its pixels."""

from __future__ import annotations

import logging

import numpy as np
from highdicom.pr import SoftcopyVOILUTTransformation
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from client.predict.dicom_source import source_name
from common.data.dicom_windows import ROBUST_PERCENTILES
from common.errors import DicomError

__all__ = ["display_window", "needs_pixels"]

_log = logging.getLogger(__name__)


def needs_pixels(source: Dataset) -> bool:
    """Whether :func:`display_window` must see the pixels: the source gives neither a window nor a VOI LUT."""
    has_window = source.get("WindowCenter") is not None and source.get("WindowWidth") is not None
    return not has_window and not source.get("VOILUTSequence")


def display_window(source: Dataset) -> list[SoftcopyVOILUTTransformation] | None:
    """The VOI a presentation state should carry so the viewer shows the image as its modality meant.

    ``None`` lets highdicom copy the source's own window or VOI LUT (the vendor's tuning, and what the
    radiologist read). A source with both is given its window explicitly (highdicom refuses to copy both; a
    window is a valid VOI for every viewer). A source with neither gets a linear window at the
    :data:`common.data.dicom_windows.ROBUST_PERCENTILES` of its modality values when its pixels are loaded
    (the same cut the model's preprocessing uses), else the full range its Bits Stored allow: a GSPS without
    any VOI would show a 12-bit image in a 16-bit grey scale, nearly black.

    Raises
    ------
    DicomError
        If the loaded pixels cannot be decoded or are constant.
    """
    has_window = source.get("WindowCenter") is not None and source.get("WindowWidth") is not None
    if has_window and source.get("VOILUTSequence"):
        return [
            SoftcopyVOILUTTransformation(
                window_center=_floats(source.WindowCenter),
                window_width=_floats(source.WindowWidth),
                window_explanation=_texts(source.get("WindowCenterWidthExplanation")),
                voi_lut_function=source.get("VOILUTFunction") or None,
            )
        ]
    if not needs_pixels(source):
        return None
    if "PixelData" in source:
        try:
            values = np.asarray(apply_modality_lut(source.pixel_array, source), dtype=np.float64)
        except Exception as exc:  # a plugin or a truncated file: say which file
            raise DicomError(
                f"{source_name(source)}: pixel data could not be decoded to choose a display window ({exc})",
                public="its pixel data could not be decoded to choose a display window",
            ) from exc
        low, high = (float(v) for v in np.percentile(values, ROBUST_PERCENTILES))
        explanation = "fedmammo robust window"
    else:
        bits = int(source.get("BitsStored", 16) or 16)
        half = 1 << (bits - 1)
        stored = (-half, half - 1) if source.get("PixelRepresentation") else (0, 2 * half - 1)
        slope, intercept = float(source.get("RescaleSlope", 1) or 1), float(source.get("RescaleIntercept", 0) or 0)
        low, high = sorted(value * slope + intercept for value in stored)
        explanation = "fedmammo full stored range"
    if not high > low:
        raise DicomError(
            f"{source_name(source)}: its pixel values are constant; there is no image to show a box on",
            public="the image is constant; there is no image to show a box on",
            lasting=True,
        )
    _log.info("source image has no window or VOI LUT; the presentation state uses a %s", explanation)
    return [
        SoftcopyVOILUTTransformation(
            window_center=(low + high) / 2.0,
            window_width=high - low,
            window_explanation=explanation,
        )
    ]


def _floats(value: object) -> float | list[float]:
    """A DS value or multi-value as float(s)."""
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return float(value)  # type: ignore[arg-type]
    return [float(v) for v in value]  # type: ignore[union-attr]


def _texts(value: object) -> str | list[str] | None:
    """A (0028,1055) explanation value or multi-value as str(s); ``None`` where absent or empty."""
    if not value:
        return None
    if isinstance(value, str):
        return value
    return [str(v) for v in value]  # type: ignore[union-attr]
