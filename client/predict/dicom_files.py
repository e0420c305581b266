"""Write an image's DICOM results as Part 10 files beside its overlay, whole or not at all."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from client.predict.dicom_outputs import presentation_state, secondary_capture
from client.predict.dicom_window import needs_pixels
from common.data.dicom_io import IMAGE_SUFFIXES
from common.errors import DicomError

__all__ = ["write_dicom_outputs"]

_log = logging.getLogger(__name__)


def _read_source(source_path: Path) -> Dataset:
    """The source's header, with its pixels only when the presentation state needs them for a window."""
    try:
        source = pydicom.dcmread(source_path, stop_before_pixels=True)
        if needs_pixels(source):  # no window or VOI LUT: the presentation state's window comes from the pixels
            source = pydicom.dcmread(source_path)
    except (InvalidDicomError, OSError) as exc:
        raise DicomError(
            f"{source_path}: cannot be read as DICOM to attach results to its study ({exc})",
            public="the file could not be read as DICOM to attach results to its study",
        ) from exc
    return source


def _save(objects: dict[str, Dataset], out_dir: Path, stem: str) -> list[Path]:
    """Save each object as ``<stem>.<kind>.dcm``; on any failure remove what this call wrote and say which file."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DicomError(
            f"{out_dir}: the folder for the DICOM results could not be made ({exc})",
            public="the folder for the DICOM results could not be made",
        ) from exc
    written: list[Path] = []
    for kind, dataset in objects.items():
        path = out_dir / f"{stem}.{kind}.dcm"
        partial = path.with_name(path.name + ".partial")
        try:
            dataset.save_as(partial, enforce_file_format=True)
            os.replace(partial, path)
        except Exception as exc:  # a full disk, a read-only folder, a value pydicom cannot encode
            partial.unlink(missing_ok=True)
            for done in written:  # the record will list no DICOM results, so the folder holds none of this call's
                done.unlink(missing_ok=True)
            raise DicomError(
                f"{path}: could not be written ({type(exc).__name__}: {exc}); check that the output folder is "
                "writable and has free space",
                public="a DICOM result could not be written to the output folder",
            ) from exc
        written.append(path)
    return written


def write_dicom_outputs(
    source_path: Path,
    overlay_rgb: np.ndarray,
    box: tuple[float, float, float, float] | None,
    score: float,
    out_dir: Path,
    *,
    label: str = "malignancy score",
    note: str = "",
) -> list[Path]:
    """Write ``<stem>.sc.dcm`` (:func:`secondary_capture`) and ``<stem>.gsps.dcm`` (:func:`presentation_state`).

    Both are DICOM Part 10 files (file meta, Explicit VR Little Endian) a PACS accepts by C-STORE or import.
    Both objects are built before either is written, so a source that cannot give one gets neither; each
    file appears whole (written beside as ``*.partial``, then renamed), and a failure while writing removes
    this call's files, so the folder never holds half a result. The header is read without pixels unless the
    presentation state needs them for a window (:func:`client.predict.dicom_window.needs_pixels`).

    A flat heatmap (``box`` None: no evidence for the class) still gets both: the Secondary Capture shows the
    overlay that says so, and the presentation state the score and ``note`` with no outline, so every image
    predicted on has its score in the PACS and the absence of a box there is stated, not a missing file.

    Parameters
    ----------
    source_path : Path
        The image predicted on. A plain image (``.png``, ``.jpg``...) belongs to no study: nothing is written.
    overlay_rgb, box, score, label, note
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
        If the source is not DICOM, lacks an identifier, highdicom refuses a value it carries, or a file cannot be
        written (the message names the file).
    """
    source_path = Path(source_path)
    if source_path.suffix.lower() in IMAGE_SUFFIXES:
        _log.debug("plain image source: no study to attach DICOM results to")
        return []
    source = _read_source(source_path)
    try:
        objects = {
            "sc": secondary_capture(source, overlay_rgb),
            "gsps": presentation_state(source, box, score, label=label, note=note),
        }
    except DicomError:
        raise
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom's validation of a value from the source
        raise DicomError(
            f"{source_path}: highdicom refused a value taken from this file's header ({type(exc).__name__}: {exc})",
            public="a value in the file's header is not valid DICOM, so no DICOM result could be made",
        ) from exc
    return _save(objects, Path(out_dir), source_path.stem)
