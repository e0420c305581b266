"""DICOM results a PACS viewer shows: the heatmap as a Secondary Capture, the box in a presentation state."""

from __future__ import annotations

import math

import highdicom as hd
import numpy as np
from highdicom.color import CIELabColor
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from client.predict.dicom_source import (
    MANUFACTURER,
    MODEL_NAME,
    RESEARCH_NOTE,
    SOFTWARE_VERSION,
    box_polyline,
    checked_source,
    scaled_spacing,
    source_name,
    source_reference,
)
from client.predict.dicom_window import display_window
from common.data.dicom_header import laterality
from common.errors import DicomError

__all__ = [
    "GSPS_SERIES_NUMBER",
    "SC_SERIES_NUMBER",
    "presentation_state",
    "secondary_capture",
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
    box: tuple[float, float, float, float] | None,
    score: float,
    *,
    label: str = "malignancy score",
    note: str = "",
    series_number: int = GSPS_SERIES_NUMBER,
    instance_number: int = 1,
    description: str = _GSPS_DESCRIPTION,
) -> Dataset:
    """A Grayscale Softcopy Presentation State: the source image as its modality shows it, with the box drawn.

    The viewer opens the original pixels (full resolution, no copy) under the source's own window or VOI
    LUT (:func:`client.predict.dicom_window.display_window` picks one where the source has none) and draws
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
        outline, only the text at its place. None (a flat heatmap: no evidence for the class, so no region to
        show) draws no outline either, the text at the image's top left.
    score : float
        The model's score, shown with two decimals.
    label : str
        What the score is ("malignancy score").
    note : str
        Said after the score (e.g. that the heatmap found no evidence for the class).
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
    empty = (0.0, 0.0, 0.0, 0.0)  # no region: the text alone, at the top left
    points = box_polyline(
        empty if box is None else box, rows=int(src.Rows), columns=int(src.Columns), where=source_name(source)
    )
    has_area = bool(points[2, 0] > points[0, 0] and points[2, 1] > points[0, 1])
    layer = hd.pr.GraphicLayer(
        layer_name=_LAYER, order=1, description=f"fedmammo, {RESEARCH_NOTE}", display_color=_YELLOW
    )
    outline = hd.pr.GraphicObject(graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=points, units="PIXEL")
    text = hd.pr.TextObject(
        text_value=f"fedmammo {label} {score:.2f}{f', {note}' if note else ''} ({RESEARCH_NOTE})",
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
