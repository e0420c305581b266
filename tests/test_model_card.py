"""The model card beside global_model.pt and each study model: fields, hash check, Markdown, reuse, report link."""

from __future__ import annotations

import hashlib
import json
import math
from fnmatch import fnmatchcase
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from client.client_app import app
from client.site import resolve_site
from client.site_counts import summary_count_metrics
from client.task import load_site_data
from common import wire
from common.config import AppConfig, load_config
from common.errors import ModelError
from common.models import build_model, card_path, check_weights_card, read_card
from deploy.policy import DEFAULT_ALLOWED_METRICS
from server.model_arrays import initial_arrays
from server.model_card import LIBRARIES, federation_card_fields, markdown_path, write_model_card
from server.pooling import pool_evaluate_metrics
from server.report import RunDirectory, build_report
from server.study.arm_cards import arm_card_fields, write_arm_card
from server.study.arms import ArmResult, StudyArm
from server.summary import build_summary
from tests.test_client_app import _config as client_config
from tests.test_client_app import _context, _message

CARD_KEYS = {"format", "format_version", "kind", "created", "model", "data", "config", "training", "sites", "pooled",
             "privacy", "intended_use", "limitations", "libraries", "weights"}  # fmt: skip
PATIENT = "S0-P0001"
"""A patient id as the tiny phantom site's manifest holds it: it must not leave the site."""

SITE_DATA = {
    "site-0": {"train": {"images": 40, "patients": 10, "labels": {"0": 30, "1": 10}},
               "val": {"images": 8, "patients": 2, "labels": {"0": 8}},
               "test": {"images": 16, "patients": 4, "labels": {"0": 12, "1": 4}}, "skipped": 1, "duplicates": 0},
    "site-1": {"train": {"images": 120, "patients": 30, "labels": {"0": 100, "1": 20}},
               "val": {"images": 24, "patients": 6, "labels": {"0": 20, "1": 4}},
               "test": {"images": 48, "patients": 12, "labels": {"0": 40, "1": 8}}, "skipped": 0, "duplicates": 0},
}  # fmt: skip
"""Two sites' `SiteData.summary()` as their clients would compute it."""


def _config(tmp_path: Path, **overrides: Any) -> AppConfig:
    values = {
        "federation.data_dir": str(tmp_path / "hospital_data"),
        "federation.num_sites": 2,
        "data.image_size": 32,
        "model.name": "small_cnn",
        "strategy.num_rounds": 2,
        "privacy.mode": "local",
        "privacy.noise_multiplier": 1.0,
    }
    return load_config(values | overrides)


def _evaluate_row(site: str, round_: int, auc: float, low: float, high: float) -> dict[str, Any]:
    test = SITE_DATA[site]["test"]
    positives = test["labels"].get("1", 0)
    return {
        "round": round_, "phase": "evaluate", "site": site, "num_examples": test["images"], "loss": 0.5,
        "auc": auc, "auc_ci_low": low, "auc_ci_high": high, "sensitivity": 0.75, "specificity": 0.8, "ppv": 0.5,
        "npv": 0.9, "threshold": 0.42, "num_positives": positives, "num_negatives": test["images"] - positives,
        **summary_count_metrics(SITE_DATA[site], 2),
    }  # fmt: skip


def _rows(*, declined: bool = True) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for round_ in (1, 2):
        for site, eps in (("site-0", 0.8 * round_), ("site-1", 0.5 * round_)):
            if declined and site == "site-0" and round_ == 2:
                rows.append({"round": 2, "phase": "train", "site": site, "declined": True, "epsilon": 0.8,
                             "error": "site-0: PrivacyBudgetExceeded: the site's ceiling is reached"})  # fmt: skip
                continue
            rows.append({"round": round_, "phase": "train", "site": site, "num_examples": 40, "train_loss": 0.6,
                         "epsilon": eps, "noise_multiplier": 1.0})  # fmt: skip
        rows.append(_evaluate_row("site-0", round_, 0.7, 0.45, 0.92))
        rows.append(_evaluate_row("site-1", round_, 0.8, 0.72, 0.87))
        rows.append({"round": round_, "phase": "evaluate", "site": "pooled", "num_examples": 64, "auc": 0.78,
                     "auc_ci_low": 0.7, "auc_ci_high": 0.85, "sensitivity": 0.75, "specificity": 0.8})  # fmt: skip
    return rows


