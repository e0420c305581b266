"""A 3-site cross-site study through `flwr run` on a private SuperLink: every model, the matrix, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.config import load_config
from simulations.launcher import run_simulation

SITES = ("site-0", "site-1", "site-2")


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from simulations.phantoms import generate_federation

    root = tmp_path_factory.mktemp("study_phantoms")
    generate_federation(root, num_sites=3, images_per_site=32, seed=11, matrix_scale=0.25)
    return root


@pytest.fixture(scope="module")
def finished_study(three_sites: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = load_config(
        {
            "federation.num_sites": 3,
            "federation.data_dir": str(three_sites),
            "data.image_size": 32,
            "model.name": "small_cnn",
            "training.batch_size": 8,
            "training.local_epochs": 1,
            "strategy.num_rounds": 2,
            "strategy.min_nodes": 2,
            "study.enabled": True,
            "study.min_subgroup": 4,
            "study.bootstrap": 50,
        }
    )
    return run_simulation(config, tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def study(finished_study: Path) -> dict:
    return json.loads((finished_study / "study.json").read_text(encoding="utf-8"))


def test_every_model_is_trained_on_its_sites(study: dict) -> None:
    models = study["models"]

    assert set(models) == {*(f"local:{s}" for s in SITES), "centralized", "federated", *(f"loso:{s}" for s in SITES)}
    assert all(entry["trained"] for entry in models.values())
    assert models["local:site-1"]["trained_on"] == ["site-1"]
    assert models["federated"]["trained_on"] == list(SITES)
    assert models["loso:site-0"]["trained_on"] == ["site-1", "site-2"] and models["loso:site-0"]["held_out"] == "site-0"
    assert set(models["centralized"]["trained_on"]) == set(SITES)
    assert not study["failures"]


def test_matrix_scores_every_model_on_every_site_and_loso_on_its_held_out_site(study: dict) -> None:
    matrix = study["matrix"]

    for key in (*(f"local:{s}" for s in SITES), "centralized", "federated"):
        assert set(matrix[key]) == {*SITES, "pooled"}, key
        assert all(matrix[key][s]["exact"] for s in SITES) and not matrix[key]["pooled"]["exact"]
        assert matrix[key]["pooled"]["num_examples"] == sum(matrix[key][s]["num_examples"] for s in SITES)
    for site in SITES:
        assert set(matrix[f"loso:{site}"]) == {site}
    # Every model saw the same test images at a site.
    for site in SITES:
        assert len({matrix[key][site]["num_examples"] for key in matrix if site in matrix[key]}) == 1


def test_paired_comparisons_per_site(study: dict) -> None:
    rows = study["comparisons"]

    for site in SITES:
        mine = {row["b"]: row for row in rows if row["site"] == site}
        assert set(mine) == {f"local:{site}", "centralized", f"loso:{site}"}
        for row in mine.values():
            assert row["a"] == "federated" and row["num_examples"] == study["matrix"]["federated"][site]["num_examples"]
            fed, other = study["matrix"]["federated"][site]["auc"], study["matrix"][row["b"]][site]["auc"]
            if fed is not None and other is not None:
                assert row["difference"] == pytest.approx(fed - other, abs=1e-9)


def test_calibration_and_subgroups_per_site_and_pooled(study: dict) -> None:
    federated = study["calibration"]["federated"]
    subgroups = study["subgroups"]["federated"]

    assert set(federated) == {*SITES, "pooled"}
    pooled = study["matrix"]["federated"]["pooled"]
    assert sum(b["count"] for b in federated["pooled"]["bins"]) == pooled["num_examples"]
    for attribute in ("view", "laterality", "density", "vendor", "age_band"):
        assert attribute in subgroups["site-0"], attribute
    for groups in subgroups["site-0"].values():
        for entry in groups.values():
            assert ("auc" in entry) != bool(entry.get("too_small")), entry


def test_each_model_charges_its_own_ledger_and_site_ledgers_are_untouched(
    finished_study: Path, three_sites: Path
) -> None:
    ledgers = finished_study / "ledgers"

    assert (ledgers / "federated" / "site-0.json").is_file()
    assert (ledgers / "local_site-2" / "site-2.json").is_file()
    assert (ledgers / "centralized").is_dir()
    assert not list(three_sites.glob("site_*/privacy_ledger.json"))


def test_study_folder_is_complete(finished_study: Path, study: dict) -> None:
    html = (finished_study / "study.html").read_text(encoding="utf-8")

    assert (finished_study / "models" / "federated.pt").is_file()
    card = json.loads((finished_study / "models" / "loso_site-1.pt.json").read_text(encoding="utf-8"))
    assert card["kind"] == "study-arm-model" and not card["sites"]["site-1"]["trained_on"]  # scored where held out
    assert (finished_study / "arms" / "loso_site-1" / "metrics.jsonl").is_file()
    assert "federated" in html and "site-2" in html
    assert study["wall_time_s"] > 0 and study["versions"]["flwr"]
