"""Read one mammogram (DICOM through ``pydicom.pixels``, or a PNG/PGM/JPEG/TIFF) into a [0, 1] float image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder

from common.data.dicom_header import INTENT_CHOICES, DicomHeader, header_from_dataset, read_header
from common.data.dicom_windows import apply_display_transform, robust_window
from common.data.image_checks import MAX_PIXELS, MIN_SIDE, check_header, check_path, check_plain_size, check_shape
from common.errors import DicomError
from common.file_log import file_log

__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "MIN_SIDE", "DicomHeader", "Mammogram", "read_header", "read_mammogram"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".pgm", ".jpg", ".jpeg", ".tif", ".tiff")
"""Non-DICOM suffixes read with Pillow (public datasets ship these)."""

_DEFER_BYTES = 64 * 1024
"""Elements larger than this (Pixel Data) are read from disk only when used, so the header is checked first."""

_PLUGINS = "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle pyjpegls"
_PLUGIN_HINT = (
    f"install pydicom's pixel-data plugins (`pip install {_PLUGINS}`, all in fedmammo's dependencies) "
    "or convert the file to Explicit VR Little Endian (e.g. `dcmdjpeg`/`gdcmconv --raw`)"
)


@dataclass(frozen=True)
class Mammogram:
    """One decoded image: ``pixels`` is float32 2-D in [0, 1] with bright = dense tissue (MONOCHROME2 sense).

    ``display_transform`` says how stored values became grey levels (``voi-lut``, ``window``,
    ``log-robust``, ``robust-min-max``; ``""`` for plain image files), so sites can compare pipelines.
    """

    pixels: np.ndarray
    laterality: str
    view: str
    photometric: str
    bits_stored: int | None
    pixel_spacing_mm: tuple[float, float] | None
    presentation_intent: str
    manufacturer: str
    model: str = ""
    display_transform: str = ""


def read_mammogram(path: str | Path, *, require_mg: bool = True, presentation_intent: str = "any") -> Mammogram:
    """Read a DICOM or plain image file as a normalised mammogram.

    DICOM is decoded only through ``pydicom.pixels`` in the order the standard prescribes:
    modality LUT (rescale), then the display transform of :func:`common.data.dicom_windows.apply_display_transform`
    (VOI LUT, first window, or log + robust window for raw "for processing" data), then MONOCHROME1
    inversion, so every site's images share one intensity sense. Compressed transfer syntaxes (JPEG,
    JPEG-LS, JPEG 2000, RLE) decode through pydicom's installed pixel-data plugins.

    Parameters
    ----------
    path : str or Path
        A DICOM file (any suffix) or a ``.png/.pgm/.jpg/.jpeg/.tif`` image.
    require_mg : bool
        Reject DICOM whose (0008,0060) Modality is present and not ``MG``; ``False`` admits other
        modalities (e.g. pydicom's CT/MR test files).
    presentation_intent : str
        ``"any"``, ``"for_presentation"`` or ``"for_processing"``: reject DICOM whose (0008,0068)
        Presentation Intent Type (or SOP Class) declares the other intent. Files that do not say are kept.

    Returns
    -------
    Mammogram
        Pixels in [0, 1] (float32) and the header fields the pipeline uses.

    Raises
    ------
    DicomError
        For a missing, unreadable, non-DICOM, pixel-less, undecodable, multi-frame, colour, non-MG,
        wrong-intent or degenerate file; the message names the file, the problem and the fix. Unexpected
        exceptions from pydicom or numpy are wrapped too, so a bad file never crashes a caller.
    """
    if presentation_intent not in INTENT_CHOICES:
        raise DicomError(
            f"presentation_intent {presentation_intent!r} is not one of {sorted(INTENT_CHOICES)}",
            public="data.presentation_intent is not one of any, for_presentation, for_processing",
        )
    path = Path(path).expanduser()
    check_path(path)
    try:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return _read_plain_image(path)
        return _read_dicom(path, require_mg=require_mg, wanted_intent=presentation_intent)
    except DicomError:
        raise
    except MemoryError as exc:  # a corrupt header asking for gigabytes is the file's fault
        raise DicomError(
            f"{path}: decoding needs more memory than available; the header may be corrupt",
            public="decoding the image needs more memory than available (its header may be corrupt)",
        ) from exc
    except OSError as exc:  # the disk, a permission, a file that vanished between the check and the read
        raise DicomError(
            f"{path}: could not be read from disk ({type(exc).__name__}: {exc})",
            public="the file could not be read from disk (error number {})",
            figures=(exc.errno or 0,),
        ) from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # any library failure (even a Rust plugin panic) becomes a named error
        raise DicomError(
            f"{path}: could not be read as a mammogram ({type(exc).__name__}: {exc})",
            public="the file could not be read as a mammogram (a reading library failed; details in the site's log)",
        ) from exc


def _read_dicom(path: Path, *, require_mg: bool, wanted_intent: str) -> Mammogram:
    try:  # the header only: Pixel Data's bytes stay on disk until the header has passed its checks
        ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
    except InvalidDicomError as exc:
        raise DicomError(
            f"{path} is not a DICOM file ({exc}); give a DICOM Part 10 file or a .png/.pgm/.jpg/.tif image",
            public="not a DICOM file (nor a .png/.pgm/.jpg/.tif image)",
            lasting=True,
        ) from exc
    header = header_from_dataset(ds)
    check_header(path, header, require_mg=require_mg, wanted_intent=wanted_intent)
    stored = _decode(path, ds)
    check_shape(path, stored)
    values = _modality_values(path, stored, ds)
    if values.ndim != 2 or not np.isfinite(values).all() or values.max() == values.min():
        raise DicomError(
            f"{path}: image is constant or not finite after the modality LUT; it holds no tissue",
            public="the image is constant or not finite after the modality LUT; it holds no tissue",
            lasting=True,
        )
    padding = _padding_mask(ds, stored)
    pixels, transform = apply_display_transform(path, values, ds, intent=header.presentation_intent, padding=padding)
    if header.photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    if padding is not None:
        pixels = np.where(padding, 0.0, pixels)  # padding is no image: background, dark in every photometry
    return Mammogram(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        laterality=header.laterality,
        view=header.view,
        photometric=header.photometric,
        bits_stored=header.bits_stored,
        pixel_spacing_mm=header.pixel_spacing_mm,
        presentation_intent=header.presentation_intent,
        manufacturer=header.manufacturer,
        model=header.model,
        display_transform=transform,
    )


def _modality_values(path: Path, stored: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """The modality LUT's output; an empty Rescale Slope/Intercept (seen in anonymised exports) means identity."""
    if any(keyword in ds and ds[keyword].value in (None, "") for keyword in ("RescaleSlope", "RescaleIntercept")):
        file_log().warning("%s: empty Rescale Slope/Intercept; using the stored values as they are", path)
        return stored.astype(np.float64)
    return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)


