"""CMMD adapter on a tiny fixture in TCIA's layout: per-breast labels joined to DICOM headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ManifestError
from simulations.datasets.cmmd import read_cmmd
from tests.test_manifest_dicom import write_tiny_dicom


def test_breast_labels_are_joined_on_patient_and_laterality(tmp_path: Path) -> None:
    (tmp_path / "CMMD_clinicaldata_revision.csv").write_text(
        "ID1,LeftRight,Age,number,abnormality,classification,subtype\n"
        "D1-0001,R,44,2,calcification,Benign,\n"
        "D2-0002,L,60,2,mass,Malignant,Luminal A\n"
    )
    series = tmp_path / "CMMD" / "D1-0001" / "1.2" / "1.3"
    write_tiny_dicom(series / "1-1.dcm", patient="D1-0001", laterality="R", view="CC")
    write_tiny_dicom(series / "1-2.dcm", patient="D1-0001", laterality="L", view="CC")  # breast not in table
    write_tiny_dicom(tmp_path / "CMMD" / "D2-0002" / "a" / "b" / "1-1.dcm", patient="D2-0002", laterality="L",
                     view="MLO")  # fmt: skip

    rows = read_cmmd(tmp_path)

    assert [(r["patient_id"], r["laterality"], r["view"], r["finding"]) for r in rows] == [
        ("D1-0001", "R", "CC", "benign"),
        ("D2-0002", "L", "MLO", "malignant"),
    ]
    assert [r["group"] for r in rows] == ["cohort_D1", "cohort_D2"]


def test_the_published_xlsx_clinical_table_is_read(tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    pytest.importorskip("pandas")
    book = openpyxl.Workbook()
    book.active.append(["ID1", "LeftRight", "Age", "number", "abnormality", "classification", "subtype"])
    book.active.append(["D1-0001", "R", 44, 2, "calcification", "Malignant", None])
    book.save(tmp_path / "CMMD_clinicaldata_revision.xlsx")
    write_tiny_dicom(tmp_path / "CMMD" / "D1-0001" / "a" / "b" / "1-1.dcm", patient="D1-0001", laterality="R",
                     view="CC")  # fmt: skip

    rows = read_cmmd(tmp_path)

    assert [(r["patient_id"], r["laterality"], r["finding"]) for r in rows] == [("D1-0001", "R", "malignant")]


def test_a_missing_clinical_table_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"CMMD_clinicaldata_revision\.csv/\.xlsx/\.xls"):
        read_cmmd(tmp_path)
