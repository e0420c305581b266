"""What a DICOM result takes from its source image: checked identifiers, a reference, spacing, the box's outline."""

from __future__ import annotations

import logging
import math
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from common.errors import DicomError

__all__ = [
    "BOX_TOLERANCE_PX",
    "MANUFACTURER",
    "MODEL_NAME",
    "REQUIRED_KEYWORDS",
    "RESEARCH_NOTE",
    "SOFTWARE_VERSION",
    "TYPE_2_KEYWORDS",
    "box_polyline",
    "checked_source",
    "scaled_spacing",
    "source_name",
    "source_reference",
]

MANUFACTURER = "fedmammo"
MODEL_NAME = "fedmammo predict"
RESEARCH_NOTE = "research use only, not for diagnosis"

try:
    SOFTWARE_VERSION = version("fedmammo")
except PackageNotFoundError:  # a source checkout run without `pip install -e .`
    SOFTWARE_VERSION = "unknown"

REQUIRED_KEYWORDS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "PatientID",
    "Rows",
    "Columns",
)
"""Without these a PACS cannot file the object with the study and patient, or a viewer cannot find the image."""

TYPE_2_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
"""Type 2 patient/study attributes: an empty value means "unknown" in DICOM, so an absent one is written empty."""

BOX_TOLERANCE_PX = 1.0
"""A box edge this far outside the image is rounding and is clipped to it; farther is a coordinate bug."""

_log = logging.getLogger(__name__)


def source_name(source: Dataset) -> str:
    """The file the dataset was read from (pydicom records it), for error messages on the site's own log."""
    filename = getattr(source, "filename", None)
    return str(filename) if filename else "the source DICOM dataset"


def checked_source(source: Dataset, *, grayscale: bool = False) -> Dataset:
    """A copy of ``source`` that highdicom can derive objects from, or a :class:`DicomError` saying what is missing.

    The identifiers in :data:`REQUIRED_KEYWORDS` must be present and non-empty: a result without the study
    and patient it belongs to would either be refused by the PACS or, worse, filed as a new patient. The
    Type 2 attributes of :data:`TYPE_2_KEYWORDS` are added empty where the source lacks them (anonymised
    exports drop some), which is what the source itself says about them: unknown. The copy shares the
    source's elements (no pixel bytes are duplicated); ``source`` itself is left unchanged.

    Parameters
    ----------
    source : pydicom.Dataset
        The source image's dataset (its pixels need not be loaded).
    grayscale : bool
        Also require one sample per pixel and MONOCHROME1/2, as a Grayscale Softcopy Presentation State does.

    Raises
    ------
    DicomError
        Naming the file and the first missing attribute, or the photometric interpretation that is not grayscale.
    """
    for keyword in REQUIRED_KEYWORDS:
        if source.get(keyword) in (None, ""):
            raise DicomError(
                f"{source_name(source)}: {keyword} is missing or empty; a DICOM result must carry the source's "
                f"patient and study identifiers ({', '.join(REQUIRED_KEYWORDS)}) so a PACS files it with the study. "
                "Predict on the original DICOM from the PACS, not a copy that dropped it",
                public="the file lacks an identifier a DICOM result must carry (the attribute is in the site's log)",
                lasting=True,
            )
    if grayscale:
        photometric = str(source.get("PhotometricInterpretation", "")).upper()
        samples = int(source.get("SamplesPerPixel", 1) or 1)
        if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise DicomError(
                f"{source_name(source)}: Photometric Interpretation {photometric!r} with {samples} samples per "
                "pixel; a grayscale presentation state needs MONOCHROME1 or MONOCHROME2 with 1 sample",
                public="the image is not grayscale, so no grayscale presentation state can reference it",
                lasting=True,
            )
    copy = Dataset()
    for element in source:
        copy.add(element)
    copy.filename = getattr(source, "filename", None)
    if hasattr(source, "file_meta"):
        copy.file_meta = source.file_meta  # the transfer syntax, should its pixels be decoded
    missing = [keyword for keyword in TYPE_2_KEYWORDS if keyword not in copy]
    for keyword in missing:
        setattr(copy, keyword, "")
    if missing:
        _log.info("source image lacks %s; written empty (DICOM Type 2: unknown)", ", ".join(missing))
    return copy


def source_reference(source: Dataset) -> Dataset:
    """An item of (0008,2112) Source Image Sequence pointing at ``source``, with its purpose of reference."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = codes.DCM.SourceImageForImageProcessingOperation
    code = Dataset()
    code.CodeValue = purpose.value
    code.CodingSchemeDesignator = purpose.scheme_designator
    code.CodeMeaning = purpose.meaning
    item.PurposeOfReferenceCodeSequence = [code]
    return item


def scaled_spacing(source: Dataset, shape: tuple[int, int]) -> tuple[float, float] | None:
    """(0028,0030) Pixel Spacing of an image showing the source's field of view at ``shape`` (rows, columns).

    Imager Pixel Spacing (at the detector, before magnification correction) is not promoted to Pixel
    Spacing: a measurement on the result would claim a calibration the source does not make.
    """
    spacing = source.get("PixelSpacing")
    if not spacing or len(spacing) != 2:
        return None
    row_mm, col_mm = (float(v) for v in spacing)
    scaled = (row_mm * int(source.Rows) / shape[0], col_mm * int(source.Columns) / shape[1])
    return tuple(float(f"{mm:.6g}") for mm in scaled)  # type: ignore[return-value]  # DS holds 16 characters


def box_polyline(box: tuple[float, float, float, float], *, rows: int, columns: int, where: str) -> np.ndarray:
    """The box ``(row0, col0, row1, col1)`` as a closed polyline of ``(column, row)`` points (DICOM's order).

    Clockwise from the top left, five points (the first repeated). Edges up to :data:`BOX_TOLERANCE_PX`
    outside the image are clipped to it; an empty box (zero height or width) stays empty.

    Raises
    ------
    DicomError
        If the box is not finite, its ends are reversed, or it lies farther outside the image: a box in
        (column, row) order, or in a resized image's pixels, would, and clipping it would draw a wrong box.
    """
    row0, col0, row1, col1 = (float(v) for v in box)
    tolerance = BOX_TOLERANCE_PX
    inside = -tolerance <= row0 <= row1 <= rows + tolerance and -tolerance <= col0 <= col1 <= columns + tolerance
    if not all(math.isfinite(v) for v in (row0, col0, row1, col1)) or not inside:
        raise DicomError(
            f"{where}: box (row0, col0, row1, col1) = {tuple(box)} is not a box inside the {rows} x {columns} "
            "image; give it in the source image's pixels, rows first, with row0 <= row1 and col0 <= col1",
            public="the suspicious-region box is not inside the image",
        )
    row0, row1 = min(max(row0, 0.0), rows), min(max(row1, 0.0), rows)
    col0, col1 = min(max(col0, 0.0), columns), min(max(col1, 0.0), columns)
    return np.array([[col0, row0], [col1, row0], [col1, row1], [col0, row1], [col0, row0]], dtype=np.float64)
