"""Tests of common.data.augment: seeded determinism, shape/range, no horizontal flip, input untouched."""

from __future__ import annotations

import pytest
import torch

from common.data import augment_batch


def batch(count: int = 6, size: int = 24) -> torch.Tensor:
    """Breasts against the left edge (chest wall left), a bright blob in the upper half."""
    images = torch.zeros(count, 1, size, size)
    images[:, :, 4:20, : size // 2] = 0.5
    images[:, :, 6:9, 2:5] = 0.95
    return images


def test_same_generator_state_gives_same_output() -> None:
    # Execute
    a = augment_batch(batch(), torch.Generator().manual_seed(42))
    b = augment_batch(batch(), torch.Generator().manual_seed(42))
    c = augment_batch(batch(), torch.Generator().manual_seed(43))
    # Assert
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_shape_dtype_range_and_input_untouched() -> None:
    # Prepare
    images = batch()
    original = images.clone()
    # Execute
    out = augment_batch(images, torch.Generator().manual_seed(0))
    # Assert
    assert out.shape == images.shape and out.dtype == images.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    torch.testing.assert_close(images, original, rtol=0, atol=0)
    assert not torch.equal(out, images)


def test_chest_wall_stays_left_and_some_images_flip_vertically() -> None:
    # Prepare
    images = batch(count=32)
    # Execute
    out = augment_batch(images, torch.Generator().manual_seed(1))
    # Assert: tissue mass stays in the left half; the blob moves to the bottom half in some images
    left, right = out[..., :12].sum(dim=(1, 2, 3)), out[..., 12:].sum(dim=(1, 2, 3))
    assert bool((left > 4 * right).all())
    top, bottom = out[:, :, :12].amax(dim=(1, 2, 3)), out[:, :, 12:].amax(dim=(1, 2, 3))
    flipped = bottom > top
    assert 0 < int(flipped.sum()) < 32


def test_generator_advances_between_batches() -> None:
    generator = torch.Generator().manual_seed(5)
    first, second = augment_batch(batch(), generator), augment_batch(batch(), generator)
    assert not torch.equal(first, second)


def test_empty_batch_and_bad_rank() -> None:
    assert augment_batch(torch.zeros(0, 1, 8, 8), torch.Generator()).shape == (0, 1, 8, 8)
    with pytest.raises(ValueError, match="N x C x H x W"):
        augment_batch(torch.zeros(8, 8), torch.Generator())
