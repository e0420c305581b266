"""Lesions: circumscribed benign masses, spiculated/irregular malignant masses and microcalcification clusters.

A mass is tissue, not a light: its attenuation is that of fibroglandular tissue plus a few per cent (Johns &
Yaffe 1987 measured invasive carcinoma within about 5 % of glandular tissue), so it stands out against fat and
hides in dense tissue, and the brightest pixel of a dense normal breast is as bright as any mass. Calcium is the
only truly brighter material; calcifications are therefore tiny, and benign ones (isolated, round, coarser) occur
in breasts of every finding, as in screening, so "has a bright dot" is not the label either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulations.phantoms.anatomy import GLAND_ATTENUATION, BreastGeometry

__all__ = [
    "LesionSpec",
    "add_dense_islands",
    "place_lesion",
    "render_lesion",
    "sample_lesion",
    "scatter_benign_calcifications",
]

MASS_EXCESS = 0.06
"""A mass's attenuation above fibroglandular tissue, as a fraction of it (scaled by contrast and the site knob)."""
CALCIFICATION_ATTENUATION = 0.65
MASS_CONTRAST_RANGE = (0.5, 1.5)
"""Per-lesion factor on ``MASS_EXCESS``; dense islands of normal tissue draw from the same range."""
BENIGN_CALCIFICATION_SHARE = 0.35
"""Share of breasts (any finding) with a few scattered benign calcifications."""


@dataclass(frozen=True)
class LesionSpec:
    """One lesion as seen in both views of a breast; sizes are fractions of the image height.

    ``depth`` (0 = chest wall, 1 = nipple) is shared by CC and MLO, as in real projections, while the
    across-breast position differs per view (``offset_cc``, ``offset_mlo`` in [-1, 1] of the local
    half-height).
    """

    finding: str
    radius_frac: float
    aspect: float
    depth: float
    offset_cc: float
    offset_mlo: float
    contrast: float
    lobes: tuple[tuple[float, float], ...]
    spicules: int
    calcifications: int
    opacity: float = 0.75
    """How much of the ray through the mass's centre crosses the mass (0-1): the rest is the tissue around it."""


def sample_lesion(rng: np.random.Generator, finding: str) -> LesionSpec:
    """Draw a benign (round/oval, smooth sharp margin) or malignant (lobulated, spiculated and/or calcified) lesion.

    Benign and malignant radii overlap (6-12 % of the image height, masses of 1-3 cm) so size alone does not give the
    label away: the margin, spicules and calcifications do.
    """
    malignant = finding == "malignant"
    if malignant:
        lobes = tuple((float(rng.uniform(0.04, 0.14)), float(rng.uniform(0, 2 * np.pi))) for _ in range(4))
        spiculated = rng.random() < 0.75
        calcified = (not spiculated) or rng.random() < 0.4
        spicules = int(rng.integers(8, 21)) if spiculated else 0
        calcifications = int(rng.integers(8, 21)) if calcified else 0
    else:
        lobes, spicules, calcifications = (), 0, 0
    return LesionSpec(
        finding=finding,
        radius_frac=float(rng.uniform(0.06, 0.12 if malignant else 0.11)),
        aspect=float(rng.uniform(0.7, 1.0) if not malignant else rng.uniform(0.8, 1.0)),
        depth=float(rng.uniform(0.25, 0.7)),
        offset_cc=float(rng.uniform(-0.55, 0.55)),
        offset_mlo=float(rng.uniform(-0.45, 0.55)),
        contrast=float(rng.uniform(*MASS_CONTRAST_RANGE)),
        lobes=lobes,
        spicules=spicules,
        calcifications=calcifications,
        opacity=float(rng.uniform(0.55, 0.9)),
    )


def place_lesion(spec: LesionSpec, geometry: BreastGeometry, view: str) -> tuple[float, float, float]:
    """Centre (row, col) and radius in pixels of ``spec`` in one view, kept inside the breast and off the muscle."""
    radius = spec.radius_frac * geometry.rows
    col = spec.depth * geometry.depth
    half = geometry.half_height_at(col)
    offset = spec.offset_mlo if view == "MLO" else spec.offset_cc
    row = geometry.center_row + offset * max(half - 1.2 * radius, 0.0)
    if view == "MLO":
        lowest = geometry.center_row + max(half - 1.2 * radius, 0.0)
        row = min(max(row, geometry.min_row_below_pectoral(col) + 1.2 * radius), lowest)
    return float(row), float(col), float(radius)


