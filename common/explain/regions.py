"""Read a heatmap: its peak, and the box of the connected hot region around that peak."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage import measure

__all__ = ["BOX_FRACTION", "HeadlineRegion", "headline_region", "peak_location", "suspicious_box"]

BOX_FRACTION = 0.5
"""The suspicious box holds the connected region around the peak where the heatmap is at least this share of it."""


def _as_map(heatmap: np.ndarray) -> np.ndarray:
    array = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"a heatmap is a non-empty 2-D array, got shape {array.shape}")
    return array


def peak_location(heatmap: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the heatmap's maximum (the first in row-major order on a tie; ``(0, 0)`` for a flat map).

    The pointing game scores a heatmap by whether this one pixel falls inside the lesion.
    """
    array = _as_map(heatmap)
    row, col = np.unravel_index(int(np.argmax(array)), array.shape)
    return int(row), int(col)


def suspicious_box(heatmap: np.ndarray, fraction: float = 0.5) -> tuple[int, int, int, int]:
    """The box ``(row0, col0, row1, col1)`` (``row1``/``col1`` exclusive) of the hot region around the peak.

    The region is the 8-connected component (``skimage.measure.label``) holding the peak among the pixels whose
    value is at least ``fraction`` times the peak's: one box around the most suspicious spot, not around every
    warm patch of the image. A flat (all-zero) map has no spot: every pixel qualifies and the box is the whole map.

    Raises
    ------
    ValueError
        If ``fraction`` is not in (0, 1] or the heatmap is not a non-empty 2-D array.
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"suspicious_box fraction must be in (0, 1], got {fraction}")
    array = _as_map(heatmap)
    row, col = peak_location(array)
    labels = measure.label(array >= float(fraction) * array[row, col], connectivity=2)
    rows, cols = np.nonzero(labels == labels[row, col])
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


@dataclass(frozen=True)
class HeadlineRegion:
    """Where a heatmap points, as ``fedmammo predict`` shows it and the federated pointing game scores it.

    Attributes
    ----------
    cam : numpy.ndarray
        The map restricted to the image's content (zero in the square padding, where there is no image) and divided
        by its new maximum.
    peak : tuple of int or None
        ``(row, col)`` of its maximum; None when the map is flat.
    box : tuple of int or None
        `suspicious_box` of it (``row1``/``col1`` exclusive); None when the map is flat.
    flat : bool
        Whether nothing of the class's evidence is left (Grad-CAM's ReLU zeroes a map whose image argues against
        the class): there is then no spot to show, and a box around the whole breast would be a false alarm.
    """

    cam: np.ndarray
    peak: tuple[int, int] | None
    box: tuple[int, int, int, int] | None
    flat: bool


def headline_region(
    heatmap: np.ndarray, content: tuple[int, int, int, int] | None = None, fraction: float = BOX_FRACTION
) -> HeadlineRegion:
    """The peak and suspicious box of ``heatmap`` inside ``content``, or none at all for a flat map.

    One rule for both readers of a heatmap (predict's overlay, PACS objects and ``predictions.json``; evaluation's
    pointing game and box IoU), so the figures in the report describe the boxes a radiologist is shown.

    Parameters
    ----------
    heatmap : numpy.ndarray
        A 2-D map over the model's input (e.g. `common.explain.class_activation_maps`).
    content : tuple of int or None
        ``(row0, col0, row1, col1)`` of the input pixels that hold the image (`common.data.geometry_inverse.
        content_box`); outside it the map is zeroed. None keeps the whole map.
    fraction : float
        See `suspicious_box`.

    Raises
    ------
    ValueError
        If the heatmap is not a non-empty 2-D array or ``fraction`` is not in (0, 1].
    """
    array = _as_map(heatmap)
    if content is not None:
        row0, col0, row1, col1 = (int(v) for v in content)
        inside = np.zeros_like(array)
        inside[max(row0, 0) : row1, max(col0, 0) : col1] = array[max(row0, 0) : row1, max(col0, 0) : col1]
        array = inside
    top = float(array.max())
    if not top > 0.0:
        return HeadlineRegion(np.zeros_like(array), None, None, True)
    array = array / top
    return HeadlineRegion(array, peak_location(array), suspicious_box(array, fraction), False)
