"""The rules that refuse an image file before and after decoding: its path, its DICOM header, its decoded shape.

Each refusal is a :class:`DicomError` with a full message (naming the file) for the site's own log and a fixed
public reason (numbers only) that may leave the site. ``lasting`` marks verdicts that follow from the file's bytes
and the settings, which the site's cache remembers until the file changes.
"""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import numpy as np

from common.data.dicom_header import DicomHeader, intent_matches
from common.errors import DicomError

__all__ = ["MAX_PIXELS", "MIN_SIDE", "check_header", "check_path", "check_plain_size", "check_shape"]

MIN_SIDE = 16
"""Images smaller than this in either dimension are rejected as degenerate."""

MAX_PIXELS = 64 * 2**20
"""Larger images (the biggest mammography detectors give ~30 M pixels) are refused before decoding: a corrupt
Rows/Columns would otherwise make a decoder allocate gigabytes. Checked on the header, before Pixel Data is read
(DICOM: `check_header`; PNG/PGM/JPEG/TIFF: `check_plain_size`)."""


def check_path(path: Path) -> None:
    """Refuse a path that does not lead to a regular file, saying why; never raises anything but DicomError.

    ``Path.exists`` says False for a loop of symbolic links (and ``resolve`` raises ``RuntimeError``): a file
    the disk cannot reach must be a bad file with its reason, not a site's crash.
    """
    try:
        status = path.stat()
    except FileNotFoundError as exc:
        raise DicomError(
            f"image file {path} does not exist; check the manifest's image_path column",
            public="the image file does not exist; check the manifest's image_path column",
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DicomError(
                f"image path {path} is a loop of symbolic links ({exc})",
                public="the image path is a loop of symbolic links; it leads to no file",
            ) from exc
        raise DicomError(
            f"image path {path} cannot be reached ({type(exc).__name__}: {exc})",
            public="the image path cannot be reached (error number {})",
            figures=(exc.errno or 0,),
        ) from exc
    except (ValueError, RuntimeError) as exc:  # a NUL byte in the name; a symbolic-link loop on older Pythons
        raise DicomError(
            f"image path {path!r} is not a usable file name ({exc})", public="the image path is not a usable file name"
        ) from exc
    if not stat.S_ISREG(status.st_mode):
        raise DicomError(
            f"image path {path} is not a regular file",
            public="the image path is not a regular file (a folder, a device or a pipe)",
        )


def check_header(path: Path, header: DicomHeader, *, require_mg: bool, wanted_intent: str) -> None:
    """Reject what the header alone shows to be unusable, before any pixel is decoded."""
    if require_mg and header.modality and header.modality != "MG":
        raise DicomError(
            f"{path}: (0008,0060) Modality is {header.modality!r}, not 'MG'; only mammograms are accepted "
            "(pass require_mg=False to read other modalities)",
            public="its DICOM Modality (0008,0060) is not MG; only mammograms are accepted",
            lasting=True,
        )
    if not intent_matches(header.presentation_intent, wanted_intent):
        raise DicomError(
            f"{path}: (0008,0068) Presentation Intent Type is {header.presentation_intent!r} but "
            f"data.presentation_intent is {wanted_intent!r}; skipped (set it to 'any' to use both kinds)",
            public="its DICOM Presentation Intent Type (0008,0068) is not the one data.presentation_intent admits",
            lasting=True,
        )
    if not header.has_pixel_data:
        raise DicomError(
            f"{path} has no Pixel Data (7FE0,0010); it is not an image (maybe a structured report)",
            public="the DICOM file has no Pixel Data; it is not an image (maybe a structured report)",
            lasting=True,
        )
    if header.frames > 1:
        raise DicomError(
            f"{path}: (0028,0008) Number of Frames is {header.frames}; multi-frame images (tomosynthesis) are not "
            "supported, give a single-frame 2-D mammogram",
            public="the DICOM file has {} frames; multi-frame images (tomosynthesis) are not supported",
            figures=(header.frames,),
            lasting=True,
        )
    if header.rows is not None and header.columns is not None and min(header.rows, header.columns) < MIN_SIDE:
        raise DicomError(
            f"{path}: image is {header.rows}x{header.columns} pixels, smaller than the minimum {MIN_SIDE}x{MIN_SIDE} "
            "(a header whose pixels were stripped?)",
            public="the image is {} x {} pixels, smaller than the minimum {} x {}",
            figures=(header.rows, header.columns, MIN_SIDE, MIN_SIDE),
            lasting=True,
        )
    if header.rows is not None and header.columns is not None and header.rows * header.columns > MAX_PIXELS:
        raise DicomError(
            f"{path}: image is {header.rows}x{header.columns} pixels, more than the maximum {MAX_PIXELS}; "
            "(0028,0010) Rows or (0028,0011) Columns is probably corrupt",
            public="its header claims {} x {} pixels, more than the maximum of {} (Rows or Columns is probably "
            "corrupt); its pixels were not read",
            figures=(header.rows, header.columns, MAX_PIXELS),
            lasting=True,
        )


def check_plain_size(path: Path, width: int, height: int) -> None:
    """Refuse a PNG/PGM/JPEG/TIFF whose header claims more than `MAX_PIXELS`, before its pixels are decoded.

    Why here and not Pillow's own guard: Pillow only warns up to twice its ``MAX_IMAGE_PIXELS`` (about 179 M
    pixels) and raises only beyond, so a corrupt or hostile header just under that would still be decoded into
    hundreds of megabytes. ``Image.open`` reads the header alone, so the size is known before any pixel.
    """
    if width * height > MAX_PIXELS:
        raise DicomError(
            f"{path}: its header claims {height}x{width} pixels (rows x columns), more than the maximum "
            f"{MAX_PIXELS}; the file is probably corrupt",
            public="the image file's header claims {} x {} pixels, more than the maximum of {} (the file is "
            "probably corrupt); its pixels were not read",
            figures=(height, width, MAX_PIXELS),
            lasting=True,
        )


def check_shape(path: Path, array: np.ndarray) -> None:
    if array.ndim != 2:
        raise DicomError(
            f"{path}: decoded pixels have shape {array.shape}; a mammogram must be one 2-D frame",
            public="the decoded pixels are not one 2-D frame",
            lasting=True,
        )
    if min(array.shape) < MIN_SIDE:
        raise DicomError(
            f"{path}: image is {array.shape[0]}x{array.shape[1]} pixels, smaller than the minimum "
            f"{MIN_SIDE}x{MIN_SIDE}",
            public="the image is {} x {} pixels, smaller than the minimum {} x {}",
            figures=(array.shape[0], array.shape[1], MIN_SIDE, MIN_SIDE),
            lasting=True,
        )
