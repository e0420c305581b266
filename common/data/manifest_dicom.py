"""A folder of DICOM files plus a label table -> a site manifest, reading headers only (never pixels).

The manifest this writes stays on the hospital's disk and holds the real ``PatientID`` (splits are by
patient); nothing here logs identifiers or file names, only counts.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from common.data.manifest import csv_read_errors, write_manifest
from common.errors import ManifestError

__all__ = ["LABEL_KEYS", "FolderManifest", "ManifestHeader", "dicom_folder_manifest", "read_manifest_header"]

logger = logging.getLogger(__name__)

LABEL_KEYS: tuple[str, ...] = ("sop_instance_uid", "sopinstanceuid", "file_name", "filename", "file", "image_path")
"""Label-table columns that may name the image (first one present wins): a UID or a file name/relative path."""
LABEL_COLUMN = "label"
_VIEWS = {"CC": "CC", "MLO": "MLO", "ML": "ML", "LM": "LM", "XCCL": "XCCL", "MEDIO-LATERAL OBLIQUE": "MLO"}
_VIEW_MEANINGS = {"cranio-caudal": "CC", "medio-lateral oblique": "MLO", "medio-lateral": "ML", "latero-medial": "LM"}
_HEADER_TAGS = ["PatientID", "StudyInstanceUID", "SOPInstanceUID", "ImageLaterality", "Laterality", "ViewPosition",
                "ViewCodeSequence"]  # fmt: skip


@dataclass(frozen=True)
class ManifestHeader:
    """The identifying fields of one image: who, which exam, which breast, which view.

    Unlike :class:`common.data.dicom_header.DicomHeader` (safe to report off site), this holds the patient id.
    """

    patient_id: str
    study_id: str
    sop_uid: str
    laterality: str
    view: str


def read_manifest_header(path: str | Path) -> ManifestHeader:
    """Read the few header fields a manifest needs, stopping before the pixel data.

    Raises
    ------
    ManifestError
        If the file is not DICOM; the caller skips it with that reason.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except Exception as exc:  # pydicom also raises struct.error, NotImplementedError... on truncated headers
        raise ManifestError(f"{path} is not a readable DICOM file ({type(exc).__name__})") from exc

    def text(keyword: str) -> str:
        return str(ds.get(keyword, "") or "").strip()

    laterality = next((v for v in (text("ImageLaterality").upper(), text("Laterality").upper()) if v in "LR" and v), "")
    return ManifestHeader(
        patient_id=text("PatientID"),
        study_id=text("StudyInstanceUID"),
        sop_uid=text("SOPInstanceUID"),
        laterality=laterality,
        view=_VIEWS.get(text("ViewPosition").upper(), "") or _view_from_code(ds),
    )


def _view_from_code(ds: pydicom.Dataset) -> str:
    """Some vendors leave ViewPosition empty and code the view in (0054,0220) View Code Sequence."""
    for item in ds.get("ViewCodeSequence") or []:
        meaning = str(item.get("CodeMeaning", "") or "").strip().lower()
        if meaning in _VIEW_MEANINGS:
            return _VIEW_MEANINGS[meaning]
    return ""


@dataclass
class FolderManifest:
    """What :func:`dicom_folder_manifest` wrote and what it left out (reasons may name files: keep them on site)."""

    path: Path
    rows: int
    skipped: list[str] = field(default_factory=list)


def _read_labels(labels: Path) -> tuple[str, dict[str, int]]:
    with csv_read_errors(labels, "label table"), labels.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = {h.strip().lower(): h for h in reader.fieldnames or []}
        key = next((k for k in LABEL_KEYS if k in header), None)
        if key is None or LABEL_COLUMN not in header:
            raise ManifestError(
                f"label table {labels} needs a '{LABEL_COLUMN}' column and one of {', '.join(LABEL_KEYS)}; "
                f"its header is {list(header.values())}"
            )
        mapping: dict[str, int] = {}
        problems = []
        for line, row in enumerate(reader, start=2):
            name, value = (row.get(header[key]) or "").strip(), (row.get(header[LABEL_COLUMN]) or "").strip()
            if not value.isdigit():
                problems.append(f"line {line}: label {value!r} is not a non-negative integer")
            elif name:
                mapping[name] = int(value)
    if problems:
        raise ManifestError(f"label table {labels} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return key, mapping


def _candidates(folder: Path) -> Iterable[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith("."))


def dicom_folder_manifest(folder: str | Path, out: str | Path, labels: str | Path) -> FolderManifest:
    """Write ``out`` (a manifest CSV) for every DICOM under ``folder`` that the label table labels.

    The label table is a CSV with a ``label`` column and a key column: ``SOPInstanceUID`` (matched to
    the header) or a file name / path relative to ``folder`` (matched to the file's relative path, then
    its name). Files that are not DICOM, have no ``PatientID`` or have no label are skipped with a
    reason. Image paths are written relative to the manifest's folder when possible.

    Raises
    ------
    ManifestError
        If the label table is unusable or no file could be labelled.
    """
    folder, out = Path(folder).expanduser().resolve(), Path(out).expanduser().resolve()
    if not folder.is_dir():
        raise ManifestError(f"DICOM folder {folder} does not exist")
    key, mapping = _read_labels(Path(labels).expanduser())
    by_uid = key.startswith("sop")
    rows, skipped = [], []
    for path in _candidates(folder):
        relative = path.relative_to(folder).as_posix()
        try:
            header = read_manifest_header(path)
        except ManifestError as exc:
            skipped.append(str(exc))
            continue
        label = mapping.get(header.sop_uid) if by_uid else mapping.get(relative, mapping.get(path.name))
        if label is None or not header.patient_id:
            skipped.append(f"{relative}: {'no PatientID in header' if label is not None else 'no label in the table'}")
            continue
        try:
            image = path.relative_to(out.parent).as_posix()
        except ValueError:
            image = str(path)
        rows.append({"image_path": image, "label": label, "patient_id": header.patient_id,
                     "study_id": header.study_id, "laterality": header.laterality, "view": header.view})  # fmt: skip
    if not rows:
        raise ManifestError(
            f"no DICOM file under {folder} matched a row of the label table by {key} ({len(skipped)} skipped)"
        )
    logger.info("dicom-folder manifest: %d image(s) written, %d file(s) skipped", len(rows), len(skipped))
    return FolderManifest(write_manifest(out, rows), len(rows), skipped)