def _run(tmp_path: Path, config: AppConfig, rows: list[dict[str, Any]] | None = None) -> tuple[Path, dict[str, Any]]:
    """A finished run's folder as server_app leaves it: config, metrics, summary, global_model.pt and its card."""
    rows = _rows() if rows is None else rows
    folder = RunDirectory(tmp_path / "run")
    folder.write_config(config.to_nested())
    folder.append_metrics(rows)
    summary = build_summary(config, folder.read_metrics(), duration_s=12.5)
    folder.write_summary(summary)
    torch.manual_seed(0)
    weights = folder.path / "global_model.pt"
    model = build_model(config.model.name, num_classes=config.model.num_classes, norm=config.model.norm)
    torch.save(model.state_dict(), weights)
    write_model_card(weights, federation_card_fields(config, summary, folder.read_metrics()))
    return weights, json.loads(card_path(weights).read_text(encoding="utf-8"))


def test_the_card_holds_the_agreed_fields_and_rebuilds_the_config(tmp_path: Path) -> None:
    config = _config(tmp_path)

    weights, card = _run(tmp_path, config)

    assert set(card) == CARD_KEYS and card["kind"] == "federated-global-model"
    assert card["model"] == {
        "name": "small_cnn",
        "norm": "groupnorm",
        "num_classes": 2,
        "class_names": ["benign/normal", "malignant"],
        "in_channels": 1,
        "initial_weights": None,
    }
    assert set(card["data"]) == {"image_size", "preprocess_version", "pixel_spacing_mm", "presentation_intent",
                                 "preprocess_settings"} and card["data"]["image_size"] == 32  # fmt: skip
    assert load_config(card["config"]) == config
    assert set(card["libraries"]) == set(LIBRARIES) and card["libraries"]["torch"] == version("torch")
    training = card["training"]
    assert (training["rounds_planned"], training["final_round"], training["strategy"]) == (2, 2, "fedavg")
    assert training["duration_s"] == 12.5 and training["secure_aggregation"] is False and training["trained"]
    assert card["privacy"]["epsilon_per_site"] == {"site-0": 0.8, "site-1": 1.0}
    assert card["privacy"]["delta"] == config.privacy.delta and card["privacy"]["accountant"] == "rdp"
    assert "not a medical device" in card["intended_use"]
    assert read_card(weights) is not None  # weights.sha256, model.name and model.norm as the check needs


def test_each_site_has_its_counts_epsilon_and_figures_and_pooled_sums_the_counts(tmp_path: Path) -> None:
    _, card = _run(tmp_path, _config(tmp_path))

    site = card["sites"]["site-0"]
    assert site["images"] == {"train": 40, "val": 8, "test": 16} and site["patients"]["train"] == 10
    assert site["labels"]["val"] == {"benign/normal": 8, "malignant": 0}  # a class the split lacks is a 0
    assert site["epsilon"] == 0.8 and site["delta"] == 1e-4 and site["round"] == 2
    assert site["metrics"]["auc"] == 0.7 and site["metrics"]["auc_ci_low"] == 0.45
    assert not any(key.startswith(wire.DATA_COUNT_PREFIX) for key in site["metrics"])
    pooled = card["pooled"]
    assert pooled["images"] == {"train": 160, "val": 32, "test": 64}
    assert pooled["labels"]["test"] == {"benign/normal": 52, "malignant": 12}
    assert pooled["metrics"]["auc"] == 0.78 and pooled["metrics"]["auc_ci_high"] == 0.85


def test_the_card_names_no_path_and_no_patient(tmp_path: Path) -> None:
    config = _config(tmp_path, **{"model.weights_path": str(tmp_path / "pretrained" / "start.pth")})
    torch.manual_seed(1)
    (tmp_path / "pretrained").mkdir()
    model = build_model("small_cnn", num_classes=2, norm="groupnorm")
    torch.save(model.state_dict(), tmp_path / "pretrained" / "start.pth")

    _, card = _run(tmp_path, config)

    outside_config = json.dumps({k: v for k, v in card.items() if k != "config"})
    assert str(tmp_path) not in outside_config
    assert card["model"]["initial_weights"] == "start.pth" and card["weights"]["file"] == "global_model.pt"
    for entry in card["sites"].values():
        assert set(entry) == {"images", "patients", "labels", "epsilon", "delta", "round", "metrics"}


