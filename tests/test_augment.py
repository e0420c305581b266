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


# --- policies -----------------------------------------------------------------------------------------------------

import torch.nn.functional as F  # noqa: E402

from common.config import load_config  # noqa: E402
from common.data import AUGMENT_POLICIES, augmenter  # noqa: E402
from common.errors import ConfigError  # noqa: E402


def _before_policies(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The 'standard' policy written out: the draws of the augmentation before policies existed, intensity jitter
    inside the breast only."""
    count = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        draw = torch.rand(count, generator=generator, dtype=torch.float32)
        return (low + (high - low) * draw).view(count, 1, 1, 1)

    flip = uniform(0.0, 1.0) < 0.5
    gamma, contrast = uniform(0.85, 1.15), uniform(0.9, 1.1)
    brightness = uniform(-0.05, 0.05)
    shift_x, shift_y = uniform(-0.05, 0.05).view(count), uniform(-0.05, 0.05).view(count)
    out = torch.where(flip, images.flip(-2), images).clamp(0.0, 1.0)
    breast = out > 0
    out = out.pow(gamma)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = torch.where(breast, ((out - mean) * contrast + mean + brightness).clamp(0.0, 1.0), 0.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2], theta[:, 1, 2] = 2.0 * shift_x, 2.0 * shift_y
    grid = F.affine_grid(theta, list(out.shape), align_corners=False)
    return F.grid_sample(out, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0.0, 1.0)


def test_standard_policy_is_flip_intensity_inside_the_breast_and_shift() -> None:
    expected = _before_policies(batch(), torch.Generator().manual_seed(5))
    got = augmenter("standard")(batch(), torch.Generator().manual_seed(5))
    assert torch.allclose(got, expected, atol=1e-6)


def test_strong_policy_is_seeded_in_range_and_moves_an_off_centre_spot() -> None:
    images = torch.zeros(16, 1, 32, 32)
    images[:, :, 4:8, 4:8] = 0.8  # a spot near a corner: rotation and zoom move it
    strong = augmenter("strong")
    a = strong(images, torch.Generator().manual_seed(3))
    b = strong(images, torch.Generator().manual_seed(3))
    standard = augmenter("standard")(images, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert not torch.allclose(a, standard, atol=1e-3)


def test_strong_noise_stays_inside_the_breast() -> None:
    images = torch.zeros(4, 1, 32, 32)
    images[:, :, :, :12] = 0.5  # breast on the left, background (0) on the right
    out = augmenter("strong")(images, torch.Generator().manual_seed(0))
    assert torch.count_nonzero(out[:, :, 8:24, 24:]) == 0  # far from the (shifted, rotated) breast edge
    assert out[:, :, 10:22, 2:8].std() > 0  # noise inside


def test_unknown_policy_is_refused_by_name_in_code_and_in_config() -> None:
    assert set(AUGMENT_POLICIES) == {"standard", "strong"}
    with pytest.raises(ConfigError, match=r"data\.augment_policy"):
        augmenter("extreme")
    with pytest.raises(ConfigError, match=r"data\.augment_policy"):
        load_config({"data": {"augment_policy": "extreme"}})


def test_background_stays_black_under_intensity_jitter() -> None:
    images = torch.zeros(8, 1, 16, 16)
    images[:, :, 4:12, :6] = 0.5
    for policy in AUGMENT_POLICIES:
        out = augmenter(policy)(images, torch.Generator().manual_seed(1))
        assert torch.count_nonzero(out[:, :, :, 12:]) == 0, policy


def test_on_all_tissue_images_standard_is_exactly_the_augmentation_from_before_policies() -> None:
    """Without background the breast mask is everywhere, so the old formula (no mask at all) must come out."""
    images = 0.2 + 0.6 * torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(9))
    generator = torch.Generator().manual_seed(11)
    count = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(count, generator=generator)).view(count, 1, 1, 1)

    flip = uniform(0.0, 1.0) < 0.5
    gamma, contrast, brightness = uniform(0.85, 1.15), uniform(0.9, 1.1), uniform(-0.05, 0.05)
    shift_x, shift_y = uniform(-0.05, 0.05).view(count), uniform(-0.05, 0.05).view(count)
    old = torch.where(flip, images.flip(-2), images).clamp(0.0, 1.0).pow(gamma)
    mean = old.mean(dim=(1, 2, 3), keepdim=True)
    old = ((old - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2], theta[:, 1, 2] = 2.0 * shift_x, 2.0 * shift_y
    grid = F.affine_grid(theta, list(old.shape), align_corners=False)
    old = F.grid_sample(old, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0.0, 1.0)

    assert torch.allclose(augmenter("standard")(images, torch.Generator().manual_seed(11)), old, atol=1e-6)
