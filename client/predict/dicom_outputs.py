"""DICOM results a PACS viewer shows: the heatmap as a Secondary Capture, the box in a presentation state."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from highdicom.color import CIELabColor
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian

from client.predict.dicom_source import (
    MANUFACTURER,
    MODEL_NAME,
    RESEARCH_NOTE,
    SOFTWARE_VERSION,
    box_polyline,
    checked_source,
    display_window,
    needs_pixels,
    scaled_spacing,
    source_name,
    source_reference,
)
from common.data.dicom_header import laterality
from common.data.dicom_io import IMAGE_SUFFIXES
from common.errors import DicomError

__all__ = [
    "GSPS_SERIES_NUMBER",
    "SC_SERIES_NUMBER",
    "presentation_state",
    "secondary_capture",
    "write_dicom_outputs",
]

SC_SERIES_NUMBER = 9901
GSPS_SERIES_NUMBER = 9902
"""Series numbers far above a modality's own (1, 2, ...), so the AI series sort after the images in a viewer."""

_SC_DESCRIPTION = "fedmammo AI heatmap (research use only)"
_GSPS_DESCRIPTION = "fedmammo AI box (research use only)"
_LAYER = "FEDMAMMO_AI"
_YELLOW = CIELabColor.from_rgb(255, 215, 0)
"""The layer's recommended colour: visible on grey tissue, the colour of a CAD mark."""
_PLACEHOLDER_ORIENTATION = ("A", "F")
"""Satisfies highdicom's single-letter check; replaced at once by the source's own (compound, e.g. A\\FR) value."""

_log = logging.getLogger(__name__)


def secondary_capture(
    source: Dataset,
    overlay_rgb: np.ndarray,
    *,
    series_number: int = SC_SERIES_NUMBER,
    instance_number: int = 1,
    description: str = _SC_DESCRIPTION,
) -> Dataset:
    """A Secondary Capture (RGB) of the heatmap overlay, filed in the source image's study.

    Every PACS viewer shows a Secondary Capture (not all show presentation states), so every radiologist
    can see this one. Patient and study identifiers come from the source; Series and SOP Instance UIDs
    are new; Source Image Sequence points at the source; laterality, view and Patient Orientation are
    copied, as the overlay shows the source's field of view in its orientation (downscaled or not: Pixel
    Spacing is scaled to match). Burned In Annotation is ``YES``: the overlay carries drawn text.

    Parameters
    ----------
    source : pydicom.Dataset
        The source image's header (pixels need not be loaded).
    overlay_rgb : numpy.ndarray
        ``(rows, cols, 3)`` uint8, the heatmap drawn over the mammogram, same field of view as the source.
    series_number, instance_number : int
        Where the object sorts in the viewer's series list.
    description : str
        (0008,103E) Series Description, at most 64 characters.

    Raises
    ------
    DicomError
        If an identifier is missing (:func:`checked_source`) or the overlay is not an RGB uint8 image.
    """
    src = checked_source(source)
    overlay = np.asarray(overlay_rgb)
    if overlay.dtype != np.uint8 or overlay.ndim != 3 or overlay.shape[2] != 3 or min(overlay.shape[:2]) < 1:
        raise DicomError(
            f"{source_name(source)}: the overlay is {overlay.dtype} of shape {overlay.shape}; a Secondary Capture "
            "needs an RGB image, uint8 of shape (rows, cols, 3)",
            public="the heatmap overlay is not an RGB uint8 image",
        )
    orientation = src.get("PatientOrientation")
    side = laterality(src)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=src,
        pixel_array=np.ascontiguousarray(overlay),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        pixel_spacing=scaled_spacing(src, overlay.shape[:2]),
        laterality=side or None,
        patient_orientation=_PLACEHOLDER_ORIENTATION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=description,
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
    )
    sc.copy_patient_and_study_information(src)  # the rest of the Patient/Study modules (age, identity removed)
    sc.PatientOrientation = list(orientation) if orientation else ""  # Type 2C: empty says "not known"
    if side:
        sc.ImageLaterality = side
    for keyword in ("ViewPosition", "ViewCodeSequence", "BodyPartExamined"):
        if src.get(keyword):
            sc[keyword] = src[keyword]
    sc.BurnedInAnnotation = "YES"
    sc.SourceImageSequence = [source_reference(src)]
    sc.DerivationDescription = "model heatmap drawn over the source image by fedmammo predict"
    sc.ImageComments = f"fedmammo {SOFTWARE_VERSION}: {RESEARCH_NOTE}"
    return sc


