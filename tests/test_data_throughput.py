"""Smoke test of the data_throughput benchmark: it measures a tiny site end to end and its figures are sane."""

from __future__ import annotations

from pathlib import Path

from common.data import ImagePipeline
from simulations.benchmarks.data_throughput import measure_site
from tests.test_site_data import SIZE, make_site


def test_measure_site_reports_cold_warm_and_batch_figures(tmp_path: Path) -> None:
    manifest = make_site(tmp_path / "site", num_patients=3)
    (tmp_path / "site" / "images" / "anon01_L.dcm").write_text("not a dicom")

    figures = measure_site(manifest, ImagePipeline(SIZE), tmp_path / "cache", workers=1, batch_size=4)

    assert (figures["images"], figures["usable"], figures["bad"]) == (6, 5, 1)
    assert figures["cold_s"] > 0 and figures["warm_s"] > 0 and 0 < figures["batch_s"] < 1
    assert figures["cache_bytes"] >= 5 * SIZE * SIZE * 2
