"""Read a mammogram's DICOM header fields (vendor, side, view, intent, windows, spacing) without its pixels."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from common.errors import DicomError

__all__ = [
    "FOR_PRESENTATION",
    "FOR_PROCESSING",
    "INTENT_CHOICES",
    "DicomHeader",
    "header_from_dataset",
    "intent_matches",
    "read_header",
]

logger = logging.getLogger(__name__)

FOR_PRESENTATION = "FOR PRESENTATION"
FOR_PROCESSING = "FOR PROCESSING"
INTENT_CHOICES: dict[str, str | None] = {
    "any": None,
    "for_presentation": FOR_PRESENTATION,
    "for_processing": FOR_PROCESSING,
}
"""``data.presentation_intent`` values and the (0008,0068) value each admits (``None``: every file)."""

_PROCESSING_SOP_CLASSES = frozenset(  # Digital Mammography / Intra-oral / generic DX "For Processing" storage
    {"1.2.840.10008.5.1.4.1.1.1.2.1", "1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.3.1"}
)
_PRESENTATION_SOP_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.3"}
)
_SPACING_RANGE_MM = (1e-3, 5.0)
"""Plausible pixel spacings; anything outside (a stripped or corrupt header) is ignored as if absent."""
_DEFER_BYTES = 4096
_VIEW_MEANINGS = {"cranio-caudal": "CC", "medio-lateral oblique": "MLO", "medio-lateral": "ML", "latero-medial": "LM"}


@dataclass(frozen=True)
class DicomHeader:
    """The header fields the pipeline and ``check-data`` use; strings are ``""`` where the header is silent."""

    modality: str
    manufacturer: str
    model: str
    laterality: str
    view: str
    presentation_intent: str
    photometric: str
    bits_stored: int | None
    rows: int | None
    columns: int | None
    frames: int
    pixel_spacing_mm: tuple[float, float] | None
    spacing_source: str
    windows: tuple[tuple[float, float], ...]
    window_explanations: tuple[str, ...]
    voi_lut_function: str
    has_voi_lut: bool
    has_pixel_data: bool
    transfer_syntax: str
    patient_age: str = ""
    """(0010,1010) Patient's Age as written (``052Y``); read only by site-side subgroup analyses."""


