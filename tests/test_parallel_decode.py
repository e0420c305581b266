"""Tests of common.data.parallel_decode: every row decoded or given a reason, callbacks, and the progress bar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.data import DecodedImage, ImagePipeline, decode_rows, read_manifest
from common.errors import DicomError
from tests.test_site_data import SIZE, make_site


@pytest.mark.parametrize("progress", [False, True])
def test_rows_decode_to_uint16_or_a_reason(tmp_path: Path, progress: bool) -> None:
    # Prepare
    rows = read_manifest(make_site(tmp_path, num_patients=2))
    (tmp_path / "images" / "anon01_L.dcm").write_text("not a dicom")
    seen: list[int] = []
    # Execute
    pipeline = ImagePipeline(SIZE)
    results = decode_rows(rows, pipeline, workers=2, progress=progress, on_result=lambda n, _r: seen.append(n))
    # Assert
    assert sorted(results) == sorted(seen) == [2, 3, 4, 5]
    assert isinstance(results[4], DicomError) and "is not a DICOM file" in str(results[4])
    good = results[2]
    assert isinstance(good, DecodedImage)
    assert isinstance(good.pixels, np.ndarray) and good.pixels.dtype == np.uint16 and good.pixels.shape == (SIZE, SIZE)
    assert good.geometry.preprocess.size == SIZE and good.geometry.source_shape == (64, 48)  # the file's own shape


def test_no_rows_no_work() -> None:
    assert decode_rows([], ImagePipeline(SIZE)) == {}


def test_without_keep_images_only_reasons_come_back(tmp_path: Path) -> None:
    # Prepare: a callback that stores the images away (as the site cache does)
    rows = read_manifest(make_site(tmp_path, num_patients=2))
    (tmp_path / "images" / "anon01_L.dcm").write_text("not a dicom")
    stored: dict[int, DecodedImage | DicomError] = {}
    # Execute
    results = decode_rows(rows, ImagePipeline(SIZE), workers=2, on_result=stored.__setitem__, keep_images=False)
    # Assert: the caller got every image through the callback; the result holds only the bad file's reason
    assert list(results) == [4] and "is not a DICOM file" in str(results[4])
    assert sorted(stored) == [2, 3, 4, 5] and all(isinstance(stored[n], DecodedImage) for n in (2, 3, 5))
