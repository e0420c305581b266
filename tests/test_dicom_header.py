"""Tests of header reading (common.data.dicom_header) on synthetic and real GE/Hologic headers, and intent rules."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from common.data import read_header, read_mammogram
from common.errors import DicomError
from tests.conftest import SHARED_DATA
from tests.test_dicom_io import breast_pixels, write_mg

DATA = Path(os.environ.get("FEDMAMMO_SHARED_DATA", SHARED_DATA))
FIXTURES = DATA / "openrem_mg_header_fixtures"
MINI_MIAS = DATA / "mini_mias" / "images"
GE, HOLOGIC = "GE MEDICAL SYSTEMS", "HOLOGIC, Inc."
GE_SPACING = (0.094090909, 0.094090909)  # ImagerPixelSpacing: their PixelSpacing was scaled with the stripped pixels

# file, manufacturer, model, laterality, view, intent, bits stored, first window, spacing, pixel error
VENDOR_HEADERS = [
    ("MG-Im-GE-SenDS-scaled.dcm", GE, "Senograph DS ADS_43.10.1", "L", "CC", "FOR PROCESSING", 14, None, GE_SPACING,
     "4x4 pixels, smaller than the minimum"),
    ("MG-Im-GE_Seno_1_ForPresentation.dcm", GE, "Senograph DS ADS_43.10.1", "L", "CC", "FOR PRESENTATION", 12,
     (2262.0, 380.0), GE_SPACING, "1x2 pixels, smaller than the minimum"),
    ("MG-Im-GE_Seno_1_ForProcessing.dcm", GE, "Senograph DS ADS_43.10.1", "L", "CC", "FOR PROCESSING", 11, None,
     GE_SPACING, "1x2 pixels"),
    ("MG-Im-GE_Seno_2_ForPresentation.dcm", GE, "Senograph DS ADS_43.10.1", "L", "CC", "FOR PRESENTATION", 11,
     (1792.0, 380.0), GE_SPACING, "1x2 pixels"),
    ("MG-Im-Hologic-PropProj.dcm", HOLOGIC, "Selenia Dimensions", "R", "FLATFIELD", "", 14, (109.0, 500.0), None,
     "has no Pixel Data"),
]  # fmt: skip


def vendor_file(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"shared data {path} is not available")
    return path


@pytest.mark.parametrize(
    ("name", "vendor", "model", "side", "view", "intent", "bits", "window", "spacing", "pixel_error"), VENDOR_HEADERS
)
def test_real_vendor_headers_parse(
    name: str, vendor: str, model: str, side: str, view: str, intent: str, bits: int,
    window: tuple[float, float] | None, spacing: tuple[float, float] | None, pixel_error: str,
) -> None:  # fmt: skip
    # Execute
    header = read_header(vendor_file(name))
    # Assert
    assert (header.modality, header.manufacturer, header.model) == ("MG", vendor, model)
    assert (header.laterality, header.view, header.presentation_intent) == (side, view, intent)
    assert header.bits_stored == bits and header.frames == 1
    assert (header.windows[0] if header.windows else None) == window
    assert header.pixel_spacing_mm == (pytest.approx(spacing) if spacing else None)


@pytest.mark.parametrize(("name", "pixel_error"), [(row[0], row[-1]) for row in VENDOR_HEADERS])
def test_real_vendor_header_pixels_fail_clearly(name: str, pixel_error: str) -> None:
    with pytest.raises(DicomError, match=rf"{name.replace('.', '[.]')}:? .*{pixel_error}"):
        read_mammogram(vendor_file(name))


def test_ge_windows_keep_order_explanations_and_sigmoid() -> None:
    # Execute
    header = read_header(vendor_file("MG-Im-GE_Seno_1_ForPresentation.dcm"))
    # Assert
    assert header.windows == ((2262.0, 380.0), (2286.0, 380.0), (2262.0, 500.0))
    assert header.window_explanations == ("NORMAL", "HARDER", "SOFTER")
    assert header.voi_lut_function == "SIGMOID" and header.has_voi_lut and header.has_pixel_data


def graft(header_name: str, target: Path, pixels: np.ndarray) -> Path:
    """Put ``pixels`` (uint16, within the header's Bits Stored) into a real vendor header."""
    ds = pydicom.dcmread(vendor_file(header_name))
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(target, enforce_file_format=True)
    return target


def mini_mias_image(side: int = 256) -> np.ndarray:
    from PIL import Image

    path = MINI_MIAS / "mdb002.png"
    if not path.is_file():
        pytest.skip(f"shared data {path} is not available")
    with Image.open(path) as image:
        return np.asarray(image.convert("L").resize((side, side)), dtype=np.float64) / 255.0


def test_mini_mias_grafted_into_ge_for_processing_header(tmp_path: Path) -> None:
    # Prepare: raw MONOCHROME1 11-bit signal (high = more exposure = less tissue), like the GE raw image
    original = mini_mias_image()
    raw = np.rint((1.0 - original) * 2047).astype(np.uint16)
    path = graft("MG-Im-GE_Seno_1_ForProcessing.dcm", tmp_path / "raw.dcm", raw)
    # Execute
    mammogram = read_mammogram(path)
    # Assert: log + robust window, inverted back so tissue is bright; same ordering of grey levels
    assert mammogram.display_transform == "log-robust" and mammogram.photometric == "MONOCHROME1"
    assert mammogram.presentation_intent == "FOR PROCESSING" and mammogram.laterality == "L"
    assert np.corrcoef(mammogram.pixels.ravel(), original.ravel())[0, 1] > 0.9
    with pytest.raises(DicomError, match=r"raw\.dcm: \(0008,0068\) Presentation Intent Type is 'FOR PROCESSING'"):
        read_mammogram(path, presentation_intent="for_presentation")


def test_mini_mias_grafted_into_ge_for_presentation_header_uses_its_first_voi_lut(tmp_path: Path) -> None:
    # Prepare: 12-bit values spanning the header's first VOI LUT (1715 entries from 1405, "NORMAL")
    original = mini_mias_image()
    path = graft("MG-Im-GE_Seno_1_ForPresentation.dcm", tmp_path / "pres.dcm", np.rint(1405 + original * 1714))
    # Execute
    mammogram = read_mammogram(path, presentation_intent="for_presentation")
    # Assert: the VOI LUT wins over the windows (as the standard and pydicom order them); ordering kept
    assert mammogram.display_transform == "voi-lut" and 0.0 <= mammogram.pixels.min() < mammogram.pixels.max() <= 1.0
    assert np.corrcoef(mammogram.pixels.ravel(), original.ravel())[0, 1] > 0.9


@pytest.mark.parametrize(
    ("keyword", "value", "sop_class", "expected"),
    [
        ("PresentationIntentType", "FOR PROCESSING", None, "FOR PROCESSING"),
        (None, None, "1.2.840.10008.5.1.4.1.1.1.2.1", "FOR PROCESSING"),
        (None, None, "1.2.840.10008.5.1.4.1.1.1.2", "FOR PRESENTATION"),
        (None, None, "1.2.840.10008.5.1.4.1.1.7", ""),
    ],
)
def test_presentation_intent_from_tag_or_sop_class(
    tmp_path: Path, keyword: str | None, value: str | None, sop_class: str | None, expected: str
) -> None:
    # Prepare
    path = write_mg(tmp_path / "a.dcm", breast_pixels())
    ds = pydicom.dcmread(path)
    del ds.PresentationIntentType
    if keyword:
        setattr(ds, keyword, value)
    if sop_class:
        ds.SOPClassUID = sop_class
    ds.save_as(path)
    # Execute / Assert
    assert read_header(path).presentation_intent == expected
    assert read_mammogram(path).presentation_intent == expected


@pytest.mark.parametrize(("wanted", "kept"), [("any", True), ("for_presentation", True), ("for_processing", False)])
def test_intent_selection(tmp_path: Path, wanted: str, kept: bool) -> None:
    # Prepare: a FOR PRESENTATION file
    path = write_mg(tmp_path / "p.dcm", breast_pixels())
    # Execute / Assert
    if kept:
        assert read_mammogram(path, presentation_intent=wanted).presentation_intent == "FOR PRESENTATION"
    else:
        with pytest.raises(DicomError, match=r"p\.dcm: .*'FOR PRESENTATION' but data\.presentation_intent is"):
            read_mammogram(path, presentation_intent=wanted)


def test_plain_images_pass_every_intent(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray((breast_pixels() // 16).astype(np.uint8)).save(tmp_path / "a.png")
    assert read_mammogram(tmp_path / "a.png", presentation_intent="for_processing").presentation_intent == ""


def test_for_processing_without_window_uses_log_robust(tmp_path: Path) -> None:
    # Prepare: exposure falls exponentially with tissue thickness (Beer-Lambert); raw is MONOCHROME1-like
    thickness = breast_pixels().astype(np.float64) / 3800.0
    raw = np.rint(4000 * np.exp(-3.0 * thickness)).astype(np.uint16)
    path = write_mg(tmp_path / "raw.dcm", raw, photometric="MONOCHROME1")
    ds = pydicom.dcmread(path)
    ds.PresentationIntentType = "FOR PROCESSING"
    ds.save_as(path)
    # Execute
    mammogram = read_mammogram(path)
    # Assert: log undoes the exponential, so grey level is linear in thickness (above the robust cut)
    assert mammogram.display_transform == "log-robust"
    inside = thickness > 0.3
    fit = np.polyfit(thickness[inside], mammogram.pixels[inside], 1)
    residual = mammogram.pixels[inside] - np.polyval(fit, thickness[inside])
    assert fit[0] > 0 and np.abs(residual).max() < 0.02


def test_several_windows_first_is_used_and_sigmoid_applies(tmp_path: Path) -> None:
    # Prepare
    stored = np.tile(np.linspace(0, 4000, 50).astype(np.uint16), (20, 1))
    path = write_mg(tmp_path / "s.dcm", stored, window=([2000, 3000], [1000, 200]))
    ds = pydicom.dcmread(path)
    ds.VOILUTFunction = "SIGMOID"
    ds.save_as(path)
    # Execute
    mammogram = read_mammogram(path)
    # Assert: smooth S-curve centred on 2000 (the first window), not on 3000
    row = mammogram.pixels[0]
    assert mammogram.display_transform == "window" and np.all(np.diff(row) >= 0)
    assert row[24] == pytest.approx(0.5, abs=0.05) and 0.0 < row[0] < 0.1 and 0.9 < row[-1] < 1.0


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"ImageLaterality": "R", "Laterality": "L"}, "R"),
        ({"Laterality": "L"}, "L"),
        ({"ImageLaterality": "B", "Laterality": "R"}, "R"),
        ({"frame": "L"}, "L"),
        ({}, ""),
    ],
)
def test_laterality_sources_in_order(tmp_path: Path, tags: dict[str, str], expected: str) -> None:
    # Prepare
    path = write_mg(tmp_path / "l.dcm", breast_pixels())
    ds = pydicom.dcmread(path)
    del ds.ImageLaterality
    for keyword, value in tags.items():
        if keyword == "frame":
            anatomy, group = Dataset(), Dataset()
            anatomy.FrameLaterality = value
            group.FrameAnatomySequence = [anatomy]
            ds.SharedFunctionalGroupsSequence = [group]
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    # Execute / Assert
    assert read_header(path).laterality == expected