def presentation_state(
    source: Dataset,
    box: tuple[float, float, float, float],
    score: float,
    *,
    label: str = "malignancy score",
    series_number: int = GSPS_SERIES_NUMBER,
    instance_number: int = 1,
    description: str = _GSPS_DESCRIPTION,
) -> Dataset:
    """A Grayscale Softcopy Presentation State: the source image as its modality shows it, with the box drawn.

    The viewer opens the original pixels (full resolution, no copy) under the source's own window or VOI
    LUT (:func:`client.predict.dicom_source.display_window` picks one where the source has none) and draws
    a closed POLYLINE around the suspicious region and a text with the score and the research-use note.
    MONOCHROME1 sources get Presentation LUT Shape ``INVERSE``: a presentation state replaces the photometric
    inversion, so ``IDENTITY`` would show a MONOCHROME1 mammogram as a negative.

    Parameters
    ----------
    source : pydicom.Dataset
        The source image's dataset. Its pixels are needed only where it carries no window or VOI LUT.
    box : tuple of float
        ``(row0, col0, row1, col1)`` in source pixels, continuous: pixel ``(i, j)`` covers
        ``[i, i + 1) x [j, j + 1)``, so slice bounds (``pixels[row0:row1, col0:col1]``) are the box's edges.
        An empty box (``row0 == row1`` or ``col0 == col1``: the hot region lay in the padding) draws no
        outline, only the text at its place.
    score : float
        The model's score, shown with two decimals.
    label : str
        What the score is ("malignancy score").
    series_number, instance_number : int
        Where the object sorts in the viewer's series list.
    description : str
        (0008,103E) Series Description, at most 64 characters.

    Raises
    ------
    DicomError
        If an identifier is missing, the image is not grayscale, or the box is not inside the image.
    """
    src = checked_source(source, grayscale=True)
    if not math.isfinite(score):
        raise DicomError(f"{source_name(source)}: score {score!r} is not finite", public="the score is not finite")
    points = box_polyline(box, rows=int(src.Rows), columns=int(src.Columns), where=source_name(source))
    has_area = bool(points[2, 0] > points[0, 0] and points[2, 1] > points[0, 1])
    layer = hd.pr.GraphicLayer(
        layer_name=_LAYER, order=1, description=f"fedmammo, {RESEARCH_NOTE}", display_color=_YELLOW
    )
    outline = hd.pr.GraphicObject(graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=points, units="PIXEL")
    text = hd.pr.TextObject(
        text_value=f"fedmammo {label} {score:.2f} ({RESEARCH_NOTE})",
        units="PIXEL",
        anchor_point=(float(points[0, 0]), float(points[0, 1])),
        anchor_point_visible=False,
    )
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[src],
        graphic_layer=layer,
        graphic_objects=[outline] if has_area else None,
        text_objects=[text],
    )
    inverse = str(src.PhotometricInterpretation).upper() == "MONOCHROME1"
    return hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[src],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number=SOFTWARE_VERSION,  # software has no serial; its version identifies the build
        content_label=_LAYER,
        content_description=description,
        graphic_annotations=[annotation],
        graphic_layers=[layer],
        voi_lut_transformations=display_window(src),
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape="INVERSE" if inverse else "IDENTITY"
        ),
        series_description=description,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )


def write_dicom_outputs(
    source_path: Path,
    overlay_rgb: np.ndarray,
    box: tuple[float, float, float, float],
    score: float,
    out_dir: Path,
    *,
    label: str = "malignancy score",
) -> list[Path]:
    """Write ``<stem>.sc.dcm`` (:func:`secondary_capture`) and ``<stem>.gsps.dcm`` (:func:`presentation_state`).

    Both are DICOM Part 10 files (file meta, Explicit VR Little Endian) a PACS accepts by C-STORE or import.
    Both objects are built before either is written, so a source that cannot give one gets neither; each
    file appears whole (written beside, then renamed). The header is read without pixels unless the
    presentation state needs them for a window (:func:`client.predict.dicom_source.needs_pixels`).

    Parameters
    ----------
    source_path : Path
        The image predicted on. A plain image (``.png``, ``.jpg``...) belongs to no study: nothing is written.
    overlay_rgb, box, score, label
        As :func:`secondary_capture` and :func:`presentation_state` take them.
    out_dir : Path
        Created if missing.

    Returns
    -------
    list of Path
        The files written, SC first; empty for a plain image.

    Raises
    ------
    DicomError
        If the source is not DICOM, lacks an identifier, or highdicom refuses a value it carries.
    """
    source_path = Path(source_path)
    if source_path.suffix.lower() in IMAGE_SUFFIXES:
        _log.debug("plain image source: no study to attach DICOM results to")
        return []
    try:
        source = pydicom.dcmread(source_path, stop_before_pixels=True)
        if needs_pixels(source):  # no window or VOI LUT: the presentation state's window comes from the pixels
            source = pydicom.dcmread(source_path)
    except (InvalidDicomError, OSError) as exc:
        raise DicomError(
            f"{source_path}: cannot be read as DICOM to attach results to its study ({exc})",
            public="the file could not be read as DICOM to attach results to its study",
        ) from exc
    try:
        objects = {
            "sc": secondary_capture(source, overlay_rgb),
            "gsps": presentation_state(source, box, score, label=label),
        }
    except DicomError:
        raise
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom's validation of a value from the source
        raise DicomError(
            f"{source_path}: highdicom refused a value taken from this file's header ({type(exc).__name__}: {exc})",
            public="a value in the file's header is not valid DICOM, so no DICOM result could be made",
        ) from exc
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, dataset in objects.items():
        path = out_dir / f"{source_path.stem}.{kind}.dcm"
        partial = path.with_name(path.name + ".partial")
        dataset.save_as(partial, enforce_file_format=True)
        os.replace(partial, path)
        written.append(path)
    return written
