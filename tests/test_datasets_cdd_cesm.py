"""CDD-CESM adapter: labels.csv rows, the machine split, patient-disjoint sites, bad input, the real folder."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data import list_sites, read_manifest, recorded_num_classes
from common.errors import ManifestError
from simulations.cli import main
from simulations.datasets import prepare_dataset
from simulations.datasets.cdd_cesm import read_cdd_cesm
from simulations.datasets.labels import (
    BENIGN_VS_MALIGNANT,
    MALIGNANT_VS_REST,
    NORMAL_VS_ABNORMAL,
    THREE_CLASS,
    apply_task,
)
from simulations.datasets.partition import SCHEMES

SHARED = Path(os.environ.get("FEDMAMMO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CDD_CESM = SHARED / "cdd_cesm"

_HEADER = "image,patient_id,laterality,view,pathology,machine,acr_density,birads,age"
_FINDINGS = ("normal", "benign", "malignant")


def _cdd(root: Path) -> Path:
    """A CDD-CESM look-alike: P1-P9 on machine 1, P10-P12 on machine 2, P13 with no machine at all.

    Each of P1-P12 has a left CC and MLO of one finding (P3, P6, P9, P12 normal; P1, P4, P7, P10 benign;
    the rest malignant), P2 also a normal right CC: 10 normal, 8 benign, 8 malignant images. As in the real
    sheet, P1's first image has a blank machine, a padded view and a space in its file name.
    """
    source = root / "cdd"
    (source / "images").mkdir(parents=True)
    lines = [_HEADER, "images/P1_L_CM_CC .png,P1,L,CC ,benign,,,,"]
    for n in range(1, 13):
        machine, finding = ("1" if n <= 9 else "2"), _FINDINGS[n % 3]
        views = ("MLO",) if n == 1 else ("CC", "MLO")
        lines += [f"images/P{n}_L_CM_{view}.png,P{n},L,{view},{finding},{machine},_,2,50" for view in views]
    lines += ["images/P2_R_CM_CC.png,P2,R,CC,normal,1,_,1,50", "images/P13_L_CM_CC.png,P13,L,CC,normal,,C,1,40"]
    (source / "labels.csv").write_text("\n".join(lines) + "\n")
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    for line in lines[1:]:
        Image.fromarray(pixels).save(source / line.split(",")[0])
    return source


def test_rows_carry_finding_side_view_study_and_machine(tmp_path: Path) -> None:
    rows = read_cdd_cesm(_cdd(tmp_path))

    first = rows[0]
    assert len(rows) == 26 and len({r["patient_id"] for r in rows}) == 13
    assert Counter(r["finding"] for r in rows) == {"normal": 10, "benign": 8, "malignant": 8}
    assert (first["patient_id"], first["study_id"], first["laterality"], first["view"]) == ("P1", "P1", "L", "CC")
    assert Path(str(first["image_path"])).name == "P1_L_CM_CC .png" and Path(str(first["image_path"])).is_file()
    assert Counter(r["group"] for r in rows) == {"machine_1": 18, "machine_2": 6, "": 2}


@pytest.mark.parametrize(
    ("task", "labels"),
    [
        (THREE_CLASS, {0: 10, 1: 8, 2: 8}),
        (MALIGNANT_VS_REST, {0: 18, 1: 8}),
        (NORMAL_VS_ABNORMAL, {0: 10, 1: 16}),
        (BENIGN_VS_MALIGNANT, {0: 8, 1: 8}),
    ],
)
def test_every_task_labels_the_rows(tmp_path: Path, task: str, labels: dict[int, int]) -> None:
    rows = apply_task(read_cdd_cesm(_cdd(tmp_path)), task, dataset="cdd-cesm")

    assert Counter(r["label"] for r in rows) == labels


def test_machine_sites_keep_blank_machine_images_with_their_patient(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        sites = prepare_dataset("cdd-cesm", _cdd(tmp_path), tmp_path / "out", sites="machine")

    one = read_manifest(tmp_path / "out" / "machine_1" / "manifest.csv")
    assert [(s.name, s.images, s.patients) for s in sites] == [("machine_1", 19, 9), ("machine_2", 6, 3)]
    assert any(r.patient_id == "P1" and r.view == "CC" for r in one)  # the blank-machine image, with P1
    assert "1 image(s) of 1 patient(s) have no machine; left out" in caplog.text  # P13
    assert "1 image(s) without a machine joined their patient's group" in caplog.text
    assert {r.label for r in one} == {0, 1, 2} and {r.finding for r in one} == set(_FINDINGS)
    assert list_sites(tmp_path / "out") == ["machine_1", "machine_2"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_numbered_sites_never_split_a_patient(tmp_path: Path, scheme: str) -> None:
    prepare_dataset("cdd-cesm", _cdd(tmp_path), tmp_path / "out", sites="3", scheme=scheme, alpha=1.0)

    sites = [read_manifest(tmp_path / "out" / name / "manifest.csv") for name in list_sites(tmp_path / "out")]
    patients = [{r.patient_id for r in site} for site in sites]
    assert len(sites) == 3 and sum(len(site) for site in sites) == 26  # P13 and P1's blank image included
    assert sum(len(p) for p in patients) == len(set().union(*patients)) == 13
    assert all(len(p) >= 3 for p in patients)


def test_federation_index_records_the_task_and_its_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _cdd(tmp_path)

    three = main(["prepare", "cdd-cesm", str(source), str(tmp_path / "three"), "--sites", "3"])
    said_three = " ".join(capsys.readouterr().out.split())
    binary = main(["prepare", "cdd-cesm", str(source), str(tmp_path / "bin"), "--task", "malignant-vs-rest"])
    said_binary = " ".join(capsys.readouterr().out.split())

    index = json.loads((tmp_path / "three" / "federation.json").read_text())
    assert three == binary == 0
    assert (index["task"], index["num_classes"], index["classes"]) == (THREE_CLASS, 3, list(_FINDINGS))
    assert "federation.num_sites=3 model.num_classes=3" in said_three and "num_classes" not in said_binary
    assert recorded_num_classes(tmp_path / "three") == 3 and recorded_num_classes(tmp_path / "bin") == 2


def test_an_older_index_without_classes_still_reads(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "manifest.csv").write_text("image_path,label,patient_id\n")
    (tmp_path / "federation.json").write_text('{"sites": ["a"], "dataset": "mini-mias", "task": "x"}')

    assert list_sites(tmp_path) == ["a"] and recorded_num_classes(tmp_path) is None
    assert recorded_num_classes(tmp_path / "none") is None
    (tmp_path / "federation.json").write_text('{"sites": ["a"], "num_classes": 1}')
    with pytest.raises(ManifestError, match="'num_classes' = 1 must be an integer >= 2"):
        recorded_num_classes(tmp_path)


def test_a_missing_table_bad_rows_and_missing_columns_are_named(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"labels\.csv not found: point `fedmammo prepare cdd-cesm`"):
        read_cdd_cesm(tmp_path)
    (tmp_path / "labels.csv").write_text(
        f"{_HEADER}\nimages/a.png,P1,L,CC,normal,1,_,1,40\nimages/b.png,P1,X,CC,cancer,3,_,5,40\n,,L,MLO,benign,1,,,\n"
    )
    with pytest.raises(
        ManifestError,
        match=r"(?s)5 problem\(s\).*line 3: column 'laterality' = 'X' must be one of L, R"
        r".*line 3: column 'pathology' = 'cancer' must be one of normal, benign, malignant"
        r".*line 3: column 'machine' = '3' must be one of 1, 2, empty"
        r".*line 4: column 'image' is empty.*line 4: column 'patient_id' is empty",
    ):
        read_cdd_cesm(tmp_path)
    (tmp_path / "labels.csv").write_text("image,patient_id,pathology\nimages/a.png,P1,normal\n")
    with pytest.raises(ManifestError, match=r"lacks column\(s\) laterality, view, machine"):
        read_cdd_cesm(tmp_path)


def test_a_missing_image_file_is_counted_and_left_out(tmp_path: Path) -> None:
    source = _cdd(tmp_path)
    (source / "images" / "P10_L_CM_CC.png").unlink()

    sites = prepare_dataset("cdd-cesm", source, tmp_path / "out", sites="machine")

    assert [(s.name, s.images, s.missing_images) for s in sites] == [("machine_1", 19, 0), ("machine_2", 5, 1)]


@pytest.mark.parametrize(
    ("overrides", "sites", "classes"),
    [
        (["federation=cdd_cesm"], 3, 3),
        (["federation=cdd_cesm_machine", "model=resnet18"], 2, 3),
        (["federation=cdd_cesm", "model.num_classes=2"], 3, 2),  # with a binary --task
        (["federation=mini_mias"], 3, 2),
        ([], 3, 2),
    ],
)
def test_the_federation_options_set_the_model_classes(overrides: list[str], sites: int, classes: int) -> None:
    from simulations.hydra_config import compose_simulation

    config, _ = compose_simulation(overrides)

    assert (config.federation.num_sites, config.model.num_classes) == (sites, classes)
    assert config.federation.synthetic is not any("cdd_cesm" in o or "mias" in o for o in overrides)


@pytest.mark.skipif(not CDD_CESM.is_dir(), reason="shared CDD-CESM data not present")
def test_the_real_folder_matches_its_published_counts(tmp_path: Path) -> None:
    rows = read_cdd_cesm(CDD_CESM)

    sites = prepare_dataset("cdd-cesm", CDD_CESM, tmp_path / "out", sites="machine")

    assert len(rows) == 565 and len({r["patient_id"] for r in rows}) == 200
    assert Counter(r["finding"] for r in rows) == {"normal": 242, "benign": 168, "malignant": 155}
    assert Counter(r["group"] for r in rows) == {"machine_1": 512, "machine_2": 51, "": 2}
    assert all(Path(str(r["image_path"])).is_file() for r in rows)
    assert [(s.name, s.images, s.patients, s.missing_images) for s in sites] == [
        ("machine_1", 514, 185, 0),  # 512 + the two blank-machine images of patients on machine 1
        ("machine_2", 51, 15, 0),
    ]
