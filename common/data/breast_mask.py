"""Segment the breast from the background of a mammogram (not dense tissue from fat), and the box that holds it.

A mammogram has two very different boundaries: breast versus background (air, with film noise, burnt-in
labels and markers) and dense tissue versus fat. Otsu's threshold on the raw image finds the second one, and
cropping or blanking by it punches holes into fatty tissue and cuts off whole fatty regions. Here the
threshold sits just above the background level (a triangle threshold on the median-filtered image's histogram,
whose dominant dark peak is the background), the breast is the largest component with every hole filled, and
only what lies outside that filled breast is treated as background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_triangle
from skimage.measure import label as label_components
from skimage.morphology import dilation, disk, opening
from skimage.transform import downscale_local_mean

__all__ = ["MASK_SIDE", "BreastSegmentation", "segment_breast"]

MASK_SIDE = 512
"""The mask is found on a block-averaged copy no longer than this a side (speed on 4000 x 3000 images)."""

_MEDIAN_SIZE = 3  # mask-grid pixels; removes film grain and salt noise without blurring a label into the breast
_OPEN_RADIUS = 3  # detaches labels, markers and film-edge strips joined to the breast by a bridge up to 6 px wide
_KEEP_SHARE = 0.03  # a piece cut off at a neck, resting on the chest wall, is breast from this share of the largest
_MARGIN = 2  # mask-grid pixels added around the breast, so the faint skin line is never cut
_FRAME_SHARE = 0.03  # band along the top, bottom and nipple-side borders (share of the longer side): film frames
_FRAME_COVER = 0.9  # a border line this much covered by foreground, to the far corner, is a frame
_MAX_HOLE_SHARE = 0.25  # a dark region enclosed by the breast larger than this share of it is not fat but air
_MIN_BACKGROUND_SHARE = 0.01  # below this share of border-connected background, the image is all breast
_AIR_LEVEL = 0.08  # air lies this close to the dark floor (share of the image's 1st-99th percentile range)
_AIR_SPREAD = 0.08  # and is this flat (10-90% spread, same scale); fat of a frame-filling breast is neither


@dataclass(frozen=True)
class BreastSegmentation:
    """The breast of one image: a full-resolution mask and its bounding box.

    Attributes
    ----------
    mask : numpy.ndarray
        Boolean array of the image's shape; True on the breast (holes filled) and a small margin around it,
        so the faint skin line is kept.
    box : tuple of int
        ``(top, bottom, left, right)``, half-open, the smallest box holding the breast (without the margin).
    threshold : float
        The breast/background threshold used, in the image's [0, 1] scale (NaN when the whole image was
        taken as breast because it has no background).
    """

    mask: np.ndarray
    box: tuple[int, int, int, int]
    threshold: float

    @property
    def area(self) -> int:
        """Breast pixels."""
        return int(self.mask.sum())


def segment_breast(image: np.ndarray, *, chest_wall_left: bool = True) -> BreastSegmentation:
    """Find the breast in a [0, 1] mammogram whose dense tissue is bright.

    Parameters
    ----------
    image : numpy.ndarray
        2-D float image in [0, 1].
    chest_wall_left : bool
        The side the chest wall is on (after orientation, the left). A dark region of the breast that
        touches the chest-wall edge of the image is still a hole of the breast, and is filled; without
        knowing the side it would count as background reaching the border.

    Returns
    -------
    BreastSegmentation
        The whole image when it has no air (a breast filling the frame), so nothing is cut from an image
        the method cannot read.

    Notes
    -----
    Two dark regions of a breast stay background, as geometry cannot tell them from air: a region at the air's
    level that opens onto the top, bottom or nipple-side border (fat windowed to black where the breast runs
    off the image), and an enclosed one larger than a quarter of the breast. ``preprocess_quality`` measures
    what is lost on real images (the ``blanked`` and ``zeroed`` figures).
    """
    image = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0), 0.0, 1.0)
    height, width = image.shape
    stride = max(1, math.ceil(max(height, width) / MASK_SIDE))
    small = downscale_local_mean(image, (stride, stride)) if stride > 1 else image
    # downscale_local_mean pads the last partial block with zeros; the edge rows/columns keep their own level
    small = small[: math.ceil(height / stride), : math.ceil(width / stride)]
    smooth = ndimage.median_filter(small, size=_MEDIAN_SIZE, mode="nearest")
    whole = BreastSegmentation(np.ones(image.shape, dtype=bool), (0, height, 0, width), float("nan"))
    if float(smooth.max()) - float(smooth.min()) < 1e-3:
        return whole
    threshold = float(threshold_triangle(smooth, nbins=256))
    foreground = smooth > threshold
    if min(smooth.shape) < 3:
        return whole
    band = max(1, min(round(_FRAME_SHARE * max(smooth.shape)), (min(smooth.shape) - 1) // 2))
    background = opening(~foreground, disk(_OPEN_RADIUS))
    if not _has_air(smooth, background, band, chest_wall_left):
        return whole
    core = _major_components(
        _clear_frame(opening(foreground, disk(_OPEN_RADIUS)), band, chest_wall_left), chest_wall_left
    )
    if core is None:
        core = _major_components(foreground, chest_wall_left)
    if core is None:
        return whole
    core = _regrow_into_frame(core, foreground, band, chest_wall_left)
    # The opening also shaved the breast's own thin edges (skin line, nipple): take back the foreground
    # within reach of the core, but not the far side of a bridge to a label or strip.
    breast = _major_components(foreground & dilation(core, disk(_OPEN_RADIUS + 1)), chest_wall_left)
    if breast is None:
        return whole
    breast = _fill_holes(breast, chest_wall_left)
    # The box is the breast's own; the margin only protects the skin line from being zeroed, so the crop
    # (and the scale of the output) does not depend on the mask grid's resolution.
    box = _bounding_box(_upsample(breast, stride, (height, width)))
    mask = _upsample(dilation(breast, disk(_MARGIN)), stride, (height, width))
    return BreastSegmentation(mask, box, threshold)


def _clear_frame(mask: np.ndarray, band: int, chest_wall_left: bool) -> np.ndarray:
    """Drop the band along each border that carries a film frame (the chest wall's border never does).

    A frame joined to the breast makes the breast's component a ring around the image, which takes every
    label touching the frame with it and makes the crop the whole film. A border is framed when a line of its
    band is foreground along at least :data:`_FRAME_COVER` of its length, reaching the corner away from the
    chest wall; breast touching a border (a pectoral muscle, a large breast) never reaches that corner, as the
    air in front of the nipple lies between. :func:`_regrow_into_frame` gives the breast back its part of a band.
    """
    cleared = mask.copy()
    tip = slice(-band, None) if chest_wall_left else slice(None, band)  # the corner columns away from the wall
    for rows in (slice(None, band), slice(-band, None)):
        lines = mask[rows]
        if ((lines.mean(axis=1) >= _FRAME_COVER) & lines[:, tip].any(axis=1)).any():
            cleared[rows] = False
    side = mask[:, tip]
    if (side.mean(axis=0) >= _FRAME_COVER).any():
        cleared[:, tip] = False
    return cleared


def _regrow_into_frame(core: np.ndarray, foreground: np.ndarray, band: int, chest_wall_left: bool) -> np.ndarray:
    """Extend the breast straight out into the cleared border bands, through foreground only.

    Growing perpendicular to each border takes back breast that touches the border (a pectoral muscle at the
    top, a large breast at the bottom) but not a frame strip running along the border, which would need to
    grow sideways.
    """
    grown = core.copy()
    height, width = core.shape
    for row in range(band - 1, -1, -1):  # top band, inward to outward
        grown[row] |= foreground[row] & grown[row + 1]
    for row in range(height - band, height):  # bottom band
        grown[row] |= foreground[row] & grown[row - 1]
    if chest_wall_left:
        for col in range(width - band, width):
            grown[:, col] |= foreground[:, col] & grown[:, col - 1]
    else:
        for col in range(band - 1, -1, -1):
            grown[:, col] |= foreground[:, col] & grown[:, col + 1]
    return grown


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _has_air(smooth: np.ndarray, background: np.ndarray, band: int, chest_wall_left: bool) -> bool:
    """Whether the below-threshold region reaching the borders is air, so there is background to remove.

    Air is one large region reaching a border other than the chest wall's (or the frame band lining it), at
    the image's dark floor and flat: on every mini-MIAS and CDD-CESM image its median sits within 2% of the
    1st-99th percentile range above the 1st percentile and its 10-90% spread within 2.1% of that range. A
    breast filling the frame (a crop inside the breast, a detector-filling breast) has no such region: what
    falls below the triangle threshold there is fat, textured and above the floor, and must not be cut.
    The caller opens the mask first, so scattered dark specks of a textured breast do not count.
    """
    labels = label_components(background, connectivity=1)
    reach = band + 1
    side = labels[:, -reach:] if chest_wall_left else labels[:, :reach]
    touching = np.unique(np.concatenate([labels[:reach].ravel(), labels[-reach:].ravel(), side.ravel()]))
    region = np.isin(labels, touching[touching > 0])
    if region.mean() < _MIN_BACKGROUND_SHARE:
        return False
    floor, top = np.percentile(smooth, [1, 99])
    scale = max(float(top - floor), 1e-6)
    values = smooth[region]
    low, middle, high = np.percentile(values, [10, 50, 90])
    return (middle - floor) / scale <= _AIR_LEVEL and (high - low) / scale <= _AIR_SPREAD


def _major_components(mask: np.ndarray, chest_wall_left: bool) -> np.ndarray | None:
    """The largest 4-connected component, with any other that reaches the chest wall and is not tiny.

    A breast split by the opening at a narrow neck (an axillary tail, a skin fold) keeps both parts, as both
    rest on the chest wall; a label or marker floats in the air, however large its letters.
    """
    labels = label_components(mask, connectivity=1)
    if labels.max() == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    on_wall = np.unique(labels[:, 0] if chest_wall_left else labels[:, -1])
    keep = [largest, *(int(k) for k in on_wall if k > 0 and sizes[k] >= _KEEP_SHARE * sizes[largest])]
    return np.isin(labels, keep)


def _fill_holes(breast: np.ndarray, chest_wall_left: bool) -> np.ndarray:
    """Fill the breast's holes, counting the chest-wall edge as breast so fat touching it is filled too.

    A hole larger than :data:`_MAX_HOLE_SHARE` of the breast is air enclosed by something joined to the breast
    (another body part, a film frame), not fat: it stays background.
    """
    column = np.ones((breast.shape[0], 1), dtype=bool)
    padded = np.hstack([column, breast]) if chest_wall_left else np.hstack([breast, column])
    filled = ndimage.binary_fill_holes(padded)
    filled = filled[:, 1:] if chest_wall_left else filled[:, :-1]
    holes = label_components(filled & ~breast, connectivity=1)
    sizes = np.bincount(holes.ravel())
    sizes[0] = 0
    too_large = np.flatnonzero(sizes > _MAX_HOLE_SHARE * breast.sum())
    return filled & ~np.isin(holes, too_large) if too_large.size else filled


def _upsample(mask: np.ndarray, stride: int, shape: tuple[int, int]) -> np.ndarray:
    if stride == 1:
        return mask[: shape[0], : shape[1]]
    return np.repeat(np.repeat(mask, stride, axis=0), stride, axis=1)[: shape[0], : shape[1]]
