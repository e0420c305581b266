"""Tests of common.data.dicom_io: decoding order (modality LUT, VOI, MONOCHROME1), metadata and typed errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from common.data import Mammogram, read_mammogram
from common.errors import DicomError

_MG_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation


def breast_pixels(height: int = 64, width: int = 48, *, side: str = "L", seed: int = 0) -> np.ndarray:
    """A 12-bit phantom: half-ellipse breast against the chest wall (left for L, right for R) and a bright blob."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    breast = ((rows - height / 2) / (0.45 * height)) ** 2 + (cols / (0.8 * width)) ** 2 <= 1.0
    blob = (rows - height * 0.4) ** 2 + (cols - width * 0.25) ** 2 <= (height * 0.08) ** 2
    image = np.where(breast, 1500 + rng.integers(0, 300, size=(height, width)), 0)
    image = np.where(blob, 3800, image).astype(np.uint16)
    return image if side == "L" else image[:, ::-1].copy()


def write_mg(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    laterality: str = "L",
    modality: str | None = "MG",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[object, object] | None = None,
    frames: int | None = None,
    samples: int = 1,
) -> Path:
    """Write a tiny single-frame MG DICOM (Explicit VR Little Endian); ``pixels=None`` omits Pixel Data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _MG_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _MG_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    ds.PatientID = "anon"
    ds.ImageLaterality = laterality
    ds.ViewPosition = "CC"
    ds.Manufacturer = "TestVendor"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelSpacing = [0.1, 0.1]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    data = pixels if pixels is not None else np.zeros((32, 32), dtype=np.uint16)
    ds.Rows, ds.Columns = int(data.shape[-2]), int(data.shape[-1])
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames is not None:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if pixels is not None:
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def bundled(name: str) -> str:
    """A file bundled with pydicom (never downloaded: only names shipped in pydicom/data/test_files)."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    if found is None:
        pytest.skip(f"pydicom test file {name} is not available")
    return str(found)


def test_reads_mg_with_metadata(tmp_path: Path) -> None:
    # Prepare
    path = write_mg(tmp_path / "a.dcm", breast_pixels(), laterality="R")
    # Execute
    mammogram = read_mammogram(path)
    # Assert
    assert isinstance(mammogram, Mammogram)
    assert mammogram.pixels.dtype == np.float32 and mammogram.pixels.shape == (64, 48)
    assert mammogram.pixels.min() == 0.0 and mammogram.pixels.max() == 1.0
    assert (mammogram.laterality, mammogram.view, mammogram.photometric) == ("R", "CC", "MONOCHROME2")
    assert mammogram.bits_stored == 12 and mammogram.pixel_spacing_mm == (0.1, 0.1)
    assert (mammogram.presentation_intent, mammogram.manufacturer) == ("FOR PRESENTATION", "TestVendor")


def test_monochrome1_and_monochrome2_give_the_same_image(tmp_path: Path) -> None:
    # Prepare: the same anatomy stored inverted as MONOCHROME1
    pixels = breast_pixels()
    mono2 = write_mg(tmp_path / "m2.dcm", pixels)
    mono1 = write_mg(tmp_path / "m1.dcm", (4095 - pixels).astype(np.uint16), photometric="MONOCHROME1")
    # Execute
    a, b = read_mammogram(mono2).pixels, read_mammogram(mono1).pixels
    # Assert: dense tissue is bright in both
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a[25, 12] > a[2, 40]


