"""INbreast and VinDr-Mammo adapters on tiny fixtures that mimic their published layouts (labels from BI-RADS)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from common.errors import ManifestError
from simulations.datasets.birads import birads_finding
from simulations.datasets.inbreast import read_inbreast
from simulations.datasets.vindr import read_vindr


@pytest.mark.parametrize(
    ("value", "finding"),
    [("1", "normal"), ("2", "benign"), ("3", "benign"), ("4a", "malignant"), ("BI-RADS 5", "malignant"),
     ("6", "malignant"), ("0", None), ("", None)],
)  # fmt: skip
def test_birads_grades_map_to_findings(value: str, finding: str | None) -> None:
    assert birads_finding(value) == finding


def _inbreast(tmp_path: Path) -> Path:
    (tmp_path / "INbreast.csv").write_text(
        "Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads\n"
        "removed;;R;CC;200101;22678622;4;1\n"
        "removed;;R;MLO;200101;22678646;4;4c\n"
        "removed;;L;CC;200102;20586908;2;2\n"
        "removed;;L;CC;200102;99999999;2;2\n"  # no file: left out
        "removed;;L;MLO;200102;20586934;2;0\n"  # BI-RADS 0: left out
    )
    names = ["22678622_61b13c59bcba149e_MG_R_CC_ANON", "22678646_61b13c59bcba149e_MG_R_ML_ANON",
             "20586908_6c613a14b80a8591_MG_L_CC_ANON", "20586934_6c613a14b80a8591_MG_L_ML_ANON"]  # fmt: skip
    (tmp_path / "AllDICOMs").mkdir()
    for name in names:
        (tmp_path / "AllDICOMs" / f"{name}.dcm").write_bytes(b"")
    return tmp_path


def test_inbreast_patients_come_from_the_file_hash(tmp_path: Path) -> None:
    rows = read_inbreast(_inbreast(tmp_path))

    assert [r["finding"] for r in rows] == ["normal", "malignant", "benign"]
    assert rows[0]["patient_id"] == rows[1]["patient_id"] == "61b13c59bcba149e" != rows[2]["patient_id"]
    assert [(r["laterality"], r["view"]) for r in rows] == [("R", "CC"), ("R", "MLO"), ("L", "CC")]
    assert rows[0]["group"] == "density_4"


def test_inbreast_without_the_table_columns_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "INbreast.csv").write_text("File;Grade\n1;2\n")

    with pytest.raises(ManifestError, match="needs columns 'File Name' and 'Bi-Rads'"):
        read_inbreast(tmp_path)


def test_vindr_reads_breast_level_annotations(tmp_path: Path) -> None:
    (tmp_path / "breast-level_annotations.csv").write_text(
        "study_id,series_id,image_id,laterality,view_position,height,width,breast_birads,breast_density,split\n"
        "s1,x,i1,L,CC,3518,2800,BI-RADS 1,DENSITY C,training\n"
        "s1,x,i2,L,MLO,3518,2800,BI-RADS 1,DENSITY C,training\n"
        "s2,y,i3,R,CC,3518,2800,BI-RADS 4,DENSITY B,test\n"
        "s3,z,i4,R,MLO,3518,2800,BI-RADS 3,DENSITY A,test\n"
    )

    rows = read_vindr(tmp_path)

    assert Counter(r["finding"] for r in rows) == {"normal": 2, "malignant": 1, "benign": 1}
    assert rows[2]["image_path"] == (tmp_path / "images" / "s2" / "i3.dicom").resolve()
    assert rows[0]["patient_id"] == "s1" and rows[0]["group"] == "density_C"
    (tmp_path / "breast-level_annotations.csv").write_text("study_id,image_id\ns1,i1\n")
    with pytest.raises(ManifestError, match="lacks column"):
        read_vindr(tmp_path)
