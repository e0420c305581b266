"""A DICOM folder plus a label table becomes a manifest from headers alone; bad files are skipped with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from common.data import dicom_folder_manifest, read_manifest, read_manifest_header
from common.errors import ManifestError

MG_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"


def write_tiny_dicom(path: Path, *, patient: str, laterality: str, view: str, study: str = "", sop: str = "") -> str:
    """An 8x8 MG image with the header fields a manifest needs; returns its SOPInstanceUID."""
    sop = sop or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MG_STORAGE, sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MG_STORAGE, sop, "MG"
    ds.PatientID, ds.StudyInstanceUID = patient, study or generate_uid()
    ds.ImageLaterality, ds.ViewPosition = laterality, view
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((8, 8), dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return sop


def test_header_fields_are_read_without_pixels(tmp_path: Path) -> None:
    write_tiny_dicom(tmp_path / "a.dcm", patient="P1", laterality="R", view="MLO", study="1.2.3")

    header = read_manifest_header(tmp_path / "a.dcm")

    assert (header.patient_id, header.study_id, header.laterality, header.view) == ("P1", "1.2.3", "R", "MLO")


def test_folder_to_manifest_by_file_name_skips_unlabelled_and_non_dicom(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_tiny_dicom(images / "x" / "a.dcm", patient="P1", laterality="L", view="CC")
    write_tiny_dicom(images / "b.dcm", patient="P2", laterality="R", view="MLO")
    write_tiny_dicom(images / "unlabelled.dcm", patient="P3", laterality="R", view="CC")
    (images / "notes.txt").write_text("not dicom")
    (tmp_path / "labels.csv").write_text("file_name,label\nx/a.dcm,1\nb.dcm,0\nnotes.txt,0\n")

    result = dicom_folder_manifest(images, tmp_path / "site" / "manifest.csv", tmp_path / "labels.csv")
    rows = read_manifest(result.path)

    assert [(r.patient_id, r.label, r.laterality, r.view) for r in rows] == [
        ("P2", 0, "R", "MLO"),
        ("P1", 1, "L", "CC"),
    ]
    assert rows[1].image_path == tmp_path / "images" / "x" / "a.dcm"  # outside the manifest folder: absolute
    assert len(result.skipped) == 2 and any("not a readable DICOM" in s for s in result.skipped)


def test_folder_to_manifest_by_sop_instance_uid(tmp_path: Path) -> None:
    uid = write_tiny_dicom(tmp_path / "d" / "1.dcm", patient="P1", laterality="L", view="MLO")
    (tmp_path / "labels.csv").write_text(f"SOPInstanceUID,label\n{uid},1\n")

    result = dicom_folder_manifest(tmp_path / "d", tmp_path / "m.csv", tmp_path / "labels.csv")

    assert result.rows == 1 and read_manifest(result.path)[0].label == 1


def test_a_label_table_without_key_column_or_with_bad_labels_is_an_error(tmp_path: Path) -> None:
    write_tiny_dicom(tmp_path / "d" / "1.dcm", patient="P1", laterality="L", view="MLO")
    (tmp_path / "no_key.csv").write_text("image,label\n1.dcm,1\n")
    (tmp_path / "bad.csv").write_text("file_name,label\n1.dcm,malignant\n")

    with pytest.raises(ManifestError, match="needs a 'label' column and one of sop_instance_uid"):
        dicom_folder_manifest(tmp_path / "d", tmp_path / "m.csv", tmp_path / "no_key.csv")
    with pytest.raises(ManifestError, match="line 2: label 'malignant' is not a non-negative integer"):
        dicom_folder_manifest(tmp_path / "d", tmp_path / "m.csv", tmp_path / "bad.csv")


def test_view_falls_back_to_the_view_code_sequence(tmp_path: Path) -> None:
    import pydicom

    write_tiny_dicom(tmp_path / "a.dcm", patient="P1", laterality="L", view="")
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    code = Dataset()
    code.CodeMeaning = "medio-lateral oblique"
    ds.ViewCodeSequence = [code]
    ds.save_as(tmp_path / "a.dcm")

    assert read_manifest_header(tmp_path / "a.dcm").view == "MLO"


def test_a_truncated_header_is_skipped_with_its_reason(tmp_path: Path) -> None:
    # Prepare: one good file, and one cut inside its header (pydicom raises struct.error there)
    write_tiny_dicom(tmp_path / "d" / "good.dcm", patient="P1", laterality="L", view="CC")
    whole = (tmp_path / "d" / "good.dcm").read_bytes()
    (tmp_path / "d" / "cut.dcm").write_bytes(whole[:154])
    (tmp_path / "labels.csv").write_text("file_name,label\ngood.dcm,1\ncut.dcm,0\n")
    # Execute
    result = dicom_folder_manifest(tmp_path / "d", tmp_path / "m.csv", tmp_path / "labels.csv")
    # Assert
    assert result.rows == 1 and len(result.skipped) == 1 and "cut.dcm is not a readable DICOM" in result.skipped[0]


def test_a_label_table_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    write_tiny_dicom(tmp_path / "d" / "1.dcm", patient="P1", laterality="L", view="MLO")
    (tmp_path / "labels.csv").write_bytes("file_name,label,comment\n1.dcm,1,Müller\n".encode("cp1252"))

    with pytest.raises(ManifestError, match=r"label table .*labels\.csv is not UTF-8 text .*save it as 'CSV UTF-8'"):
        dicom_folder_manifest(tmp_path / "d", tmp_path / "m.csv", tmp_path / "labels.csv")