def test_monochrome1_with_window_matches_monochrome2(tmp_path: Path) -> None:
    # Prepare: window covering the full 12-bit range, so inversion is exact
    pixels = breast_pixels()
    mono2 = write_mg(tmp_path / "m2.dcm", pixels, window=(2048, 4096))
    mono1 = write_mg(
        tmp_path / "m1.dcm", (4095 - pixels).astype(np.uint16), photometric="MONOCHROME1", window=(2048, 4096)
    )
    # Execute
    a, b = read_mammogram(mono2).pixels, read_mammogram(mono1).pixels
    # Assert
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_rescale_slope_intercept_is_applied_before_windowing(tmp_path: Path) -> None:
    # Prepare: stored values 0..100; rescale to 1000..1200; a window on the rescaled values
    stored = np.tile(np.arange(0, 100, dtype=np.uint16), (20, 1))[:, :100]
    path = write_mg(tmp_path / "r.dcm", stored, slope=2.0, intercept=1000.0, window=(1100, 101))
    # Execute
    pixels = read_mammogram(path).pixels
    # Assert: stored 25 -> 1050 (window bottom, 0); stored 50 -> 1100 (centre, ~0.5); stored 75 -> 1150 (top, 1)
    assert pixels[0, 20] == pytest.approx(0.0, abs=1e-6)
    assert pixels[0, 50] == pytest.approx(0.5, abs=0.02)
    assert pixels[0, 80] == pytest.approx(1.0, abs=1e-6)


def test_window_centre_width_saturates_outside_window(tmp_path: Path) -> None:
    # Prepare: ramp 0..4000 and a narrow window around 2000
    stored = np.tile(np.linspace(0, 4000, 50).astype(np.uint16), (20, 1))
    path = write_mg(tmp_path / "w.dcm", stored, window=(2000, 1000))
    # Execute
    pixels = read_mammogram(path).pixels
    # Assert: below 1500 -> 0, above 2500 -> 1, linear in between
    column_1000, column_3000 = 12, 37  # 1000*49/4000 ~ 12, 3000*49/4000 ~ 37
    assert pixels[0, column_1000] == 0.0 and pixels[0, column_3000] == 1.0
    assert 0.3 < pixels[0, 25] < 0.7
    assert np.all(np.diff(pixels[0]) >= 0)


def test_first_of_several_windows_is_used(tmp_path: Path) -> None:
    # Prepare
    stored = np.tile(np.linspace(0, 4000, 50).astype(np.uint16), (20, 1))
    first_only = write_mg(tmp_path / "one.dcm", stored, window=(1000, 500))
    several = write_mg(tmp_path / "two.dcm", stored, window=([1000, 3000], [500, 2000]))
    # Execute / Assert
    np.testing.assert_allclose(read_mammogram(several).pixels, read_mammogram(first_only).pixels)


def test_without_window_uses_min_max(tmp_path: Path) -> None:
    # Prepare
    stored = np.tile(np.linspace(100, 600, 30).astype(np.uint16), (20, 1))
    # Execute
    pixels = read_mammogram(write_mg(tmp_path / "n.dcm", stored)).pixels
    # Assert
    assert pixels.min() == 0.0 and pixels.max() == 1.0


def test_plain_images_are_read(tmp_path: Path) -> None:
    # Prepare: 8-bit PNG and 16-bit PNG
    eight = (breast_pixels() // 16).astype(np.uint8)
    Image.fromarray(eight).save(tmp_path / "a.png")
    Image.fromarray(breast_pixels().astype(np.uint16) * 16).save(tmp_path / "b.png")
    # Execute
    a, b = read_mammogram(tmp_path / "a.png"), read_mammogram(tmp_path / "b.png")
    # Assert
    np.testing.assert_allclose(a.pixels, eight / 255.0, atol=1e-6)
    assert a.laterality == "" and a.bits_stored == 8
    assert b.bits_stored == 16 and b.pixels.max() == 1.0  # 12-bit data in 16 bits: windowed, not left dark
    assert np.corrcoef(a.pixels.ravel(), b.pixels.ravel())[0, 1] > 0.99


def test_a_16_bit_png_reads_the_same_whatever_its_bit_depth_inside(tmp_path: Path) -> None:
    # Prepare: one film exported as 16-bit PNG holding its 12-bit values, and shifted up to 16 bits
    Image.fromarray(breast_pixels().astype(np.uint16)).save(tmp_path / "twelve.png")
    Image.fromarray(breast_pixels().astype(np.uint16) * 16).save(tmp_path / "sixteen.png")
    # Execute
    twelve, sixteen = read_mammogram(tmp_path / "twelve.png"), read_mammogram(tmp_path / "sixteen.png")
    # Assert: same image, full contrast (dividing by 65535 gave a maximum of 0.058 for the 12-bit export)
    np.testing.assert_allclose(twelve.pixels, sixteen.pixels, atol=1e-6)
    assert twelve.pixels.max() == 1.0


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DicomError, match=r"nowhere\.dcm does not exist"):
        read_mammogram(tmp_path / "nowhere.dcm")