@pytest.mark.parametrize(
    ("pixel", "imager", "expected", "source"),
    [
        ([0.07, 0.07], [0.1, 0.1], (0.07, 0.07), "PixelSpacing"),
        (None, [0.1, 0.1], (0.1, 0.1), "ImagerPixelSpacing"),
        ([70.0, 40.0], [0.1, 0.1], (0.1, 0.1), "ImagerPixelSpacing"),
        (None, None, None, ""),
    ],
)
def test_spacing_prefers_pixel_spacing_when_plausible(
    tmp_path: Path, pixel: list[float] | None, imager: list[float] | None, expected: object, source: str
) -> None:
    # Prepare
    path = write_mg(tmp_path / "s.dcm", breast_pixels())
    ds = pydicom.dcmread(path)
    del ds.PixelSpacing
    if pixel:
        ds.PixelSpacing = pixel
    if imager:
        ds.ImagerPixelSpacing = imager
    ds.save_as(path)
    # Execute
    header = read_header(path)
    # Assert
    assert (header.pixel_spacing_mm, header.spacing_source) == (expected, source)


def test_view_falls_back_to_view_code_sequence(tmp_path: Path) -> None:
    path = write_mg(tmp_path / "v.dcm", breast_pixels())
    ds = pydicom.dcmread(path)
    del ds.ViewPosition
    code = Dataset()
    code.CodeMeaning = "medio-lateral oblique"
    ds.ViewCodeSequence = [code]
    ds.save_as(path)
    assert read_header(path).view == "MLO"


def test_read_header_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "notes.dcm").write_text("not dicom " * 40)
    with pytest.raises(DicomError, match=r"notes\.dcm is not a DICOM file"):
        read_header(tmp_path / "notes.dcm")
    with pytest.raises(DicomError, match=r"gone\.dcm does not exist"):
        read_header(tmp_path / "gone.dcm")
