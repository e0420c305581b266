"""Map the model's output pixels (a heatmap, a box, a point) back onto the original file's pixel grid."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.data.image_pipeline import ImageGeometry

__all__ = ["box_to_source", "content_box", "map_to_source", "point_to_source"]


@dataclass(frozen=True)
class _Axis:
    """One axis of the preprocessing, which is affine per axis: ``output = scale * source + offset``.

    Positions are pixel-centre coordinates (pixel ``i`` spans ``[i - 0.5, i + 0.5)``), as in
    `common.data.preprocessing.PreprocessGeometry.map_point`. ``low``/``high`` bound the breast crop on this axis
    in output coordinates (half-open): outside it the output is zero padding, or the source was cropped away.
    """

    scale: float
    offset: float
    low: float
    high: float

    def to_source(self, value: float | np.ndarray) -> float | np.ndarray:
        return (value - self.offset) / self.scale

    def to_output(self, value: float | np.ndarray) -> float | np.ndarray:
        return self.scale * value + self.offset


def _axes(geometry: ImageGeometry) -> tuple[_Axis, _Axis]:
    """The row and column maps of ``geometry``: resample, flip, crop, pad square, resize, as ``map_point`` does."""
    g = geometry.preprocess
    top, bottom, left, right = g.box
    height, width = bottom - top, right - left
    side = max(height, width)
    pad_top = (side - height) // 2  # _pad_square: rows split above and below, columns added on the right
    zoom = g.size / side
    resample_row = g.resampled_shape[0] / geometry.source_shape[0]
    resample_col = g.resampled_shape[1] / geometry.source_shape[1]
    # row: ((r + .5) * resample_row - .5 - top + pad_top + .5) * zoom - .5
    rows = _Axis(
        scale=resample_row * zoom,
        offset=(0.5 * resample_row - top + pad_top) * zoom - 0.5,
        low=pad_top * zoom - 0.5,
        high=(pad_top + height) * zoom - 0.5,
    )
    # column: c1 = (c + .5) * resample_col - .5, mirrored to W - 1 - c1 when flipped, then - left, then resized
    if g.flipped:
        col_scale, col_offset = -resample_col, g.resampled_shape[1] - 1 - (0.5 * resample_col - 0.5)
    else:
        col_scale, col_offset = resample_col, 0.5 * resample_col - 0.5
    cols = _Axis(
        scale=col_scale * zoom,
        offset=(col_offset - left + 0.5) * zoom - 0.5,
        low=-0.5,
        high=width * zoom - 0.5,
    )
    return rows, cols


def content_box(geometry: ImageGeometry) -> tuple[int, int, int, int]:
    """The output pixels ``(row0, col0, row1, col1)`` (exclusive ends) whose centres hold the breast crop.

    The rest of the model's input is zero padding: a heatmap's peak there points at nothing in the file.
    """
    rows, cols = _axes(geometry)
    size = geometry.preprocess.size

    def span(axis: _Axis) -> tuple[int, int]:
        return max(0, math.ceil(axis.low)), min(size, max(0, math.ceil(axis.high)))

    (row0, row1), (col0, col1) = span(rows), span(cols)
    return row0, col0, row1, col1


def point_to_source(row: float, col: float, geometry: ImageGeometry) -> tuple[float, float]:
    """Where an output pixel position lies in the original file (the inverse of ``map_point``).

    Parameters
    ----------
    row, col : float
        Position in the model's ``size x size`` input (pixel-centre coordinates).
    geometry : ImageGeometry
        The image's geometry (`common.data.image_pipeline.ImagePipeline.load_with_geometry`).

    Returns
    -------
    tuple of float
        ``(row, col)`` in the original file's pixels, before resampling and flipping. A point in the zero padding
        maps outside the crop box (it has no image content); `box_to_source` clips to the crop.
    """
    rows, cols = _axes(geometry)
    return float(rows.to_source(row)), float(cols.to_source(col))


def box_to_source(box: tuple[int, int, int, int], geometry: ImageGeometry) -> tuple[int, int, int, int]:
    """An output box ``(row0, col0, row1, col1)`` (exclusive ends) as the source pixels it covers, same convention.

    The box's pixel edges (``row0 - 0.5`` ... ``row1 - 0.5``) are clipped to the breast crop (padding holds no
    image), mapped back, re-ordered where the image was flipped, and widened to whole source pixels, then clipped
    to the source image. A box wholly in the padding becomes an empty box at the crop's edge.
    """
    row0, col0, row1, col1 = (float(v) for v in box)
    rows, cols = _axes(geometry)
    height, width = geometry.source_shape

    def edges(axis: _Axis, start: float, stop: float, limit: int) -> tuple[int, int]:
        low = min(max(start - 0.5, axis.low), axis.high)
        high = min(max(stop - 0.5, axis.low), axis.high)
        a, b = sorted((float(axis.to_source(low)), float(axis.to_source(high))))
        first = math.floor(a + 0.5 + 1e-6)
        last = math.ceil(b + 0.5 - 1e-6)
        return min(max(first, 0), limit), min(max(last, 0), limit)

    r0, r1 = edges(rows, row0, row1, height)
    c0, c1 = edges(cols, col0, col1, width)
    return r0, c0, max(r1, r0), max(c1, c0)


def _sample_axis(values: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``values`` along ``axis`` at ``positions`` (clamped to the edge pixels)."""
    count = values.shape[axis]
    positions = np.clip(positions, 0.0, count - 1)
    lower = np.floor(positions).astype(np.intp)
    upper = np.minimum(lower + 1, count - 1)
    weight = (positions - lower).astype(np.float32)
    shape = [1, 1]
    shape[axis] = len(positions)
    weight = weight.reshape(shape)
    return np.take(values, lower, axis=axis) * (1.0 - weight) + np.take(values, upper, axis=axis) * weight