def test_text_file_with_dcm_suffix_is_not_dicom(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "notes.dcm"
    path.write_text("patient notes, not an image\n" * 10)
    # Execute / Assert
    with pytest.raises(DicomError, match=r"notes\.dcm is not a DICOM file"):
        read_mammogram(path)


def test_corrupt_png_is_a_dicom_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(DicomError, match=r"broken\.png"):
        read_mammogram(path)


def test_dataset_without_pixel_data(tmp_path: Path) -> None:
    path = write_mg(tmp_path / "nopix.dcm", None)
    with pytest.raises(DicomError, match=r"nopix\.dcm has no Pixel Data \(7FE0,0010\)"):
        read_mammogram(path)


def test_truncated_pixel_data(tmp_path: Path) -> None:
    # Prepare: cut the pixel bytes short of Rows x Columns x 2
    path = write_mg(tmp_path / "trunc.dcm", breast_pixels())
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:1000]
    ds.save_as(path, enforce_file_format=True)
    # Execute / Assert
    with pytest.raises(DicomError, match=r"trunc\.dcm: pixel data could not be decoded \(transfer syntax Explicit VR"):
        read_mammogram(path)


def test_file_cut_mid_pixel_data(tmp_path: Path) -> None:
    # Prepare: a file truncated on disk (e.g. an interrupted copy)
    path = write_mg(tmp_path / "cut.dcm", breast_pixels())
    path.write_bytes(path.read_bytes()[:-3000])
    # Execute / Assert
    with pytest.raises(DicomError, match=r"cut\.dcm"):
        read_mammogram(path)


def test_non_mg_modality_is_rejected(tmp_path: Path) -> None:
    path = write_mg(tmp_path / "ct.dcm", breast_pixels(), modality="CT")
    with pytest.raises(DicomError, match=r"ct\.dcm: \(0008,0060\) Modality is 'CT', not 'MG'"):
        read_mammogram(path)
    assert read_mammogram(path, require_mg=False).pixels.shape == (64, 48)


def test_missing_modality_is_allowed(tmp_path: Path) -> None:
    path = write_mg(tmp_path / "nomod.dcm", breast_pixels(), modality=None)
    assert read_mammogram(path).pixels.shape == (64, 48)


def test_multi_frame_is_rejected(tmp_path: Path) -> None:
    frames = np.stack([breast_pixels(), breast_pixels(seed=1)])
    path = write_mg(tmp_path / "tomo.dcm", frames, frames=2)
    with pytest.raises(DicomError, match=r"tomo\.dcm: \(0028,0008\) Number of Frames is 2"):
        read_mammogram(path)


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.full((32, 32), 700, dtype=np.uint16), "constant"),
        (np.arange(100, dtype=np.uint16).reshape(10, 10), "smaller than the minimum 16x16"),
    ],
)
def test_degenerate_images_are_rejected(tmp_path: Path, pixels: np.ndarray, message: str) -> None:
    path = write_mg(tmp_path / "bad.dcm", pixels)
    with pytest.raises(DicomError, match=rf"bad\.dcm: .*{message}"):
        read_mammogram(path)


def test_pydicom_ct_reads_without_mg_requirement() -> None:
    mammogram = read_mammogram(bundled("CT_small.dcm"), require_mg=False)
    assert mammogram.pixels.shape == (128, 128)
    assert mammogram.pixels.dtype == np.float32
    assert 0.0 <= mammogram.pixels.min() < mammogram.pixels.max() <= 1.0


