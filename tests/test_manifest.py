"""Site manifests: read, validated by row, written back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.data import read_manifest, write_manifest
from common.errors import ManifestError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_round_trip_resolves_relative_paths(tmp_path: Path) -> None:
    rows = [
        {"image_path": "images/a.dcm", "label": 1, "patient_id": "P1", "laterality": "L", "view": "CC",
         "finding": "malignant", "lesion_row": 10.5, "lesion_col": 20, "lesion_radius_px": 4},
        {"image_path": "/abs/b.dcm", "label": 0, "patient_id": "P2", "laterality": "R", "view": "MLO"},
    ]  # fmt: skip
    manifest = write_manifest(tmp_path / "site" / "manifest.csv", rows)

    read = read_manifest(manifest)

    assert [r.image_path for r in read] == [tmp_path / "site" / "images" / "a.dcm", Path("/abs/b.dcm")]
    assert read[0].label == 1 and read[0].lesion_row == 10.5 and read[0].row_number == 2
    assert read[1].lesion_radius_px is None and read[1].view == "MLO"


def test_missing_manifest_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"manifest .*nope.csv does not exist"):
        read_manifest(tmp_path / "nope.csv")


def test_missing_required_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.csv", "image_path,label\na.dcm,0\n")

    with pytest.raises(ManifestError, match="lacks required column"):
        read_manifest(path)


def test_every_bad_row_is_reported_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "m.csv",
        "image_path,label,patient_id,laterality\na.dcm,x,P1,L\nb.dcm,0,,R\nc.dcm,1,P3,Q\nd.dcm,0,P4,L\n",
    )

    with pytest.raises(ManifestError) as caught:
        read_manifest(path)

    message = str(caught.value)
    assert "3 problem(s)" in message
    assert "line 2: column 'label' = 'x'" in message
    assert "line 3: column 'patient_id' is empty" in message
    assert "line 4: column 'laterality' = 'Q'" in message


def test_header_only_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.csv", "image_path,label,patient_id\n")

    with pytest.raises(ManifestError, match="no image rows"):
        read_manifest(path)


def test_lesion_box_and_mask_path_are_read_and_resolved(tmp_path: Path) -> None:
    rows = [
        {"image_path": "a.png", "label": 1, "patient_id": "P1", "lesion_x0": 10, "lesion_y0": 20, "lesion_x1": 30,
         "lesion_y1": 45.5, "mask_path": "masks/a.png"},
        {"image_path": "b.png", "label": 0, "patient_id": "P2"},
    ]  # fmt: skip
    manifest = write_manifest(tmp_path / "manifest.csv", rows)

    read = read_manifest(manifest)

    assert read[0].lesion_box == (10.0, 20.0, 30.0, 45.5)
    assert read[0].mask_path == tmp_path / "masks" / "a.png"
    assert read[1].lesion_box is None and read[1].mask_path is None


def test_bad_lesion_boxes_are_all_reported_with_their_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "m.csv",
        "image_path,label,patient_id,lesion_x0,lesion_y0,lesion_x1,lesion_y1\n"
        "a.png,1,P1,10,20,,\n"  # partial
        "b.png,1,P2,30,20,10,40\n"  # x1 < x0
        "c.png,1,P3,1,2,x,4\n"  # not a number
        "d.png,0,P4,,,,\n",  # no box: fine
    )

    with pytest.raises(ManifestError) as caught:
        read_manifest(path)

    message = str(caught.value)
    assert "3 problem(s)" in message
    assert "line 2: lesion box is partial (lesion_x1, lesion_y1 empty)" in message
    assert "line 3: lesion box (x0=30, y0=20, x1=10, y1=40) must have 0 <= x0 < x1" in message
    assert "line 4: column 'lesion_x1' = 'x' is not a number" in message


def test_a_manifest_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    # Prepare: a spreadsheet export in cp1252
    path = tmp_path / "site.csv"
    path.write_bytes("image_path,label,patient_id\na.dcm,0,Müller\n".encode("cp1252"))
    # Execute / Assert
    with pytest.raises(ManifestError, match=r"manifest .*site\.csv is not UTF-8 text \(byte \d+"):
        read_manifest(path)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"lesion_row": "10", "lesion_col": ""}, "needs both 'lesion_row' and 'lesion_col'"),
        ({"lesion_row": "10", "lesion_col": "12", "lesion_radius_px": "-3"}, "'lesion_radius_px' = -3 must be >= 0"),
        ({"lesion_radius_px": "5"}, "given with a lesion centre"),
    ],
)
def test_a_partial_or_negative_lesion_mark_is_refused_naming_the_line(
    tmp_path: Path, columns: dict[str, str], message: str
) -> None:
    row = {"image_path": "a.dcm", "label": "1", "patient_id": "p1", **columns}
    write_manifest(tmp_path / "manifest.csv", [row])
    with pytest.raises(ManifestError, match=re.escape(message)):
        read_manifest(tmp_path / "manifest.csv")