def _padding_mask(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Pixels whose stored value is the (0028,0120) Pixel Padding Value, or in its range up to (0028,0121)."""
    value = ds.get("PixelPaddingValue")
    if not isinstance(value, int):
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    low, high = (min(value, limit), max(value, limit)) if isinstance(limit, int) else (value, value)
    mask = (stored >= low) & (stored <= high)
    return mask if mask.any() and not mask.all() else None


def _decode(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """The stored pixel values, through ``pydicom.pixels`` and whichever plugin handles the syntax."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise DicomError(
            f"{path}: (0028,0002) Samples per Pixel is {samples}; a mammogram must be grayscale (1)",
            public="Samples per Pixel (0028,0002) is {}; a mammogram must be grayscale (1)",
            figures=(samples,),
            lasting=True,
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(
            f"{path}: (0028,0004) Photometric Interpretation is {photometric!r}; it must be MONOCHROME1 or MONOCHROME2",
            public="its Photometric Interpretation (0028,0004) is not a grayscale one (MONOCHROME 1 or 2)",
            lasting=True,
        )
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    name = f"{syntax.name} ({syntax})" if syntax is not None else "unknown"
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError as exc:
            raise DicomError(
                f"{path}: pydicom has no decoder for transfer syntax {name}; {_PLUGIN_HINT}",
                public="pydicom has no decoder for the file's transfer syntax; convert the file to an uncompressed one",
            ) from exc
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies) or "no plugin installed"
            raise DicomError(
                f"{path}: no pixel-data plugin is installed for transfer syntax {name} ({missing}); {_PLUGIN_HINT}",
                public="no pixel-data plugin is installed for the file's compressed transfer syntax; install "
                "fedmammo's dependencies (pylibjpeg and its plugins, pyjpegls)",
            )
    try:
        return ds.pixel_array
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # Rust plugins (pylibjpeg-rle) panic with a BaseException
        compressed = syntax is not None and syntax.is_compressed
        hint = _PLUGIN_HINT if compressed else "the file may be truncated or corrupt"
        raise DicomError(
            f"{path}: pixel data could not be decoded (transfer syntax {name}): {exc}; {hint}",
            public="its compressed pixel data could not be decoded (a plugin failed, or the file is corrupt)"
            if compressed
            else "its pixel data could not be decoded (the file may be truncated or corrupt)",
            lasting=not compressed,  # a plugin may be fixed by an update; raw bytes stay what they are
        ) from exc


