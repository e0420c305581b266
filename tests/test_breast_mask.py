"""Tests of common.data.breast_mask through the preprocessing: the breast is segmented from the background.

Each synthetic case is one that an Otsu (dense-tissue) crop damages: fat darker than dense tissue, a skin line
fading into noisy film, a fatty region against the chest wall. Real mini-MIAS and CDD-CESM images are checked
with the preprocess_quality benchmark's own figures when ../shared/data is present.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from common.data import preprocess, preprocess_with_geometry, read_mammogram, segment_breast
from simulations.benchmarks.data_throughput import SHARED_DATA
from simulations.benchmarks.preprocess_quality import measure_image

HEIGHT, WIDTH = 240, 180


def breast_outline(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A half-ellipse against the left (chest-wall) edge, some background above, below and to the right."""
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows - height / 2) / (0.4 * height)) ** 2 + (cols / (0.6 * width)) ** 2 <= 1.0


def fatty_breast(seed: int = 0) -> np.ndarray:
    """Digital-mammogram-like: black air, dark fat (0.12-0.2) over most of the breast, a few dense islands."""
    rng = np.random.default_rng(seed)
    breast = breast_outline()
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.where(breast, 0.12 + 0.08 * (1 - cols / WIDTH), 0.0)
    for row, col, radius in [(110, 30, 22), (70, 20, 9), (165, 25, 10), (120, 75, 7)]:
        image = np.where((rows - row) ** 2 + (cols - col) ** 2 <= radius**2, 0.75, image)
    image = image + np.where(breast, rng.normal(0, 0.01, image.shape), 0.0)
    return np.clip(image, 0, 1).astype(np.float32)


def holes_in(output: np.ndarray) -> int:
    """Black pixels enclosed by the output's own foreground."""
    foreground = output > 0
    return int((ndimage.binary_fill_holes(foreground) & ~foreground).sum())


def test_fat_darker_than_dense_tissue_is_kept_whole() -> None:
    # Prepare: Otsu on this image separates the dense islands from fat and air
    image = fatty_breast()
    # Execute
    output, geometry = preprocess_with_geometry(image, "L", size=96)
    # Assert: no hole punched into the fat, and the crop holds the whole breast, not the densest island
    assert holes_in(output) == 0
    assert 0.38 < float((output > 0).mean()) < 0.5  # a half-ellipse padded square covers ~44%, not all of it
    breast = breast_outline()
    top, bottom, left, right = geometry.box
    inside_box = np.zeros_like(breast)
    inside_box[top:bottom, left:right] = True
    assert (breast & ~inside_box).sum() <= 0.001 * breast.sum()  # a lone tip pixel at most
    rows = np.flatnonzero(breast.any(axis=1))
    assert bottom - top <= rows[-1] + 1 - rows[0] + 2  # and not much more than the breast
    # every breast pixel survives: the same steps applied to the outline find it non-zero in the output
    inside = geometry.apply(breast_outline().astype(np.float32)) > 0.99
    assert (output[inside] > 0).all()


def test_skin_line_fading_into_noisy_film_and_a_label_in_the_box() -> None:
    # Prepare: film background with grain, a skin line fading over 12 px, a label beside the nipple
    rng = np.random.default_rng(1)
    distance = ndimage.distance_transform_edt(breast_outline())
    image = 0.04 + rng.normal(0, 0.01, (HEIGHT, WIDTH)) + np.clip(distance / 12, 0, 1) * 0.45
    image[20:32, 140:170] = 0.95  # burnt-in "L MLO"
    image = np.clip(image, 0, 1).astype(np.float32)
    # Execute
    output, geometry = preprocess_with_geometry(image, "L", size=96)
    # Assert: the breast is whole, the label and the film grain outside the breast are gone
    assert holes_in(output) == 0
    assert (output[:6, -30:] == 0).all() and (output[-6:, -30:] == 0).all()
    label = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    label[20:32, 140:170] = 1
    assert (output[geometry.apply(label) > 0.5] == 0).all()
    background = geometry.apply((~ndimage.binary_dilation(breast_outline(), iterations=6)).astype(np.float32))
    assert (output[background > 0.99] == 0).all()
    assert (output[geometry.apply(breast_outline().astype(np.float32)) > 0.99] > 0).all()


def test_a_dark_region_against_the_chest_wall_is_breast() -> None:
    # Prepare: a fatty region darker than the threshold touches the chest-wall edge (it reaches the image
    # border, so a plain hole filling would call it background)
    image = fatty_breast()
    image[100:140, 0:25] = 0.0
    # Execute
    segmentation = segment_breast(image, chest_wall_left=True)
    # Assert
    assert segmentation.mask[100:140, 0:25].all()


def test_an_image_without_background_is_left_whole() -> None:
    # Prepare: a detector-filling breast (no air anywhere), textured
    rng = np.random.default_rng(2)
    image = np.clip(0.3 + 0.2 * rng.random((120, 90)), 0, 1).astype(np.float32)
    # Execute
    segmentation = segment_breast(image)
    # Assert
    assert segmentation.box == (0, 120, 0, 90) and segmentation.mask.all()