def test_pydicom_mr_is_rejected_naming_modality() -> None:
    with pytest.raises(DicomError, match=r"MR_small\.dcm: \(0008,0060\) Modality is 'MR'"):
        read_mammogram(bundled("MR_small.dcm"))


@pytest.mark.parametrize("name", ["rtdose.dcm", "SC_rgb_rle_2frame.dcm"])
def test_pydicom_multi_frame_is_rejected(name: str) -> None:
    with pytest.raises(DicomError, match=rf"{name.replace('.', '[.]')}: \(0028,0008\) Number of Frames"):
        read_mammogram(bundled(name), require_mg=False)


def test_pydicom_rgb_is_rejected() -> None:
    with pytest.raises(DicomError, match=r"SC_rgb_rle\.dcm: \(0028,0002\) Samples per Pixel is 3"):
        read_mammogram(bundled("SC_rgb_rle.dcm"), require_mg=False)


def test_pydicom_truncated_file() -> None:
    with pytest.raises(DicomError, match=r"MR_truncated\.dcm: pixel data could not be decoded"):
        read_mammogram(bundled("MR_truncated.dcm"), require_mg=False)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_RLE.dcm", "JPEG-lossy.dcm", "MR_small_jp2klossless.dcm"])
def test_pydicom_compressed_reads_or_fails_clearly(name: str) -> None:
    # Execute: decodable with the plugins installed here, or a DicomError naming syntax and fix
    try:
        mammogram = read_mammogram(bundled(name), require_mg=False)
    except DicomError as exc:
        # Assert (undecodable)
        assert name in str(exc) and "transfer syntax" in str(exc) and "plugin" in str(exc)
    else:
        # Assert (decoded)
        assert mammogram.pixels.ndim == 2 and 0.0 <= mammogram.pixels.min() < mammogram.pixels.max() <= 1.0


def test_structured_report_has_no_pixels() -> None:
    with pytest.raises(DicomError, match=r"test-SR\.dcm has no Pixel Data"):
        read_mammogram(bundled("test-SR.dcm"), require_mg=False)


def test_voi_lut_sequence_is_applied_and_scaled_by_its_range(tmp_path: Path) -> None:
    # Prepare: a LUT mapping stored value v to min(v, 1000) * 2 (output range 0..2000)
    stored = np.tile(np.linspace(0, 4000, 50).astype(np.uint16), (20, 1))
    path = write_mg(tmp_path / "lut.dcm", stored, window=(3000, 10))  # the LUT wins over the window
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUT Descriptor: entries, first mapped value, bits
    item.add_new(0x00283006, "US", [min(v, 1000) * 2 for v in range(4096)])  # LUT Data
    ds.VOILUTSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    # Execute
    pixels = read_mammogram(path).pixels
    # Assert
    expected = np.minimum(stored.astype(np.float64), 1000) / 1000
    np.testing.assert_allclose(pixels, expected, atol=1e-6)


