"""Tests of compressed transfer syntaxes: lossless JPEG-LS, JPEG 2000 and RLE decode to the uncompressed image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.pixels.decoders.base import Decoder

from common.data import read_mammogram
from common.errors import DicomError
from tests.test_dicom_io import breast_pixels, bundled, write_mg

LOSSLESS = {"rle": uid.RLELossless, "jpeg-ls": uid.JPEGLSLossless, "jpeg2000": uid.JPEG2000Lossless}


def mg_with_bits(path: Path, bits: int, photometric: str, *, signed: bool = False) -> tuple[Path, np.ndarray]:
    """An uncompressed MG file whose stored values use all of ``bits`` (MONOCHROME1 stores the inverse)."""
    top = 2**bits - 1
    phantom = breast_pixels(48, 40).astype(np.float64) / 3800.0  # [0, 1], blob at 1
    values = np.rint(phantom * top).astype(np.int64)
    if photometric == "MONOCHROME1":
        values = top - values
    if signed:
        values = values - 2 ** (bits - 1)
    write_mg(path, np.zeros((48, 40), dtype=np.uint16), photometric=photometric)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
    array = values.astype(np.int16 if signed else np.uint16)
    ds.PixelData = array.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path, array


def compressed_copy(source: Path, target: Path, syntax: uid.UID, array: np.ndarray) -> Path:
    ds = pydicom.dcmread(source)
    ds.compress(syntax, array)
    ds.save_as(target, enforce_file_format=True)
    return target


@pytest.mark.parametrize("bits", [10, 12, 14, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("codec", sorted(LOSSLESS))
def test_lossless_syntaxes_match_uncompressed(tmp_path: Path, codec: str, photometric: str, bits: int) -> None:
    # Prepare
    plain, array = mg_with_bits(tmp_path / "plain.dcm", bits, photometric)
    packed = compressed_copy(plain, tmp_path / f"{codec}.dcm", LOSSLESS[codec], array)
    # Execute
    expected, decoded = read_mammogram(plain), read_mammogram(packed)
    # Assert: the file really is compressed, and nothing was lost after our normalisation
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == LOSSLESS[codec]
    np.testing.assert_array_equal(decoded.pixels, expected.pixels)
    assert decoded.pixels.max() == 1.0 and decoded.pixels[0, -1] == 0.0  # blob bright, background dark


@pytest.mark.parametrize("codec", sorted(LOSSLESS))
def test_signed_pixels_survive_compression(tmp_path: Path, codec: str) -> None:
    # Prepare
    plain, array = mg_with_bits(tmp_path / "plain.dcm", 12, "MONOCHROME2", signed=True)
    packed = compressed_copy(plain, tmp_path / f"{codec}.dcm", LOSSLESS[codec], array)
    # Execute / Assert
    np.testing.assert_array_equal(read_mammogram(packed).pixels, read_mammogram(plain).pixels)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ],
)
def test_pydicom_lossless_files_match_their_reference(name: str, reference: str) -> None:
    # Execute
    decoded = read_mammogram(bundled(name), require_mg=False).pixels
    expected = read_mammogram(bundled(reference), require_mg=False).pixels
    # Assert
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEG2000.dcm", "693_J2KI.dcm"])
def test_pydicom_lossy_files_decode(name: str) -> None:
    # Execute: 12-bit JPEG Extended (libjpeg; Pillow cannot), lossy 14-bit JPEG 2000 (openjpeg)
    pixels = read_mammogram(bundled(name), require_mg=False).pixels
    # Assert
    assert pixels.ndim == 2 and pixels.dtype == np.float32
    assert 0.0 <= pixels.min() < pixels.max() <= 1.0


def test_missing_plugin_names_syntax_and_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a JPEG 2000 file, then pretend no decoder plugin is installed
    plain, array = mg_with_bits(tmp_path / "plain.dcm", 12, "MONOCHROME2")
    packed = compressed_copy(plain, tmp_path / "j2k.dcm", uid.JPEG2000Lossless, array)
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    # Execute / Assert
    with pytest.raises(
        DicomError,
        match=r"j2k\.dcm: no pixel-data plugin is installed for transfer syntax JPEG 2000.*"
        r"pip install pylibjpeg",
    ):
        read_mammogram(packed)


def test_corrupt_compressed_stream_is_a_dicom_error(tmp_path: Path) -> None:
    # Prepare: keep the JPEG-LS header, scramble the entropy-coded data
    plain, array = mg_with_bits(tmp_path / "plain.dcm", 12, "MONOCHROME2")
    packed = compressed_copy(plain, tmp_path / "jls.dcm", uid.JPEGLSLossless, array)
    raw = bytearray(packed.read_bytes())
    raw[-200:-20] = bytes(180)
    packed.write_bytes(bytes(raw))
    # Execute / Assert: either it decodes to something, or it fails naming the file (never another exception)
    try:
        pixels = read_mammogram(packed).pixels
    except DicomError as exc:
        assert "jls.dcm" in str(exc)
    else:
        assert pixels.shape == (48, 40)


def test_rle_plugin_panic_is_a_dicom_error(tmp_path: Path) -> None:
    # Prepare: an RLE stream longer than Rows x Columns makes pylibjpeg-rle's Rust decoder panic, which
    # raises pyo3's PanicException, a BaseException that ``except Exception`` would let through
    plain, array = mg_with_bits(tmp_path / "plain.dcm", 12, "MONOCHROME2")
    packed = compressed_copy(plain, tmp_path / "rle.dcm", uid.RLELossless, array)
    ds = pydicom.dcmread(packed)
    ds.Rows = 47
    ds.save_as(packed)
    # Execute / Assert
    with pytest.raises(DicomError, match=r"rle\.dcm: pixel data could not be decoded \(transfer syntax RLE Lossless"):
        read_mammogram(packed)