def read_header(path: str | Path) -> DicomHeader:
    """Read a DICOM file's header without decoding (or even loading) its pixel data.

    Parameters
    ----------
    path : str or Path
        A DICOM Part 10 file (or a raw dataset pydicom can read with ``force``-free parsing).

    Returns
    -------
    DicomHeader

    Raises
    ------
    DicomError
        If the file is missing, not DICOM, or its header cannot be parsed; the message names the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():  # False, not an error, for a symbolic-link loop or a NUL byte in the name
        raise DicomError(
            f"DICOM file {path} does not exist or is not a regular file; check the manifest",
            public="the DICOM file does not exist or is not a regular file; check the manifest",
        )
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)  # Pixel Data's tag is seen, its bytes stay on disk
        return header_from_dataset(ds)
    except InvalidDicomError as exc:
        raise DicomError(
            f"{path} is not a DICOM file ({exc}); give a DICOM Part 10 file", public="not a DICOM file", lasting=True
        ) from exc
    except Exception as exc:  # a malformed header is the file's problem, never the caller's crash
        raise DicomError(
            f"{path}: DICOM header could not be parsed ({type(exc).__name__}: {exc})",
            public="the DICOM header could not be parsed",
        ) from exc


def header_from_dataset(ds: pydicom.Dataset) -> DicomHeader:
    """Extract :class:`DicomHeader` fields from an already-read dataset (pixels need not be present)."""
    spacing, source = _spacing(ds)
    windows, explanations = _windows(ds)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return DicomHeader(
        modality=_text(ds, "Modality").upper(),
        manufacturer=_text(ds, "Manufacturer"),
        model=_text(ds, "ManufacturerModelName"),
        laterality=laterality(ds),
        view=_view(ds),
        presentation_intent=presentation_intent(ds),
        photometric=(_text(ds, "PhotometricInterpretation") or "MONOCHROME2").upper(),
        bits_stored=_int(ds, "BitsStored"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        frames=_int(ds, "NumberOfFrames") or 1,
        pixel_spacing_mm=spacing,
        spacing_source=source,
        windows=windows,
        window_explanations=explanations,
        voi_lut_function=_text(ds, "VOILUTFunction").upper() or "LINEAR",
        has_voi_lut=bool(ds.get("VOILUTSequence")),
        has_pixel_data="PixelData" in ds,
        transfer_syntax=str(syntax or ""),
        patient_age=_text(ds, "PatientAge"),
    )


def intent_matches(intent: str, wanted: str) -> bool:
    """Whether a file of ``intent`` is admitted by ``data.presentation_intent`` = ``wanted``.

    A file whose header does not say (``""``: PNG datasets, secondary captures) is admitted under
    every choice: rejecting it would empty every public dataset, and its intent cannot be checked.
    """
    required = INTENT_CHOICES[wanted]
    return required is None or not intent or intent == required


def laterality(ds: pydicom.Dataset) -> str:
    """``"L"``/``"R"`` from (0020,0062) Image Laterality, else (0020,0060) Laterality, else Frame Laterality.

    Image Laterality is the image-level attribute the MG IOD requires; series-level Laterality is what
    older and secondary-capture files carry (Hologic's proprietary projections); enhanced/multi-frame
    objects keep Frame Laterality (0020,9072) in the shared or first per-frame functional group.
    """
    for keyword in ("ImageLaterality", "Laterality"):
        value = _text(ds, keyword).upper()
        if value in ("L", "R"):
            return value
    for group_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(group_keyword) or []
        anatomy = (groups[0].get("FrameAnatomySequence") or []) if groups else []
        value = _text(anatomy[0], "FrameLaterality").upper() if anatomy else ""
        if value in ("L", "R"):
            return value
    return ""


def presentation_intent(ds: pydicom.Dataset) -> str:
    """(0008,0068) Presentation Intent Type, else what the SOP Class implies, else ``""``."""
    value = _text(ds, "PresentationIntentType").upper()
    if value in (FOR_PRESENTATION, FOR_PROCESSING):
        return value
    sop_class = _text(ds, "SOPClassUID")
    if sop_class in _PROCESSING_SOP_CLASSES:
        return FOR_PROCESSING
    return FOR_PRESENTATION if sop_class in _PRESENTATION_SOP_CLASSES else ""


def _view(ds: pydicom.Dataset) -> str:
    """(0018,5101) View Position, else the View Code Sequence's meaning mapped to its abbreviation."""
    view = _text(ds, "ViewPosition").upper()
    if view:
        return view
    codes = ds.get("ViewCodeSequence") or []
    meaning = _text(codes[0], "CodeMeaning").lower() if codes else ""
    return _VIEW_MEANINGS.get(meaning, meaning.upper())


def _spacing(ds: pydicom.Dataset) -> tuple[tuple[float, float] | None, str]:
    """(row, column) spacing in mm and the keyword it came from.

    (0028,0030) Pixel Spacing is preferred: in MG it is calibrated to the breast plane (magnification
    corrected) when present; (0018,1164) Imager Pixel Spacing, at the detector, is the fallback.
    Implausible values (outside 0.001-5 mm, as in headers whose pixels were stripped) are skipped.
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds.get(keyword)
            pair = (float(value[0]), float(value[1])) if value is not None and len(value) == 2 else None
        except (TypeError, ValueError):
            pair = None
        if pair is not None and all(_SPACING_RANGE_MM[0] <= v <= _SPACING_RANGE_MM[1] for v in pair):
            return pair, keyword
    return None, ""


def _windows(ds: pydicom.Dataset) -> tuple[tuple[tuple[float, float], ...], tuple[str, ...]]:
    centres, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centres is None or widths is None:
        return (), ()
    centres = list(centres) if isinstance(centres, pydicom.multival.MultiValue) else [centres]
    widths = list(widths) if isinstance(widths, pydicom.multival.MultiValue) else [widths]
    explanations = ds.get("WindowCenterWidthExplanation") or []
    explanations = list(explanations) if isinstance(explanations, pydicom.multival.MultiValue) else [explanations]
    pairs = tuple((float(c), float(w)) for c, w in zip(centres, widths, strict=False))
    return pairs, tuple(str(e) for e in explanations)


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip() if value is not None else ""


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
