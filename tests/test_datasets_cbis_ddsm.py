"""CBIS-DDSM adapter: lesion rows merged per mammogram (worst pathology), TCIA folders located."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from common.errors import ManifestError
from simulations.datasets.cbis_ddsm import read_cbis_ddsm, subject_folder

SHARED = Path(os.environ.get("FEDMAMMO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CBIS = SHARED / "cbis_ddsm_metadata"

_MASS = """patient_id,left or right breast,image view,breast_density,abnormality id,abnormality type,pathology
P_00001,LEFT,CC,3,1,mass,MALIGNANT
P_00001,LEFT,MLO,3,1,mass,MALIGNANT
P_00004,RIGHT,CC,2,1,mass,BENIGN_WITHOUT_CALLBACK
P_00004,RIGHT,CC,2,2,mass,MALIGNANT
"""
_CALC = """patient_id,left or right breast,image view,breast density,abnormality id,abnormality type,pathology
P_00001,LEFT,CC,3,1,calcification,BENIGN
P_00038,RIGHT,MLO,2,1,calcification,BENIGN
"""


def _fixture(tmp_path: Path) -> Path:
    (tmp_path / "mass_case_description_train_set.csv").write_text(_MASS)
    (tmp_path / "calc_case_description_test_set.csv").write_text(_CALC)
    dicom = tmp_path / "CBIS-DDSM" / "Mass-Training_P_00001_LEFT_CC" / "1.2.3" / "1.2.4" / "1-1.dcm"
    dicom.parent.mkdir(parents=True)
    dicom.write_bytes(b"")
    return tmp_path


def test_lesions_merge_per_image_and_the_worst_pathology_wins(tmp_path: Path) -> None:
    rows = read_cbis_ddsm(_fixture(tmp_path))

    by_key = {(r["patient_id"], r["laterality"], r["view"]): r for r in rows}
    assert len(rows) == 4  # P_00001 LEFT CC is in both tables: one film
    assert by_key[("P_00001", "L", "CC")]["finding"] == "malignant"
    assert by_key[("P_00004", "R", "CC")]["finding"] == "malignant"
    assert by_key[("P_00038", "R", "MLO")]["finding"] == "benign"
    assert Path(str(by_key[("P_00001", "L", "CC")]["image_path"])).is_file()
    assert not Path(str(by_key[("P_00038", "R", "MLO")]["image_path"])).exists()  # not downloaded
    assert by_key[("P_00038", "R", "MLO")]["group"] == "density_2"


def test_a_density_outside_birads_1_to_4_is_unknown(tmp_path: Path) -> None:
    # Prepare: the real tables hold one patient with breast density 0
    (tmp_path / "mass_case_description_train_set.csv").write_text(
        _MASS.replace("P_00004,RIGHT,CC,2", "P_00004,RIGHT,CC,0")
    )
    # Execute
    rows = read_cbis_ddsm(tmp_path, locate_images=False)
    # Assert
    assert {r["patient_id"]: r["group"] for r in rows} == {"P_00001": "density_3", "P_00004": "density_unknown"}


def test_subject_folder_follows_the_tcia_naming() -> None:
    assert subject_folder("calc_case_description_test_set.csv", "P_1", "LEFT", "CC") == "Calc-Test_P_1_LEFT_CC"
    assert subject_folder("mass_case_description_train_set.csv", "P_2", "RIGHT", "MLO") == (
        "Mass-Training_P_2_RIGHT_MLO"
    )


def test_unknown_pathology_or_side_is_reported_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "mass_case_description_train_set.csv").write_text(
        "patient_id,left or right breast,image view,pathology\nP_1,LEFT,CC,MAYBE\nP_2,TOP,CC,BENIGN\n"
    )

    with pytest.raises(ManifestError, match=r"(?s)2 problem\(s\).*line 2: .*'MAYBE'.*line 3: .*side 'TOP'"):
        read_cbis_ddsm(tmp_path)
    with pytest.raises(ManifestError, match="no CBIS-DDSM case-description CSV"):
        read_cbis_ddsm(tmp_path / "empty")


@pytest.mark.skipif(not CBIS.is_dir(), reason="shared CBIS-DDSM metadata not present")
def test_the_real_case_descriptions_parse() -> None:
    rows = read_cbis_ddsm(CBIS, locate_images=False)

    findings = Counter(r["finding"] for r in rows)
    assert len(rows) == 3032 and len({r["patient_id"] for r in rows}) == 1566
    assert findings == {"benign": 1685, "malignant": 1347}
    assert {r["laterality"] for r in rows} == {"L", "R"} and {r["view"] for r in rows} == {"CC", "MLO"}
