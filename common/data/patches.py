"""The patch stage's dataset: one patch per image per epoch, a lesion patch or a normal-tissue one (Shen et al. 2019).

Training first on patches teaches a fully convolutional network what a lesion looks like at full resolution before
it learns to find one in a whole image. Differential privacy protects one image, so the dataset is built to
keep that unit: item ``i`` is a (random) function of image ``i`` alone, and there are exactly as many items as
images. Opacus' Poisson sampling over it then has the same sample rate, and the same accounting, as over the
whole-image dataset; nothing is resampled and no image contributes a second item.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from common.data.image_pipeline import Lesion
from common.data.site_images import SiteImages

__all__ = ["MIN_TISSUE_SHARE", "NORMAL_LABEL", "LesionPatches", "PatchSpot"]

NORMAL_LABEL = 0
"""Label of a normal-tissue patch: class 0 is "normal" (three classes) or "benign/normal" (binary)."""

MIN_TISSUE_SHARE = 0.75
"""A normal-tissue patch is drawn among windows with at least this share of breast (non-zero) pixels, centred on
breast; where the image has none (a small breast), among those with the largest share."""

_PLAN, _WINDOW = 0, 1  # independent random streams per (seed, image): the patch kind, and where it sits


class PatchSpot(NamedTuple):
    """Where one item's patch sits in its image, and what it is."""

    top: int
    left: int
    lesion: bool
    """Whether it is a lesion patch (else normal tissue, or the whole image)."""
    label: int
    whole: bool = False
    """The whole image resized to the patch side: an abnormal image whose lesion has no usable mark, where any
    window might hold the lesion, so a "normal-tissue" label could be wrong."""


