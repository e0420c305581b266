"""Seeded random augmentation of mammogram batches for training (vertical flip, intensity jitter, translation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BRIGHTNESS", "CONTRAST", "GAMMA", "MAX_SHIFT", "augment_batch"]

BRIGHTNESS = 0.05
"""Additive brightness offset drawn from U(-BRIGHTNESS, BRIGHTNESS)."""
CONTRAST = 0.10
"""Contrast factor drawn from U(1 - CONTRAST, 1 + CONTRAST), around each image's mean."""
GAMMA = 0.15
"""Gamma drawn from U(1 - GAMMA, 1 + GAMMA): mimics vendors' different display curves."""
MAX_SHIFT = 0.05
"""Largest translation, as a fraction of the image side, along each axis."""


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Return a randomly augmented copy of a batch of preprocessed mammograms.

    The transformations keep what preprocessing normalised: no horizontal flip (the chest wall
    stays on the left) and only small intensity changes and shifts, so the label is unchanged.
    Per image: vertical flip with probability 1/2 (CC/MLO orientation up/down varies), gamma,
    contrast and brightness jitter, then a translation of up to ``MAX_SHIFT`` of the side with
    zero (background) fill. Values stay in [0, 1].

    Parameters
    ----------
    images : torch.Tensor
        ``N x C x H x W`` floats in [0, 1], on any device.
    generator : torch.Generator
        Source of all randomness (on the CPU or on ``images``' device): the same generator state
        gives the same output, so a seeded run is reproducible.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as ``images``; the input is not modified.

    Raises
    ------
    ValueError
        If ``images`` is not 4-D.
    """
    if images.ndim != 4:
        raise ValueError(f"augment_batch needs an N x C x H x W batch, got shape {tuple(images.shape)}")
    count = images.shape[0]
    if count == 0:
        return images.clone()

    def uniform(low: float, high: float) -> torch.Tensor:
        draw = torch.rand(count, generator=generator, device=generator.device, dtype=torch.float32)
        return (low + (high - low) * draw).to(device=images.device, dtype=images.dtype).view(count, 1, 1, 1)

    flip = uniform(0.0, 1.0) < 0.5
    gamma = uniform(1.0 - GAMMA, 1.0 + GAMMA)
    contrast = uniform(1.0 - CONTRAST, 1.0 + CONTRAST)
    brightness = uniform(-BRIGHTNESS, BRIGHTNESS)
    shift_x = uniform(-MAX_SHIFT, MAX_SHIFT).view(count)
    shift_y = uniform(-MAX_SHIFT, MAX_SHIFT).view(count)

    out = torch.where(flip, images.flip(-2), images).clamp(0.0, 1.0)
    out = out.pow(gamma)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
    # affine_grid works in [-1, 1] coordinates: a shift of s (fraction of the side) is 2 * s there.
    theta = torch.zeros(count, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2.0 * shift_x
    theta[:, 1, 2] = 2.0 * shift_y
    grid = F.affine_grid(theta, list(out.shape), align_corners=False)
    out = F.grid_sample(out, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp(0.0, 1.0)