def test_a_breast_split_at_a_narrow_neck_keeps_both_parts() -> None:
    # Prepare: an axillary tail (6% of the breast) joined by a 3-pixel neck, larger than any label
    image = fatty_breast()
    image[0:14, 0:70] = 0.3
    image[14:30, 0:3] = 0.3
    # Execute
    segmentation = segment_breast(image)
    # Assert
    assert segmentation.mask[2:12, 5:65].all()


def test_same_output_for_a_breast_and_the_same_breast_with_more_background() -> None:
    # Prepare
    framed = np.zeros((HEIGHT + 120, WIDTH + 100), dtype=np.float32)
    framed[60 : 60 + HEIGHT, 0:WIDTH] = fatty_breast()
    # Execute / Assert: the crop, not the framing, decides the output
    np.testing.assert_allclose(preprocess(framed, "L", size=64), preprocess(fatty_breast(), "L", size=64), atol=1e-5)


REAL = [
    ("mini_mias/images/mdb001.png", "R"),
    ("mini_mias/images/mdb002.png", "L"),
    ("mini_mias/images/mdb005.png", "R"),
    ("mini_mias/images/mdb010.png", "L"),
    ("cdd_cesm/images/P195_L_CM_CC.png", "L"),
    ("cdd_cesm/images/P162_R_CM_MLO.png", "R"),
]


@pytest.mark.parametrize(("relative", "laterality"), REAL)
def test_real_images_lose_no_breast(relative: str, laterality: str) -> None:
    # Prepare: the images the Otsu crop damaged most visibly (specks along the skin line, fat blanked)
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"{relative} is not in the shared data folder")
    pixels = read_mammogram(path).pixels
    # Execute
    quality = measure_image(path.name, pixels, laterality, 512)
    # Assert: at most 0.1% of the breast blanked, cut at the skin line or left outside the crop
    assert quality.blanked <= 0.001 and quality.outside <= 0.001 and quality.zeroed <= 0.001


def test_a_film_frame_joined_to_the_breast_takes_neither_the_labels_nor_the_crop() -> None:
    # Prepare: a scanned film: a bright frame along the top, bottom and right borders that touches the breast,
    # and a large label hanging from the frame (both would make the breast a ring around the whole image)
    image = fatty_breast()
    image[:5, :] = 0.8
    image[-5:, :] = 0.8
    image[:, -6:] = 0.6
    image[30:60, 130:174] = 0.95
    # Execute
    segmentation = segment_breast(image)
    # Assert: the label is air, the crop is the breast's (plus at most the frame rows it touches)
    assert not segmentation.mask[30:60, 130:174].any()
    _, _, left, right = segmentation.box
    cols = np.flatnonzero(breast_outline().any(axis=0))
    assert right <= cols[-1] + 3 and left == 0


def test_a_smooth_frame_filling_breast_is_left_whole() -> None:
    # Prepare: lumpy fat and dense tissue filling the frame, no air (a crop inside a breast)
    rng = np.random.default_rng(3)
    image = ndimage.gaussian_filter(rng.random((300, 240)), 12)
    image = (0.3 + 0.5 * (image - image.min()) / (image.max() - image.min())).astype(np.float32)
    # Execute
    segmentation = segment_breast(image)
    # Assert: the triangle threshold would split fat from dense tissue; with no air nothing is cut
    assert segmentation.mask.all() and segmentation.box == (0, 300, 0, 240)


@pytest.mark.parametrize("shape", [(16, 600), (20, 700), (600, 16), (2, 2), (1, 40)])
def test_long_thin_and_tiny_images_are_segmented_without_error(shape: tuple[int, int]) -> None:
    image = np.zeros(shape, dtype=np.float32)
    image[: max(1, shape[0] // 2), : max(1, shape[1] // 3)] = 0.6
    segmentation = segment_breast(image)
    assert segmentation.mask.shape == shape and segmentation.mask[0, 0]


def test_non_finite_pixels_are_air() -> None:
    image = fatty_breast()
    image[:10, -10:] = np.nan
    assert not segment_breast(image).mask[:10, -10:].any()
    assert segment_breast(np.full((50, 40), np.nan, dtype=np.float32)).mask.all()


@pytest.mark.parametrize(
    "relative",
    ["cdd_cesm/images/P105_R_CM_CC.png", "cdd_cesm/images/P10_R_CM_CC.png", "cdd_cesm/images/P100_L_CM_CC.png"],
)
def test_a_crop_inside_a_real_breast_is_not_cut(relative: str) -> None:
    # Prepare: rows 1/4-3/4, chest wall to mid-width: all breast (a triangle split of fat and dense kept 12-20%)
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"{relative} is not in the shared data folder")
    pixels = read_mammogram(path).pixels
    oriented = pixels[:, ::-1] if "_R_" in relative else pixels
    height, width = oriented.shape
    inside = np.ascontiguousarray(oriented[height // 4 : 3 * height // 4, : width // 2])
    # Execute
    segmentation = segment_breast(inside)
    # Assert
    assert segmentation.mask.mean() > 0.97
