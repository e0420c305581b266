"""Map modality-LUT values of one DICOM image to [0, 1]: VOI LUT, the first window, or a robust fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_voi_lut

from common.data.dicom_header import FOR_PROCESSING
from common.errors import DicomError
from common.file_log import file_log

__all__ = [
    "ROBUST_PERCENTILES",
    "VOI_LOG_ROBUST",
    "VOI_LUT",
    "VOI_ROBUST",
    "VOI_WINDOW",
    "apply_display_transform",
    "robust_window",
]

ROBUST_PERCENTILES = (0.1, 99.9)
"""Where the fallback window is cut: ignores a few dead/hot pixels without saturating calcifications."""

VOI_LUT = "voi-lut"
VOI_WINDOW = "window"
VOI_ROBUST = "robust-min-max"
VOI_LOG_ROBUST = "log-robust"


def apply_display_transform(
    path: Path, values: np.ndarray, ds: pydicom.Dataset, *, intent: str, padding: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """Turn modality-LUT output into [0, 1] the way the file asks to be displayed (inversion excluded).

    The rule, first match wins:

    1. a (0028,3010) VOI LUT Sequence: its **first** LUT, scaled by the LUT's output range;
    2. (0028,1050/1051) Window Centre/Width: the **first** window (with the file's VOI LUT Function,
       LINEAR or SIGMOID), scaled by the window's output range. The standard orders the windows by the
       modality's preference, viewers show the first by default (GE labels it ``NORMAL`` before
       ``HARDER``/``SOFTER``), and it is what the radiologist read; the widest would be deterministic too
       but shows less contrast than the vendor tuned for;
    3. no VOI and ``FOR PROCESSING`` (raw detector signal, roughly linear in exposure): log (of the
       values, shifted to start at 1 only if some are below 1), then a robust window at
       :data:`ROBUST_PERCENTILES`. By Beer-Lambert the log of exposure is linear in attenuation x
       thickness, so grey level then follows tissue, as vendors' presentation processing roughly does
       (without their proprietary contrast equalisation); MONOCHROME1 inversion then makes tissue bright.
       Data whose (0028,1040) Pixel Intensity Relationship already says ``LOG`` is not logged twice;
    4. no VOI otherwise: robust min-max (the same percentiles) on the values.

    A VOI the file gets wrong (a window narrower than 1, an unknown VOI LUT Function, a LUT pydicom
    cannot read) is logged and skipped to the next rule: the image is still usable, only its vendor
    display tuning is lost.

    Parameters
    ----------
    path : Path
        The file, only to name it in errors.
    values : numpy.ndarray
        Modality-LUT output (float64, 2-D).
    ds : pydicom.Dataset
        The file's dataset (VOI attributes).
    intent : str
        ``"FOR PRESENTATION"``, ``"FOR PROCESSING"`` or ``""``.
    padding : numpy.ndarray or None
        Pixels the file marks as padding (Pixel Padding Value): left out of the robust window's
        percentiles, where a large padded border would otherwise set the low end and flatten the tissue.

    Returns
    -------
    tuple of numpy.ndarray and str
        The [0, 1] float64 image and which rule applied (``voi-lut``, ``window``, ``log-robust``,
        ``robust-min-max``).

    Raises
    ------
    DicomError
        If the chosen transform maps the whole image to one value.
    """
    lut_items = ds.get("VOILUTSequence") or []
    try:
        if lut_items and "LUTDescriptor" in lut_items[0] and "LUTData" in lut_items[0]:
            return _scaled_voi(path, values, _as_16_bit_lut(ds, lut_items[0]), lut_items[0]), VOI_LUT
        if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            return _scaled_voi(path, values, ds, None), VOI_WINDOW
    except (ValueError, TypeError, NotImplementedError, AttributeError, IndexError, KeyError) as exc:
        file_log().warning("%s: its VOI LUT/window cannot be applied (%s); using a robust window instead", path, exc)
    image = values if padding is None or padding.all() else values[~padding]  # the pixels that are image
    if intent == FOR_PROCESSING and str(ds.get("PixelIntensityRelationship", "")).upper() != "LOG":
        offset = 0.0 if image.min() >= 1.0 else 1.0 - float(image.min())  # log needs positive values
        logged = np.log(np.maximum(values + offset, 1.0))  # padding below the image's minimum stays finite
        return robust_window(path, logged, among=np.log(image + offset)), VOI_LOG_ROBUST
    return robust_window(path, values, among=image), VOI_ROBUST


def _as_16_bit_lut(ds: pydicom.Dataset, item: pydicom.Dataset) -> pydicom.Dataset:
    """The dataset to hand pydicom for ``item``: an 8-bit LUT re-described as 16-bit, which it reads alike.

    pydicom 3.0 indexes an 8-bit LUT with a uint8 array, so every input past 255 entries wraps
    (a linear 4096-entry LUT gives a saw-tooth). Entries are read one per value either way (US or
    OW words), so only the descriptor's bit depth changes.
    """
    descriptor = [int(v) for v in item.LUTDescriptor]
    if len(descriptor) != 3 or descriptor[2] != 8:
        return ds
    patched_item = Dataset()
    patched_item.LUTDescriptor = [descriptor[0], descriptor[1], 16]
    patched_item.add(item["LUTData"])
    patched = Dataset()
    patched.VOILUTSequence = [patched_item]
    if hasattr(ds, "file_meta"):
        patched.file_meta = ds.file_meta
    patched.set_original_encoding(*ds.original_encoding, character_encoding=ds.original_character_set)
    return patched


def _scaled_voi(path: Path, values: np.ndarray, ds: pydicom.Dataset, lut: pydicom.Dataset | None) -> np.ndarray:
    """Apply the first VOI LUT (``lut``) or window and map its output range to [0, 1]."""
    if lut is not None:
        # A LUT indexes integer values; its output range is the span of its entries.
        descriptor = lut.LUTDescriptor
        entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
        voi = np.asarray(apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0), dtype=np.float64)
        probe = np.arange(first, first + entries, dtype=np.int64)
    else:
        voi = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
        probe = np.array([-1e300, 1e300], dtype=np.float64)  # far outside any window: gives its output ends
    with np.errstate(over="ignore", invalid="ignore"):
        ends = np.asarray(apply_voi_lut(probe, ds, index=0), dtype=np.float64)
    low, high = float(np.nanmin(ends)), float(np.nanmax(ends))
    if not high > low:
        low, high = float(voi.min()), float(voi.max())
    if not high > low:
        raise DicomError(f"{path}: the VOI LUT / window maps the whole image to one value; it holds no tissue")
    return np.clip((voi - low) / (high - low), 0.0, 1.0)


def robust_window(path: Path, values: np.ndarray, *, among: np.ndarray | None = None) -> np.ndarray:
    """Window at the :data:`ROBUST_PERCENTILES` of the values (plain min-max when they coincide).

    Used wherever an image says nothing about how to display it (no VOI, a 16-bit PNG holding
    12-bit data), so every site's images land on the same [0, 1] scale. ``among`` are the values the
    window is computed from (default: all), e.g. without the padded border.
    """
    sample = values if among is None or among.size == 0 else among
    low, high = (float(v) for v in np.percentile(sample, ROBUST_PERCENTILES))
    if not high > low:
        low, high = float(sample.min()), float(sample.max())
    if not high > low:
        raise DicomError(f"{path}: image is constant after the display transform; it holds no tissue")
    return np.clip((values - low) / (high - low), 0.0, 1.0)