def test_an_8_bit_voi_lut_is_applied_without_wrapping(tmp_path: Path) -> None:
    # Prepare: an 8-bit LUT over 4096 entries (PS3.3 allows 8); pydicom 3.0 alone wraps its indices at 256
    stored = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (20, 1))
    path = write_mg(tmp_path / "lut8.dcm", stored)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 8])
    item.add_new(0x00283006, "US", [v // 16 for v in range(4096)])
    ds.VOILUTSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    # Execute
    mammogram = read_mammogram(path)
    # Assert: a clean ramp, not a saw-tooth
    assert mammogram.display_transform == "voi-lut"
    np.testing.assert_allclose(mammogram.pixels[0], (stored[0] // 16) / 255, atol=1e-6)
    assert np.all(np.diff(mammogram.pixels[0]) >= 0)


def test_an_unusable_window_falls_back_to_the_robust_window(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: a LINEAR window of width 0, which pydicom refuses
    path = write_mg(tmp_path / "w0.dcm", breast_pixels(), window=(100, 0))
    # Execute
    mammogram = read_mammogram(path)
    # Assert: the image is kept, and the log says why its window was not used
    assert mammogram.display_transform == "robust-min-max" and mammogram.pixels.max() == 1.0
    assert "w0.dcm: its VOI LUT/window cannot be applied" in caplog.text


def test_an_empty_rescale_slope_means_identity(tmp_path: Path) -> None:
    # Prepare: an anonymiser blanked Rescale Slope and Intercept
    path = write_mg(tmp_path / "r.dcm", breast_pixels())
    reference = read_mammogram(path).pixels
    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept = "", ""
    ds.save_as(path)
    # Execute / Assert
    np.testing.assert_array_equal(read_mammogram(path).pixels, reference)


def test_library_failure_is_wrapped_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: pydicom failing inside the modality LUT
    import common.data.dicom_io as dicom_io

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("unsupported LUT")

    monkeypatch.setattr(dicom_io, "apply_modality_lut", broken)
    path = write_mg(tmp_path / "m.dcm", breast_pixels())
    # Execute / Assert
    with pytest.raises(DicomError, match=r"m\.dcm: could not be read as a mammogram \(ValueError: unsupported LUT"):
        read_mammogram(path)


def test_corrupt_huge_dimensions_are_refused_before_decoding(tmp_path: Path) -> None:
    # Prepare: Rows/Columns claiming a 20000 x 20000 image (a flipped bit would do this)
    path = write_mg(tmp_path / "huge.dcm", breast_pixels())
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 20000
    ds.save_as(path)
    # Execute / Assert
    with pytest.raises(DicomError, match=r"huge\.dcm: image is 20000x20000 pixels, more than the maximum"):
        read_mammogram(path)


def test_a_png_claiming_more_than_the_pixel_limit_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a tiny valid PNG whose IHDR (and its CRC) is edited to claim 9000 x 8000 = 72 M pixels: above our
    # 64 M limit, below what Pillow refuses (or even warns about) by itself
    import struct
    import zlib

    from PIL import ImageFile

    from common.data import MAX_PIXELS
    from common.errors import public_text

    path = tmp_path / "huge.png"
    Image.new("L", (32, 32), 128).save(path)
    png = bytearray(path.read_bytes())
    png[16:24] = struct.pack(">II", 8000, 9000)  # IHDR width, height
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))  # the IHDR chunk's CRC
    path.write_bytes(bytes(png))
    decoded: list[object] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image))
    assert MAX_PIXELS < 8000 * 9000
    # Execute
    with pytest.raises(DicomError, match=r"huge\.png: its header claims 9000x8000 pixels") as raised:
        read_mammogram(path)
    # Assert: refused with a fixed public reason, and no pixel decoded
    assert public_text(raised.value) == (
        "DicomError: the image file's header claims 9000 x 8000 pixels, more than the maximum of 67108864 (the file "
        "is probably corrupt); its pixels were not read"
    )
    assert raised.value.lasting and decoded == []


@pytest.mark.parametrize(("window", "transform"), [(None, "robust-min-max"), ((2000, 4000), "window")])
def test_display_transform_and_model_are_recorded(
    tmp_path: Path, window: tuple[int, int] | None, transform: str
) -> None:
    # Prepare
    path = write_mg(tmp_path / "t.dcm", breast_pixels(), window=window)
    ds = pydicom.dcmread(path)
    ds.ManufacturerModelName = "Phantom 1"
    ds.save_as(path)
    # Execute
    mammogram = read_mammogram(path)
    # Assert
    assert (mammogram.display_transform, mammogram.model) == (transform, "Phantom 1")


def test_robust_min_max_ignores_a_few_hot_pixels(tmp_path: Path) -> None:
    # Prepare: a ramp 0..1000 with three dead-hot pixels at 4095
    stored = np.tile(np.linspace(0, 1000, 64).astype(np.uint16), (64, 1))
    hot = stored.copy()
    hot[0, :3] = 4095
    # Execute
    clean, noisy = (
        read_mammogram(write_mg(tmp_path / "c.dcm", stored)),
        read_mammogram(write_mg(tmp_path / "h.dcm", hot)),
    )
    # Assert: the ramp keeps (nearly) its full contrast; plain min-max would squeeze it to a quarter
    assert noisy.pixels[10].max() > 0.95 and noisy.pixels[10].min() < 0.05
    np.testing.assert_allclose(noisy.pixels[10:], clean.pixels[10:], atol=0.02)


@pytest.mark.parametrize(("relationship", "transform"), [("LIN", "log-robust"), ("LOG", "robust-min-max")])
def test_raw_data_is_logged_once(tmp_path: Path, relationship: str, transform: str) -> None:
    # Prepare: "for processing" data without a window; linear detector signal, or already logarithmic
    path = write_mg(tmp_path / "raw.dcm", breast_pixels())
    ds = pydicom.dcmread(path)
    ds.PresentationIntentType = "FOR PROCESSING"
    ds.PixelIntensityRelationship = relationship
    ds.save_as(path)
    # Execute / Assert
    assert read_mammogram(path).display_transform == transform


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_padding_is_left_out_of_the_window_and_shown_as_background(tmp_path: Path, photometric: str) -> None:
    # Prepare: raw data, a tissue ramp 1000..2000 inside a wide border marked as padding (0)
    stored = np.zeros((64, 64), dtype=np.uint16)
    stored[:, 32:] = np.tile(np.linspace(1000, 2000, 32).astype(np.uint16), (64, 1))
    path = write_mg(tmp_path / "pad.dcm", stored, photometric=photometric)
    ds = pydicom.dcmread(path)
    ds.PresentationIntentType = "FOR PROCESSING"
    ds.add_new(0x00280120, "US", 0)  # Pixel Padding Value
    ds.save_as(path)
    # Execute
    pixels = read_mammogram(path).pixels
    # Assert: the tissue keeps its full contrast (with the border in the window it spanned 0.09)
    tissue = pixels[10, 32:]
    assert tissue.max() - tissue.min() > 0.95
    assert np.all(pixels[:, :32] == 0.0)


def write_sparse_claim(path: Path, rows: int, columns: int) -> Path:
    """A DICOM whose header claims ``rows x columns`` 8-bit pixels, written as a sparse file (a few KB on disk).

    Its Pixel Data element declares the full length, and the file is extended to it with ``truncate``: the
    file system stores a hole, so the file is cheap to make but a reader that loads Pixel Data allocates it.
    """
    write_mg(path, breast_pixels())
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.save_as(path, enforce_file_format=True)
    length = rows * columns
    with path.open("r+b") as handle:
        handle.seek(0, 2)
        handle.write(b"\xe0\x7f\x10\x00OB\x00\x00" + length.to_bytes(4, "little"))  # (7FE0,0010) OB, its length
        handle.truncate(handle.tell() + length)
    return path


def test_a_sparse_file_claiming_a_huge_image_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: 20000 x 20000 claimed (400 MB of Pixel Data, a hole on disk); decoding would fail the test
    import tracemalloc

    import common.data.dicom_io as dicom_io

    path = write_sparse_claim(tmp_path / "MRN0012345.dcm", 20000, 20000)
    assert path.stat().st_size > 20000 * 20000

    def no_decoding(*_args: object) -> np.ndarray:
        raise AssertionError("the pixels of a file refused by its header were decoded")

    monkeypatch.setattr(dicom_io, "_decode", no_decoding)
    # Execute
    tracemalloc.start()
    try:
        with pytest.raises(DicomError) as refused:
            read_mammogram(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Assert: the size rule, said without the file's name, and Pixel Data never read into memory
    assert peak < 16 * 2**20, f"reading the header allocated {peak / 2**20:.0f} MiB"
    assert refused.value.lasting and "more than the maximum" in refused.value.public_reason
    assert "20000 x 20000" in refused.value.public_reason and "MRN" not in refused.value.public_reason
