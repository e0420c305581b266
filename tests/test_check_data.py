"""Tests of client.check_data and `fedmammo check-data`: counts, bad files with reasons, exit status, real data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from client.check_data import UNKNOWN, check_site
from common.data import ImagePipeline, write_manifest
from simulations.benchmarks.data_throughput import mini_mias_manifest
from simulations.cli import main
from tests.conftest import SHARED_DATA
from tests.test_site_data import SIZE, make_site

DATA = Path(os.environ.get("FEDMAMMO_SHARED_DATA", SHARED_DATA))


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    status = main(["check-data", *args, "--json"])
    return status, json.loads(capsys.readouterr().out)


def test_counts_and_bad_files_of_a_site(tmp_path: Path) -> None:
    # Prepare: 8 patients x 2 images; one file corrupt, one missing
    manifest = make_site(tmp_path)
    (tmp_path / "images" / "anon01_L.dcm").write_text("not a dicom")
    (tmp_path / "images" / "anon02_R.dcm").unlink()
    # Execute
    check = check_site(manifest, ImagePipeline(SIZE), progress=False)
    # Assert
    assert (check.images, check.usable, check.patients, check.usable_patients) == (16, 14, 8, 8)
    assert check.labels == {"0": 13, "1": 3} and check.usable_labels == {"0": 11, "1": 3}
    assert check.lateralities == {"L": 8, "R": 8} and check.views == {"CC": 14, UNKNOWN: 2}
    assert check.photometric == {"MONOCHROME2": 14, UNKNOWN: 2}
    assert check.bits_stored == {"min": 12.0, "median": 12.0, "max": 12.0}
    assert [bad.line for bad in check.bad_files] == [4, 7]
    assert check.bad_files[0].reason == "DicomError: not a DICOM file (nor a .png/.pgm/.jpg/.tif image)"
    assert check.bad_files[1].reason.startswith("DicomError: the image file does not exist")
    assert not any("anon" in bad.reason or "images" in bad.reason for bad in check.bad_files)


def test_the_counts_carry_no_patient_identifier(tmp_path: Path) -> None:
    manifest = make_site(tmp_path, num_patients=4)
    check = check_site(manifest, ImagePipeline(SIZE), progress=False).to_dict()
    assert check["bad_files"] == [] and "anon" not in json.dumps(check)
    assert str(tmp_path) not in json.dumps(check) and tmp_path.name not in json.dumps(check)


def test_cli_json_and_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: one good site, one with no readable image
    good = make_site(tmp_path / "good", num_patients=2)
    dead = make_site(tmp_path / "dead", num_patients=1)
    for path in (tmp_path / "dead" / "images").iterdir():
        path.write_bytes(b"garbage")
    # Execute
    good_status, good_out = run_json(capsys, str(good))
    dead_status, dead_out = run_json(capsys, str(dead))
    # Assert
    assert good_status == 0 and good_out["sites"][0]["usable"] == 4
    assert dead_status == 1 and [bad["line"] for bad in dead_out["sites"][0]["bad_files"]] == [2, 3]


def test_cli_tables_list_the_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = make_site(tmp_path, num_patients=2)
    (tmp_path / "images" / "anon00_R.dcm").write_text("not a dicom")
    status = main(["check-data", str(manifest)])
    out = capsys.readouterr().out
    assert status == 0 and "4 usable" not in out and "3 usable, 1 bad" in out and "not a DICOM file" in out
    assert "anon00" not in out  # file names may be identifiers (patient ids, SOP Instance UIDs)


def test_cli_checks_with_the_runs_presentation_intent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a site whose first image is raw detector data ("for processing")
    import pydicom

    manifest = make_site(tmp_path, num_patients=2)
    raw = tmp_path / "images" / "anon00_L.dcm"
    ds = pydicom.dcmread(raw)
    ds.PresentationIntentType = "FOR PROCESSING"
    ds.save_as(raw)
    # Execute
    _, admitted = run_json(capsys, str(manifest))
    _, presentation_only = run_json(capsys, str(manifest), "--presentation-intent", "for_presentation")
    # Assert: the verdict follows the setting training will use
    assert admitted["sites"][0]["usable"] == 4
    assert [bad["line"] for bad in presentation_only["sites"][0]["bad_files"]] == [2]
    assert "Presentation Intent Type" in presentation_only["sites"][0]["bad_files"][0]["reason"]


def test_a_png_claiming_a_huge_size_is_a_bad_file_not_a_crash(tmp_path: Path) -> None:
    # Prepare: a real PNG whose header is edited to claim 20000 x 10000 (Pillow refuses it as a decompression bomb)
    import struct
    import zlib

    from PIL import Image

    manifest = make_site(tmp_path, num_patients=2)
    Image.new("L", (32, 32)).save(tmp_path / "bomb.png")
    png = bytearray((tmp_path / "bomb.png").read_bytes())
    png[16:24] = struct.pack(">II", 20000, 10000)  # IHDR width, height
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))  # the IHDR chunk's CRC
    (tmp_path / "bomb.png").write_bytes(bytes(png))
    rows = [{"image_path": "bomb.png", "label": 0, "patient_id": "p9"}]
    rows += [{"image_path": str(tmp_path / "images" / "anon00_L.dcm"), "label": 1, "patient_id": "p1"}]
    manifest = write_manifest(tmp_path / "with_bomb.csv", rows)
    # Execute
    check = check_site(manifest, ImagePipeline(SIZE), progress=False)
    # Assert
    assert check.usable == 1 and [bad.line for bad in check.bad_files] == [2]


def test_cli_needs_a_manifest_or_a_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-data"]) == 1
    assert "needs exactly one of a manifest path or --data-dir" in capsys.readouterr().out


def test_data_dir_checks_every_phantom_site(tiny_federation: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    status, out = run_json(capsys, "--data-dir", str(tiny_federation), "--image-size", str(SIZE))
    # Assert: both phantom sites, every image usable, the phantom scanners' headers counted
    assert status == 0 and len(out["sites"]) == 2
    for site in out["sites"]:
        assert site["images"] == site["usable"] == 24 and site["bad_files"] == []
        assert sum(site["vendors"].values()) == 24 and UNKNOWN not in site["vendors"]
        assert set(site["views"]) == {"CC", "MLO"} and site["rows_px"]["min"] > 0


@pytest.mark.skipif(not (DATA / "mini_mias" / "labels_per_image.csv").is_file(), reason="no shared mini-MIAS data")
def test_mini_mias_pngs_are_all_usable(tmp_path: Path) -> None:
    manifest = mini_mias_manifest(DATA / "mini_mias", tmp_path, 12)
    check = check_site(manifest, ImagePipeline(SIZE), progress=False)
    assert (check.images, check.usable, check.patients) == (12, 12, 6) and check.bad_files == []
    assert check.rows_px == {"min": 1024.0, "median": 1024.0, "max": 1024.0} and check.bits_stored["max"] == 8.0
    assert check.vendors == {UNKNOWN: 12}


@pytest.mark.skipif(not (DATA / "openrem_mg_header_fixtures").is_dir(), reason="no shared OpenREM headers")
def test_openrem_headers_without_pixels_are_all_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    files = sorted((DATA / "openrem_mg_header_fixtures").glob("*.dcm"))
    rows = [{"image_path": str(path), "label": 0, "patient_id": f"p{i}"} for i, path in enumerate(files)]
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    # Execute
    status, out = run_json(capsys, str(manifest), "--cache-dir", str(tmp_path / "cache"))
    # Assert: nothing usable, each line with a reason about its pixels; the vendors still counted
    site = out["sites"][0]
    assert status == 1 and site["usable"] == 0 and len(site["bad_files"]) == len(files) == 5
    assert all("pixel" in bad["reason"].lower() for bad in site["bad_files"])
    assert {"GE MEDICAL SYSTEMS", "HOLOGIC, Inc."} <= set(site["vendors"])


def test_the_output_names_no_folder_of_the_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: the site's folder is named after a patient, as hospital exports often are
    manifest = make_site(tmp_path / "MRN0012345 Doe, Jane", num_patients=2)
    # Execute
    status, out = run_json(capsys, str(manifest))
    main(["check-data", str(manifest)])
    tables = capsys.readouterr().out
    # Assert: sites are numbered, not named by their path
    for text in (json.dumps(out), tables):
        assert "MRN0012345" not in text and "Doe" not in text and str(tmp_path) not in text
    assert status == 0 and out["sites"][0]["site"] == 1 and "site 1 of 1" in tables


def test_a_symlink_loop_is_a_bad_row_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: line 4's image is a loop of symbolic links (a -> b -> a)
    manifest = make_site(tmp_path, num_patients=2)
    image = tmp_path / "images" / "anon01_L.dcm"
    image.unlink()
    os.symlink(tmp_path / "images" / "b.dcm", image)
    os.symlink(image, tmp_path / "images" / "b.dcm")
    # Execute
    status, out = run_json(capsys, str(manifest))
    # Assert
    site = out["sites"][0]
    assert status == 0 and site["usable"] == 3
    assert site["bad_files"] == [
        {"line": 4, "reason": "DicomError: the image path is a loop of symbolic links; it leads to no file"}
    ]


def test_a_label_that_is_no_class_of_the_model_makes_the_site_unusable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a three-class label (2) in a manifest checked for a binary run, and for a three-class one
    manifest = make_site(tmp_path, num_patients=2)
    rows = manifest.read_text().splitlines()
    rows[1] = rows[1].replace(",1,anon00,", ",2,anon00,")
    manifest.write_text("\n".join(rows) + "\n")
    # Execute / Assert: under two classes (the default) training refuses the whole manifest, so the site fails
    binary_status, binary = run_json(capsys, str(manifest))
    assert binary_status == 1 and binary["sites"][0]["usable_labels"] == {"0": 3}
    assert binary["sites"][0]["refused"] == (
        "training refuses this manifest: 1 row(s) have labels outside [0, 2); fix the manifest or check with "
        "--num-classes of the run"
    )
    [bad] = binary["sites"][0]["bad_files"]
    assert bad["line"] == 2 and bad["reason"].startswith("ManifestError: its label 2 is not a class of a 2-class model")
    table_status = main(["check-data", str(manifest)])
    tables = capsys.readouterr().out
    assert table_status == 1 and "training refuses this manifest: 1 row(s) have labels outside [0, 2)" in tables
    assert "not used in training" not in tables  # no row of a refused manifest trains
    # ...and usable under three classes
    three_status, three = run_json(capsys, str(manifest), "--num-classes", "3")
    assert three_status == 0 and three["sites"][0]["usable"] == 4 and three["sites"][0]["bad_files"] == []
    assert three["sites"][0]["refused"] == ""


def test_the_number_of_classes_defaults_to_what_prepare_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a prepared three-class federation (<out>/federation.json, <out>/site_0/manifest.csv) with a label 2
    from common.data import write_federation_index

    manifest = make_site(tmp_path / "site_0", num_patients=2)
    rows = manifest.read_text().splitlines()
    rows[1] = rows[1].replace(",1,anon00,", ",2,anon00,")
    manifest.write_text("\n".join(rows) + "\n")
    write_federation_index(tmp_path, ["site_0"], {"task": "three-class", "num_classes": 3})
    # Execute
    status, checked = run_json(capsys, str(manifest))
    binary_status, _ = run_json(capsys, str(manifest), "--num-classes", "2")
    # Assert: checked as the three-class run it was prepared for; an explicit --num-classes still wins
    assert status == 0 and checked["sites"][0]["refused"] == "" and checked["sites"][0]["usable"] == 4
    assert binary_status == 1


def test_a_row_repeating_an_image_is_reported_and_counted_once(tmp_path: Path) -> None:
    # Prepare: line 6 repeats line 2's image under another spelling of its path
    manifest = make_site(tmp_path, num_patients=2)
    rows = manifest.read_text().splitlines()
    first = rows[1].split(",")
    rows.append(",".join(["images/../images/" + Path(first[0]).name, *first[1:]]))
    manifest.write_text("\n".join(rows) + "\n")
    # Execute
    check = check_site(manifest, ImagePipeline(SIZE), progress=False)
    # Assert
    assert (check.images, check.usable, check.bad_files) == (5, 4, [])
    assert [(item.line, item.same_as) for item in check.duplicates] == [(6, 2)]
