"""Tests of common.data.image_pipeline: config wiring, cache-key settings, resampling by spacing, intent selection."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from common.config import DataConfig
from common.data import ImagePipeline
from common.errors import ConfigError, DicomError
from tests.test_dicom_io import breast_pixels, write_mg


def with_spacing(path: Path, spacing: list[float] | None) -> Path:
    ds = pydicom.dcmread(path)
    del ds.PixelSpacing
    if spacing is not None:
        ds.PixelSpacing = spacing
    ds.save_as(path)
    return path


def test_from_config_carries_every_data_key() -> None:
    # Execute
    pipeline = ImagePipeline.from_config(
        DataConfig(image_size=32, pixel_spacing_mm=0.1, presentation_intent="for_presentation")
    )
    # Assert
    assert (pipeline.image_size, pipeline.pixel_spacing_mm, pipeline.presentation_intent) == (
        32,
        0.1,
        "for_presentation",
    )


@pytest.mark.parametrize(
    "changed",
    [
        {"image_size": 48},
        {"pixel_spacing_mm": 0.1},
        {"presentation_intent": "for_processing"},
        {"require_mg": False},
    ],
)
def test_every_field_changes_the_settings(changed: dict[str, object]) -> None:
    # Prepare
    base = ImagePipeline(image_size=32)
    # Execute / Assert
    assert ImagePipeline(**{"image_size": 32, **changed}).settings() != base.settings()
    assert base.settings() == ImagePipeline(image_size=32).settings()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("pixel_spacing_mm", -0.1, r"data\.pixel_spacing_mm"),
        ("presentation_intent", "raw", r"data\.presentation_intent"),
    ],
)
def test_bad_data_keys_are_config_errors(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DataConfig(**{key: value})


def test_spacing_resamples_so_resolutions_agree(tmp_path: Path) -> None:
    # Prepare: the same breast at 0.1 mm and at 0.05 mm (twice the pixels, same anatomy)
    coarse = breast_pixels(64, 48)
    fine = np.kron(coarse, np.ones((2, 2), dtype=np.uint16))
    a = with_spacing(write_mg(tmp_path / "coarse.dcm", coarse), [0.1, 0.1])
    b = with_spacing(write_mg(tmp_path / "fine.dcm", fine), [0.05, 0.05])
    pipeline = ImagePipeline(image_size=32, pixel_spacing_mm=0.1)
    # Execute
    out_a, out_b = pipeline.load(a), pipeline.load(b)
    # Assert: the same image up to the one edge pixel that anti-aliased down-sampling smears out (a threshold
    # just above the background counts it as breast, so the crop may differ by a pixel at each side)
    assert out_a.shape == out_b.shape == (32, 32)
    assert float(np.abs(out_a - out_b).mean()) < 0.02


def test_file_without_spacing_is_used_with_a_note(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare
    path = with_spacing(write_mg(tmp_path / "nospacing.dcm", breast_pixels()), None)
    Image.fromarray((breast_pixels() // 16).astype(np.uint8)).save(tmp_path / "plain.png")
    pipeline = ImagePipeline(image_size=32, pixel_spacing_mm=0.1)
    # Execute
    with caplog.at_level(logging.INFO, logger="fedmammo.site_files"):  # it names the file: the site's own log
        out = pipeline.load(path)
        pipeline.load(tmp_path / "plain.png")
    # Assert: same image as with resampling off, and one note per file
    np.testing.assert_array_equal(out, ImagePipeline(image_size=32).load(path))
    assert sum("no pixel spacing" in record.getMessage() for record in caplog.records) == 2


def test_wrong_intent_is_skipped_with_a_reason(tmp_path: Path) -> None:
    # Prepare: a FOR PRESENTATION file and a site that only uses FOR PROCESSING
    path = write_mg(tmp_path / "pres.dcm", breast_pixels())
    # Execute / Assert
    with pytest.raises(DicomError, match=r"pres\.dcm: \(0008,0068\) .*skipped"):
        ImagePipeline(image_size=32, presentation_intent="for_processing").load(path)
    assert ImagePipeline(image_size=32, presentation_intent="for_presentation").load(path).shape == (32, 32)


def test_header_laterality_is_used_and_manifest_laterality_wins(tmp_path: Path) -> None:
    # Prepare: the same breast stored as a right (mirrored) and a left image, each header saying so
    right = write_mg(tmp_path / "r.dcm", breast_pixels(side="R"), laterality="R")
    left = write_mg(tmp_path / "l.dcm", breast_pixels(side="L"), laterality="L")
    pipeline = ImagePipeline(image_size=32)
    # Execute
    from_header, from_left, manifest_says_left = pipeline.load(right), pipeline.load(left), pipeline.load(right, "L")
    # Assert: the header's R flips the image onto the left image; the manifest's "L" overrides the header
    np.testing.assert_array_equal(from_header, from_left)
    assert not np.array_equal(manifest_says_left, from_header)
