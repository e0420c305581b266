"""Read one mammogram (DICOM through ``pydicom.pixels``, or a PNG/PGM/JPEG/TIFF) into a [0, 1] float image."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from common.errors import DicomError

__all__ = ["IMAGE_SUFFIXES", "MIN_SIDE", "Mammogram", "read_mammogram"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".pgm", ".jpg", ".jpeg", ".tif", ".tiff")
"""Non-DICOM suffixes read with Pillow (public datasets ship these)."""

MIN_SIDE = 16
"""Images smaller than this in either dimension are rejected as degenerate."""

_PLUGIN_HINT = (
    "install a pixel-data plugin for it (e.g. `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` "
    "or `pip install python-gdcm`), or convert the file to Explicit VR Little Endian"
)


@dataclass(frozen=True)
class Mammogram:
    """One decoded image: ``pixels`` is float32 2-D in [0, 1] with bright = dense tissue (MONOCHROME2 sense)."""

    pixels: np.ndarray
    laterality: str
    view: str
    photometric: str
    bits_stored: int | None
    pixel_spacing_mm: tuple[float, float] | None
    presentation_intent: str
    manufacturer: str


def read_mammogram(path: str | Path, *, require_mg: bool = True) -> Mammogram:
    """Read a DICOM or plain image file as a normalised mammogram.

    DICOM is decoded only through ``pydicom.pixels`` in the order the standard prescribes:
    modality LUT (rescale), then VOI LUT or the first window (min-max of the image when there is
    neither), then MONOCHROME1 inversion, so every site's images share one intensity sense.

    Parameters
    ----------
    path : str or Path
        A DICOM file (any suffix) or a ``.png/.pgm/.jpg/.jpeg/.tif`` image.
    require_mg : bool
        Reject DICOM whose (0008,0060) Modality is present and not ``MG``; ``False`` admits other
        modalities (e.g. pydicom's CT/MR test files).

    Returns
    -------
    Mammogram
        Pixels in [0, 1] (float32) and the header fields the pipeline uses.

    Raises
    ------
    DicomError
        For a missing, unreadable, non-DICOM, pixel-less, undecodable, multi-frame, colour, non-MG
        or degenerate file; the message names the file, the problem and the fix. Unexpected
        exceptions from pydicom or numpy are wrapped too, so a bad file never crashes a caller.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DicomError(f"image file {path} does not exist; check the manifest's image_path column")
    if not path.is_file():
        raise DicomError(f"image path {path} is not a regular file")
    try:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return _read_plain_image(path)
        return _read_dicom(path, require_mg=require_mg)
    except DicomError:
        raise
    except Exception as exc:  # any library failure on a file becomes a typed, named error
        raise DicomError(f"{path}: could not be read as a mammogram ({type(exc).__name__}: {exc})") from exc


def _read_dicom(path: Path, *, require_mg: bool) -> Mammogram:
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise DicomError(
            f"{path} is not a DICOM file ({exc}); give a DICOM Part 10 file or a .png/.pgm/.jpg/.tif image"
        ) from exc
    modality = str(ds.get("Modality", "") or "").upper()
    if require_mg and modality and modality != "MG":
        raise DicomError(
            f"{path}: (0008,0060) Modality is {modality!r}, not 'MG'; only mammograms are accepted "
            "(pass require_mg=False to read other modalities)"
        )
    if "PixelData" not in ds:
        raise DicomError(f"{path} has no Pixel Data (7FE0,0010); it is not an image (maybe a structured report)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(
            f"{path}: (0028,0008) Number of Frames is {frames}; multi-frame images (tomosynthesis) are not "
            "supported, give a single-frame 2-D mammogram"
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise DicomError(f"{path}: (0028,0002) Samples per Pixel is {samples}; a mammogram must be grayscale (1)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(
            f"{path}: (0028,0004) Photometric Interpretation is {photometric!r}; it must be MONOCHROME1 or MONOCHROME2"
        )
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        stored = ds.pixel_array
    except Exception as exc:  # every decoder failure is reported the same way
        name = f"{syntax.name} ({syntax})" if syntax is not None else "unknown"
        hint = _PLUGIN_HINT if syntax is not None and syntax.is_compressed else "the file may be truncated or corrupt"
        raise DicomError(f"{path}: pixel data could not be decoded (transfer syntax {name}): {exc}; {hint}") from exc
    _check_shape(path, stored)
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if not np.isfinite(values).all() or values.max() == values.min():
        raise DicomError(f"{path}: image is constant or not finite after the modality LUT; it holds no tissue")
    pixels = _apply_voi_and_normalise(path, values, ds)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    return Mammogram(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        laterality=_laterality(ds),
        view=str(ds.get("ViewPosition", "") or "").upper(),
        photometric=photometric,
        bits_stored=int(ds.BitsStored) if ds.get("BitsStored") is not None else None,
        pixel_spacing_mm=_spacing(ds),
        presentation_intent=str(ds.get("PresentationIntentType", "") or ""),
        manufacturer=str(ds.get("Manufacturer", "") or ""),
    )


def _apply_voi_and_normalise(path: Path, values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Apply the first VOI LUT / window and map its output range to [0, 1]; min-max when there is none."""
    lut_items = ds.get("VOILUTSequence") or []
    has_lut = bool(lut_items) and "LUTDescriptor" in lut_items[0] and "LUTData" in lut_items[0]
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (has_lut or has_window):
        low, high = float(values.min()), float(values.max())
        return (values - low) / (high - low)
    if has_lut:
        # A LUT indexes integer values; its output range is the span of its entries.
        descriptor = lut_items[0].LUTDescriptor
        entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
        voi = np.asarray(apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0), dtype=np.float64)
        probe = np.arange(first, first + entries, dtype=np.int64)
    else:
        voi = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
        probe = np.array([-1e300, 1e300], dtype=np.float64)  # far outside any window: gives its output ends
    with np.errstate(over="ignore"):
        ends = np.asarray(apply_voi_lut(probe, ds, index=0), dtype=np.float64)
    low, high = float(ends.min()), float(ends.max())
    if not high > low:
        low, high = float(voi.min()), float(voi.max())
    if not high > low:
        raise DicomError(f"{path}: the VOI LUT / window maps the whole image to one value; it holds no tissue")
    return np.clip((voi - low) / (high - low), 0.0, 1.0)


def _read_plain_image(path: Path) -> Mammogram:
    try:
        with Image.open(path) as image:
            if getattr(image, "n_frames", 1) > 1:
                raise DicomError(f"{path}: has {image.n_frames} frames/pages; give a single 2-D image")
            mode = image.mode
            if mode in ("RGB", "RGBA", "LA", "P", "CMYK", "YCbCr", "1"):
                image = image.convert("L")
                mode = "L"
            array = np.asarray(image)
    except UnidentifiedImageError as exc:
        raise DicomError(f"{path}: Pillow cannot read this as an image ({exc}); is the file corrupt?") from exc
    if array.ndim != 2:
        raise DicomError(f"{path}: image has shape {array.shape}; a mammogram must be 2-D grayscale")
    _check_shape(path, array)
    if mode == "L":
        bits, pixels = 8, array.astype(np.float64) / 255.0
    elif mode == "F":
        low, high = float(array.min()), float(array.max())
        bits, pixels = None, (array.astype(np.float64) - low) / ((high - low) or 1.0)
    else:  # I;16 variants and I (16-bit data held in 32-bit ints)
        bits, pixels = 16, np.clip(array.astype(np.float64) / 65535.0, 0.0, 1.0)
    if not np.isfinite(pixels).all() or pixels.max() == pixels.min():
        raise DicomError(f"{path}: image is constant or not finite; it holds no tissue")
    return Mammogram(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        laterality="",
        view="",
        photometric="MONOCHROME2",
        bits_stored=bits,
        pixel_spacing_mm=None,
        presentation_intent="",
        manufacturer="",
    )


def _check_shape(path: Path, array: np.ndarray) -> None:
    if array.ndim != 2:
        raise DicomError(f"{path}: decoded pixels have shape {array.shape}; a mammogram must be one 2-D frame")
    if min(array.shape) < MIN_SIDE:
        raise DicomError(
            f"{path}: image is {array.shape[0]}x{array.shape[1]} pixels, smaller than the minimum {MIN_SIDE}x{MIN_SIDE}"
        )


def _laterality(ds: pydicom.Dataset) -> str:
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return ""


def _spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            return float(value[0]), float(value[1])
    return None
