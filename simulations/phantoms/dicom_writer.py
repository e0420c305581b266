"""Write one phantom mammogram as a DICOM Part 10 file (Digital Mammography X-Ray, For Presentation)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from simulations.phantoms.scanners import ScannerProfile

__all__ = ["PATIENT_ORIENTATION", "ImageHeader", "phantom_uid", "write_dicom"]

PATIENT_ORIENTATION: dict[tuple[str, str], list[str]] = {
    ("L", "CC"): ["A", "R"],
    ("R", "CC"): ["P", "L"],
    ("L", "MLO"): ["A", "FR"],
    ("R", "MLO"): ["P", "FL"],
}
"""(0020,0020) per laterality and view: a left breast's chest wall on the image's left, a right one's on its right."""

_STUDY_DATE = "20240101"


@dataclass(frozen=True)
class ImageHeader:
    """Identifiers and geometry of one image; all anonymous and derived from the generation seed."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    series_number: int
    instance_number: int
    laterality: str
    view: str
    pixel_spacing_mm: float
    institution: str
    patient_age: str = ""
    """(0010,1010) Patient's Age, ``058Y``; empty leaves the tag out."""


def phantom_uid(*parts: object) -> str:
    """A DICOM UID that is the same every time for the same ``parts`` (seed, site, patient, ...).

    pydicom hashes ``entropy_srcs`` under its own root, so reruns reproduce files byte for byte
    while different sites, patients and images never collide.
    """
    return str(generate_uid(entropy_srcs=["fedmammo-phantom", *(str(p) for p in parts)]))


def write_dicom(path: Path, pixels: np.ndarray, header: ImageHeader, profile: ScannerProfile) -> Path:
    """Write ``pixels`` (uint16 stored values) with the tags a mammography reader relies on.

    Parameters
    ----------
    path : Path
        Destination ``.dcm`` file (its folder must exist).
    pixels : numpy.ndarray
        2-D uint16 stored values already encoded for ``profile`` (bit depth, MONOCHROME1 inversion).
    header : ImageHeader
        Patient, study, series and image identifiers plus laterality/view.
    profile : ScannerProfile
        The site's scanner: bit depth, photometric interpretation, rescale, window and make/model.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = header.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    ds.SOPInstanceUID = header.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = _STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = profile.manufacturer
    ds.ManufacturerModelName = profile.model
    ds.InstitutionName = header.institution
    ds.ReferringPhysicianName = ""
    ds.PatientName = f"PHANTOM^{header.patient_id}"
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    if header.patient_age:
        ds.PatientAge = header.patient_age
    ds.PatientIdentityRemoved = "YES"
    ds.BodyPartExamined = "BREAST"
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.StudyID = header.patient_id[-16:]
    ds.SeriesNumber = header.series_number
    ds.InstanceNumber = header.instance_number
    ds.PatientOrientation = PATIENT_ORIENTATION[(header.laterality, header.view)]
    ds.Laterality = header.laterality
    ds.ImageLaterality = header.laterality
    ds.ViewPosition = header.view
    ds.BurnedInAnnotation = "NO"
    spacing = f"{header.pixel_spacing_mm:.6g}"
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = profile.photometric
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = profile.bits_stored
    ds.HighBit = profile.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = f"{profile.rescale_intercept:.6g}"
    ds.RescaleSlope = f"{profile.rescale_slope:.6g}"
    ds.RescaleType = "US"
    center, width = profile.window()
    ds.WindowCenter = f"{center:.6g}"
    ds.WindowWidth = f"{width:.6g}"
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return path
