"""`fedmammo prepare`: per-site manifests and a federation index that `simulate` and the clients can use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.data import list_sites, read_manifest
from simulations.cli import main
from tests.test_datasets_mini_mias import _fixture
from tests.test_manifest_dicom import write_tiny_dicom


def _said(capsys: pytest.CaptureFixture[str]) -> str:
    """What the console printed, with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().out.split())


def _mias(tmp_path: Path, patients: int = 12) -> Path:
    """A mini-MIAS look-alike with ``patients`` pairs over three tissues, alternating normal and lesion."""
    source = tmp_path / "mias"
    (source / "images").mkdir(parents=True)
    lines = []
    for patient in range(patients):
        tissue = "FGD"[patient % 3]
        for number in (2 * patient + 1, 2 * patient + 2):
            lines.append(f"mdb{number:03d} {tissue} NORM" if number % 4 else f"mdb{number:03d} {tissue} CIRC M 5 5 3")
            (source / "images" / f"mdb{number:03d}.png").write_bytes(b"")
    (source / "Info.txt").write_text("\n".join(lines) + "\n")
    return source


def test_mini_mias_by_tissue_writes_three_named_sites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["prepare", "mini-mias", str(_mias(tmp_path)), str(tmp_path / "out"), "--sites", "tissue"])

    assert code == 0
    assert list_sites(tmp_path / "out") == ["dense_glandular", "fatty", "fatty_glandular"]
    rows = read_manifest(tmp_path / "out" / "fatty" / "manifest.csv")
    assert len(rows) == 8 and {r.label for r in rows} == {0, 1} and rows[0].image_path.is_absolute()
    index = json.loads((tmp_path / "out" / "federation.json").read_text())
    assert (index["dataset"], index["task"]) == ("mini-mias", "normal-vs-abnormal")
    assert "federation.num_sites=3" in _said(capsys)


def test_partition_of_a_pooled_manifest(tmp_path: Path) -> None:
    main(["prepare", "mini-mias", str(_mias(tmp_path, patients=18)), str(tmp_path / "pooled")])

    code = main(["prepare", "partition", str(tmp_path / "pooled" / "pooled" / "manifest.csv"), str(tmp_path / "n"),
                 "--sites", "3", "--scheme", "dirichlet", "--alpha", "1.0"])  # fmt: skip

    sites = [read_manifest(tmp_path / "n" / name / "manifest.csv") for name in list_sites(tmp_path / "n")]
    patients = [{r.patient_id for r in site} for site in sites]
    assert code == 0 and len(sites) == 3 and sum(len(s) for s in sites) == 36
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])


def test_missing_images_and_bad_site_choices_fail_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _fixture(tmp_path / "src")
    for image in (source / "images").iterdir():
        image.unlink()

    assert main(["prepare", "mini-mias", str(source), str(tmp_path / "out")]) == 1
    assert "none of its 6 image file(s) exist" in _said(capsys)
    assert main(["prepare", "mini-mias", str(source), str(tmp_path / "out"), "--sites", "by-age"]) == 1
    assert "--sites 'by-age' must be pooled, tissue or a number of sites" in _said(capsys)


def test_dicom_folder_command_writes_a_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tiny_dicom(tmp_path / "dicom" / "a.dcm", patient="P1", laterality="L", view="CC")
    (tmp_path / "labels.csv").write_text("file_name,label\na.dcm,1\n")

    code = main(["prepare", "dicom-folder", str(tmp_path / "dicom"), str(tmp_path / "m.csv"), "--labels",
                 str(tmp_path / "labels.csv")])  # fmt: skip

    assert code == 0 and read_manifest(tmp_path / "m.csv")[0].patient_id == "P1"
    assert "1 image(s), 0 file(s) skipped" in _said(capsys)


def test_simulate_on_a_missing_prepared_federation_says_how_to_prepare_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["simulate", "federation=mini_mias", f"federation.data_dir={tmp_path / 'none'}"])

    assert code == 1
    assert "does not exist; prepare it first" in _said(capsys)


def test_a_natural_group_too_small_to_train_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: two groups of 3 patients, and one of a single patient (two films)
    from simulations.datasets.prepare import split_sites

    rows = [
        {"patient_id": f"{group}{n}", "group": group, "image_path": f"{group}{n}_{side}.png", "label": 0}
        for group, patients in (("a", 3), ("b", 3), ("c", 1))
        for n in range(patients)
        for side in "LR"
    ]
    # Execute
    sites = split_sites(rows, "density", grouping="density")
    # Assert
    assert sorted(sites) == ["a", "b"] and all(len(site) == 6 for site in sites.values())
    assert "density group c has 1 patient(s), fewer than the 3 a site needs" in caplog.text
