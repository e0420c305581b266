"""One image's way from a file to the model's input: read, check, preprocess; and the settings that key the cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import DataConfig
from common.dicom_io import read_mammogram
from common.preprocess import preprocess, preprocess_settings

__all__ = ["ImagePipeline"]


@dataclass(frozen=True)
class ImagePipeline:
    """Everything that decides a preprocessed image's pixels, so the cache can key on it and sites agree on it.

    ``laterality`` given to :meth:`load` (from the manifest) wins over the file's header, because a
    hospital's manifest is where a wrong header gets corrected.
    """

    image_size: int
    require_mg: bool = True

    @classmethod
    def from_config(cls, data: DataConfig, *, require_mg: bool = True) -> ImagePipeline:
        """The pipeline a run's ``data`` section describes."""
        return cls(image_size=data.image_size, require_mg=require_mg)

    def settings(self) -> dict[str, object]:
        """JSON-serialisable description of the output: any change must change every cache key."""
        return {**preprocess_settings(self.image_size), "require_mg": self.require_mg}

    def load(self, path: str | Path, laterality: str = "") -> np.ndarray:
        """The ``image_size`` x ``image_size`` float32 image in [0, 1] for ``path``.

        Raises
        ------
        DicomError
            If the file cannot be used (the message names the file and the reason).
        """
        mammogram = read_mammogram(path, require_mg=self.require_mg)
        return preprocess(mammogram.pixels, laterality or mammogram.laterality, size=self.image_size)
