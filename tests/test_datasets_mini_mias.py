"""mini-MIAS adapter: films paired by patient, tissue groups, bottom-left lesion origin, and both tasks."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from common.errors import ConfigError, ManifestError
from simulations.datasets.labels import BENIGN_VS_MALIGNANT, NORMAL_VS_ABNORMAL, apply_task
from simulations.datasets.mini_mias import read_mini_mias

SHARED = Path(os.environ.get("FEDMAMMO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MINI_MIAS = SHARED / "mini_mias"

_INFO = """header text that is not a film line
mdb001 G CIRC B 535 425 197
mdb002 G CIRC B 522 280 69
mdb003 D NORM
mdb004 D NORM
mdb005 F CIRC B 477 133 30
mdb005 F SPIC M 500 168 26
mdb006 F CALC M *NOTE 3*
"""


def _fixture(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "Info.txt").write_text(_INFO)
    for n in range(1, 7):
        (tmp_path / "images" / f"mdb{n:03d}.png").write_bytes(b"")
    return tmp_path


def test_films_are_paired_by_patient_and_worst_finding_wins(tmp_path: Path) -> None:
    rows = read_mini_mias(_fixture(tmp_path))

    by_ref = {Path(str(r["image_path"])).stem: r for r in rows}
    assert len(rows) == 6
    assert by_ref["mdb001"]["patient_id"] == by_ref["mdb002"]["patient_id"] != by_ref["mdb003"]["patient_id"]
    assert (by_ref["mdb001"]["laterality"], by_ref["mdb002"]["laterality"]) == ("R", "L")
    assert by_ref["mdb005"]["finding"] == "malignant" and by_ref["mdb006"]["finding"] == "malignant"
    assert (by_ref["mdb001"]["lesion_row"], by_ref["mdb001"]["lesion_col"]) == (1024 - 425, 535)
    assert by_ref["mdb006"]["lesion_row"] is None  # calcification without a centre
    assert by_ref["mdb003"]["group"] == "dense_glandular" and by_ref["mdb005"]["group"] == "fatty"


def test_tasks_label_and_drop_rows(tmp_path: Path) -> None:
    rows = read_mini_mias(_fixture(tmp_path))

    screening = apply_task(rows, NORMAL_VS_ABNORMAL, dataset="mini-mias")
    diagnosis = apply_task(rows, BENIGN_VS_MALIGNANT, dataset="mini-mias")

    assert Counter(r["label"] for r in screening) == {1: 4, 0: 2}
    assert Counter(r["label"] for r in diagnosis) == {0: 2, 1: 2}
    with pytest.raises(ConfigError, match="leaves 2 image"):
        apply_task([r for r in rows if r["finding"] != "malignant"], BENIGN_VS_MALIGNANT, dataset="x")


def test_missing_info_and_bad_lines_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"Info\.txt not found"):
        read_mini_mias(tmp_path)
    (tmp_path / "Info.txt").write_text("mdb001 X CIRC Q 1 2 3\n")
    with pytest.raises(ManifestError, match=r"(?s)2 problem\(s\).*severity not B or M.*tissue 'X'"):
        read_mini_mias(tmp_path)


@pytest.mark.skipif(not MINI_MIAS.is_dir(), reason="shared mini-MIAS data not present")
def test_the_real_database_matches_its_published_counts() -> None:
    rows = read_mini_mias(MINI_MIAS)

    assert Counter(r["finding"] for r in rows) == {"normal": 207, "benign": 63, "malignant": 52}
    assert Counter(r["group"] for r in rows) == {"fatty": 106, "fatty_glandular": 104, "dense_glandular": 112}
    assert len({r["patient_id"] for r in rows}) == 161
    assert all(Path(str(r["image_path"])).is_file() for r in rows)
