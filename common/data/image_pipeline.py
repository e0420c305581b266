"""One image's way from a file to the model's input: read, check, preprocess; and the settings that key the cache."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.config import DataConfig
from common.data.dicom_io import Mammogram, read_mammogram
from common.data.manifest import ManifestRow
from common.data.preprocessing import PreprocessGeometry, preprocess_settings, preprocess_with_geometry
from common.errors import DicomError
from common.file_log import file_log

__all__ = ["ImageGeometry", "ImagePipeline", "Lesion", "source_lesion"]


class Lesion(NamedTuple):
    """A lesion circle in a preprocessed image's pixels (pixel-centre coordinates, as numpy indexes them)."""

    row: float
    col: float
    radius: float


def source_lesion(row: ManifestRow) -> Lesion | None:
    """The lesion a manifest row marks, as a circle in the original file's pixels; None when it marks none.

    The centre and radius columns win; a box alone becomes the circle through its corners (half its diagonal),
    so a normal-tissue patch kept outside the circle is outside the whole box. A centre without a radius is a
    point (radius 0).
    """
    if row.lesion_row is not None and row.lesion_col is not None:
        return Lesion(float(row.lesion_row), float(row.lesion_col), float(row.lesion_radius_px or 0.0))
    if row.lesion_box is not None:
        x0, y0, x1, y1 = row.lesion_box
        return Lesion((y0 + y1) / 2, (x0 + x1) / 2, math.hypot(x1 - x0, y1 - y0) / 2)
    return None


@dataclass(frozen=True)
class ImageGeometry:
    """Where a preprocessed image's pixels came from in its file: what maps a lesion mark onto the model's input.

    Kept in the site's cache beside the image (as plain integers, :meth:`to_ints`), so lesions can be placed,
    and edited in the manifest, without decoding the file again.
    """

    source_shape: tuple[int, int]
    preprocess: PreprocessGeometry

    def to_ints(self) -> list[int]:
        """The geometry as nine integers (shapes, flip, crop box): numbers only, nothing that names the file."""
        g = self.preprocess
        return [*self.source_shape, *g.resampled_shape, int(g.flipped), *g.box]

    @classmethod
    def from_ints(cls, values: Sequence[int], size: int) -> ImageGeometry:
        """Read :meth:`to_ints` back for an output side ``size``.

        Raises
        ------
        ValueError
            If ``values`` is not nine integers describing a non-empty crop inside a non-empty image.
        """
        ints = [int(v) for v in values]
        if len(ints) != 9 or any(v != w for v, w in zip(ints, values, strict=True)):
            raise ValueError(f"an image geometry is nine integers, got {list(values)!r}")
        rows, cols, res_rows, res_cols, flipped, top, bottom, left, right = ints
        if min(rows, cols) < 1 or flipped not in (0, 1) or not (0 <= top < bottom <= res_rows):
            raise ValueError(f"image geometry {ints} is not a crop of a non-empty image")
        if not 0 <= left < right <= res_cols:
            raise ValueError(f"image geometry {ints} is not a crop of a non-empty image")
        box = (top, bottom, left, right)
        return cls((rows, cols), PreprocessGeometry((res_rows, res_cols), bool(flipped), box, int(size)))

    def place(self, lesion: Lesion) -> Lesion | None:
        """``lesion`` (in the file's pixels) in the output's pixels; None when it lies outside the breast crop."""
        mapped = self.preprocess.map_point(lesion.row, lesion.col, lesion.radius, source_shape=self.source_shape)
        return None if mapped is None else Lesion(*mapped)


