"""The overlay image: the mammogram in grey, the heatmap as a translucent colour map, the box, peak and score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from common.data.geometry_inverse import map_to_source
from common.data.image_pipeline import ImageGeometry

__all__ = ["COLORMAP", "MAX_SIDE", "display_shape", "render_overlay", "write_png"]

MAX_SIDE = 2048
"""The overlay's longest side at most (a 4000 x 3000 mammogram's overlay stays a few MB)."""
COLORMAP = "jet"
"""Heatmap colours: the convention of Grad-CAM figures (blue cold, red hot)."""
_MAX_ALPHA = 0.5
"""Opacity of the hottest colour; cold areas are nearly clear, so the tissue under them stays readable."""
_BOX_COLOUR = (255, 255, 255)
_TEXT_BACKGROUND = (0, 0, 0)


def display_shape(source_shape: tuple[int, int], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """The overlay's ``(rows, cols)``: the source's, shrunk (aspect kept) to a longest side of ``max_side``."""
    height, width = source_shape
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def render_overlay(
    pixels: np.ndarray,
    cam: np.ndarray,
    geometry: ImageGeometry,
    box: tuple[int, int, int, int] | None,
    peak: tuple[int, int] | None,
    caption: str,
    *,
    max_side: int = MAX_SIDE,
) -> np.ndarray:
    """Draw the heatmap over the original image, in the original's orientation and field of view.

    Parameters
    ----------
    pixels : numpy.ndarray
        The decoded original image in [0, 1] (bright = dense), shape ``geometry.source_shape``.
    cam : numpy.ndarray
        The heatmap over the model's input (``size x size``, [0, 1]); sampled straight onto the display grid
        (`common.data.geometry_inverse.map_to_source`), so the full-resolution map is never made.
    geometry : ImageGeometry
        Where the model's input came from in the original.
    box : tuple of int or None
        ``(row0, col0, row1, col1)`` in the original's pixels (exclusive ends), drawn as a white rectangle; None
        (a flat heatmap: no evidence for the class) draws none.
    peak : tuple of int or None
        ``(row, col)`` in the original's pixels, drawn as a small cross; None draws none.
    caption : str
        Text drawn at the top left (the score, the research-use note); one line per line of it.
    max_side : int
        Longest side of the result.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols, 3)`` uint8 RGB image.
    """
    rows, cols = display_shape(geometry.source_shape, max_side)
    grey = Image.fromarray(np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8))
    if grey.size != (cols, rows):
        grey = grey.resize((cols, rows), Image.Resampling.BILINEAR, reducing_gap=2.0)
    base = np.asarray(grey, dtype=np.float32)[..., None] / 255.0
    heat = map_to_source(cam, geometry, shape=(rows, cols))
    colours = colormaps[COLORMAP](heat)[..., :3].astype(np.float32)
    alpha = (_MAX_ALPHA * heat)[..., None]
    rgb = np.round((base * (1.0 - alpha) + colours * alpha) * 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    _draw_marks(image, geometry.source_shape, box, peak, caption)
    return np.asarray(image)


def _draw_marks(
    image: Image.Image,
    source_shape: tuple[int, int],
    box: tuple[int, int, int, int] | None,
    peak: tuple[int, int] | None,
    text: str,
) -> None:
    """The box, the peak's cross and the caption, scaled from source pixels to the display's."""
    scale_row, scale_col = image.height / source_shape[0], image.width / source_shape[1]
    draw = ImageDraw.Draw(image)
    line = max(1, round(min(image.size) / 300))
    if box is not None and box[2] > box[0] and box[3] > box[1]:
        row0, col0, row1, col1 = box
        corners = (col0 * scale_col, row0 * scale_row, col1 * scale_col - 1, row1 * scale_row - 1)
        draw.rectangle(corners, outline=_BOX_COLOUR, width=line)
    if peak is not None:
        centre_col, centre_row = (peak[1] + 0.5) * scale_col, (peak[0] + 0.5) * scale_row
        arm = 4 * line + 2
        draw.line((centre_col - arm, centre_row, centre_col + arm, centre_row), fill=_BOX_COLOUR, width=line)
        draw.line((centre_col, centre_row - arm, centre_col, centre_row + arm), fill=_BOX_COLOUR, width=line)
    pad = max(2, line * 2)
    size = max(6, round(image.width / 45))
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
    if right - left > image.width - 2 * pad:  # a narrow image: shrink the text to fit its width
        font = ImageFont.load_default(size=max(6, int(size * (image.width - 2 * pad) / (right - left))))
        left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=_TEXT_BACKGROUND)
    draw.multiline_text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Save ``rgb`` as a PNG and return ``path``.

    zlib level 3: on a 2048-pixel overlay a third of level 6's time (about 0.2 s against 0.5 s) for files about 15 %
    larger; the PNG is written once per image while a radiologist waits.
    """
    Image.fromarray(rgb).save(path, format="PNG", compress_level=3)
    return path
