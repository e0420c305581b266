"""Output pixels back to the original file: heatmaps, boxes and points land where the image content came from."""

from __future__ import annotations

import numpy as np
import pytest

from common.data.geometry_inverse import box_to_source, content_box, map_to_source, point_to_source
from common.data.image_pipeline import ImageGeometry
from common.data.preprocessing import PreprocessGeometry, preprocess_with_geometry

SIZE = 64


def _source_per_output(geometry: ImageGeometry) -> tuple[float, float]:
    """How many source pixels one output pixel spans, per axis."""
    (r0, c0), (r1, c1) = point_to_source(10, 10, geometry), point_to_source(11, 11, geometry)
    return abs(r1 - r0), abs(c1 - c0)


def _breast(rows: int, cols: int, *, chest_wall: str, spot: tuple[int, int]) -> np.ndarray:
    """A half-ellipse of tissue (0.4) against one side, 0 around it (cropped away), a bright spot (1.0) at ``spot``.

    The breast reaches 60 % of the width from the chest wall and covers the middle 80 % of the height.
    """
    image = np.zeros((rows, cols), dtype=np.float32)
    rr, cc = np.mgrid[0:rows, 0:cols]
    centre_row, depth, half_height = rows / 2, 0.6 * cols, 0.4 * rows
    from_wall = cc if chest_wall == "L" else cols - 1 - cc
    inside = ((from_wall / depth) ** 2 + ((rr - centre_row) / half_height) ** 2) <= 1.0
    image[inside] = 0.4
    image[(rr - spot[0]) ** 2 + (cc - spot[1]) ** 2 <= 9] = 1.0
    return image


