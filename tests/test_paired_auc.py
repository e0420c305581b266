"""Tests for common.metrics.paired: AUC difference of two models on the same images, bootstrap and DeLong CIs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from common.metrics import delong_auc_difference, paired_auc_difference


def _two_models(n: int, seed: int, noise_a: float = 0.5, noise_b: float = 1.0) -> tuple[np.ndarray, ...]:
    """Two models sharing most of their score (highly correlated), b noisier than a."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    shared = rng.normal(labels * 1.0, 1.0)
    return labels, shared + rng.normal(0, noise_a, n), shared + rng.normal(0, noise_b, n)


def _unpaired_ci(labels: np.ndarray, a: np.ndarray, b: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """CI of the difference that (wrongly) resamples the two models' images independently."""
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(resamples):
        i, j = rng.integers(0, labels.size, (2, labels.size))
        if 0 < labels[i].sum() < labels.size and 0 < labels[j].sum() < labels.size:
            differences.append(roc_auc_score(labels[i], a[i]) - roc_auc_score(labels[j], b[j]))
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


def test_difference_equals_the_difference_of_sklearn_aucs() -> None:
    # Prepare: probabilities rounded to 2 decimals, so there are ties.
    labels, a, b = _two_models(500, seed=1)
    a = np.round(1.0 / (1.0 + np.exp(-a)), 2)

    # Execute
    bootstrap = paired_auc_difference(labels, a, b, resamples=200)
    delong = delong_auc_difference(labels, a, b)

    # Assert
    expected = roc_auc_score(labels, a) - roc_auc_score(labels, b)
    assert bootstrap.difference == pytest.approx(expected, abs=1e-12)
    assert delong.difference == pytest.approx(expected, abs=1e-12)
    assert (bootstrap.method, delong.method, bootstrap.num_examples) == ("paired bootstrap", "DeLong", 500)


def test_paired_ci_contains_the_difference_and_is_narrower_than_unpaired() -> None:
    # Prepare
    labels, a, b = _two_models(300, seed=2, noise_a=0.2, noise_b=0.4)

    # Execute
    paired = paired_auc_difference(labels, a, b, resamples=300, seed=0)
    unpaired_low, unpaired_high = _unpaired_ci(labels, a, b, resamples=300, seed=0)

    # Assert
    assert paired.ci_low < paired.difference < paired.ci_high
    assert paired.ci_high - paired.ci_low < 0.6 * (unpaired_high - unpaired_low)


def test_identical_scores_give_zero_difference_and_zero_width_ci() -> None:
    # Prepare
    labels, a, _ = _two_models(200, seed=3)

    # Execute
    bootstrap = paired_auc_difference(labels, a, a.copy(), resamples=100)
    delong = delong_auc_difference(labels, a, a.copy())

    # Assert
    assert (bootstrap.difference, bootstrap.ci_low, bootstrap.ci_high) == (0.0, 0.0, 0.0)
    assert (delong.difference, delong.ci_low, delong.ci_high) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("labels", "a", "b"),
    [([1, 1, 1], [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]), ([1], [0.7], [0.2]), ([], [], [])],
    ids=["single-class", "one-image", "empty"],
)
def test_undefined_difference_is_nan(labels: list[int], a: list[float], b: list[float]) -> None:
    # Execute
    results = [paired_auc_difference(np.array(labels, dtype=int), a, b), delong_auc_difference(labels, a, b)]

    # Assert
    for result in results:
        assert math.isnan(result.difference) and math.isnan(result.ci_low) and math.isnan(result.ci_high)
        assert result.num_examples == len(labels)
        assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["difference"] is None


def test_no_resamples_gives_a_difference_without_ci() -> None:
    labels, a, b = _two_models(50, seed=4)

    result = paired_auc_difference(labels, a, b, resamples=0)

    assert math.isfinite(result.difference)
    assert math.isnan(result.ci_low) and math.isnan(result.ci_high)


def test_delong_ci_is_close_to_the_bootstrap_ci() -> None:
    # Prepare
    labels, a, b = _two_models(400, seed=5)

    # Execute
    bootstrap = paired_auc_difference(labels, a, b, resamples=1000, seed=1)
    delong = delong_auc_difference(labels, a, b)

    # Assert
    assert delong.ci_low < delong.difference < delong.ci_high
    assert delong.ci_low == pytest.approx(bootstrap.ci_low, abs=0.015)
    assert delong.ci_high == pytest.approx(bootstrap.ci_high, abs=0.015)


def test_delong_variance_matches_the_pairwise_kernel_definition() -> None:
    # Prepare: tiny tied example; the reference builds DeLong's psi kernel over every (positive, negative) pair.
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    a = np.array([0.1, 0.4, 0.4, 0.4, 0.8, 0.9, 0.3, 0.2])
    b = np.array([0.2, 0.2, 0.5, 0.6, 0.2, 0.7, 0.6, 0.1])

    # Execute
    result = delong_auc_difference(labels, a, b)

    # Assert
    placements = []
    for s in (a, b):
        pos, neg = s[labels == 1], s[labels == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        placements.append((psi.mean(axis=1), psi.mean(axis=0)))
    s10 = np.cov([placements[0][0], placements[1][0]])
    s01 = np.cov([placements[0][1], placements[1][1]])
    contrast = np.array([1.0, -1.0])
    variance = contrast @ s10 @ contrast / 4 + contrast @ s01 @ contrast / 4
    assert result.ci_high - result.ci_low == pytest.approx(2 * 1.959964 * math.sqrt(variance), rel=1e-5)


def test_bootstrap_is_reproducible_with_its_seed() -> None:
    labels, a, b = _two_models(120, seed=6)

    first = paired_auc_difference(labels, a, b, resamples=200, seed=7)
    again = paired_auc_difference(labels, a, b, resamples=200, seed=7)
    other = paired_auc_difference(labels, a, b, resamples=200, seed=8)

    assert first == again
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="same length"):
        paired_auc_difference(np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3]), np.array([0.1, 0.2]))