def map_to_source(values: np.ndarray, geometry: ImageGeometry, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Lay an output-sized map (a heatmap) over the original file's pixel grid.

    Each source pixel takes the map's bilinear value at the output position its centre was sent to (resampling,
    flip, crop, padding and resize all undone in one step, as each is affine per axis); pixels outside the breast
    crop, which the model never saw, are 0.

    Parameters
    ----------
    values : numpy.ndarray
        ``(size, size)`` map over the model's input.
    geometry : ImageGeometry
        The image's geometry.
    shape : tuple of int or None
        Sample onto a grid of this shape covering the source's whole field of view (a downscaled display of the
        file, whose pixel centres sit at ``(i + 0.5) * source / shape - 0.5``); None: the source's own grid.

    Returns
    -------
    numpy.ndarray
        float32 map of shape ``shape`` (default ``geometry.source_shape``).

    Raises
    ------
    ValueError
        If ``values`` is not ``size x size``.
    """
    size = geometry.preprocess.size
    array = np.asarray(values, dtype=np.float32)
    if array.shape != (size, size):
        raise ValueError(f"map_to_source needs a {size}x{size} map (the geometry's output size), got {array.shape}")
    rows, cols = _axes(geometry)
    height, width = geometry.source_shape
    grid_rows, grid_cols = shape or (height, width)
    if min(grid_rows, grid_cols) < 1:
        raise ValueError(f"map_to_source needs a non-empty grid shape, got {shape}")
    source_rows = (np.arange(grid_rows, dtype=np.float64) + 0.5) * (height / grid_rows) - 0.5
    source_cols = (np.arange(grid_cols, dtype=np.float64) + 0.5) * (width / grid_cols) - 0.5
    row_positions = np.asarray(rows.to_output(source_rows))
    col_positions = np.asarray(cols.to_output(source_cols))
    inside_rows = (row_positions >= rows.low) & (row_positions < rows.high)
    inside_cols = (col_positions >= cols.low) & (col_positions < cols.high)
    out = _sample_axis(_sample_axis(array, row_positions, 0), col_positions, 1).astype(np.float32, copy=False)
    out *= inside_rows[:, None] & inside_cols[None, :]
    return out
