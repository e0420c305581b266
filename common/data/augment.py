"""Seeded random augmentation of mammogram batches for training, as named policies (``data.augment_policy``).

Only transformations that keep the label and what preprocessing normalised: no horizontal flip (the chest wall
stays on the left), small intensity changes (vendors' display curves and film/exposure differ), small shifts,
and in the ``strong`` policy small rotations (the MLO projection angle varies 40-60 degrees between women and
sites), zooms (breast size and compression) and detector noise inside the breast. Small real datasets
(mini-MIAS' 322 films, CDD-CESM's 565 images) overfit in a few rounds without the stronger policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from common.errors import ConfigError

__all__ = [
    "AUGMENT_POLICIES",
    "BRIGHTNESS",
    "CONTRAST",
    "GAMMA",
    "MAX_SHIFT",
    "AugmentPolicy",
    "augment_batch",
    "augmenter",
]


@dataclass(frozen=True)
class AugmentPolicy:
    """Ranges of one augmentation policy; each draw is uniform in ``[-x, x]`` (or ``1 +/- x`` for factors)."""

    gamma: float
    """Gamma drawn from U(1 - gamma, 1 + gamma): mimics vendors' different display curves."""
    contrast: float
    """Contrast factor drawn from U(1 - contrast, 1 + contrast), around each image's mean."""
    brightness: float
    """Additive brightness offset drawn from U(-brightness, brightness)."""
    max_shift: float
    """Largest translation, as a fraction of the image side, along each axis."""
    max_rotation_deg: float = 0.0
    """Largest rotation about the image centre, in degrees (0: none)."""
    zoom: float = 0.0
    """Scale drawn from U(1 - zoom, 1 + zoom) (0: none); > 1 enlarges the breast."""
    noise_std: float = 0.0
    """Gaussian noise standard deviation added inside the breast (pixels > 0) only (0: none)."""


AUGMENT_POLICIES: dict[str, AugmentPolicy] = {
    "standard": AugmentPolicy(gamma=0.15, contrast=0.10, brightness=0.05, max_shift=0.05),
    "strong": AugmentPolicy(
        gamma=0.25, contrast=0.20, brightness=0.08, max_shift=0.08, max_rotation_deg=10.0, zoom=0.12, noise_std=0.01
    ),
}
"""``data.augment_policy`` values. ``standard`` is what every run used before policies existed."""

_STANDARD = AUGMENT_POLICIES["standard"]
BRIGHTNESS = _STANDARD.brightness
CONTRAST = _STANDARD.contrast
GAMMA = _STANDARD.gamma
MAX_SHIFT = _STANDARD.max_shift


def augmenter(policy: str) -> partial[torch.Tensor]:
    """The batch augmentation of a named policy, for `common.training.train_local`'s ``augment``.

    Raises
    ------
    ConfigError
        If ``policy`` is not a key of :data:`AUGMENT_POLICIES`.
    """
    if policy not in AUGMENT_POLICIES:
        raise ConfigError(
            f"config key 'data.augment_policy' = {policy!r} is invalid: it must be one of {sorted(AUGMENT_POLICIES)}"
        )
    return partial(augment_batch, policy=AUGMENT_POLICIES[policy])


def augment_batch(images: torch.Tensor, generator: torch.Generator, policy: AugmentPolicy = _STANDARD) -> torch.Tensor:
    """Return a randomly augmented copy of a batch of preprocessed mammograms.

    Per image: vertical flip with probability 1/2 (CC/MLO orientation up/down varies), gamma, contrast and
    brightness jitter inside the breast (the background stays 0, as preprocessing left it), then one affine map
    (translation, and with the policy rotation and zoom) with zero (background) fill, then noise inside the
    breast. Values stay in [0, 1]. The ``standard`` policy draws the same random numbers as the augmentation
    before policies existed, so a seeded run sees the same flips, curves and shifts.

    Parameters
    ----------
    images : torch.Tensor
        ``N x C x H x W`` floats in [0, 1], on any device.
    generator : torch.Generator
        Source of all randomness (on the CPU or on ``images``' device): the same generator state
        gives the same output, so a seeded run is reproducible.
    policy : AugmentPolicy
        The ranges (:data:`AUGMENT_POLICIES`).

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
    gamma = uniform(1.0 - policy.gamma, 1.0 + policy.gamma)
    contrast = uniform(1.0 - policy.contrast, 1.0 + policy.contrast)
    brightness = uniform(-policy.brightness, policy.brightness)
    shift_x = uniform(-policy.max_shift, policy.max_shift).view(count)
    shift_y = uniform(-policy.max_shift, policy.max_shift).view(count)

    out = torch.where(flip, images.flip(-2), images).clamp(0.0, 1.0)
    breast = out > 0  # preprocessing zeroes the background: intensity jitter must not turn it grey
    out = out.pow(gamma)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = torch.where(breast, ((out - mean) * contrast + mean + brightness).clamp(0.0, 1.0), 0.0)
    # affine_grid maps output to input coordinates in [-1, 1]: a shift of s (fraction of the side) is 2 * s there,
    # and sampling the input at (1 / scale) x the coordinates shows the breast `scale` times larger.
    theta = torch.zeros(count, 2, 3, device=images.device, dtype=images.dtype)
    cos, sin, inverse_scale = _rotation_and_scale(policy, uniform, count)
    theta[:, 0, 0] = cos * inverse_scale
    theta[:, 0, 1] = -sin * inverse_scale
    theta[:, 1, 0] = sin * inverse_scale
    theta[:, 1, 1] = cos * inverse_scale
    theta[:, 0, 2] = 2.0 * shift_x
    theta[:, 1, 2] = 2.0 * shift_y
    grid = F.affine_grid(theta, list(out.shape), align_corners=False)
    out = F.grid_sample(out, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if policy.noise_std > 0:
        noise = torch.randn(out.shape, generator=generator, device=generator.device, dtype=torch.float32)
        out = torch.where(out > 0, out + policy.noise_std * noise.to(device=out.device, dtype=out.dtype), out)
    return out.clamp(0.0, 1.0)


def _rotation_and_scale(
    policy: AugmentPolicy, uniform: Callable[[float, float], torch.Tensor], count: int
) -> tuple[torch.Tensor | float, torch.Tensor | float, torch.Tensor | float]:
    """(cos, sin, 1/scale) per image; plain numbers (and no random draw) when the policy has neither."""
    if policy.max_rotation_deg <= 0 and policy.zoom <= 0:
        return 1.0, 0.0, 1.0
    angle = uniform(-policy.max_rotation_deg, policy.max_rotation_deg).view(count) * (math.pi / 180.0)
    scale = uniform(1.0 - policy.zoom, 1.0 + policy.zoom).view(count)
    return torch.cos(angle), torch.sin(angle), 1.0 / scale