CASES = {
    # name: (rows, cols, laterality, chest wall side, spot, spacing, target spacing)
    "left, tall (padded columns)": (300, 200, "L", "L", (120, 60), None, 0.0),
    "right, flipped": (300, 200, "R", "R", (180, 150), None, 0.0),
    "left, wide (padded rows)": (160, 360, "L", "L", (70, 80), None, 0.0),
    "right, resampled anisotropic spacing": (320, 240, "R", "R", (200, 170), (0.1, 0.15), 0.2),
    "left, resampled upwards": (200, 150, "L", "L", (90, 40), (0.3, 0.3), 0.2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_mapped_back_maximum_lands_on_the_bright_spot(case: str) -> None:
    # Prepare: a synthetic breast with a bright spot, preprocessed as training does; the model's input is the map
    rows, cols, laterality, wall, spot, spacing, target = CASES[case]
    image = _breast(rows, cols, chest_wall=wall, spot=spot)
    output, preprocess = preprocess_with_geometry(
        image, laterality, size=SIZE, spacing_mm=spacing, target_spacing_mm=target
    )
    geometry = ImageGeometry((rows, cols), preprocess)
    heat = output**4  # the spot (1.0) far above the tissue (0.4 ** 4)
    # Execute
    back = map_to_source(heat, geometry)
    # Assert: within two output pixels of the spot, in source pixels
    peak = np.unravel_index(int(np.argmax(back)), back.shape)
    row_scale, col_scale = _source_per_output(geometry)
    assert back.shape == (rows, cols)
    assert abs(peak[0] - spot[0]) <= 2 * row_scale and abs(peak[1] - spot[1]) <= 2 * col_scale
    top, bottom, left, right = preprocess.box  # the background was cropped away, so the crop is exercised
    assert (bottom - top, right - left) != preprocess.resampled_shape
    assert preprocess.flipped == (laterality == "R")


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_box_around_the_spot_in_output_pixels_holds_the_spot_in_source_pixels(case: str) -> None:
    # Prepare
    rows, cols, laterality, wall, spot, spacing, target = CASES[case]
    image = _breast(rows, cols, chest_wall=wall, spot=spot)
    _, preprocess = preprocess_with_geometry(image, laterality, size=SIZE, spacing_mm=spacing, target_spacing_mm=target)
    geometry = ImageGeometry((rows, cols), preprocess)
    mapped = preprocess.map_point(*spot, source_shape=(rows, cols))
    assert mapped is not None
    row, col = round(mapped[0]), round(mapped[1])
    # Execute
    r0, c0, r1, c1 = box_to_source((row - 1, col - 1, row + 2, col + 2), geometry)
    # Assert: the spot inside, and the box about 3 output pixels wide in source pixels
    assert r0 <= spot[0] < r1 and c0 <= spot[1] < c1
    row_scale, col_scale = _source_per_output(geometry)
    assert 3 * row_scale - 1 <= r1 - r0 <= 3 * row_scale + 2 and 3 * col_scale - 1 <= c1 - c0 <= 3 * col_scale + 2


@pytest.mark.parametrize("flipped", [False, True])
@pytest.mark.parametrize("resampled", [(500, 330), (400, 300)])
def test_points_round_trip_through_map_point(flipped: bool, resampled: tuple[int, int]) -> None:
    # Prepare: a crop taller than wide (padded columns) and one wider than tall (padded rows)
    rng = np.random.default_rng(3)
    for box in ((40, 460 * resampled[0] // 500, 20, 250), (100, 200, 10, 290)):
        geometry = ImageGeometry((400, 300), PreprocessGeometry(resampled, flipped, box, 96))
        for row, col in rng.uniform((0, 0), (400, 300), size=(50, 2)):
            mapped = geometry.preprocess.map_point(row, col, source_shape=(400, 300))
            if mapped is None:
                continue
            # Execute
            back = point_to_source(mapped[0], mapped[1], geometry)
            # Assert
            assert back == pytest.approx((row, col), abs=1e-9)


def test_the_map_is_zero_outside_the_crop_and_sent_forward_again_gives_the_map_back() -> None:
    # Prepare: a smooth map over the output, a flipped and resampled geometry
    geometry = ImageGeometry((400, 300), PreprocessGeometry((500, 330), True, (40, 460, 20, 250), SIZE))
    rr, cc = np.mgrid[0:SIZE, 0:SIZE]
    values = np.exp(-((rr - 30) ** 2 + (cc - 20) ** 2) / 200.0).astype(np.float32)
    # Execute
    back = map_to_source(values, geometry)
    forward = geometry.preprocess.apply(back)
    # Assert: zero outside the crop (source rows 32..368, columns 72..282 after un-flipping), forward again equal
    # inside the crop's output area (rows 5..58 after padding, the left 36 columns)
    assert back[:32].max() == 0 and back[369:].max() == 0 and back[:, :72].max() == 0 and back[:, 283:].max() == 0
    inside = forward[8:56, 2:34] - values[8:56, 2:34]
    assert np.abs(inside).max() < 0.05


def test_a_box_in_the_padding_is_empty_and_a_wrong_map_shape_is_refused() -> None:
    geometry = ImageGeometry((300, 200), PreprocessGeometry((300, 200), False, (0, 300, 0, 150), SIZE))
    r0, c0, r1, c1 = box_to_source((0, 40, 64, 64), geometry)  # columns 32+ are padding (150 of 300 wide)
    assert r1 - r0 == 300 and c1 == c0 == 150
    with pytest.raises(ValueError, match="needs a 64x64 map"):
        map_to_source(np.zeros((32, 32)), geometry)


def test_a_display_grid_samples_the_same_map_and_the_content_box_leaves_out_the_padding() -> None:
    # Prepare: a crop twice as tall as wide (columns padded on the right half), not resampled
    geometry = ImageGeometry((400, 300), PreprocessGeometry((400, 300), False, (0, 400, 0, 200), SIZE))
    values = np.tile(np.linspace(0.0, 1.0, SIZE, dtype=np.float32), (SIZE, 1))
    # Execute
    full = map_to_source(values, geometry)
    half = map_to_source(values, geometry, shape=(200, 150))
    # Assert: the half-size grid's pixel centres sit between two source pixels; the padding holds no content
    assert half.shape == (200, 150)
    assert np.allclose(half[:, :99], (full[::2, 0:198:2] + full[1::2, 1:199:2]) / 2, atol=0.02)
    assert content_box(geometry) == (0, 0, 64, 32)