def test_the_hash_is_the_files_and_a_changed_file_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    weights, card = _run(tmp_path, config)

    assert card["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert card["weights"]["bytes"] == weights.stat().st_size
    assert check_weights_card(weights, model_name="small_cnn", norm="groupnorm", image_size=32) is not None

    state = torch.load(weights, weights_only=True)
    state[next(iter(state))] += 1.0
    torch.save(state, weights)
    with pytest.raises(ModelError, match="does not match its card"):
        check_weights_card(weights, model_name="small_cnn", norm="groupnorm")


def test_a_later_run_starts_from_the_global_model_with_its_card_checked(tmp_path: Path) -> None:
    weights, _ = _run(tmp_path, _config(tmp_path))
    saved = torch.load(weights, weights_only=True)

    later = _config(tmp_path / "later", **{"model.weights_path": str(weights)})
    arrays = initial_arrays(later).to_torch_state_dict()

    assert all(torch.equal(arrays[key], saved[key]) for key in saved)
    other_norm = _config(tmp_path / "other", **{"model.weights_path": str(weights), "model.norm": "frozen_bn"})
    with pytest.raises(ModelError, match=r"model\.norm=groupnorm"):
        initial_arrays(other_norm)


def test_the_markdown_says_what_the_file_is(tmp_path: Path) -> None:
    rows = [{**r, "exam_auc": 0.66} if r["phase"] == "evaluate" and r["site"] == "site-1" else r for r in _rows()]
    weights, card = _run(tmp_path, _config(tmp_path), rows)

    text = markdown_path(weights).read_text(encoding="utf-8")

    for line in ("# Model card: global_model.pt", "## Model", "## Intended use and limits", "## Training sites",
                 "## Privacy", "## Results", "## Libraries", "## Weights", "<details>", "```yaml",
                 f"- SHA-256: `{card['weights']['sha256']}`", "not a medical device", "| Architecture | small_cnn |",
                 "| site-0 | 2 | 16 | 4 | 0.700 (0.450-0.920) |", "| **pooled** | 2 | 64 |", "| Exam AUC |",
                 "| 0.420 | 0.660 |",
                 "| site-0 | 40 (10 patient(s)) | 8 (2 patient(s)) | 16 (4 patient(s)) | "
                 "benign/normal 30, malignant 10 |",
                 f"| torch | {version('torch')} |"):  # fmt: skip
        assert line in text, line


def test_limits_are_derived_from_the_run(tmp_path: Path) -> None:
    _, card = _run(tmp_path / "a", _config(tmp_path))
    limits = " ".join(card["limitations"])

    assert "synthetic phantom images" in limits and "32 x 32 pixels" in limits
    assert "The smallest test set is site-0's with 16 image(s) (4 malignant)" in limits
    assert "wide at site-0 (0.45-0.92)" in limits and "site-1 (0.72" not in limits
    assert "site-0 (1 time(s))" in limits  # it declined round 2
    real = _config(tmp_path, **{"federation.synthetic": False, "privacy.mode": "none"})
    _, card = _run(tmp_path / "b", real, _rows(declined=False))
    limits = " ".join(card["limitations"])
    assert "synthetic" not in limits and "declined" not in limits and "without differential privacy" in limits
    assert card["privacy"]["mode"] == "none" and card["sites"]["site-0"]["epsilon"] is None
    one_class = [{**r, "auc": math.nan, "auc_ci_low": math.nan} if "auc" in r and r["site"] == "site-1" else r
                 for r in _rows()]  # fmt: skip
    _, card = _run(tmp_path / "c", _config(tmp_path), one_class)
    assert "The AUC is undefined at site-1" in " ".join(card["limitations"])


def test_a_site_without_counts_is_named_as_unknown(tmp_path: Path) -> None:
    rows = [{k: v for k, v in row.items() if not k.startswith(wire.DATA_COUNT_PREFIX)} for row in _rows()]

    _, card = _run(tmp_path, _config(tmp_path), rows)

    assert card["sites"]["site-1"]["images"] is None and card["pooled"]["images"] is None
    assert any("counts are unknown for site-0, site-1" in line for line in card["limitations"])


def test_counts_are_sent_per_split_and_class_and_never_pooled() -> None:
    counts = summary_count_metrics(SITE_DATA["site-0"], 3)

    assert counts[wire.data_count_key("test", wire.DATA_IMAGES)] == 16
    assert counts[wire.data_count_key("val", wire.DATA_PATIENTS)] == 2
    assert counts[wire.data_label_key("val", 1)] == 0 and counts[wire.data_label_key("train", 2)] == 0
    assert len(counts) == 3 * (2 + 3) and all(isinstance(v, int) for v in counts.values())
    reply = {wire.NUM_EXAMPLES: 16, wire.LOSS: 0.5, **dict.fromkeys(wire.CONFUSION_KEYS, 4), **counts,
             wire.SCORE_HIST_NEG: [12] + [0] * 9, wire.SCORE_HIST_POS: [0] * 9 + [4]}  # fmt: skip
    pooled = pool_evaluate_metrics([RecordDict({wire.METRICS_KEY: MetricRecord(reply)})] * 2, wire.NUM_EXAMPLES)
    assert not any(key.startswith(wire.DATA_COUNT_PREFIX) for key in pooled)


@pytest.mark.usefixtures("flower_identity")
def test_an_evaluate_reply_carries_the_sites_counts(tiny_federation: Path, tmp_path: Path) -> None:
    config = client_config(tiny_federation, tmp_path)
    reply = app(_message("evaluate", config, 1), _context(config))

    metrics = reply.content[wire.METRICS_KEY]
    summary = load_site_data(resolve_site({"partition-id": 0, "num-partitions": 2}, config), config).summary()
    assert {k: metrics[k] for k in metrics if k.startswith(wire.DATA_COUNT_PREFIX)} == summary_count_metrics(summary, 2)
    assert metrics[wire.data_count_key("test", wire.DATA_IMAGES)] == metrics[wire.NUM_EXAMPLES]
    assert PATIENT in (tiny_federation / "site_0" / "manifest.csv").read_text(encoding="utf-8")
    assert PATIENT not in str(reply.content) and str(tiny_federation) not in str(reply.content)
    for name in metrics:  # the hospital's gate lets every name leave by default
        assert any(fnmatchcase(name, pattern) for pattern in DEFAULT_ALLOWED_METRICS), name


def test_the_report_links_the_card_and_checks_the_hash(tmp_path: Path) -> None:
    weights, card = _run(tmp_path, _config(tmp_path))

    html = build_report(weights.parent).read_text(encoding="utf-8")
    assert 'href="global_model.pt.md"' in html and card["weights"]["sha256"] in html
    assert "matches the file in this folder" in html

    weights.write_bytes(weights.read_bytes() + b"\0")
    assert "does NOT match" in build_report(weights.parent).read_text(encoding="utf-8")


def test_a_study_model_gets_a_card_of_its_own(tmp_path: Path) -> None:
    config = _config(tmp_path)
    weights = tmp_path / "models" / "local_site-0.pt"
    weights.parent.mkdir()
    model = build_model("small_cnn", num_classes=2, norm="groupnorm")
    torch.save(model.state_dict(), weights)
    arm = StudyArm("local:site-0", "local", "local site-0", ("site-0",), (1,))
    result = ArmResult(arm, ArrayRecord(model.state_dict()), True, 3.0, 2, epsilon={"site-0": 1.5})
    scored = {"num_examples": 16, "num_positives": 4, "auc": 0.6, "auc_ci_low": 0.3, "auc_ci_high": 0.9}
    study = {"matrix": {"local:site-0": {"site-0": scored, "site-1": {**scored, "auc": 0.55}, "pooled": scored}}}

    write_arm_card(weights, config, result, study)

    card = read_card(weights)
    assert card is not None and set(card) == CARD_KEYS and card["kind"] == "study-arm-model"
    assert card["sites"]["site-0"]["trained_on"] and not card["sites"]["site-1"]["trained_on"]
    assert card["sites"]["site-0"]["epsilon"] == 1.5 and card["sites"]["site-1"]["epsilon"] is None
    assert card["training"]["arm"]["key"] == "local:site-0" and card["pooled"]["metrics"]["auc"] == 0.6
    assert any("one site's data only" in line for line in card["limitations"])
    assert "| site-1 | scored only |" in markdown_path(weights).read_text(encoding="utf-8")
    assert arm_card_fields(config, result, study)["model"]["name"] == "small_cnn"


def test_central_dp_gives_one_figure_for_the_federation(tmp_path: Path) -> None:
    config = _config(tmp_path, **{"privacy.mode": "central"})
    rows = [{k: v for k, v in r.items() if k not in ("epsilon", "noise_multiplier")} for r in _rows(declined=False)]
    rows += [{"round": n, "phase": "train", "site": "pooled", "num_examples": 160, "epsilon": 0.3 * n} for n in (1, 2)]

    _, card = _run(tmp_path, config, rows)

    privacy = card["privacy"]
    assert privacy["mode"] == "central" and privacy["epsilon_central"] == pytest.approx(0.6)
    assert privacy["epsilon_per_site"] == {"site-0": pytest.approx(0.6), "site-1": pytest.approx(0.6)}
    assert "guarantee" in privacy and "update_clip_norm" in privacy
    assert any("un-noised update" in line for line in card["limitations"])


def test_a_fedbn_card_says_the_sites_norm_layers_are_not_in_the_file(tmp_path: Path) -> None:
    _, card = _run(tmp_path, _config(tmp_path, **{"personalization.fedbn": True}))

    assert card["training"]["personalization"]["fedbn"] is True
    assert "normalization layers never left it" in card["training"]["personalization"]["note"]
    assert any("Trained with FedBN" in line for line in card["limitations"])
