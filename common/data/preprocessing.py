"""Deterministic mammogram preprocessing: one orientation, breast crop, square pad, anti-aliased resize."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from common.data.breast_mask import segment_breast

__all__ = [
    "MAX_RESAMPLED_SIDE",
    "PREPROCESS_VERSION",
    "PreprocessGeometry",
    "preprocess",
    "preprocess_settings",
    "preprocess_with_geometry",
    "resample_to_spacing",
]

PREPROCESS_VERSION = "preprocess-v4"  # v4: breast-vs-background segmentation (v3: Otsu dense-tissue crop)
"""Bump when the output of :func:`preprocess` changes, so every cached image is recomputed."""

MAX_RESAMPLED_SIDE = 8192
"""Resampling to a physical spacing never produces a side longer than this (a corrupt spacing would)."""


def preprocess_settings(size: int, target_spacing_mm: float = 0.0) -> dict[str, object]:
    """Describe what :func:`preprocess` does, for cache keys and run records.

    Any change to these values (or to :data:`PREPROCESS_VERSION`) changes the key of every cached
    image, so stale tensors are never served after the pipeline changes.
    """
    return {
        "version": PREPROCESS_VERSION,
        "size": int(size),
        "target_spacing_mm": float(target_spacing_mm),
        "resample": "bilinear-antialias-before-crop",
        "orientation": "chest-wall-left",
        "threshold": "triangle-smoothed",
        "crop": "filled-breast-bbox",
        "background": "outside-filled-breast-zeroed",
        "pad": "square-zero",
        "resize": "bilinear-antialias",
        "dtype": "float32-[0,1]",
    }


def preprocess(
    pixels: np.ndarray,
    laterality: str,
    *,
    size: int,
    spacing_mm: tuple[float, float] | None = None,
    target_spacing_mm: float = 0.0,
) -> np.ndarray:
    """Turn a normalised mammogram into a ``size x size`` float32 image in [0, 1].

    The same breast must look the same whichever side it was imaged from and however much
    background surrounds it, so the CNN spends its capacity on tissue, not on layout:

    0. when ``target_spacing_mm`` > 0 and the file's ``spacing_mm`` is known: resample to that
       physical pixel size (so the crop's mask and the anti-aliasing see the same scale at every site);
    1. orientation: chest wall on the LEFT. ``"R"`` images are flipped, ``"L"`` kept (the DICOM
       display convention puts a right breast's chest wall on the image's right); for ``""`` the
       side holding more intensity is taken to be the chest wall;
    2. segment the breast from the background (:func:`common.data.breast_mask.segment_breast`: a threshold
       just above the background level, the largest component with its holes filled), crop to the box
       that holds all of it and zero what lies outside it (film noise, burnt-in labels, markers); no pixel
       inside the breast is changed, however dark its fat;
    3. zero-pad to a square (keeping the aspect ratio, breast against the left edge, centred vertically);
    4. resize with anti-aliasing (bilinear, ``antialias=True``).

    Parameters
    ----------
    pixels : numpy.ndarray
        2-D image in [0, 1], bright = dense (as returned by :func:`common.data.dicom_io.read_mammogram`).
    laterality : str
        ``"L"``, ``"R"`` or ``""`` (unknown: detected from the image).
    size : int
        Output side in pixels.
    spacing_mm : tuple of float or None
        The image's (row, column) pixel spacing; ``None`` (unknown) skips resampling.
    target_spacing_mm : float
        Physical pixel size to resample to before cropping; 0 turns resampling off.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(size, size)`` with values in [0, 1].

    Raises
    ------
    ValueError
        If ``pixels`` is not 2-D, ``size`` < 1, ``laterality`` is not L/R/empty, or resampling would
        exceed :data:`MAX_RESAMPLED_SIDE`.
    """
    return preprocess_with_geometry(
        pixels, laterality, size=size, spacing_mm=spacing_mm, target_spacing_mm=target_spacing_mm
    )[0]


@dataclass(frozen=True)
class PreprocessGeometry:
    """Where the output's pixels came from: enough to send any same-shaped map through the same steps.

    Attributes
    ----------
    resampled_shape : tuple of int
        The image's shape after resampling to the target spacing (its input shape when off).
    flipped : bool
        Whether the image was mirrored left-right (chest wall on the left).
    box : tuple of int
        ``(top, bottom, left, right)`` of the breast crop in the resampled, oriented image.
    size : int
        Output side.
    """

    resampled_shape: tuple[int, int]
    flipped: bool
    box: tuple[int, int, int, int]
    size: int

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Resample, orient, crop, pad and resize ``values`` (a map of the input's shape) as the image was.

        Used to compare a reference mask of the original image with the output pixel for pixel; the
        breast mask itself is not applied, so a map is never zeroed.
        """
        array = np.asarray(values, dtype=np.float32)
        if array.shape != self.resampled_shape:
            array = _resize(array, self.resampled_shape)
        if self.flipped:
            array = array[:, ::-1]
        top, bottom, left, right = self.box
        return _resize(_pad_square(array[top:bottom, left:right]), (self.size, self.size))

    def map_point(
        self, row: float, col: float, length: float = 0.0, *, source_shape: tuple[int, int] | None = None
    ) -> tuple[float, float, float] | None:
        """Where an input pixel position (and a length there, e.g. a lesion radius) lands in the output.

        Lesion marks are given in the original file's pixels, but the model sees the preprocessed image; this
        follows a point through the same steps as the pixels (resample, flip, crop, pad, resize). Positions
        are pixel-centre coordinates (pixel ``i`` spans ``[i - 0.5, i + 0.5)``), as bilinear resizing with
        ``align_corners=False`` maps them. A length is scaled by the geometric mean of the two axes' scales.

        Parameters
        ----------
        row, col : float
            Position in the input image (row from the top, column from the left).
        length : float
            A distance in input pixels (0 when only the position matters).
        source_shape : tuple of int or None
            The input image's shape before resampling; ``None`` when it was not resampled.

        Returns
        -------
        tuple of float or None
            ``(row, col, length)`` in output pixels, or ``None`` when the point lies outside the breast crop
            (it has no place in the output, or only in its zero padding).
        """
        rows_in, cols_in = source_shape or self.resampled_shape
        scale_row = self.resampled_shape[0] / rows_in
        scale_col = self.resampled_shape[1] / cols_in
        r = (row + 0.5) * scale_row - 0.5
        c = (col + 0.5) * scale_col - 0.5
        if self.flipped:
            c = self.resampled_shape[1] - 1 - c
        top, bottom, left, right = self.box
        r, c = r - top, c - left
        height, width = bottom - top, right - left
        if not (-0.5 <= r < height - 0.5 and -0.5 <= c < width - 0.5):
            return None
        side = max(height, width)
        r += (side - height) // 2  # _pad_square: rows split above and below, columns added on the right
        zoom = self.size / side
        return (r + 0.5) * zoom - 0.5, (c + 0.5) * zoom - 0.5, length * float(np.sqrt(scale_row * scale_col)) * zoom


def preprocess_with_geometry(
    pixels: np.ndarray,
    laterality: str,
    *,
    size: int,
    spacing_mm: tuple[float, float] | None = None,
    target_spacing_mm: float = 0.0,
) -> tuple[np.ndarray, PreprocessGeometry]:
    """:func:`preprocess`, also returning where the output came from (see :class:`PreprocessGeometry`)."""
    image = np.asarray(pixels, dtype=np.float32)
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(f"preprocess needs a non-empty 2-D image, got shape {image.shape}")
    if int(size) < 1:
        raise ValueError(f"preprocess size must be >= 1, got {size}")
    side = (laterality or "").strip().upper()
    if side not in ("L", "R", ""):
        raise ValueError(f"laterality must be 'L', 'R' or '', got {laterality!r}")
    image = np.clip(np.nan_to_num(image, nan=0.0), 0.0, 1.0)
    if target_spacing_mm > 0 and spacing_mm is not None:
        image = resample_to_spacing(image, spacing_mm, target_spacing_mm)
    flipped = side == "R" or (side == "" and _chest_wall_on_right(image))
    if flipped:
        image = image[:, ::-1]
    segmentation = segment_breast(image, chest_wall_left=True)
    top, bottom, left, right = segmentation.box
    # Background (air, film noise, burnt-in labels, markers) becomes 0; nothing inside the filled breast changes.
    cropped = np.where(segmentation.mask, image, np.float32(0.0))[top:bottom, left:right]
    out = np.clip(_resize(_pad_square(cropped), (int(size), int(size))), 0.0, 1.0)
    geometry = PreprocessGeometry(
        resampled_shape=(int(image.shape[0]), int(image.shape[1])),
        flipped=bool(flipped),
        box=segmentation.box,
        size=int(size),
    )
    return out.astype(np.float32, copy=False), geometry


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with anti-aliasing (what the output and the resampling use)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    out = F.interpolate(tensor, size=shape, mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].numpy()


def _chest_wall_on_right(image: np.ndarray) -> bool:
    """The chest wall is where the breast is widest, so the half with more intensity holds it."""
    half = image.shape[1] // 2
    return float(image[:, image.shape[1] - half :].sum()) > float(image[:, :half].sum())


def resample_to_spacing(image: np.ndarray, spacing_mm: tuple[float, float], target_spacing_mm: float) -> np.ndarray:
    """Resample ``image`` from its (row, column) ``spacing_mm`` to square ``target_spacing_mm`` pixels.

    Raises
    ------
    ValueError
        If a spacing is not positive, or the result would be longer than :data:`MAX_RESAMPLED_SIDE`.
    """
    row_mm, col_mm = (float(v) for v in spacing_mm)
    if not (row_mm > 0 and col_mm > 0 and target_spacing_mm > 0):
        raise ValueError(f"pixel spacings must be > 0, got {spacing_mm} -> {target_spacing_mm}")
    rows = max(1, round(image.shape[0] * row_mm / target_spacing_mm))
    cols = max(1, round(image.shape[1] * col_mm / target_spacing_mm))
    if max(rows, cols) > MAX_RESAMPLED_SIDE:
        raise ValueError(
            f"resampling {image.shape} from {spacing_mm} mm to {target_spacing_mm} mm gives {rows}x{cols}, "
            f"longer than {MAX_RESAMPLED_SIDE}; raise data.pixel_spacing_mm or check the header's spacing"
        )
    if (rows, cols) == image.shape:
        return image
    return np.clip(_resize(image, (rows, cols)), 0.0, 1.0)


def _pad_square(image: np.ndarray) -> np.ndarray:
    """Zero-pad to a square: columns on the right (chest wall stays left), rows split above and below."""
    height, width = image.shape
    side = max(height, width)
    out = np.zeros((side, side), dtype=np.float32)
    top = (side - height) // 2
    out[top : top + height, :width] = image
    return out