def _read_plain_image(path: Path) -> Mammogram:
    try:
        with Image.open(path) as image:  # the header only: pixels are decoded by np.asarray below
            check_plain_size(path, image.width, image.height)
            if getattr(image, "n_frames", 1) > 1:
                raise DicomError(
                    f"{path}: has {image.n_frames} frames/pages; give a single 2-D image",
                    public="the image file has {} frames or pages; give a single 2-D image",
                    figures=(image.n_frames,),
                    lasting=True,
                )
            mode = image.mode
            if mode in ("RGB", "RGBA", "LA", "P", "CMYK", "YCbCr", "1"):
                image = image.convert("L")
                mode = "L"
            array = np.asarray(image)
    except UnidentifiedImageError as exc:
        raise DicomError(
            f"{path}: Pillow cannot read this as an image ({exc}); is the file corrupt?",
            public="Pillow cannot read this image file; is it corrupt?",
            lasting=True,
        ) from exc
    except Image.DecompressionBombError as exc:
        raise DicomError(
            f"{path}: {exc}",
            public="the image file claims more pixels than Pillow's safety limit; its pixels were not read",
            lasting=True,
        ) from exc
    if array.ndim != 2:
        raise DicomError(
            f"{path}: image has shape {array.shape}; a mammogram must be 2-D grayscale",
            public="the image is not 2-D grayscale",
            lasting=True,
        )
    check_shape(path, array)
    if mode == "L":
        bits, pixels = 8, array.astype(np.float64) / 255.0
    elif mode == "F":
        low, high = float(array.min()), float(array.max())
        bits, pixels = None, (array.astype(np.float64) - low) / ((high - low) or 1.0)
    else:  # I;16 variants and I: often 10-14-bit detector data in a 16-bit container, so /65535 would be dark
        if not np.isfinite(array).all():
            raise DicomError(
                f"{path}: image is not finite; it holds no tissue", public="the image is not finite", lasting=True
            )
        bits, pixels = 16, robust_window(path, array.astype(np.float64))
    if not np.isfinite(pixels).all() or pixels.max() == pixels.min():
        raise DicomError(
            f"{path}: image is constant or not finite; it holds no tissue",
            public="the image is constant or not finite; it holds no tissue",
            lasting=True,
        )
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
