"""One split of a site as a torch Dataset over uint16 images mapped from the cache, made float one item at a time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from common.data.image_cache import dequantise
from common.data.image_pipeline import ImageGeometry, Lesion

__all__ = ["SiteImages"]


class SiteImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """One split of a site: items ``(1 x S x S float32 in [0, 1], int64 label)``, read from the cache on demand.

    The images stay uint16 in the site's memory-mapped cache (or, when the cache cannot be written,
    in memory as uint16) and become float tensors one item at a time. A hospital's archive of tens
    of thousands of full-field images then trains from the page cache instead of needing its float32
    copy in RAM (20,000 images at 512 px would be 21 GB).

    Parameters
    ----------
    images : sequence of numpy.ndarray
        ``S x S`` uint16 images (see :func:`common.data.image_cache.quantise`), e.g. views of the cache's map.
    labels : sequence of int
        One label per image.
    size : int
        ``S``, so that an empty split still knows its item shape.
    lesions : sequence of Lesion or None, optional
        Per image, its lesion circle in the image's (output) pixels, or None; no argument means no lesion marks.
        Whole-image items never use them; the patch stage (:mod:`common.data.patches`) does.
    row_numbers : sequence of int or None, optional
        Per image, its manifest line, so site-side analyses (subgroups by view, density, vendor) can find the
        image's manifest row and header; they never leave the site.
    geometries : sequence of ImageGeometry or None, optional
        Per image, where its pixels came from in its file (as `common.data.site_data.load_site` computed it), so
        site-side analyses carry a lesion mask onto the image, or leave the square padding out of a heatmap
        (`common.data.geometry_inverse.content_box`), without preprocessing the site again.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[int],
        size: int,
        lesions: Sequence[Lesion | None] | None = None,
        row_numbers: Sequence[int] | None = None,
        geometries: Sequence[ImageGeometry] | None = None,
    ):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if lesions is not None and len(lesions) != len(images):
            raise ValueError(f"{len(images)} images but {len(lesions)} lesion entries")
        if row_numbers is not None and len(row_numbers) != len(images):
            raise ValueError(f"{len(images)} images but {len(row_numbers)} manifest line numbers")
        if geometries is not None and len(geometries) != len(images):
            raise ValueError(f"{len(images)} images but {len(geometries)} image geometries")
        self._images = list(images)
        self.labels = torch.tensor(list(labels), dtype=torch.int64)
        self.size = size
        self.lesions: list[Lesion | None] = list(lesions) if lesions is not None else [None] * len(self._images)
        self.row_numbers: list[int] | None = list(row_numbers) if row_numbers is not None else None
        self.geometries: list[ImageGeometry] | None = list(geometries) if geometries is not None else None

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.image(index)).unsqueeze(0)
        return image, self.labels[index]

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` as an ``S x S`` float32 array in [0, 1] (a fresh copy, not a view of the cache)."""
        return dequantise(self._images[index])

    @property
    def num_lesions(self) -> int:
        """How many images carry a lesion mark."""
        return sum(lesion is not None for lesion in self.lesions)

    @property
    def bytes_in_memory(self) -> int:
        """Bytes of images held in RAM rather than mapped from the cache (0 when the cache holds them all)."""
        return sum(image.nbytes for image in self._images if not isinstance(image, np.memmap))

    @classmethod
    def concatenated(cls, parts: Sequence[SiteImages]) -> SiteImages:
        """Several splits as one (the pooled data of a centralized baseline); manifest lines do not carry over,
        as they are per site; geometries do (they are the images' own) when every part has them."""
        sizes = {part.size for part in parts}
        if len(sizes) > 1:
            raise ValueError(f"cannot concatenate splits of different image sizes {sorted(sizes)}")
        geometries = [part.geometries for part in parts]
        kept = all(part is not None for part in geometries)
        return cls(
            [image for part in parts for image in part._images],
            [int(label) for part in parts for label in part.labels.tolist()],
            sizes.pop() if sizes else 0,
            [lesion for part in parts for lesion in part.lesions],
            geometries=[g for part in geometries for g in part or []] if kept else None,
        )

    def stacked(self) -> torch.Tensor:
        """Every image as one ``N x 1 x S x S`` tensor: for small splits and inspection, not for training."""
        if not self._images:
            return torch.empty((0, 1, self.size, self.size), dtype=torch.float32)
        return torch.from_numpy(dequantise(np.stack(self._images))).unsqueeze(1)
