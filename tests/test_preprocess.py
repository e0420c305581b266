"""Tests of common.data.preprocessing: orientation, breast crop, shape/range and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from common.data import (
    PREPROCESS_VERSION,
    preprocess,
    preprocess_settings,
    preprocess_with_geometry,
    resample_to_spacing,
)


def phantom(height: int = 80, width: int = 60, *, chest_wall: str = "left") -> np.ndarray:
    """A [0, 1] phantom: breast against the chest wall, a bright blob in its upper part, black background."""
    rows, cols = np.mgrid[0:height, 0:width]
    breast = ((rows - height / 2) / (0.4 * height)) ** 2 + (cols / (0.6 * width)) ** 2 <= 1.0
    blob = (rows - height * 0.35) ** 2 + (cols - width * 0.15) ** 2 <= (height * 0.06) ** 2
    image = np.where(breast, 0.4 + 0.1 * np.sin(rows / 3.0) * np.cos(cols / 5.0), 0.0)
    image = np.where(blob, 0.95, image).astype(np.float32)
    return image if chest_wall == "left" else image[:, ::-1].copy()


def test_output_shape_dtype_and_range() -> None:
    # Execute
    out = preprocess(phantom(), "L", size=32)
    # Assert
    assert out.shape == (32, 32) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.max() > 0.5


def test_right_image_and_its_mirrored_left_image_match() -> None:
    # Prepare: R images have the chest wall on the right (display convention)
    right = phantom(chest_wall="right")
    left = right[:, ::-1].copy()
    # Execute
    out_right, out_left = preprocess(right, "R", size=32), preprocess(left, "L", size=32)
    # Assert
    np.testing.assert_array_equal(out_right, out_left)


def test_unknown_laterality_is_detected_from_mass() -> None:
    # Execute
    from_right = preprocess(phantom(chest_wall="right"), "", size=32)
    from_left = preprocess(phantom(chest_wall="left"), "", size=32)
    # Assert: same output, chest wall (the widest, brightest side) on the left
    np.testing.assert_array_equal(from_right, from_left)
    assert from_left[:, :8].sum() > from_left[:, -8:].sum()


def test_crop_removes_background_and_a_detached_label() -> None:
    # Prepare: breast in a big black frame, plus a bright burnt-in label far from it
    framed = np.zeros((200, 160), dtype=np.float32)
    framed[60:140, 0:60] = phantom()
    framed[10:16, 120:150] = 1.0  # label text block
    # Execute
    out_framed = preprocess(framed, "L", size=32)
    out_tight = preprocess(phantom(), "L", size=32)
    # Assert: the frame and label are gone, leaving the tightly cropped breast
    np.testing.assert_allclose(out_framed, out_tight, atol=0.05)


def test_breast_is_padded_square_keeping_aspect() -> None:
    # Prepare: a breast twice as tall as wide fills the left half after padding
    image = np.zeros((100, 50), dtype=np.float32)
    image[:, :] = 0.6
    # Execute
    out = preprocess(image, "L", size=20)
    # Assert
    assert out[:, :9].min() > 0.5
    assert out[:, 11:].max() == 0.0


def test_deterministic() -> None:
    image = phantom()
    np.testing.assert_array_equal(preprocess(image, "", size=24), preprocess(image.copy(), "", size=24))


def test_large_image_is_handled() -> None:
    # Prepare: a 1200 x 900 image exercises the down-sampled mask
    big = np.kron(phantom(), np.ones((15, 15), dtype=np.float32))
    # Execute
    out = preprocess(big, "L", size=32)
    # Assert
    np.testing.assert_allclose(out, preprocess(phantom(), "L", size=32), atol=0.08)


@pytest.mark.parametrize(
    ("pixels", "laterality", "size", "message"),
    [
        (np.zeros(10, dtype=np.float32), "L", 8, "2-D image"),
        (np.zeros((8, 8), dtype=np.float32), "L", 0, "size must be >= 1"),
        (np.zeros((8, 8), dtype=np.float32), "B", 8, "laterality must be"),
    ],
)
def test_bad_arguments(pixels: np.ndarray, laterality: str, size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preprocess(pixels, laterality, size=size)


def test_settings_change_with_size_and_carry_version() -> None:
    assert preprocess_settings(64)["version"] == PREPROCESS_VERSION
    assert preprocess_settings(64) != preprocess_settings(128)
    assert preprocess_settings(64) == preprocess_settings(64)


def test_label_inside_the_crop_box_is_removed_and_breast_kept() -> None:
    # Prepare: a label in the breast's bounding box (top-right corner, off the half-ellipse), and a
    # dense island inside a fatty hole of the breast, which must survive
    image = phantom(120, 90)
    image[14:20, 38:50] = 1.0  # burnt-in "L CC" marker
    image[55:65, 20:30] = 0.0  # fatty hole ...
    image[58:62, 23:27] = 0.9  # ... holding a dense island (its own component)
    clean = phantom(120, 90)
    clean[55:65, 20:30] = 0.0
    clean[58:62, 23:27] = 0.9
    # Execute
    out, expected = preprocess(image, "L", size=60), preprocess(clean, "L", size=60)
    # Assert: same as the label-free image; the island is still there (it differs from an empty hole)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    clean[58:62, 23:27] = 0.0
    assert np.abs(out - preprocess(clean, "L", size=60)).max() > 0.3


@pytest.mark.parametrize("spacing", [(0.05, 0.05), (0.1, 0.1), (0.2, 0.1)])
def test_resample_to_spacing_keeps_physical_size(spacing: tuple[float, float]) -> None:
    # Prepare: a 40 x 30 mm field sampled at ``spacing``
    image = np.ones((round(40 / spacing[0]), round(30 / spacing[1])), dtype=np.float32) * 0.5
    # Execute
    out = resample_to_spacing(image, spacing, 0.1)
    # Assert
    assert out.shape == (400, 300) and np.allclose(out, 0.5)


def test_resampling_before_crop_matches_across_resolutions() -> None:
    # Prepare: one breast imaged at 0.1 mm and at 0.05 mm (twice the pixels)
    coarse = phantom(80, 60)
    fine = np.kron(coarse, np.ones((2, 2), dtype=np.float32))
    # Execute
    a, where_a = preprocess_with_geometry(coarse, "L", size=32, spacing_mm=(0.1, 0.1), target_spacing_mm=0.1)
    b, where_b = preprocess_with_geometry(fine, "L", size=32, spacing_mm=(0.05, 0.05), target_spacing_mm=0.1)
    # Assert: the same physical crop, up to the one pixel of edge the anti-aliased down-sampling smears out
    # (a threshold just above the background counts that partial-volume pixel as breast)
    assert where_a.resampled_shape == where_b.resampled_shape == (80, 60)
    assert max(abs(x - y) for x, y in zip(where_a.box, where_b.box, strict=True)) <= 1
    assert float(np.abs(a - b).mean()) < 0.02


def test_resampling_refuses_absurd_sizes() -> None:
    with pytest.raises(ValueError, match=r"longer than 8192; raise data\.pixel_spacing_mm"):
        resample_to_spacing(np.zeros((100, 100), dtype=np.float32), (5.0, 5.0), 0.01)


def test_settings_carry_target_spacing() -> None:
    assert preprocess_settings(64, 0.1) != preprocess_settings(64, 0.0)
    assert preprocess_settings(64, 0.1)["target_spacing_mm"] == 0.1
