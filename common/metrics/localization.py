"""Where a heatmap points against a lesion mark: the pointing game, box IoU, and the shortcut baselines beside them.

All positions are in the model's input (output-of-preprocessing) pixels. A point is an integer ``(row, col)`` pixel
index. A box is ``(row0, col0, row1, col1)`` in pixel-edge coordinates: pixel ``(i, j)`` covers ``[i, i + 1) x
[j, j + 1)``, so an integer box with exclusive ``row1``/``col1`` (as `common.explain.suspicious_box` returns) is
used as it is, and a circle's centre ``c`` (pixel-centre coordinates, as `common.data.Lesion` holds it) has its
edge-coordinate position at ``c + 0.5``.

The figures mean something only next to what a model that never looked at the lesion would score, so every
image is also scored for three baselines (`score_image`): the brightest spot of the image (a model that learned
"bright = suspicious"), the centre of the breast (a model that points at the middle of the tissue), and chance
(a point drawn uniformly over the breast: the lesion's share of the breast's pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "BRIGHT_SMOOTHING",
    "MIN_LESION_RADIUS_PX",
    "Box",
    "ImageLocalization",
    "LesionRegion",
    "Point",
    "box_iou",
    "breast_centre",
    "brightest_point",
    "chance_of_hit",
    "score_image",
]

Point = tuple[int, int]
Box = tuple[float, float, float, float]

MIN_LESION_RADIUS_PX = 1.0
"""A lesion circle smaller than this radius (output pixels) is scored as this radius.

A centre without a radius (a point mark), or a small lesion shrunk by the resize, would otherwise cover no
pixel centre or a single one, and no heatmap peak could hit it. One pixel keeps the pointing game strict (the
peak must be the lesion's own pixel or one of its four neighbours) while making a hit possible at all. The same
radius gives a point mark's box (2 x 2 pixels) for the IoU."""

BRIGHT_SMOOTHING = 0.01
"""The brightest-spot baseline smooths the image with a Gaussian of this share of its side (at least 1 pixel)
before taking the maximum: a raw maximum lands on one noisy pixel, or on the first of many saturated ones."""


def _clip_box(box: Box, shape: tuple[int, int]) -> Box:
    rows, cols = shape
    row0, col0, row1, col1 = box
    return (min(max(row0, 0.0), rows), min(max(col0, 0.0), cols), min(max(row1, 0.0), rows), min(max(col1, 0.0), cols))


@dataclass(frozen=True)
class LesionRegion:
    """A lesion in the model's input pixels: its pixels (for the pointing game) and its box (for the IoU).

    Attributes
    ----------
    mask : numpy.ndarray
        Boolean ``S x S``: the pixels whose centre lies in the lesion.
    box : Box
        The lesion's bounding box in pixel-edge coordinates, clipped to the image (a circle's bounding square).
    """

    mask: np.ndarray
    box: Box

    @classmethod
    def from_circle(cls, shape: tuple[int, int], row: float, col: float, radius: float) -> LesionRegion:
        """The circle of ``radius`` (at least `MIN_LESION_RADIUS_PX`) around pixel-centre position ``(row, col)``."""
        radius = max(float(radius), MIN_LESION_RADIUS_PX)
        rows, cols = np.ogrid[: shape[0], : shape[1]]
        mask = (rows - row) ** 2 + (cols - col) ** 2 <= radius**2
        box = (row + 0.5 - radius, col + 0.5 - radius, row + 0.5 + radius, col + 0.5 + radius)
        return cls(mask=mask, box=_clip_box(box, shape))

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> LesionRegion | None:
        """The lesion whose pixels are ``mask``'s true (non-zero) ones; None when it has none."""
        mask = np.asarray(mask).astype(bool)
        if not mask.any():
            return None
        rows, cols = np.nonzero(mask)
        return cls(mask=mask, box=(float(rows.min()), float(cols.min()), float(rows.max() + 1), float(cols.max() + 1)))

    @classmethod
    def from_coverage(cls, coverage: np.ndarray, level: float = 0.5) -> LesionRegion | None:
        """The lesion from a map of how much of each pixel it covers (a mark resized onto the model's input).

        A pixel belongs to the lesion when at least ``level`` of it is covered; a lesion so small that no pixel
        reaches ``level`` keeps the pixels of its highest coverage, so a tiny lesion still has a place. None when
        the map covers nothing (the mark fell outside the image after cropping).
        """
        coverage = np.asarray(coverage, dtype=np.float64)
        peak = float(coverage.max()) if coverage.size else 0.0
        if peak <= 0:
            return None
        return cls.from_mask(coverage >= min(level, peak))

    def contains(self, point: Point) -> bool:
        """Whether pixel ``point`` lies in the lesion (False for a point outside the image)."""
        row, col = int(point[0]), int(point[1])
        inside = 0 <= row < self.mask.shape[0] and 0 <= col < self.mask.shape[1]
        return bool(inside and self.mask[row, col])


def box_iou(first: Box, second: Box) -> float:
    """Intersection over union of two boxes (pixel-edge coordinates); 0 when either has no area."""
    rows = min(first[2], second[2]) - max(first[0], second[0])
    cols = min(first[3], second[3]) - max(first[1], second[1])
    inter = max(rows, 0.0) * max(cols, 0.0)
    area = lambda box: max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)  # noqa: E731
    union = area(first) + area(second) - inter
    return float(inter / union) if union > 0 else 0.0