@dataclass(frozen=True)
class ImagePipeline:
    """Everything that decides a preprocessed image's pixels, so the cache can key on it and sites agree on it.

    ``laterality`` given to :meth:`load` (from the manifest) wins over the file's header, because a
    hospital's manifest is where a wrong header gets corrected.

    Attributes
    ----------
    image_size : int
        Output side in pixels.
    require_mg : bool
        Reject DICOM whose Modality is not MG.
    pixel_spacing_mm : float
        Physical pixel size to resample to before cropping (0: off). Files without a spacing are used
        at their own resolution, with a logged note.
    presentation_intent : str
        ``"any"``, ``"for_presentation"`` or ``"for_processing"``: which DICOM intent is admitted.
    """

    image_size: int
    require_mg: bool = True
    pixel_spacing_mm: float = 0.0
    presentation_intent: str = "any"

    @classmethod
    def from_config(cls, data: DataConfig, *, require_mg: bool = True) -> ImagePipeline:
        """The pipeline a run's ``data`` section describes."""
        return cls(
            image_size=data.image_size,
            require_mg=require_mg,
            pixel_spacing_mm=data.pixel_spacing_mm,
            presentation_intent=data.presentation_intent,
        )

    def settings(self) -> dict[str, object]:
        """JSON-serialisable description of the output: any change must change every cache key."""
        return {
            **preprocess_settings(self.image_size, self.pixel_spacing_mm),
            "require_mg": self.require_mg,
            "presentation_intent": self.presentation_intent,
        }

    def load(self, path: str | Path, laterality: str = "") -> np.ndarray:
        """The ``image_size`` x ``image_size`` float32 image in [0, 1] for ``path``.

        Raises
        ------
        DicomError
            If the file cannot be used (the message names the file and the reason).
        """
        return self.load_with_geometry(path, laterality)[0]

    def load_with_geometry(self, path: str | Path, laterality: str = "") -> tuple[np.ndarray, ImageGeometry]:
        """:meth:`load`, also returning where the output's pixels came from (to place lesion marks).

        Raises
        ------
        DicomError
            If the file cannot be used (the message names the file and the reason).
        """
        return self.preprocess(self.read(path), laterality, name=path)

    def read(self, path: str | Path) -> Mammogram:
        """Decode ``path`` under this pipeline's admission rules (modality, presentation intent).

        Kept apart from :meth:`preprocess` for callers that also need the decoded original (``fedmammo predict``
        draws its heatmap over it), so they prepare the model's input by this very code and not by a copy.

        Raises
        ------
        DicomError
            If the file cannot be read or is not admitted (the message names the file and the reason).
        """
        return read_mammogram(path, require_mg=self.require_mg, presentation_intent=self.presentation_intent)

    def preprocess(
        self, mammogram: Mammogram, laterality: str = "", name: str | Path = ""
    ) -> tuple[np.ndarray, ImageGeometry]:
        """The model's input for a decoded ``mammogram`` (:meth:`read`), and where its pixels came from.

        Parameters
        ----------
        mammogram : Mammogram
            The decoded image with its header fields.
        laterality : str
            ``"L"`` or ``"R"`` from the manifest, which wins over the header's; empty uses the header's.
        name : str or Path
            The file it came from, for the log and error messages only.

        Raises
        ------
        DicomError
            If the image cannot be preprocessed (the message names the file and the reason).
        """
        if self.pixel_spacing_mm > 0 and mammogram.pixel_spacing_mm is None:
            file_log().info("%s has no pixel spacing; used at its own resolution", Path(name).name or "an image")
        try:
            image, geometry = preprocess_with_geometry(
                mammogram.pixels,
                laterality or mammogram.laterality,
                size=self.image_size,
                spacing_mm=mammogram.pixel_spacing_mm,
                target_spacing_mm=self.pixel_spacing_mm,
            )
        except ValueError as exc:
            raise DicomError(
                f"{name or 'an image'}: could not be preprocessed ({exc})",
                public="the image could not be preprocessed (details in the site's log)",
                lasting=True,  # preprocessing is deterministic, and its version and settings key the cache
            ) from exc
        shape = np.shape(mammogram.pixels)
        return image, ImageGeometry((int(shape[0]), int(shape[1])), geometry)
