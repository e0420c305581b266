"""Tests of predict's DICOM results (client.predict.dicom_outputs, dicom_files): valid, in the study, box in place."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut
from pydicom.uid import GrayscaleSoftcopyPresentationStateStorage, SecondaryCaptureImageStorage

from client.predict.dicom_files import write_dicom_outputs
from client.predict.dicom_outputs import presentation_state, secondary_capture
from common.data.dicom_windows import ROBUST_PERCENTILES
from common.errors import DicomError
from simulations.phantoms.dicom_writer import ImageHeader, phantom_uid, write_dicom
from simulations.phantoms.scanners import scanner_profile
from tests.conftest import SHARED_DATA
from tests.test_dicom_io import breast_pixels

ROWS, COLS = 64, 48  # not square: a box given as (column, row) falls outside the image
BOX = (40.0, 5.0, 60.0, 20.0)  # (row0, col0, row1, col1)
CORNERS = [5.0, 40.0, 20.0, 40.0, 20.0, 60.0, 5.0, 60.0, 5.0, 40.0]  # (column, row) pairs, closed
FIXTURES = Path(os.environ.get("FEDMAMMO_SHARED_DATA", SHARED_DATA)) / "openrem_mg_header_fixtures"


def write_source(tmp_path: Path, photometric: str = "MONOCHROME2", *, view: str = "MLO") -> Path:
    """A small phantom MG file from the phantom writer: 12-bit MONOCHROME2, or 14-bit MONOCHROME1 with a rescale."""
    profile = dataclasses.replace(scanner_profile(0 if photometric == "MONOCHROME2" else 1), rows=ROWS, cols=COLS)
    pixels = breast_pixels(ROWS, COLS, side="L")
    if photometric == "MONOCHROME1":
        pixels = (profile.max_stored - pixels.astype(np.int64) * 4).astype(np.uint16)
    header = ImageHeader(
        patient_id="PAT-0042",
        study_uid=phantom_uid("study", photometric),
        series_uid=phantom_uid("series", photometric),
        sop_uid=phantom_uid("sop", photometric),
        series_number=1,
        instance_number=1,
        laterality="L",
        view=view,
        pixel_spacing_mm=0.1,
        institution="Phantom Hospital",
    )
    path = write_dicom(tmp_path / f"src_{photometric}.dcm", pixels, header, profile)
    ds = pydicom.dcmread(path)
    ds.AccessionNumber = "ACC123"
    ds.save_as(path, enforce_file_format=True)
    return path


def overlay(rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """An RGB image every pixel of which differs from its neighbours, so a transposed or shifted copy shows."""
    grid = np.arange(rows * cols * 3, dtype=np.int64).reshape(rows, cols, 3)
    return (grid * 7 % 251).astype(np.uint8)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_outputs_are_valid_and_filed_with_the_source_study(tmp_path: Path, photometric: str) -> None:
    # Setup
    source_path = write_source(tmp_path, photometric)
    src = pydicom.dcmread(source_path)
    image = overlay()
    # Execute
    paths = write_dicom_outputs(source_path, image, BOX, 0.873, tmp_path / "out")
    sc, gsps = (pydicom.dcmread(path) for path in paths)  # no force: valid Part 10 files
    # Assert
    assert [path.name for path in paths] == [f"src_{photometric}.sc.dcm", f"src_{photometric}.gsps.dcm"]
    assert sc.SOPClassUID == SecondaryCaptureImageStorage == sc.file_meta.MediaStorageSOPClassUID
    assert gsps.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage == gsps.file_meta.MediaStorageSOPClassUID
    for result in (sc, gsps):
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "StudyID", "StudyDate"):
            assert result[keyword].value == src[keyword].value, keyword
        assert result.Manufacturer == "fedmammo" and "research use only" in result.SeriesDescription
    new_uids = {sc.SeriesInstanceUID, sc.SOPInstanceUID, gsps.SeriesInstanceUID, gsps.SOPInstanceUID}
    assert len(new_uids) == 4 and not new_uids & {src.SeriesInstanceUID, src.SOPInstanceUID}
    # the heatmap capture: pixels round-trip, source referenced, laterality/view/orientation kept, text burnt in
    assert sc.PhotometricInterpretation == "RGB" and np.array_equal(sc.pixel_array, image)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert (sc.Laterality, sc.ImageLaterality, sc.ViewPosition) == ("L", "L", "MLO")
    assert list(sc.PatientOrientation) == ["A", "FR"] == list(src.PatientOrientation)
    assert sc.BurnedInAnnotation == "YES"
    # the presentation state: source referenced, box as a closed polyline in (column, row) pixels inside the image
    assert gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    annotation = gsps.GraphicAnnotationSequence[0]
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    graphic = annotation.GraphicObjectSequence[0]
    assert (graphic.GraphicType, graphic.GraphicAnnotationUnits) == ("POLYLINE", "PIXEL")
    assert [float(v) for v in graphic.GraphicData] == CORNERS
    points = np.asarray(graphic.GraphicData, dtype=float).reshape(-1, 2)
    assert (points >= 0).all() and (points[:, 0] <= src.Columns).all() and (points[:, 1] <= src.Rows).all()
    text = annotation.TextObjectSequence[0].UnformattedTextValue
    assert "0.87" in text and "research use only, not for diagnosis" in text
    # shown as the modality meant: its window, inverted for MONOCHROME1 (a presentation state replaces the inversion)
    voi = gsps.SoftcopyVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (float(src.WindowCenter), float(src.WindowWidth))
    assert gsps.PresentationLUTShape == ("INVERSE" if photometric == "MONOCHROME1" else "IDENTITY")
    assert (float(gsps.RescaleSlope), float(gsps.RescaleIntercept)) == (src.RescaleSlope, src.RescaleIntercept)


def test_box_in_column_row_order_is_refused_not_clipped(tmp_path: Path) -> None:
    # Setup
    src = pydicom.dcmread(write_source(tmp_path))
    swapped = (BOX[1], BOX[0], BOX[3], BOX[2])  # (col0, row0, col1, row1): columns 40-60 of a 48-column image
    # Execute / Assert
    with pytest.raises(DicomError, match=r"not a box inside the 64 x 48 image"):
        presentation_state(src, swapped, 0.5, series_number=2)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((-0.5, 0.0, 64.4, 48.0), [0.0, 0.0, 48.0, 0.0, 48.0, 64.0, 0.0, 64.0, 0.0, 0.0]),  # rounding: clipped
        ((10.0, 20.0, 11.0, 21.0), [20.0, 10.0, 21.0, 10.0, 21.0, 11.0, 20.0, 11.0, 20.0, 10.0]),  # one pixel
    ],
)
def test_box_edges_are_pixel_edges(tmp_path: Path, box: tuple[float, ...], expected: list[float]) -> None:
    # Setup
    src = pydicom.dcmread(write_source(tmp_path))
    # Execute
    gsps = presentation_state(src, box, 0.5, series_number=2)
    # Assert
    graphic = gsps.GraphicAnnotationSequence[0].GraphicObjectSequence[0]
    assert [float(v) for v in graphic.GraphicData] == expected


@pytest.mark.parametrize(
    "box", [(60.0, 5.0, 40.0, 20.0), (40.0, 20.0, 60.0, 5.0), (float("nan"), 5.0, 60.0, 20.0), (40.0, 5.0, 70.0, 20.0)]
)
def test_reversed_or_outside_box_is_refused(tmp_path: Path, box: tuple[float, ...]) -> None:
    # Setup
    src = pydicom.dcmread(write_source(tmp_path))
    # Execute / Assert
    with pytest.raises(DicomError, match="box"):
        presentation_state(src, box, 0.5, series_number=2)


def test_empty_box_gives_text_without_outline(tmp_path: Path) -> None:
    # Setup: a hot region wholly in the padding maps back to an empty box at the crop's edge
    src = pydicom.dcmread(write_source(tmp_path))
    # Execute
    gsps = presentation_state(src, (30.0, 48.0, 40.0, 48.0), 0.5, series_number=2)
    # Assert
    annotation = gsps.GraphicAnnotationSequence[0]
    assert "GraphicObjectSequence" not in annotation
    assert [float(v) for v in annotation.TextObjectSequence[0].AnchorPoint] == [48.0, 30.0]


def test_header_value_highdicom_refuses_is_a_named_error(tmp_path: Path) -> None:
    # Setup
    path = write_source(tmp_path)
    ds = pydicom.dcmread(path)
    ds.PatientSex = "X"  # not M, F or O
    ds.save_as(path)
    out = tmp_path / "out"
    # Execute / Assert
    with pytest.raises(DicomError, match="highdicom refused") as caught:
        write_dicom_outputs(path, overlay(), BOX, 0.5, out)
    assert str(path) in str(caught.value) and not out.exists()


@pytest.mark.parametrize("keyword", ["PatientID", "StudyInstanceUID", "SOPInstanceUID"])
def test_missing_identifier_names_file_and_attribute_and_writes_nothing(tmp_path: Path, keyword: str) -> None:
    # Setup
    path = write_source(tmp_path)
    ds = pydicom.dcmread(path)
    delattr(ds, keyword)
    ds.save_as(path)
    out = tmp_path / "out"
    # Execute
    with pytest.raises(DicomError) as caught:
        write_dicom_outputs(path, overlay(), BOX, 0.5, out)
    # Assert
    assert str(path) in str(caught.value) and keyword in str(caught.value)
    assert str(path) not in caught.value.public_reason
    assert not out.exists() or not any(out.iterdir())


def test_absent_type_2_attributes_are_written_empty(tmp_path: Path) -> None:
    # Setup
    path = write_source(tmp_path)
    ds = pydicom.dcmread(path)
    for keyword in ("AccessionNumber", "PatientBirthDate", "StudyID", "ReferringPhysicianName"):
        delattr(ds, keyword)
    ds.save_as(path)
    # Execute
    results = [pydicom.dcmread(p) for p in write_dicom_outputs(path, overlay(), BOX, 0.5, tmp_path / "out")]
    # Assert: present and empty (DICOM Type 2: unknown), as the source says by leaving them out
    for result in results:
        for keyword in ("AccessionNumber", "PatientBirthDate", "StudyID", "ReferringPhysicianName"):
            assert keyword in result and not result[keyword].value, keyword


def test_window_from_pixels_when_source_has_none(tmp_path: Path) -> None:
    # Setup
    path = write_source(tmp_path, "MONOCHROME1")
    ds = pydicom.dcmread(path)
    del ds.WindowCenter, ds.WindowWidth
    ds.save_as(path)
    low, high = np.percentile(apply_modality_lut(ds.pixel_array, ds), ROBUST_PERCENTILES)
    # Execute
    gsps = pydicom.dcmread(write_dicom_outputs(path, overlay(), BOX, 0.5, tmp_path / "out")[1])
    # Assert
    voi = gsps.SoftcopyVOILUTSequence[0]
    assert float(voi.WindowCenter) == pytest.approx((low + high) / 2, rel=1e-4)
    assert float(voi.WindowWidth) == pytest.approx(high - low, rel=1e-4)
    assert gsps.PresentationLUTShape == "INVERSE"


def test_window_from_stored_range_when_header_has_no_window_and_no_pixels(tmp_path: Path) -> None:
    # Setup: 14-bit MONOCHROME1 with Rescale Slope 0.5, Intercept -1024, read without its pixels
    src = pydicom.dcmread(write_source(tmp_path, "MONOCHROME1"), stop_before_pixels=True)
    del src.WindowCenter, src.WindowWidth
    # Execute
    voi = presentation_state(src, BOX, 0.5, series_number=2).SoftcopyVOILUTSequence[0]
    # Assert: stored 0 .. 16383 is modality -1024 .. 7167.5
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == pytest.approx(((-1024 + 7167.5) / 2, 8191.5))


def test_downscaled_overlay_scales_pixel_spacing(tmp_path: Path) -> None:
    # Setup
    src = pydicom.dcmread(write_source(tmp_path), stop_before_pixels=True)
    image = overlay(ROWS // 2, COLS // 4)
    # Execute
    sc = secondary_capture(src, image, series_number=3)
    # Assert
    assert (sc.Rows, sc.Columns) == (ROWS // 2, COLS // 4)
    assert [float(v) for v in sc.PixelSpacing] == [0.2, 0.4]


@pytest.mark.parametrize("image", [np.zeros((ROWS, COLS), np.uint8), np.zeros((ROWS, COLS, 3), np.float32)])
def test_overlay_that_is_not_rgb_uint8_is_refused(tmp_path: Path, image: np.ndarray) -> None:
    # Setup
    src = pydicom.dcmread(write_source(tmp_path), stop_before_pixels=True)
    # Execute / Assert
    with pytest.raises(DicomError, match=r"uint8 of shape \(rows, cols, 3\)"):
        secondary_capture(src, image, series_number=3)


def test_plain_image_source_gives_no_dicom(tmp_path: Path) -> None:
    # Setup
    png = tmp_path / "mdb001.png"
    Image.fromarray(np.zeros((ROWS, COLS), np.uint8)).save(png)
    # Execute
    paths = write_dicom_outputs(png, overlay(), BOX, 0.5, tmp_path / "out")
    # Assert
    assert paths == [] and not (tmp_path / "out").exists()


def test_file_that_is_not_dicom_is_a_named_error(tmp_path: Path) -> None:
    # Setup
    path = tmp_path / "IM0001"
    path.write_bytes(b"not a dicom file" * 20)
    # Execute / Assert
    with pytest.raises(DicomError, match="IM0001"):
        write_dicom_outputs(path, overlay(), BOX, 0.5, tmp_path / "out")


@pytest.mark.parametrize(
    "name",
    [
        "MG-Im-GE_Seno_1_ForPresentation.dcm",  # window and VOI LUT both: the window is carried
        "MG-Im-GE_Seno_1_ForProcessing.dcm",  # neither: a window from its pixels, MONOCHROME1
        "MG-Im-Hologic-PropProj.dcm",  # window, MONOCHROME1, no pixel data
    ],
)
def test_real_vendor_headers_give_valid_outputs(tmp_path: Path, name: str) -> None:
    # Setup
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"shared data {path} is not available")
    src = pydicom.dcmread(path, stop_before_pixels=True)
    rows, cols = int(src.Rows), int(src.Columns)
    # Execute
    sc, gsps = (
        pydicom.dcmread(p) for p in write_dicom_outputs(path, overlay(rows, cols), (0, 0, rows, cols), 0.4, tmp_path)
    )
    # Assert
    assert sc.StudyInstanceUID == gsps.StudyInstanceUID == src.StudyInstanceUID
    assert sc.PatientID == gsps.PatientID == src.PatientID
    voi = gsps.SoftcopyVOILUTSequence[0]
    assert "WindowCenter" in voi and "VOILUTSequence" not in voi
    if "WindowCenter" in src:
        assert [float(v) for v in np.atleast_1d(voi.WindowCenter)] == [
            float(v) for v in np.atleast_1d(src.WindowCenter)
        ]
    assert gsps.PresentationLUTShape == ("INVERSE" if src.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY")


def test_a_file_that_cannot_be_written_is_a_named_error_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Setup: the disk fills up while the second object (the presentation state) is being written
    source_path = write_source(tmp_path)
    calls: list[str] = []
    save_as = pydicom.dataset.Dataset.save_as

    def filling_up(self: pydicom.dataset.Dataset, filename: Path, *args: object, **kwargs: object) -> None:
        calls.append(Path(filename).name)
        if len(calls) == 2:
            Path(filename).write_bytes(b"half a file")
            raise OSError(28, "No space left on device")
        save_as(self, filename, *args, **kwargs)

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", filling_up)
    out = tmp_path / "out"
    # Execute
    with pytest.raises(DicomError) as caught:
        write_dicom_outputs(source_path, overlay(), BOX, 0.5, out)
    # Assert: the file is named, its public reason names none, and neither the partial nor the first result is left
    gsps = out / f"{source_path.stem}.gsps.dcm"
    assert calls == [f"{source_path.stem}.sc.dcm.partial", f"{gsps.name}.partial"]
    assert str(gsps) in str(caught.value) and "No space left on device" in str(caught.value)
    assert caught.value.public_reason == "a DICOM result could not be written to the output folder"
    assert list(out.iterdir()) == []


def test_no_box_gives_the_score_and_note_at_the_top_left_without_outline(tmp_path: Path) -> None:
    # Setup
    src = pydicom.dcmread(write_source(tmp_path))
    # Execute
    gsps = presentation_state(src, None, 0.02, label="malignant score", note="no evidence for malignant found")
    # Assert
    annotation = gsps.GraphicAnnotationSequence[0]
    text = annotation.TextObjectSequence[0]
    assert "GraphicObjectSequence" not in annotation and [float(v) for v in text.AnchorPoint] == [0.0, 0.0]
    assert text.UnformattedTextValue.startswith("fedmammo malignant score 0.02, no evidence for malignant found (")