def brightest_point(image: np.ndarray) -> Point:
    """The brightest spot of ``image`` after light smoothing (`BRIGHT_SMOOTHING`); the first in row-major order
    on a tie."""
    image = np.asarray(image, dtype=np.float32)
    sigma = max(1.0, BRIGHT_SMOOTHING * max(image.shape))
    smoothed = ndimage.gaussian_filter(image, sigma=sigma, mode="constant")
    row, col = np.unravel_index(int(np.argmax(smoothed)), smoothed.shape)
    return int(row), int(col)


def breast_centre(image: np.ndarray) -> Point | None:
    """The centroid of ``image``'s non-zero pixels (preprocessing zeroes everything outside the breast), rounded
    to a pixel; None for an all-zero image."""
    rows, cols = np.nonzero(np.asarray(image) > 0)
    if rows.size == 0:
        return None
    return int(np.rint(rows.mean())), int(np.rint(cols.mean()))


def chance_of_hit(region: LesionRegion, image: np.ndarray) -> float:
    """The chance that a point drawn uniformly over the breast (``image`` > 0) hits the lesion: the expected
    pointing-game score of a model that knows where the breast is and nothing else."""
    breast = np.asarray(image) > 0
    area = int(breast.sum())
    return float((region.mask & breast).sum() / area) if area else 0.0


@dataclass(frozen=True)
class ImageLocalization:
    """One image's localization scores: the heatmap's and the three baselines'."""

    hit: bool
    """The heatmap's maximum lies in the lesion (the pointing game)."""
    iou: float
    """IoU of the heatmap's suspicious box with the lesion's box."""
    bright_hit: bool
    """The brightest-spot baseline (`brightest_point`) lies in the lesion."""
    centre_hit: bool
    """The breast-centre baseline (`breast_centre`) lies in the lesion."""
    chance: float
    """The chance baseline (`chance_of_hit`): the lesion's share of the breast."""
    flat: bool = False
    """The heatmap was zero everywhere in the image's content (`common.explain.headline_region` gave no peak): the
    model found no evidence for the class anywhere in the image, so there is no place it points at; counted as a
    miss, and counted apart so a reader can tell "pointed elsewhere" from "pointed nowhere"."""


def score_image(
    region: LesionRegion, peak: Point | None, suspicious_box: Box | None, image: np.ndarray
) -> ImageLocalization:
    """Score one image: the heatmap's ``peak`` and ``suspicious_box`` against ``region``, and the baselines on
    ``image`` (the preprocessed input the model saw).

    ``peak`` and ``suspicious_box`` are `common.explain.headline_region`'s: None for a flat map (no evidence for the
    class anywhere in the image's content), which hits nothing, has IoU 0 and is counted as flat. The baselines are
    scored all the same, as they ignore the heatmap.
    """
    centre = breast_centre(image)
    flat = peak is None or suspicious_box is None
    return ImageLocalization(
        hit=peak is not None and suspicious_box is not None and region.contains(peak),
        iou=0.0 if suspicious_box is None or peak is None else box_iou(_as_box(suspicious_box), region.box),
        bright_hit=region.contains(brightest_point(image)),
        centre_hit=centre is not None and region.contains(centre),
        chance=chance_of_hit(region, image),
        flat=flat,
    )


def _as_box(box: Box) -> Box:
    row0, col0, row1, col1 = (float(v) for v in box)
    return row0, col0, row1, col1
