"""Tests of client.task: scoring a site with three classes, and labels the run's model has no class for."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from client.site import resolve_site
from client.task import evaluate_on_site, load_site_data
from common.config import AppConfig, load_config
from common.errors import ManifestError
from common.metrics import class_key
from common.models import build_model


def _config(data_dir: Path, tmp_path: Path, num_classes: int) -> AppConfig:
    return load_config(
        {
            "federation.data_dir": str(data_dir),
            "federation.num_sites": 2,
            "federation.synthetic": False,
            "data.image_size": 32,
            "data.cache_dir": str(tmp_path / "cache"),
            "model.num_classes": num_classes,
            "training.batch_size": 8,
        }
    )


def _weights(num_classes: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=num_classes).state_dict()


def test_a_three_class_site_reports_per_class_results_and_the_last_class_as_headline(
    tiny_three_class_federation: Path, tmp_path: Path
) -> None:
    # Prepare
    config = _config(tiny_three_class_federation, tmp_path, 3)
    site = resolve_site({"partition-id": 0, "num-partitions": 2}, config)
    test_labels = load_site_data(site, config).test.labels.numpy()

    # Execute
    outcome = evaluate_on_site(site, config, _weights(3))

    # Assert: the headline is malignant (class 2) vs the rest; per class, one histogram and count each
    assert outcome.classes is not None and outcome.classes.num_classes == 3
    assert outcome.metrics["num_positives"] == int((test_labels == 2).sum())
    assert outcome.histogram == outcome.classes.histograms[2]  # P(malignant) vs rest, both ways
    for c in range(3):
        assert outcome.classes.metrics[class_key("num_cases", c)] == int((test_labels == c).sum())
        assert outcome.classes.histograms[c].num_positives == int((test_labels == c).sum())
    confusion = outcome.classes.confusion
    assert confusion.shape == (3, 3) and confusion.sum() == outcome.num_examples == test_labels.size
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(test_labels, minlength=3))
    assert math.isfinite(outcome.loss)


def test_a_binary_site_reports_no_per_class_results(tiny_federation: Path, tmp_path: Path) -> None:
    config = _config(tiny_federation, tmp_path, 2)

    outcome = evaluate_on_site(resolve_site({"partition-id": 1}, config), config, _weights(2))

    assert outcome.classes is None and outcome.num_examples > 0


def test_a_label_beyond_model_num_classes_names_the_manifest_lines_and_the_rule(
    tiny_three_class_federation: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(tiny_three_class_federation, tmp_path, 2)  # a three-class manifest in a binary run
    site = resolve_site({"partition-id": 0}, config)

    with (
        caplog.at_level(logging.ERROR, logger="client.task"),
        pytest.raises(
            ManifestError, match=r"manifest .*manifest\.csv has \d+ row\(s\) whose 'label' is not a class"
        ) as err,
    ):
        load_site_data(site, config)

    # the lines and labels (which say which images are malignant) stay in the site's log, out of the reply
    assert "line " not in str(err.value) and "label 2" not in str(err.value)
    assert "line " in caplog.text and "label 2" in caplog.text
    assert "must be class indices in [0, 2) for model.num_classes = 2" in str(err.value)
    assert "4 manifest row(s) have a 'label' that is not a class of this run's model" in err.value.public_reason
    assert "line" not in err.value.public_reason and "manifest.csv" not in err.value.public_reason


@pytest.mark.parametrize("num_classes", [2, 3])
def test_evaluation_never_counts_a_label_outside_the_model_as_benign(tmp_path: Path, num_classes: int) -> None:
    """A label the model has no class for (past the manifest check) stops scoring instead of reading as 'benign'."""
    from client.task import headline_labels

    config = _config(tmp_path, tmp_path, num_classes)

    with pytest.raises(ManifestError, match=r"1 evaluated label\(s\) are not classes"):
        headline_labels(np.array([0, num_classes - 1, num_classes]), config)
    np.testing.assert_array_equal(headline_labels(np.array([0, num_classes - 1]), config), [0, 1])


@pytest.mark.parametrize("setting", ["none", "balanced", "2,1"])
def test_a_site_trains_with_class_weights_from_its_own_training_labels(
    tiny_federation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    # Prepare
    import dataclasses

    import client.task as task
    from common.loss import balanced_class_weights

    base = _config(tiny_federation, tmp_path, 2)
    config = dataclasses.replace(base, training=dataclasses.replace(base.training, class_weights=setting))
    site = resolve_site({"partition-id": 0}, config)
    counts = np.bincount(load_site_data(site, config).train.labels.numpy(), minlength=2).tolist()
    seen: dict[str, object] = {}
    monkeypatch.setattr(task, "train_local", lambda *args, **kwargs: seen.update(kwargs))

    # Execute
    task.train_on_site(site, config, _weights(2), [], server_round=1)

    # Assert: balanced weighs by the site's own training split; an explicit list goes through as given
    expected = {"none": None, "balanced": balanced_class_weights(counts), "2,1": (2.0, 1.0)}[setting]
    assert seen["class_weights"] == expected
    if setting == "balanced":
        assert min(counts) > 0 and len(set(counts)) > 1 and expected[0] != expected[1]


def test_the_operating_threshold_is_a_fixed_score_bin_edge_reaching_the_target(
    tiny_federation: Path, tmp_path: Path
) -> None:
    from client.site import resolve_site
    from client.task import load_site_data, model_with, operating_threshold
    from common.config import load_config
    from common.metrics import score_bin_edges
    from common.models import build_model
    from common.training import evaluate

    config = load_config({"federation.data_dir": str(tiny_federation), "federation.num_sites": 2,
                          "data.image_size": 32, "data.cache_dir": str(tmp_path / "cache")})  # fmt: skip
    site = resolve_site({"partition-id": 0}, config)
    data = load_site_data(site, config)
    torch.manual_seed(3)
    model = model_with(config, build_model("small_cnn", num_classes=2, in_channels=1).state_dict())

    threshold = operating_threshold(model, data, config, "cpu")

    assert threshold in score_bin_edges()  # no validation image's score leaves the site
    val = evaluate(model, data.val, device="cpu")
    negatives = val.scores[np.asarray(val.labels) == 0]
    assert negatives.size and (negatives < threshold).mean() >= config.evaluation.target_specificity
