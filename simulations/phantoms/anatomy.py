"""Breast anatomy: outline, thickness fall-off, skin line, pectoral muscle and power-law parenchymal texture."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["BreastGeometry", "BreastPhantom", "make_breast", "power_law_noise", "sample_geometry"]

FAT_ATTENUATION = 0.45
GLAND_ATTENUATION = 0.95
MUSCLE_ATTENUATION = 1.05
SKIN_ATTENUATION = 0.12


@dataclass(frozen=True)
class BreastGeometry:
    """Outline of one breast in one view, in canonical orientation (chest wall at column 0).

    The breast is a half-ellipse centred on the chest wall at row ``center_row`` with depth
    ``depth`` (columns, towards the nipple) and half-height ``half_height`` (rows). MLO views add
    the pectoral muscle, a triangle in the top-left corner spanning ``pectoral_cols`` along row 0
    and ``pectoral_rows`` along column 0 (both 0 in CC views).
    """

    rows: int
    cols: int
    center_row: float
    depth: float
    half_height: float
    pectoral_cols: float
    pectoral_rows: float
    harmonics: tuple[tuple[float, float], ...]

    def half_height_at(self, col: float) -> float:
        """Half-height of the ellipse at column ``col`` (0 beyond its tip)."""
        u = min(max(col / self.depth, 0.0), 1.0)
        return self.half_height * float(np.sqrt(1.0 - u * u))

    def min_row_below_pectoral(self, col: float) -> float:
        """First row below the pectoral muscle at column ``col`` (0 where there is no muscle)."""
        if self.pectoral_cols <= 0:
            return 0.0
        return max(0.0, self.pectoral_rows * (1.0 - col / self.pectoral_cols))


@dataclass(frozen=True)
class BreastPhantom:
    """Attenuation map of one breast (canonical orientation) plus what lesions need to sit inside it."""

    attenuation: np.ndarray
    thickness: np.ndarray
    geometry: BreastGeometry


def power_law_noise(
    rng: np.random.Generator, shape: tuple[int, int], beta: float, *, stretch: float = 1.0
) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian field with power spectrum ~ 1/f**beta.

    Mammographic parenchyma follows such a power law with beta near 3 (Burgess 2001), which is why
    filtered noise looks like breast tissue where white noise does not. Frequencies are measured in
    cycles per image height so the texture keeps its look whatever the site's matrix size;
    ``stretch`` > 1 elongates structures horizontally (towards the nipple), like ducts.
    """
    rows, cols = shape
    spectrum = np.fft.rfft2(rng.standard_normal(shape))
    fy = np.fft.fftfreq(rows)[:, None] * rows
    fx = np.fft.rfftfreq(cols)[None, :] * rows * stretch
    freq = np.maximum(np.hypot(fx, fy), 2.0)
    field = np.fft.irfft2(spectrum * freq ** (-beta / 2.0), s=shape)
    field -= field.mean()
    return field / (field.std() + 1e-12)


def _radial_strands(rng: np.random.Generator, geometry: BreastGeometry) -> np.ndarray:
    """Fibrous texture elongated along lines converging on the nipple (ducts and Cooper's ligaments).

    A power-law field stretched along one axis is drawn on a polar (distance, angle) grid centred on
    the nipple and sampled back onto the image, so its streaks run radially.
    """
    polar_shape = (geometry.rows, geometry.cols)
    polar = power_law_noise(rng, polar_shape, 2.4, stretch=6.0)
    y = np.arange(geometry.rows, dtype=np.float32)[:, None] - geometry.center_row
    x = np.arange(geometry.cols, dtype=np.float32)[None, :] - geometry.depth
    distance = np.hypot(x, y) / np.hypot(geometry.depth, geometry.half_height)
    angle = (np.arctan2(y, x) % (2 * np.pi)) / (2 * np.pi)
    coords = np.stack(np.broadcast_arrays(angle * (polar_shape[0] - 1), distance * (polar_shape[1] - 1) * 0.5))
    strands = ndimage.map_coordinates(polar, coords, order=1, mode="grid-wrap")
    return (strands * np.clip(distance / 0.3, 0.0, 1.0)).astype(np.float32)  # no sunburst right at the nipple


