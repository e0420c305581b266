"""Tests for common.metrics: AUC and threshold metrics, bootstrap CI, score histograms and pooling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from common.metrics import (
    METRIC_KEYS,
    NUM_SCORE_BINS,
    ScoreHistogram,
    binary_metrics,
    bootstrap_auc_ci,
    histogram_auc,
    histogram_metrics,
    histogram_roc,
)


def _noisy_scores(n: int, seed: int, shift: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.clip(rng.normal(0.35 + shift * labels, 0.18), 0.0, 1.0)
    return labels, scores


def test_metric_keys_are_exactly_the_returned_keys() -> None:
    labels, scores = _noisy_scores(60, seed=1)

    result = binary_metrics(labels, scores, bootstrap=50)

    assert tuple(result) == METRIC_KEYS
    assert tuple(histogram_metrics(ScoreHistogram.from_scores(labels, scores), bootstrap=50)) == METRIC_KEYS


@pytest.mark.parametrize(
    ("scores", "expected"),
    [([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], 1.0), ([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], 0.0)],
    ids=["separated", "reversed"],
)
def test_auc_of_separated_and_reversed_data(scores: list[float], expected: float) -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])

    result = binary_metrics(labels, np.array(scores), bootstrap=0)

    assert result["auc"] == expected
    assert histogram_auc(ScoreHistogram.from_scores(labels, np.array(scores))) == expected


def test_auc_of_random_scores_is_near_one_half() -> None:
    rng = np.random.default_rng(3)
    labels, scores = rng.integers(0, 2, 4000), rng.random(4000)

    result = binary_metrics(labels, scores, bootstrap=0)

    assert abs(result["auc"] - 0.5) < 0.03


def test_threshold_metrics_match_a_hand_computed_confusion_matrix() -> None:
    # Prepare: at threshold 0.5 -> TP 3, FN 1, TN 4, FP 2 (scores at exactly 0.5 count as positive).
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.5, 0.2, 0.1, 0.2, 0.3, 0.4, 0.7, 0.5])

    result = binary_metrics(labels, scores, bootstrap=0)

    assert result["sensitivity"] == pytest.approx(3 / 4)
    assert result["specificity"] == pytest.approx(4 / 6)
    assert result["ppv"] == pytest.approx(3 / 5)
    assert result["npv"] == pytest.approx(4 / 5)
    assert result["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert result["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert result["accuracy"] == pytest.approx(7 / 10)
    assert (result["num_positives"], result["num_negatives"]) == (4, 6)


def test_sensitivity_at_specificity_reads_the_roc_curve() -> None:
    # Prepare: 10 negatives 0.0..0.9, positives straddling; spec >= 0.9 allows one false positive at most.
    labels = np.array([0] * 10 + [1] * 4)
    scores = np.concatenate([np.arange(10) / 10, [0.95, 0.85, 0.75, 0.05]])

    result = binary_metrics(labels, scores, target_specificity=0.9, bootstrap=0)

    # Threshold 0.85 -> TP {0.95, 0.85}, FP {0.9}: spec 0.9, sens 0.5; lower thresholds add a 2nd FP.
    assert result["sensitivity_at_specificity"] == pytest.approx(0.5)


def test_bootstrap_ci_contains_the_estimate_and_is_seeded() -> None:
    labels, scores = _noisy_scores(60, seed=5)

    first = binary_metrics(labels, scores, bootstrap=1000, seed=11)
    again = binary_metrics(labels, scores, bootstrap=1000, seed=11)
    other = binary_metrics(labels, scores, bootstrap=1000, seed=12)

    assert first["auc_ci_low"] < first["auc"] < first["auc_ci_high"]
    assert first["auc_ci_high"] - first["auc_ci_low"] < 0.5
    assert (first["auc_ci_low"], first["auc_ci_high"]) == (again["auc_ci_low"], again["auc_ci_high"])
    assert first["auc_ci_low"] != other["auc_ci_low"]


def test_bootstrap_auc_per_resample_agrees_with_sklearn() -> None:
    # Prepare: with a single resample the CI collapses to that resample's AUC; recompute it with sklearn.
    labels, scores = _noisy_scores(40, seed=8)
    scores = np.round(scores, 1)  # ties across classes exercise the 1/2 rule
    picked = np.random.default_rng(4).integers(0, 40, size=(1, 40))[0]

    low, high = bootstrap_auc_ci(labels, scores, resamples=1, seed=4)

    assert low == pytest.approx(roc_auc_score(labels[picked], scores[picked]))
    assert high == pytest.approx(low)


@pytest.mark.parametrize("present", [0, 1], ids=["only-negatives", "only-positives"])
def test_one_class_gives_nan_not_an_exception(present: int) -> None:
    labels = np.full(8, present)
    scores = np.linspace(0.05, 0.95, 8)

    result = binary_metrics(labels, scores)
    hist = histogram_metrics(ScoreHistogram.from_scores(labels, scores))

    for values in (result, hist):
        for key in ("auc", "auc_ci_low", "auc_ci_high", "balanced_accuracy", "sensitivity_at_specificity"):
            assert math.isnan(values[key]), key
    assert math.isnan(result["sensitivity" if present == 0 else "specificity"])
    assert result["accuracy"] == pytest.approx(0.5)


def test_empty_test_set_is_all_nan() -> None:
    result = binary_metrics(np.zeros(0, dtype=int), np.zeros(0))

    assert all(math.isnan(result[k]) for k in METRIC_KEYS if not k.startswith("num_"))
    assert (result["num_positives"], result["num_negatives"]) == (0, 0)


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "labels must be 0"),
        ([0, 1], [0.1, 0.2, 0.3], "same length"),
        ([0, 1], [0.1, float("nan")], "NaN or infinity"),
    ],
)
def test_malformed_input_is_refused(labels: list[int], scores: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        binary_metrics(np.array(labels), np.array(scores))


def test_histogram_auc_matches_sklearn_within_binning_error() -> None:
    labels, scores = _noisy_scores(500, seed=2)

    exact = roc_auc_score(labels, scores)
    fine = histogram_auc(ScoreHistogram.from_scores(labels, scores, bins=1000))
    default = histogram_auc(ScoreHistogram.from_scores(labels, scores))

    assert fine == pytest.approx(exact, abs=2e-3)
    assert default == pytest.approx(exact, abs=1.0 / NUM_SCORE_BINS)


def test_histogram_bins_edges_and_a_score_of_one() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.0, 0.5, 0.999, 1.0])

    hist = ScoreHistogram.from_scores(labels, scores, bins=10)

    # edges: 0, sigmoid(-10, -7.5, ..., 10), 1 -> 0.5 starts bin 5, 0.999 (logit 6.9) is in bin 7
    assert hist.negatives.tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert hist.positives.tolist() == [0] * 7 + [1, 0, 1]
    assert (hist.num_negatives, hist.num_positives, hist.bins) == (2, 2, 10)


def test_histogram_pooling_equals_histogram_of_concatenated_data() -> None:
    labels_a, scores_a = _noisy_scores(50, seed=3)
    labels_b, scores_b = _noisy_scores(70, seed=4, shift=0.1)

    pooled = ScoreHistogram.from_scores(labels_a, scores_a) + ScoreHistogram.from_scores(labels_b, scores_b)
    together = ScoreHistogram.from_scores(np.concatenate([labels_a, labels_b]), np.concatenate([scores_a, scores_b]))

    assert pooled == together
    assert histogram_auc(pooled) == histogram_auc(together)


def test_histogram_pooling_refuses_mismatched_bins() -> None:
    labels, scores = _noisy_scores(20, seed=6)

    with pytest.raises(ValueError, match="200 and 10 bins"):
        _ = ScoreHistogram.from_scores(labels, scores) + ScoreHistogram.from_scores(labels, scores, bins=10)


def test_histogram_lists_round_trip_and_are_read_only() -> None:
    hist = ScoreHistogram.from_scores(*_noisy_scores(30, seed=9))

    lists = hist.to_lists()
    rebuilt = ScoreHistogram.from_lists(lists["negatives"], lists["positives"])

    assert set(lists) == {"negatives", "positives"} and all(isinstance(v, int) for v in lists["negatives"])
    assert rebuilt == hist
    with pytest.raises(ValueError, match="read-only"):
        hist.negatives[0] = 5


def test_histogram_refuses_bad_counts_and_out_of_range_scores() -> None:
    with pytest.raises(ValueError, match="non-negative whole counts"):
        ScoreHistogram.from_lists([1, -1], [0, 0])
    with pytest.raises(ValueError, match="same number of bins"):
        ScoreHistogram.from_lists([1, 1], [0, 0, 0])
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        ScoreHistogram.from_scores(np.array([0, 1]), np.array([-0.2, 0.5]))


def test_histogram_roc_runs_from_origin_to_one_and_matches_the_auc() -> None:
    hist = ScoreHistogram.from_scores(*_noisy_scores(80, seed=10))

    fpr, tpr = histogram_roc(hist)

    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert len(fpr) == hist.bins + 1 and np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(histogram_auc(hist))


def test_histogram_metrics_equal_binary_metrics_at_bin_edge_threshold() -> None:
    labels, scores = _noisy_scores(60, seed=12)

    per_image = binary_metrics(labels, scores, bootstrap=200)
    binned = histogram_metrics(ScoreHistogram.from_scores(labels, scores), bootstrap=200)

    for key in ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy", "num_positives", "num_negatives"):
        assert binned[key] == pytest.approx(per_image[key]), key
    assert binned["auc"] == pytest.approx(per_image["auc"], abs=0.02)
    assert binned["auc_ci_low"] < binned["auc"] < binned["auc_ci_high"]


def test_histogram_keeps_the_ranking_of_confident_scores() -> None:
    """An early or imbalanced model scores everything below 0.01; equal-width bins would tie them all."""
    rng = np.random.default_rng(0)
    labels = np.array([0] * 40 + [1] * 10)
    logits = np.concatenate([rng.normal(-7.0, 0.8, 40), rng.normal(-5.5, 0.8, 10)])
    scores = 1.0 / (1.0 + np.exp(-logits))
    assert scores.max() < 0.05

    binned = histogram_auc(ScoreHistogram.from_scores(labels, scores))

    assert binned == pytest.approx(roc_auc_score(labels, scores), abs=0.02)
    assert binned > 0.8


def test_threshold_at_specificity_allows_exactly_the_target_share_of_false_positives() -> None:
    from common.metrics import threshold_at_specificity

    labels = np.array([0] * 10 + [1] * 3)
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.85, 0.5, 0.99])

    threshold = threshold_at_specificity(labels, scores, 0.9)

    called = scores >= threshold
    assert called[labels == 0].sum() == 1  # 10 negatives at 90% specificity: one false positive allowed
    assert 0.9 < threshold <= 0.95
    assert math.isnan(threshold_at_specificity(np.array([1, 1]), np.array([0.2, 0.9]), 0.9))


def test_pooled_histogram_is_the_sum_and_needs_one_site() -> None:
    from common.metrics import ScoreHistogram

    a = ScoreHistogram.from_scores(np.array([0, 1, 1]), np.array([0.1, 0.8, 0.6]))
    b = ScoreHistogram.from_scores(np.array([0, 0]), np.array([0.3, 0.9]))
    both = ScoreHistogram.from_scores(np.array([0, 1, 1, 0, 0]), np.array([0.1, 0.8, 0.6, 0.3, 0.9]))
    assert ScoreHistogram.pooled([a, b]) == both and ScoreHistogram.pooled((a,)) == a
    with pytest.raises(ValueError, match="at least one site's histogram"):
        ScoreHistogram.pooled([])
