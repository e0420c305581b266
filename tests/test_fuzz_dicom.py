"""Fuzz tests: truncated, bit-flipped and tag-stripped DICOMs give a DicomError or a valid image, nothing else."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import uid

from common.data import MIN_SIDE, ImagePipeline, read_header, read_mammogram
from common.errors import DicomError
from tests.test_dicom_header import FIXTURES
from tests.test_dicom_io import breast_pixels, write_mg

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns loudly about mangled values

# Bounded and deadline-free: the slowest decode on a 2-core CI must not turn into a flaky failure.
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Valid files to mutate: uncompressed, RLE, JPEG-LS, JPEG 2000, plus the real vendor headers when present."""
    root = tmp_path_factory.mktemp("fuzz-seeds")
    plain = write_mg(root / "plain.dcm", breast_pixels(40, 32), window=(2000, 4000))
    found = {"plain": plain.read_bytes()}
    for name, syntax in (("rle", uid.RLELossless), ("jls", uid.JPEGLSLossless), ("j2k", uid.JPEG2000Lossless)):
        ds = pydicom.dcmread(plain)
        ds.compress(syntax, breast_pixels(40, 32))
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        found[name] = buffer.getvalue()
    if FIXTURES.is_dir():
        found.update({path.stem: path.read_bytes() for path in sorted(FIXTURES.glob("*.dcm"))})
    return found


@pytest.mark.parametrize("name", ["plain", "rle", "jls", "j2k"])
def test_seeds_are_valid_images(seeds: dict[str, bytes], tmp_path: Path, name: str) -> None:
    # Prepare: the mutations start from files that decode, so the fuzz explores the edge of validity
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(seeds[name])
    # Execute / Assert
    assert read_mammogram(path).pixels.shape == (40, 32)


def check_outcome(path: Path) -> None:
    """The property: a valid [0, 1] image, or a DicomError naming the file; anything else fails the test."""
    try:
        mammogram = read_mammogram(path)
    except DicomError as exc:
        assert path.name in str(exc)
    else:
        pixels = mammogram.pixels
        assert pixels.ndim == 2 and min(pixels.shape) >= MIN_SIDE and pixels.dtype == np.float32
        assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0
    try:
        read_header(path)
    except DicomError as exc:
        assert path.name in str(exc)


def seed_names(data: st.DataObject, seeds: dict[str, bytes]) -> str:
    return data.draw(st.sampled_from(sorted(seeds)), label="seed")


@FUZZ
@given(data=st.data())
def test_truncated_files(
    seeds: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    # Prepare
    raw = seeds[seed_names(data, seeds)]
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    path = tmp_path_factory.mktemp("trunc") / "truncated.dcm"
    path.write_bytes(raw[:cut])
    # Execute / Assert
    check_outcome(path)


@FUZZ
@given(data=st.data())
def test_bit_flipped_files(
    seeds: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    # Prepare: flip 1-8 bits anywhere after the 128-byte preamble (header, tags, pixel stream)
    raw = bytearray(seeds[seed_names(data, seeds)])
    positions = data.draw(st.lists(st.integers(128, len(raw) - 1), min_size=1, max_size=8), label="positions")
    for position in positions:
        raw[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    path = tmp_path_factory.mktemp("flip") / "flipped.dcm"
    path.write_bytes(bytes(raw))
    # Execute / Assert
    check_outcome(path)


@FUZZ
@given(data=st.data())
def test_tag_stripped_files(
    seeds: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    # Prepare: remove 1-4 top-level elements (Rows, BitsStored, Photometric, Transfer Syntax...)
    ds = pydicom.dcmread(io.BytesIO(seeds[seed_names(data, seeds)]))
    tags = sorted(ds.keys())
    for tag in data.draw(st.lists(st.sampled_from(tags), min_size=1, max_size=4, unique=True), label="tags"):
        del ds[tag]
    path = tmp_path_factory.mktemp("strip") / "stripped.dcm"
    ds.save_as(path)
    # Execute / Assert
    check_outcome(path)


@FUZZ
@given(data=st.data())
def test_pipeline_with_resampling_survives_mutations(
    seeds: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    # Prepare: mutate the header region (spacing, rows, windows live there) of the plain file
    raw = bytearray(seeds["plain"])
    header_end = raw.find(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data tag
    for position in data.draw(st.lists(st.integers(132, header_end), min_size=1, max_size=4), label="positions"):
        raw[position] = data.draw(st.integers(0, 255), label="byte")
    path = tmp_path_factory.mktemp("pipe") / "mutated.dcm"
    path.write_bytes(bytes(raw))
    pipeline = ImagePipeline(image_size=16, pixel_spacing_mm=0.05)
    # Execute / Assert
    try:
        image = pipeline.load(path)
    except DicomError as exc:
        assert path.name in str(exc)
    else:
        assert image.shape == (16, 16) and np.isfinite(image).all()
