"""Tests of common.preprocess: orientation, breast crop, shape/range and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from common.preprocess import PREPROCESS_VERSION, preprocess, preprocess_settings


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
