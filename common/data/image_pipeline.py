"""One image's way from a file to the model's input: read, check, preprocess; and the settings that key the cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import DataConfig
from common.data.dicom_io import read_mammogram
from common.data.preprocessing import preprocess, preprocess_settings
from common.errors import DicomError
from common.file_log import file_log

__all__ = ["ImagePipeline"]


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
        mammogram = read_mammogram(path, require_mg=self.require_mg, presentation_intent=self.presentation_intent)
        if self.pixel_spacing_mm > 0 and mammogram.pixel_spacing_mm is None:
            file_log().info("%s has no pixel spacing; used at its own resolution", Path(path).name)
        try:
            return preprocess(
                mammogram.pixels,
                laterality or mammogram.laterality,
                size=self.image_size,
                spacing_mm=mammogram.pixel_spacing_mm,
                target_spacing_mm=self.pixel_spacing_mm,
            )
        except ValueError as exc:
            raise DicomError(
                f"{path}: could not be preprocessed ({exc})",
                public="the image could not be preprocessed (details in the site's log)",
                lasting=True,  # preprocessing is deterministic, and its version and settings key the cache
            ) from exc