def render_lesion(
    attenuation: np.ndarray,
    thickness: np.ndarray,
    spec: LesionSpec,
    center: tuple[float, float, float],
    rng: np.random.Generator,
    *,
    contrast_scale: float,
) -> None:
    """Add ``spec`` centred at ``center`` = (row, col, radius) to ``attenuation`` in place.

    ``rng`` draws the per-view details (spicule and calcification layout, orientation) so CC and MLO
    of one breast show the same lesion type and size without being copies. Everything is scaled by
    the breast's ``thickness`` so nothing leaks past the skin line.
    """
    row, col, radius = center
    reach = radius * (3.2 if spec.spicules else 2.0)
    top, bottom = max(int(row - reach), 0), min(int(row + reach) + 2, attenuation.shape[0])
    left, right = max(int(col - reach), 0), min(int(col + reach) + 2, attenuation.shape[1])
    y = np.arange(top, bottom, dtype=np.float32)[:, None] - row
    x = np.arange(left, right, dtype=np.float32)[None, :] - col
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = (-x * np.sin(angle) + y * np.cos(angle)) / spec.aspect
    dist = np.hypot(u, v)
    theta = np.arctan2(v, u)
    edge = radius * (1.0 + sum(amp * np.cos((k + 2) * theta + ph) for k, (amp, ph) in enumerate(spec.lobes)))
    d = dist / edge
    core = np.sqrt(np.clip(1.0 - d * d, 0.0, 1.0))
    if spec.finding == "malignant":  # ill-defined margin: a fuzzy rim outside the core
        core = np.maximum(core, 0.45 * np.exp(-(((d - 1.0) / 0.18) ** 2)) * (d > 0.8))
    # Mass and spicules replace part of the tissue along each ray by slightly-denser-than-glandular tissue.
    share = np.maximum(spec.opacity * core, _spicules(dist, theta, radius, spec.spicules, rng, attenuation.shape[0]))
    local = attenuation[top:bottom, left:right]
    thick = thickness[top:bottom, left:right]
    level = thick * GLAND_ATTENUATION * (1.0 + MASS_EXCESS * spec.contrast * contrast_scale)
    blended = np.maximum(local, local + share * (level - local))  # a mass never makes tissue less dense
    calcium = _calcifications(y, x, radius, spec.calcifications, rng, attenuation.shape[0])
    attenuation[top:bottom, left:right] = blended + calcium * thick


def add_dense_islands(
    attenuation: np.ndarray,
    thickness: np.ndarray,
    geometry: BreastGeometry,
    rng: np.random.Generator,
    *,
    contrast_scale: float,
) -> None:
    """Add 2-4 islands of dense fibroglandular tissue as dense as a mass, in place, to a breast of any finding.

    Real breasts hold focal densities and asymmetries as dense as cancers (the commonest cause of recalls), so
    "the densest spot" is not the label. Islands are elongated along the ducts (towards the nipple) with soft,
    tapering edges, where a mass is compact with a margin: the difference lies in shape, which a trivial
    statistic of the image cannot see and a convolutional network can.
    """
    rows = geometry.rows
    for _ in range(int(rng.integers(2, 5))):
        col = rng.uniform(0.15, 0.75) * geometry.depth
        half = geometry.half_height_at(col)
        row = geometry.center_row + rng.uniform(-0.6, 0.6) * half
        length = rng.uniform(0.06, 0.13) * rows
        width = rng.uniform(0.03, 0.06) * rows
        angle = np.arctan2(geometry.center_row - row, geometry.depth - col) + rng.normal(0.0, 0.3)
        window = _window(attenuation.shape, row, col, int(length * 1.5) + 2)
        if window is None:
            continue
        (top, bottom, left, right), y, x = window
        along = x * np.cos(angle) + y * np.sin(angle)
        across = -x * np.sin(angle) + y * np.cos(angle)
        # Lumpy rather than smooth: the island is glandular tissue, so it carries the breast's own texture.
        lumps = 0.75 + 0.25 * np.cos(along / width * rng.uniform(2.0, 4.0) + rng.uniform(0, 2 * np.pi))
        # Flat-topped (super-Gaussian) like a mass's core, so the densest pixels of an image are as often an
        # island's as a mass's: no high percentile of the image tells them apart.
        spread = (along / length) ** 2 + (across / width) ** 2
        share = rng.uniform(0.55, 0.9) * lumps * np.exp(-(spread**2))
        excess = MASS_EXCESS * rng.uniform(*MASS_CONTRAST_RANGE) * contrast_scale
        local = attenuation[top:bottom, left:right]
        level = thickness[top:bottom, left:right] * GLAND_ATTENUATION * (1.0 + excess)
        attenuation[top:bottom, left:right] = np.maximum(local, local + share * (level - local))


