"""Smoke test of the phantom_realism benchmark: trivial features and their folded AUCs, end to end on tiny sites."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data import write_manifest
from simulations.benchmarks.phantom_realism import FEATURES, feature_aucs, main, trivial_features


def bright_breast_site(root: Path, num_images: int = 12) -> Path:
    """PNG half-ellipse breasts, every other one twice as bright (label 1), plus one unreadable file (label 0)."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:64, 0:48]
    breast = ((rows - 32) / 29) ** 2 + (cols / 38) ** 2 <= 1.0
    (root / "images").mkdir(parents=True)
    entries = []
    for index in range(num_images):
        label = index % 2
        level = 180 if label else 90
        pixels = np.where(breast, level + rng.integers(0, 20, size=breast.shape), 0).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"img{index:02d}.png")
        entries.append({"image_path": f"images/img{index:02d}.png", "label": label, "patient_id": f"p{index}"})
    (root / "images" / "broken.png").write_text("not an image")
    entries.append({"image_path": "images/broken.png", "label": 0, "patient_id": "p99", "laterality": "L"})
    return write_manifest(root / "manifest.csv", [{"laterality": "L", **entry} for entry in entries])


def test_trivial_features_of_whole_image_and_breast() -> None:
    image = np.zeros((10, 10), dtype=np.float32)
    image[:, :5] = 0.5
    features = dict(zip(FEATURES, trivial_features(image), strict=True))
    assert features["mean"] == pytest.approx(0.25) and features["max"] == pytest.approx(0.5)
    assert features["breast mean"] == pytest.approx(0.5) and features["breast std"] == pytest.approx(0.0)
    assert trivial_features(np.zeros((4, 4)))[4:].tolist() == [0.0] * 4  # no breast: zeros, not NaN


def test_separating_feature_scores_one_inverted_too_and_random_near_half() -> None:
    # Prepare: column 0 separates, column 1 separates inverted, the rest are noise
    rng = np.random.default_rng(1)
    positive = np.arange(400) % 2 == 1
    features = rng.random((400, len(FEATURES)))
    features[:, 0] = positive + rng.random(400) * 0.5
    features[:, 1] = -features[:, 0]
    # Execute
    aucs = feature_aucs(features, positive, resamples=200)
    # Assert
    assert aucs["mean"]["auc"] == 1.0 and not aucs["mean"]["inverted"] and aucs["mean"]["ci"] == [1.0, 1.0]
    assert aucs["std"]["auc"] == 1.0 and aucs["std"]["inverted"] and aucs["std"]["raw_auc"] == 0.0
    assert all(0.5 <= aucs[name]["auc"] < 0.6 for name in FEATURES[2:])
    assert np.isnan(feature_aucs(features, np.zeros(400, dtype=bool))["max"]["auc"])


def test_command_line_on_a_phantom_site_and_a_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = bright_breast_site(tmp_path / "site")
    out = tmp_path / "realism.json"
    argv = ["federation.num_sites=1", "--phantom-images", "8", "--no-shared", "--manifest", str(manifest)]
    assert main([*argv, "--image-size", "32", "--resamples", "50", "--json", str(out)]) == 0

    printed = capsys.readouterr().out
    assert "phantom site_0: malignant vs rest" in printed and "manifest manifest.csv: label 1 vs rest" in printed
    results = json.loads(out.read_text())["results"]
    phantom, site = results
    assert phantom["phantom"] and phantom["n"] == 8 and phantom["image_size"] == 32
    assert (site["n"], site["positives"], site["skipped"]) == (12, 6, 1)
    assert site["features"]["breast mean"]["auc"] == 1.0