def sample_geometry(rng: np.random.Generator, rows: int, cols: int, view: str) -> BreastGeometry:
    """Draw a plausible breast outline for ``view`` (``"CC"`` or ``"MLO"``) on a rows x cols matrix."""
    harmonics = tuple((float(rng.uniform(-0.03, 0.03)), float(rng.uniform(0, 2 * np.pi))) for _ in range(3))
    if view == "MLO":
        return BreastGeometry(
            rows=rows,
            cols=cols,
            center_row=rows * rng.uniform(0.5, 0.56),
            depth=cols * rng.uniform(0.7, 0.84),
            half_height=rows * rng.uniform(0.4, 0.44),
            pectoral_cols=cols * rng.uniform(0.25, 0.42),
            pectoral_rows=rows * rng.uniform(0.45, 0.65),
            harmonics=harmonics,
        )
    return BreastGeometry(
        rows=rows,
        cols=cols,
        center_row=rows * rng.uniform(0.47, 0.53),
        depth=cols * rng.uniform(0.72, 0.88),
        half_height=rows * rng.uniform(0.38, 0.45),
        pectoral_cols=0.0,
        pectoral_rows=0.0,
        harmonics=harmonics,
    )


def _normalised_radius(geometry: BreastGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel 'radius' (< 1 inside the breast) of the whole outline and of the ellipse alone."""
    y = (np.arange(geometry.rows, dtype=np.float32)[:, None] - geometry.center_row) / geometry.half_height
    x = np.arange(geometry.cols, dtype=np.float32)[None, :] / geometry.depth
    theta = np.arctan2(y, x)
    wobble = sum(amp * np.cos((k + 2) * theta + phase) for k, (amp, phase) in enumerate(geometry.harmonics))
    ellipse = np.sqrt(x * x + y * y) / (1.0 + wobble)
    if geometry.pectoral_cols <= 0:
        return ellipse, ellipse
    # MLO: the axillary tail follows the muscle up to the top edge, a little wider than the muscle itself.
    rr = np.arange(geometry.rows, dtype=np.float32)[:, None] / (geometry.pectoral_rows * 1.25)
    cc = np.arange(geometry.cols, dtype=np.float32)[None, :] / (geometry.pectoral_cols * 1.3)
    return np.minimum(ellipse, rr + cc), ellipse


def make_breast(rng: np.random.Generator, geometry: BreastGeometry, density: float) -> BreastPhantom:
    """Render one breast's attenuation (0 outside, fat ~0.45, glandular ~0.95) for a patient of ``density``.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the texture; one per image so the two views of a breast differ like real projections.
    geometry : BreastGeometry
        Outline from :func:`sample_geometry`.
    density : float
        Fibroglandular fraction in [0, 1]; dense breasts hide masses, which is what makes the task hard.
    """
    shape = (geometry.rows, geometry.cols)
    radius, ellipse = _normalised_radius(geometry)
    inside = radius < 1.0
    thickness = np.where(inside, np.sqrt(np.clip((1.0 - radius) / 0.12, 0.0, 1.0)), 0.0).astype(np.float32)
    coarse = power_law_noise(rng, shape, 3.0, stretch=0.7)
    strands = _radial_strands(rng, geometry)
    central = 1.0 - np.clip(ellipse, 0.0, 1.0) ** 2
    field = 0.75 * coarse + 0.55 * strands + 1.8 * (central - 0.5) + 3.0 * (density - 0.45)
    gland = 1.0 / (1.0 + np.exp(-1.6 * field))
    gland *= np.clip((1.0 - radius) / 0.18, 0.0, 1.0)  # subcutaneous fat under the skin
    tissue = FAT_ATTENUATION + (GLAND_ATTENUATION - FAT_ATTENUATION) * gland
    skin = SKIN_ATTENUATION * np.exp(-(((1.0 - radius) / 0.012) ** 2))
    attenuation = np.where(inside, thickness * tissue + skin, 0.0)
    if geometry.pectoral_cols > 0:
        rows = np.arange(geometry.rows, dtype=np.float32)[:, None] / geometry.pectoral_rows
        cols = np.arange(geometry.cols, dtype=np.float32)[None, :] / geometry.pectoral_cols
        edge = rows + cols**1.15  # slightly convex anterior border
        muscle = np.clip((1.0 - edge) / 0.03, 0.0, 1.0)
        muscle_tissue = MUSCLE_ATTENUATION * (0.88 + 0.15 * np.clip(1.0 - edge, 0.0, 1.0)) + 0.03 * strands
        attenuation = np.where(inside, attenuation * (1.0 - muscle) + thickness * muscle_tissue * muscle, 0.0)
    return BreastPhantom(attenuation=attenuation.astype(np.float32), thickness=thickness, geometry=geometry)
