"""Tests of the preprocess_quality benchmark's figures: they see damage where there is some, and none otherwise."""

from __future__ import annotations

import numpy as np
import pytest

import common.data.preprocessing as preprocessing
from common.data import BreastSegmentation
from simulations.benchmarks.preprocess_quality import main, measure_image, summarise
from tests.test_breast_mask import breast_outline, fatty_breast


def test_a_clean_preprocessing_scores_zero() -> None:
    quality = measure_image("fatty", fatty_breast(), "L", 128)
    assert quality.holes == quality.blanked == quality.zeroed == 0.0 and quality.outside < 1e-3


def test_holes_and_a_short_crop_are_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a segmentation that punches a hole into the breast and crops off its lower quarter
    breast = breast_outline()
    damaged = breast.copy()
    damaged[100:120, 20:40] = False

    def damaging(image: np.ndarray, *, chest_wall_left: bool = True) -> BreastSegmentation:
        return BreastSegmentation(damaged, (0, 180, 0, image.shape[1]), 0.1)

    monkeypatch.setattr(preprocessing, "segment_breast", damaging)
    # Execute
    quality = measure_image("damaged", fatty_breast(), "L", 128)
    # Assert: the 400-pixel hole is about 2.5% of the breast; rows 180+ hold about 11% of it
    assert 0.01 < quality.holes == quality.blanked < 0.05
    expected_outside = breast[180:].sum() / breast.sum()
    assert quality.outside == pytest.approx(expected_outside, abs=0.01)


def test_summary_and_command_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_site_data import make_site

    manifest = make_site(tmp_path / "site", num_patients=2)
    out = tmp_path / "q.json"
    assert (
        main(["--manifest", str(manifest), "--phantoms", "0", "--no-shared", "--image-size", "64", "--json", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "manifest manifest.csv: 4 images" in printed and "blanked" in printed and out.is_file()
    summary = summarise([])
    assert summary["images"] == 0
