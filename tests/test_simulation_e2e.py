"""A 2-round DP federation of 2 phantom hospitals through `flwr run` on a private SuperLink, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.config import AppConfig, load_config
from common.privacy import compute_epsilon
from server.report import RunDirectory
from simulations.launcher import run_simulation


def tiny_config(data_dir: Path, **overrides: object) -> AppConfig:
    """The e2e runs' shared plan (2 rounds, small_cnn at 32 px) with each test's own changes."""
    values: dict[str, object] = {
        "federation.num_sites": 2,
        "federation.data_dir": str(data_dir),
        "data.image_size": 32,
        "model.name": "small_cnn",
        "training.batch_size": 8,
        "strategy.num_rounds": 2,
        "strategy.min_nodes": 2,
    }
    return load_config(values | {key.replace("__", "."): value for key, value in overrides.items()})


@pytest.fixture(scope="module")
def finished_run(tiny_federation: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tiny_config(tiny_federation)
    lines: list[str] = []
    run_dir = run_simulation(config, tmp_path_factory.mktemp("run"), on_output=lines.append)
    assert any("Strategy execution finished" in line for line in lines)
    return run_dir


def test_every_round_has_a_row_per_site_and_a_pooled_row(finished_run: Path) -> None:
    rows = RunDirectory(finished_run).read_metrics()

    for phase in ("train", "evaluate"):
        seen = {(r["round"], r["site"]) for r in rows if r["phase"] == phase}
        assert seen == {(rnd, site) for rnd in (1, 2) for site in ("site-0", "site-1", "pooled")}
    assert not [r for r in rows if "error" in r]


def test_epsilon_grows_each_round_per_site(finished_run: Path) -> None:
    rows = [r for r in RunDirectory(finished_run).read_metrics() if r["phase"] == "train"]

    for site in ("site-0", "site-1"):
        epsilons = [r["epsilon"] for r in sorted(rows, key=lambda r: r["round"]) if r["site"] == site]
        assert 0 < epsilons[0] < epsilons[1]


def test_run_directory_is_complete(finished_run: Path) -> None:
    summary = json.loads((finished_run / "summary.json").read_text())
    report = (finished_run / "report.html").read_text()

    assert set(summary["sites"]) == {"site-0", "site-1"}
    assert summary["sites"]["site-0"]["epsilon"] > 0 and "auc" in summary["pooled"]
    for name in ("config.yaml", "metrics.jsonl", "roc.json", "global_model.pt", "run_config.toml"):
        assert (finished_run / name).is_file(), name
    card = json.loads((finished_run / "global_model.pt.json").read_text())  # the model card, and its Markdown
    assert card["sites"]["site-0"]["images"]["test"] > 0 and (finished_run / "global_model.pt.md").is_file()
    for png in ("roc_per_site.png", "metrics_per_round.png", "epsilon_per_round.png"):
        assert (finished_run / png).stat().st_size > 1000 and png in report
    assert "site-0" in report and "site-1" in report


def test_a_broken_site_and_a_corrupt_image_do_not_stop_the_federation(
    tiny_federation: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import shutil

    data = tmp_path_factory.mktemp("broken") / "phantoms"
    shutil.copytree(tiny_federation, data)
    corrupt = sorted((data / "site_0" / "images").glob("*.dcm"))[0]
    corrupt.write_bytes(b"not a DICOM file")
    (data / "site_2").mkdir()  # a third site whose hospital never wrote its manifest
    config = tiny_config(data, federation__num_sites=3, federation__synthetic=False, strategy__num_rounds=1)

    run_dir = run_simulation(config, tmp_path_factory.mktemp("broken_run"))

    rows = RunDirectory(run_dir).read_metrics()
    failures = [r for r in rows if "error" in r]
    assert {r["phase"] for r in failures} == {"train", "evaluate"}
    assert all(r["error"].startswith("site-2: ManifestError") and str(data) not in r["error"] for r in failures)
    trained = {r["site"] for r in rows if r["phase"] == "train" and "error" not in r}
    assert trained == {"site-0", "site-1", "pooled"}
    log = (run_dir / "flower.log").read_text()
    assert "not a DICOM file" in log  # skipped on site-0 with its reason, by manifest line
    assert str(data) not in log and corrupt.name not in log  # the simulated sites log no file names into the run


def test_a_site_declines_once_its_ceiling_is_reached_and_the_federation_finishes(
    tiny_federation: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import shutil

    from client.ledger import PrivacyLedger

    data = tmp_path_factory.mktemp("ceiling") / "phantoms"
    # A fresh ledger: the file and its lock file (whose seal would refuse the copy without its ledger).
    shutil.copytree(tiny_federation, data, ignore=shutil.ignore_patterns("privacy_ledger.json*"))
    # Site 1's hospital allows a little more than one round's epsilon (about 4.3 for this plan).
    (data / "site_1" / "privacy_limits.toml").write_text("max-epsilon = 5.0\nmax-delta = 1e-4\n")
    config = tiny_config(
        data,
        federation__synthetic=False,
        training__local_epochs=1,
        privacy__noise_multiplier=1.0,
        strategy__min_nodes=1,
    )

    run_dir = run_simulation(config, tmp_path_factory.mktemp("ceiling_run"))

    rows = RunDirectory(run_dir).read_metrics()
    declined = [r for r in rows if r.get("declined")]
    assert [(r["round"], r["site"]) for r in declined] == [(2, "site-1")]
    assert "above its ceiling max-epsilon=5" in declined[0]["error"]
    site_1 = [r["epsilon"] for r in rows if r["site"] == "site-1" and r["phase"] == "train" and "error" not in r]
    assert len(site_1) == 1 and site_1[0] <= 5.0
    ledger_epsilon = compute_epsilon(PrivacyLedger.open(data / "site_1" / "privacy_ledger.json").history, delta=1e-4)
    assert ledger_epsilon == pytest.approx(site_1[0])  # the declined round spent nothing
    assert {(r["round"], r["site"]) for r in rows if r["phase"] == "evaluate"} >= {(2, "site-0"), (2, "pooled")}


def test_central_dp_federation_accounts_one_epsilon_for_all_sites(
    tiny_federation: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config = tiny_config(
        tiny_federation,
        training__local_epochs=1,
        privacy__mode="central",
        privacy__noise_multiplier=1.5,
        privacy__update_clip_norm=5.0,
    )

    run_dir = run_simulation(config, tmp_path_factory.mktemp("central_run"))

    rows = RunDirectory(run_dir).read_metrics()
    assert not [r for r in rows if "error" in r]
    pooled = [r["epsilon"] for r in rows if r["phase"] == "train" and r["site"] == "pooled"]
    assert pooled == pytest.approx([compute_epsilon([(1.5, 1.0, n)], delta=1e-4) for n in (1, 2)], rel=0.02)
    assert all("epsilon" not in r for r in rows if r["phase"] == "train" and r["site"] != "pooled")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {s["epsilon"] for s in summary["sites"].values()} == {pooled[-1]}
    assert "central: the server clips" in (run_dir / "report.html").read_text()


def test_a_three_class_federation_reports_per_class_results_per_site_and_pooled(
    tiny_three_class_federation: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config = tiny_config(
        tiny_three_class_federation,
        federation__synthetic=False,  # keep the relabelled manifests (the phantom generator would rewrite them)
        model__num_classes=3,
        privacy__mode="none",
        strategy__num_rounds=1,
    )

    run_dir = run_simulation(config, tmp_path_factory.mktemp("three_class_run"))

    rows = RunDirectory(run_dir).read_metrics()
    assert not [r for r in rows if "error" in r]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["classes"] == ["normal", "benign", "malignant"]
    entries = {**summary["sites"], "pooled": summary["pooled"]}
    for entry in entries.values():
        assert list(entry["per_class"]) == ["normal", "benign", "malignant"]
        assert len(entry["confusion_matrix"]) == 3
        assert sum(map(sum, entry["confusion_matrix"])) == entry["num_examples"]
        assert entry["num_positives"] == entry["per_class"]["malignant"]["num_cases"]  # headline: malignant vs rest
    site_0, site_1 = (np.array(summary["sites"][site]["confusion_matrix"]) for site in ("site-0", "site-1"))
    assert summary["pooled"]["confusion_matrix"] == (site_0 + site_1).tolist()
    roc = RunDirectory(run_dir).read_roc()
    assert roc is not None and len(roc.class_pooled) == 3
    report = (run_dir / "report.html").read_text()
    assert "Per-class results" in report and "roc_per_class.png" in report
