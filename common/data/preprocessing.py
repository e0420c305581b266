"""Deterministic mammogram preprocessing: one orientation, breast crop, square pad, anti-aliased resize."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["MAX_RESAMPLED_SIDE", "PREPROCESS_VERSION", "preprocess", "preprocess_settings", "resample_to_spacing"]

PREPROCESS_VERSION = "preprocess-v3"  # v3: 16-bit plain images robust-windowed; 8-bit VOI LUTs; VOI fallback
"""Bump when the output of :func:`preprocess` changes, so every cached image is recomputed."""

_MASK_SIDE = 512  # the breast mask is found on a copy no larger than this (speed on 3000x4000 images)
_OTSU_BINS = 256
_LABEL_MARGIN = 2  # mask-grid pixels added around a removed label, to take its anti-aliased edge too
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
        "threshold": "otsu",
        "crop": "largest-component-bbox",
        "labels": "other-components-zeroed",
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
    2. crop to the bounding box of the largest bright region (Otsu threshold), which drops the
       background and burnt-in labels that do not touch the breast; bright regions left inside the box
       that are not part of the (hole-filled) breast, such as a label beside the nipple, are zeroed;
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
    if side == "R" or (side == "" and _chest_wall_on_right(image)):
        image = image[:, ::-1]
    image = _pad_square(_crop_breast(image))
    tensor = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    resized = F.interpolate(tensor, size=(int(size), int(size)), mode="bilinear", antialias=True, align_corners=False)
    return np.clip(resized[0, 0].numpy(), 0.0, 1.0).astype(np.float32, copy=False)


def _chest_wall_on_right(image: np.ndarray) -> bool:
    """The chest wall is where the breast is widest, so the half with more intensity holds it."""
    half = image.shape[1] // 2
    return float(image[:, image.shape[1] - half :].sum()) > float(image[:, :half].sum())


def _otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold on [0, 1] values: the cut maximising the between-class variance."""
    hist, edges = np.histogram(values, bins=_OTSU_BINS, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    mass_low = np.cumsum(hist * centres)
    mean_low = np.divide(mass_low, weight_low, out=np.zeros_like(mass_low), where=weight_low > 0)
    mean_high = np.divide(mass_low[-1] - mass_low, weight_high, out=np.zeros_like(mass_low), where=weight_high > 0)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _crop_breast(image: np.ndarray) -> np.ndarray:
    """Crop to the largest above-Otsu region's box and zero the other bright regions left inside it.

    The mask is found on a strided copy (at most ``_MASK_SIDE`` a side) and mapped back by the stride.
    Regions inside the breast's filled outline (dense islands in fat) are kept: only what lies outside
    the breast, like burnt-in text or markers, is removed.
    """
    height, width = image.shape
    stride = max(1, math.ceil(max(height, width) / _MASK_SIDE))
    small = image[::stride, ::stride]
    mask = small > _otsu_threshold(small)
    labels, count = ndimage.label(mask)
    if count == 0:
        return image
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    breast = labels == int(np.argmax(sizes))
    rows, cols = np.nonzero(breast)
    top, bottom = int(rows.min()) * stride, min(height, (int(rows.max()) + 1) * stride)
    left, right = int(cols.min()) * stride, min(width, (int(cols.max()) + 1) * stride)
    others = mask & ~ndimage.binary_fill_holes(breast)
    if count > 1 and others.any():
        others = ndimage.binary_dilation(others, iterations=_LABEL_MARGIN) & ~breast
        full = np.repeat(np.repeat(others, stride, axis=0), stride, axis=1)[:height, :width]
        image = np.where(full, np.float32(0.0), image)
    return image[top:bottom, left:right]


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
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    out = F.interpolate(tensor, size=(rows, cols), mode="bilinear", antialias=True, align_corners=False)
    return np.clip(out[0, 0].numpy(), 0.0, 1.0)


def _pad_square(image: np.ndarray) -> np.ndarray:
    """Zero-pad to a square: columns on the right (chest wall stays left), rows split above and below."""
    height, width = image.shape
    side = max(height, width)
    out = np.zeros((side, side), dtype=np.float32)
    top = (side - height) // 2
    out[top : top + height, :width] = image
    return out
