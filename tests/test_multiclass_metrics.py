"""Tests of common.metrics.multiclass: one-vs-rest AUC per class, macro AUC, confusion matrix, pooling, wire form."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from common import wire
from common.metrics import NUM_SCORE_BINS, ClassEvaluation, class_key, confusion_counts, histogram_auc, macro_auc

BIN_TOLERANCE = 0.01
"""A binned AUC differs from the exact one only through pairs sharing a bin (bins are ~0.1 logit wide)."""


def _site(seed: int, n: int = 300, k: int = 3, signal: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Labels 0..k-1 and softmax probabilities where the true class gets a logit boost of ``signal``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += signal
    probs = np.exp(logits)
    return labels, probs / probs.sum(axis=1, keepdims=True)


def test_per_class_auc_is_sklearns_one_vs_rest_and_histograms_agree_within_bin_width() -> None:
    labels, probs = _site(0)
    expected = roc_auc_score(labels, probs, multi_class="ovr", average=None)

    evaluation = ClassEvaluation.from_predictions(labels, probs, bootstrap=100)
    binned = ClassEvaluation.from_histograms(evaluation.histograms, evaluation.confusion, bootstrap=100)

    for c in range(3):
        assert evaluation.metrics[class_key("auc", c)] == pytest.approx(expected[c], abs=1e-12)
        assert binned.metrics[class_key("auc", c)] == pytest.approx(expected[c], abs=BIN_TOLERANCE)
        low, high = evaluation.metrics[class_key("auc_ci_low", c)], evaluation.metrics[class_key("auc_ci_high", c)]
        assert low < expected[c] < high
        assert evaluation.metrics[class_key("num_cases", c)] == int((labels == c).sum())
        assert evaluation.histograms[c].num_positives + evaluation.histograms[c].num_negatives == labels.size


def test_macro_auc_is_sklearns_macro_average() -> None:
    labels, probs = _site(1)

    evaluation = ClassEvaluation.from_predictions(labels, probs, bootstrap=0)

    assert evaluation.metrics["macro_auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    assert math.isnan(evaluation.metrics[class_key("auc_ci_low", 0)])  # bootstrap=0 skips the CI
    assert math.isnan(macro_auc([0.8, float("nan"), 0.7])) and math.isnan(macro_auc([]))
    assert macro_auc([0.8, 0.6]) == pytest.approx(0.7)


def test_confusion_matrix_is_argmax_counts_with_rows_the_true_class() -> None:
    labels, probs = _site(2)

    counts = confusion_counts(labels, probs)

    np.testing.assert_array_equal(counts, confusion_matrix(labels, probs.argmax(axis=1), labels=[0, 1, 2]))
    assert counts.sum() == labels.size and counts.dtype == np.int64


def test_pooling_sums_histograms_and_confusion_matrices() -> None:
    (la, pa), (lb, pb) = _site(3, n=120), _site(4, n=200)
    a = ClassEvaluation.from_predictions(la, pa, bootstrap=0)
    b = ClassEvaluation.from_predictions(lb, pb, bootstrap=0)
    labels, probs = np.concatenate([la, lb]), np.concatenate([pa, pb])

    pooled = ClassEvaluation.pooled([a, b], bootstrap=100)

    np.testing.assert_array_equal(pooled.confusion, a.confusion + b.confusion)
    whole = ClassEvaluation.from_predictions(labels, probs, bootstrap=0)
    expected = roc_auc_score(labels, probs, multi_class="ovr", average=None)
    for c in range(3):
        assert pooled.histograms[c] == whole.histograms[c]  # summing sites = binning all images together
        assert pooled.metrics[class_key("auc", c)] == pytest.approx(histogram_auc(whole.histograms[c]))
        assert pooled.metrics[class_key("auc", c)] == pytest.approx(expected[c], abs=BIN_TOLERANCE)
    assert pooled.metrics["macro_auc"] == pytest.approx(np.mean(expected), abs=BIN_TOLERANCE)


def test_a_class_absent_from_the_test_set_gives_nan_not_an_exception() -> None:
    labels, probs = _site(5, n=60)
    labels[labels == 1] = 0

    evaluation = ClassEvaluation.from_predictions(labels, probs, bootstrap=50)

    assert math.isnan(evaluation.metrics[class_key("auc", 1)]) and evaluation.metrics[class_key("num_cases", 1)] == 0
    assert math.isfinite(evaluation.metrics[class_key("auc", 2)])
    assert math.isnan(evaluation.metrics["macro_auc"])


def test_flat_record_form_round_trips_and_holds_only_scalars_and_fixed_size_counts() -> None:
    labels, probs = _site(6, n=50)
    evaluation = ClassEvaluation.from_predictions(labels, probs, bootstrap=20)

    flat = evaluation.to_flat()
    back = ClassEvaluation.from_flat(flat)

    assert flat[wire.NUM_CLASSES] == 3 and len(flat[wire.CONFUSION_MATRIX]) == 9
    for key, value in flat.items():
        if isinstance(value, list):
            assert len(value) in (NUM_SCORE_BINS, 9), key  # never one entry per image
            assert all(isinstance(v, int) for v in value), key
        else:
            assert isinstance(value, (int, float)), key
    assert back is not None and back.metrics == evaluation.metrics
    assert back.histograms == evaluation.histograms
    np.testing.assert_array_equal(back.confusion, evaluation.confusion)
    assert ClassEvaluation.from_flat({wire.NUM_EXAMPLES: 3}) is None  # a binary reply


def test_malformed_inputs_are_refused_with_the_rule() -> None:
    labels, probs = _site(7, n=20)
    flat = ClassEvaluation.from_predictions(labels, probs, bootstrap=0).to_flat()
    flat[wire.CONFUSION_MATRIX] = [1, 2, 3]
    other = ClassEvaluation.from_predictions(*_site(8, n=20, k=4), bootstrap=0)

    with pytest.raises(ValueError, match=r"class indices in \[0, 3\) for 3 classes, got \[3\]"):
        ClassEvaluation.from_predictions(np.array([0, 3]), probs[:2])
    with pytest.raises(ValueError, match="3 classes need 9"):
        ClassEvaluation.from_flat(flat)
    with pytest.raises(ValueError, match="different numbers of classes"):
        ClassEvaluation.pooled([ClassEvaluation.from_predictions(labels, probs, bootstrap=0), other])


def test_pooling_a_site_that_lacks_a_class_matches_the_pooled_images() -> None:
    # Prepare: site A has no benign image (its benign AUC is NaN), site B has all three classes
    labels_a, probs_a = _site(5, n=200)
    keep = labels_a != 1
    labels_a, probs_a = labels_a[keep], probs_a[keep]
    labels_b, probs_b = _site(6, n=150)
    site_a = ClassEvaluation.from_predictions(labels_a, probs_a, bootstrap=50)
    site_b = ClassEvaluation.from_predictions(labels_b, probs_b, bootstrap=50)
    all_labels, all_probs = np.concatenate([labels_a, labels_b]), np.concatenate([probs_a, probs_b])
    # Execute
    pooled = ClassEvaluation.pooled([site_a, site_b], bootstrap=50)
    # Assert: the site's gap does not leak into the pool; pooled results are those of all images together
    assert math.isnan(site_a.metrics[class_key("auc", 1)]) and math.isnan(site_a.metrics["macro_auc"])
    expected = roc_auc_score(all_labels, all_probs, multi_class="ovr", average=None)
    for c in range(3):
        assert pooled.metrics[class_key("auc", c)] == pytest.approx(expected[c], abs=BIN_TOLERANCE)
        assert pooled.metrics[class_key("num_cases", c)] == int((all_labels == c).sum())
    np.testing.assert_array_equal(pooled.confusion, confusion_matrix(all_labels, all_probs.argmax(axis=1)))
    assert pooled.metrics["macro_auc"] == pytest.approx(float(np.mean(expected)), abs=BIN_TOLERANCE)