def scatter_benign_calcifications(
    attenuation: np.ndarray, thickness: np.ndarray, geometry: BreastGeometry, rng: np.random.Generator
) -> None:
    """Add 2-8 isolated, round, coarse benign calcifications anywhere in the breast, in place.

    Screening mammograms of healthy women often show such calcifications (vascular, dermal, involuting
    fibroadenomas). They are larger and sparser than a malignant cluster's fine dots and never grouped.
    """
    count = int(rng.integers(2, 9))
    rows = geometry.rows
    for _ in range(count):
        col = rng.uniform(0.1, 0.85) * geometry.depth
        half = geometry.half_height_at(col)
        row = geometry.center_row + rng.uniform(-0.8, 0.8) * half
        sigma = rng.uniform(0.003, 0.006) * rows
        level = CALCIFICATION_ATTENUATION * rng.uniform(0.5, 1.0)
        window = _window(attenuation.shape, row, col, int(4 * sigma) + 2)
        if window is None:
            continue
        (top, bottom, left, right), y, x = window
        spot = level * np.exp(-(y**2 + x**2) / (2.0 * sigma**2))
        attenuation[top:bottom, left:right] += spot * thickness[top:bottom, left:right]


def _window(
    shape: tuple[int, ...], row: float, col: float, reach: int
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """The image window within ``reach`` pixels of (row, col), clipped to ``shape``, and its offsets from that point.

    Returns ``((top, bottom, left, right), y, x)`` with ``y`` a column and ``x`` a row of float32 offsets, or None
    when the window lies wholly outside the image.
    """
    top, bottom = max(int(row) - reach, 0), min(int(row) + reach, shape[0])
    left, right = max(int(col) - reach, 0), min(int(col) + reach, shape[1])
    if top >= bottom or left >= right:
        return None
    y = np.arange(top, bottom, dtype=np.float32)[:, None] - row
    x = np.arange(left, right, dtype=np.float32)[None, :] - col
    return (top, bottom, left, right), y, x


def _spicules(
    dist: np.ndarray, theta: np.ndarray, radius: float, count: int, rng: np.random.Generator, rows: int
) -> np.ndarray:
    """Thin radiating lines, widest at the mass and fading towards their tips, as a tissue share (0-0.55)."""
    out = np.zeros_like(dist)
    if count == 0:
        return out
    width = max(0.0045 * rows, 0.8)
    for direction in rng.uniform(-np.pi, np.pi, size=count):
        length = radius * rng.uniform(1.6, 3.0)
        along = dist * np.cos(theta - direction)
        across = dist * np.sin(theta - direction)
        fade = np.clip(1.0 - (along - 0.5 * radius) / (length - 0.5 * radius), 0.0, 1.0) * (along > 0.5 * radius)
        line = 0.55 * fade * np.exp(-((across / (width * (0.4 + fade))) ** 2))
        np.maximum(out, line, out=out)
    return out


def _calcifications(
    y: np.ndarray, x: np.ndarray, radius: float, count: int, rng: np.random.Generator, rows: int
) -> np.ndarray:
    """A cluster of tiny, very bright dots around the mass, large enough to survive downsizing to 128 px."""
    out = np.zeros(np.broadcast_shapes(y.shape, x.shape), dtype=np.float32)
    if count == 0:
        return out
    centre = rng.normal(0.0, 0.3 * radius, size=2)
    spots = centre + rng.normal(0.0, 0.45 * radius, size=(count, 2))
    sizes = rng.uniform(0.0012, 0.0025, size=count) * rows
    brightness = CALCIFICATION_ATTENUATION * rng.uniform(0.25, 0.5, size=count)
    for (dy, dx), sigma, level in zip(spots, sizes, brightness, strict=True):
        np.maximum(out, level * np.exp(-((y - dy) ** 2 + (x - dx) ** 2) / (2.0 * sigma**2)), out=out)
    return out