class LesionPatches(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """One split's images as patches: items ``(1 x P x P float32 in [0, 1], int64 label)``, one per image.

    For an image with a lesion: with probability ``lesion_share`` a lesion patch (centred on the lesion, jittered by
    up to half its radius, clamped inside the image; it always holds the lesion's centre) labelled with the
    image's label, else a normal-tissue patch labelled :data:`NORMAL_LABEL` that does not touch the lesion
    circle (when no window of the image avoids it, the item is a lesion patch). For a normal image (label
    :data:`NORMAL_LABEL`) without a lesion: a normal-tissue patch. For an abnormal image without a usable mark (none
    in the manifest, or dropped outside the crop): the whole image resized to ``P x P`` with its own label, since
    any window of it might hold the lesion and a "normal" label could be wrong. All randomness comes from
    ``(seed, image index)``, so an item does not depend on the order items are read in, a seed gives the same
    patches every time, and :meth:`set_seed` draws new ones (once per round).

    Parameters
    ----------
    images : SiteImages
        The split's images and labels (``S x S``); patches come from these images only.
    lesions : sequence of Lesion or None, optional
        Per image, its lesion circle in the image's pixels, or None; defaults to ``images.lesions``.
    patch_size : int
        Side ``P`` of a patch, ``1 <= P < S``.
    lesion_share : float
        Probability in [0, 1] that an image with a lesion gives a lesion patch.
    seed : int
        Non-negative seed of the patches (see :meth:`set_seed`).

    Raises
    ------
    ValueError
        If ``patch_size`` does not fit inside the images, ``lesion_share`` is outside [0, 1], or ``lesions`` does
        not have one entry per image.
    """

    def __init__(
        self,
        images: SiteImages,
        lesions: Sequence[Lesion | None] | None = None,
        *,
        patch_size: int,
        lesion_share: float,
        seed: int = 0,
    ) -> None:
        if not 1 <= int(patch_size) < images.size:
            raise ValueError(f"patch_size = {patch_size} must be >= 1 and smaller than the image side {images.size}")
        if not 0.0 <= float(lesion_share) <= 1.0:
            raise ValueError(f"lesion_share = {lesion_share} must be in [0, 1]")
        self.images = images
        self.lesions = list(images.lesions if lesions is None else lesions)
        if len(self.lesions) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.lesions)} lesion entries")
        self.patch_size = int(patch_size)
        self.lesion_share = float(lesion_share)
        self._avoidable = [lesion is None or bool(self._clear_windows(lesion).any()) for lesion in self.lesions]
        self.seed = 0
        self._lesion_patch: list[bool] = []
        self.set_seed(seed)

    def set_seed(self, seed: int) -> None:
        """Draw a new set of patches (which kind each image gives, and where): call once per round."""
        if int(seed) < 0:
            raise ValueError(f"seed = {seed} must be >= 0")
        self.seed = int(seed)
        self._lesion_patch = [self._plan(index) for index in range(len(self))]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> torch.Tensor:
        """Every item's label under the current seed (int64, one per image), e.g. for class weights."""
        return torch.tensor([self._label(index) for index in range(len(self))], dtype=torch.int64)

    @property
    def num_lesion_images(self) -> int:
        """How many of the images have a lesion mark."""
        return sum(lesion is not None for lesion in self.lesions)

    @property
    def num_lesion_patches(self) -> int:
        """How many items are lesion patches under the current seed."""
        return sum(self._lesion_patch)

    def spot(self, index: int) -> PatchSpot:
        """Where item ``index``'s patch sits in its image, and its kind and label."""
        return self._spot(index, None)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images.image(index)
        spot = self._spot(index, image)
        p = self.patch_size
        if spot.whole:
            pixels = torch.from_numpy(np.ascontiguousarray(image))[None, None]
            patch = F.interpolate(pixels, size=(p, p), mode="area")[0]
            return patch, torch.tensor(spot.label, dtype=torch.int64)
        patch = np.ascontiguousarray(image[spot.top : spot.top + p, spot.left : spot.left + p])
        return torch.from_numpy(patch).unsqueeze(0), torch.tensor(spot.label, dtype=torch.int64)

    def _unmarked_abnormal(self, index: int) -> bool:
        return self.lesions[index] is None and int(self.images.labels[index]) != NORMAL_LABEL

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(index), stream]))

    def _plan(self, index: int) -> bool:
        """Whether image ``index`` gives a lesion patch under the current seed."""
        if self.lesions[index] is None:
            return False
        wants_lesion = bool(self._rng(index, _PLAN).random() < self.lesion_share)
        return wants_lesion or not self._avoidable[index]

    def _label(self, index: int) -> int:
        if self._lesion_patch[index] or self._unmarked_abnormal(index):
            return int(self.images.labels[index])
        return NORMAL_LABEL

    def _spot(self, index: int, image: np.ndarray | None) -> PatchSpot:
        rng = self._rng(index, _WINDOW)
        lesion = self.lesions[index]
        if self._unmarked_abnormal(index):
            return PatchSpot(0, 0, False, self._label(index), whole=True)
        if self._lesion_patch[index] and lesion is not None:
            top, left = self._lesion_window(lesion, rng)
            return PatchSpot(top, left, True, self._label(index))
        pixels = self.images.image(index) if image is None else image
        top, left = self._normal_window(pixels, lesion, rng)
        return PatchSpot(top, left, False, NORMAL_LABEL)

    def _lesion_window(self, lesion: Lesion, rng: np.random.Generator) -> tuple[int, int]:
        """A window around the lesion centre moved by up to half the radius, never so far it loses the centre."""
        p, last = self.patch_size, self.images.size - self.patch_size
        reach = min(lesion.radius / 2, max(p / 2 - 1, 0.0))
        angle, distance = rng.uniform(0.0, 2 * math.pi), reach * math.sqrt(rng.uniform(0.0, 1.0))
        centre_row = lesion.row + distance * math.sin(angle)
        centre_col = lesion.col + distance * math.cos(angle)
        top = min(max(round(centre_row - (p - 1) / 2), 0), last)
        left = min(max(round(centre_col - (p - 1) / 2), 0), last)
        return int(top), int(left)

    def _normal_window(self, image: np.ndarray, lesion: Lesion | None, rng: np.random.Generator) -> tuple[int, int]:
        """A window of breast tissue (see :data:`MIN_TISSUE_SHARE`) that does not touch the lesion circle."""
        share = _tissue_shares(image, self.patch_size)
        allowed = np.ones_like(share, dtype=bool) if lesion is None else self._clear_windows(lesion)
        centre = self.patch_size // 2
        last = self.images.size - self.patch_size
        centred = image[centre : centre + last + 1, centre : centre + last + 1] > 0
        candidates = allowed & centred & (share >= MIN_TISSUE_SHARE)
        if not candidates.any():
            best = np.where(allowed, share, -1.0)
            candidates = allowed & (best >= best.max())
        tops, lefts = np.nonzero(candidates)
        pick = int(rng.integers(len(tops)))
        return int(tops[pick]), int(lefts[pick])

    def _clear_windows(self, lesion: Lesion) -> np.ndarray:
        """Per window position ``(top, left)``, whether the window keeps clear of the lesion circle."""
        p, count = self.patch_size, self.images.size - self.patch_size + 1
        starts = np.arange(count, dtype=np.float64) - 0.5  # a window covers [start, start + p] in pixel-centre units
        row_gap = np.maximum(np.maximum(starts - lesion.row, lesion.row - (starts + p)), 0.0)
        col_gap = np.maximum(np.maximum(starts - lesion.col, lesion.col - (starts + p)), 0.0)
        keep_off = max(lesion.radius, p / 4)  # a mark without a radius (a point) still keeps normal patches away
        return np.hypot(row_gap[:, None], col_gap[None, :]) > keep_off


def _tissue_shares(image: np.ndarray, size: int) -> np.ndarray:
    """Per window position ``(top, left)``, the share of its pixels that are breast (non-zero after preprocessing)."""
    tissue = np.pad((image > 0).astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    sums = tissue[size:, size:] - tissue[:-size, size:] - tissue[size:, :-size] + tissue[:-size, :-size]
    return sums / float(size * size)
