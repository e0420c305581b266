"""Tests for common.metrics.calibration: reliability bins, Brier and ECE, exact and from score histograms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import MetricRecord

from common.metrics import (
    Calibration,
    ScoreHistogram,
    calibration_from_histogram,
    calibration_from_scores,
    score_bin_edges,
)


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Overconfident model: it reports sigmoid(2 * logit) of the true malignancy probability."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-0.5, 1.5, n)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return labels, 1.0 / (1.0 + np.exp(-2.0 * logit))


def test_brier_and_ece_match_hand_computed_values() -> None:
    # Prepare: bin [0, 0.5) holds 0.1 and 0.3 (mean 0.2, no positive); bin [0.5, 1] holds 0.6 and 0.9 (mean 0.75).
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.3, 0.6, 0.9])

    # Execute
    result = calibration_from_scores(labels, scores, bins=2)

    # Assert: Brier = (0.01 + 0.09 + 0.16 + 0.01) / 4; ECE = 0.5 * |0 - 0.2| + 0.5 * |1 - 0.75|.
    assert result.brier == pytest.approx(0.0675)
    assert result.ece == pytest.approx(0.225)
    assert [b.count for b in result.bins] == [2, 2]
    assert [b.mean_predicted for b in result.bins] == pytest.approx([0.2, 0.75])
    assert [b.observed for b in result.bins] == pytest.approx([0.0, 1.0])
    assert (result.bins[1].lower, result.bins[1].upper) == (0.5, 1.0)
    assert result.num_examples == 4 and result.exact


def test_bin_edges_are_half_open_and_one_goes_in_the_last_bin() -> None:
    # Prepare
    scores = np.array([0.0, 0.1, 0.3, 0.5, 0.99, 1.0])

    # Execute
    result = calibration_from_scores(np.zeros(6, dtype=int), scores, bins=10)

    # Assert
    assert [b.count for b in result.bins] == [1, 1, 0, 1, 0, 1, 0, 0, 0, 2]
    assert result.bins[3].lower == 0.3


def test_perfect_calibration_gives_zero_ece() -> None:
    # Prepare: 10 images scored 0.3 of which 3 are malignant, 10 scored 0.8 of which 8 are.
    scores = np.array([0.3] * 10 + [0.8] * 10)
    labels = np.array([1] * 3 + [0] * 7 + [1] * 8 + [0] * 2)

    # Execute
    result = calibration_from_scores(labels, scores)

    # Assert
    assert result.ece == pytest.approx(0.0, abs=1e-12)
    assert result.brier == pytest.approx((0.3 * 0.7 * 10 + 0.8 * 0.2 * 10) / 20)


def test_single_class_has_a_brier_score_and_empty_input_is_nan() -> None:
    # Execute
    single = calibration_from_scores(np.array([1, 1]), np.array([0.2, 0.9]))
    empty = calibration_from_scores(np.array([], dtype=int), np.array([]))
    empty_histogram = calibration_from_histogram(ScoreHistogram.from_scores(np.array([], dtype=int), np.array([])))

    # Assert
    assert single.brier == pytest.approx((0.64 + 0.01) / 2)
    assert math.isfinite(single.ece)
    for result in (empty, empty_histogram):
        assert math.isnan(result.brier) and math.isnan(result.ece)
        assert result.num_examples == 0
        assert all(b.count == 0 and math.isnan(b.mean_predicted) and math.isnan(b.observed) for b in result.bins)


@pytest.mark.parametrize(
    ("scores", "bins", "match"),
    [(np.array([0.2, 1.5]), 10, r"probabilities in \[0, 1\]"), (np.array([0.2, 0.5]), 0, "at least 1 bin")],
)
def test_malformed_input_raises(scores: np.ndarray, bins: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        calibration_from_scores(np.array([0, 1]), scores, bins=bins)


def test_histogram_calibration_is_within_the_binning_error_of_the_exact_one() -> None:
    # Prepare
    labels, scores = _miscalibrated(5000, seed=3)

    # Execute
    exact = calibration_from_scores(labels, scores)
    binned = calibration_from_histogram(ScoreHistogram.from_scores(labels, scores))

    # Assert: the model is visibly miscalibrated, and the binned figures agree with the exact ones.
    assert exact.ece > 0.05
    assert not binned.exact and binned.num_examples == exact.num_examples == 5000
    assert abs(binned.brier - exact.brier) < 0.01
    assert abs(binned.ece - exact.ece) < 0.03
    for b, e in zip(binned.bins, exact.bins, strict=True):
        if b.count:
            assert abs(b.mean_predicted - e.mean_predicted) < 0.015


def test_histogram_reliability_counts_equal_exact_ones_away_from_straddling_fine_bins() -> None:
    # Prepare: drop the scores of fine bins that contain a coarse edge (0.1, 0.2, ...) in their interior;
    # those alone may land on the other side of the edge in the binned version.
    labels, scores = _miscalibrated(5000, seed=4)
    fine = score_bin_edges()
    index = np.clip(np.searchsorted(fine, scores, side="right") - 1, 0, fine.size - 2)
    coarse = np.arange(1, 10) / 10
    straddles = ((fine[:-1, None] < coarse) & (coarse < fine[1:, None])).any(axis=1)
    keep = ~straddles[index]

    # Execute
    exact = calibration_from_scores(labels[keep], scores[keep])
    binned = calibration_from_histogram(ScoreHistogram.from_scores(labels[keep], scores[keep]))

    # Assert
    assert keep.sum() > 4000
    assert [b.count for b in binned.bins] == [b.count for b in exact.bins]
    assert [b.observed for b in binned.bins] == pytest.approx([b.observed for b in exact.bins], nan_ok=True)


def test_dict_round_trip_is_json_safe() -> None:
    # Prepare: an empty bin makes NaN entries.
    original = calibration_from_scores(np.array([0, 1, 1]), np.array([0.05, 0.55, 0.95]))

    # Execute
    text = json.dumps(original.to_dict(), allow_nan=False)
    restored = Calibration.from_dict(json.loads(text))

    # Assert
    assert restored.to_dict() == original.to_dict()
    assert restored.to_dict()["bins"][3]["mean_predicted"] is None
    assert math.isnan(restored.bins[3].observed)


def test_flat_round_trip_fits_a_metric_record() -> None:
    # Prepare
    labels, scores = _miscalibrated(300, seed=5)
    original = calibration_from_histogram(ScoreHistogram.from_scores(labels, scores), bins=5)

    # Execute
    record = MetricRecord(original.to_flat("calibration/"))
    restored = Calibration.from_flat("calibration/", dict(record))

    # Assert
    assert "calibration/brier" in record and len(record["calibration/bin_count"]) == 5
    assert restored.to_dict() == original.to_dict()


def test_from_flat_reports_a_missing_entry() -> None:
    flat = calibration_from_scores(np.array([0, 1]), np.array([0.2, 0.7])).to_flat("c/")
    del flat["c/ece"]

    with pytest.raises(ValueError, match="lacks its entry 'c/ece'"):
        Calibration.from_flat("c/", flat)
