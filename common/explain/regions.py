"""Read a heatmap: its peak, and the box of the connected hot region around that peak."""

from __future__ import annotations

import numpy as np
from skimage import measure

__all__ = ["peak_location", "suspicious_box"]


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
