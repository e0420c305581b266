"""CMMD adapter: ``CMMD_clinicaldata_revision`` table + TCIA DICOM folders -> manifest rows, labelled per breast.

Expected layout (TCIA's CMMD collection, NBIA Data Retriever "classic" folders)::

    <source>/CMMD_clinicaldata_revision.xlsx  (or .csv)   # ID1, LeftRight, Age, number, abnormality,
                                                          # classification, subtype
    <source>/CMMD/D1-0001/<study uid>/<series uid>/1-1.dcm, 1-2.dcm, ...

Assumptions:

- The clinical table has one row per (patient ``ID1``, breast ``LeftRight``) with a biopsy-proven
  ``classification`` of ``Benign`` or ``Malignant``. There are no normal images, so only
  benign-vs-malignant applies.
- Each DICOM's breast and view come from its header (``ImageLaterality``, ``ViewPosition``), read
  without pixels; its patient from ``PatientID`` (which is ``ID1``), else the folder under ``CMMD/``.
- Images of a breast that has no row in the table (a patient's other, unreported breast) are left
  out: the table says nothing about them.
- The ``ID1`` prefix (``D1`` / ``D2``, two acquisition cohorts) is the ``group`` for ``--sites cohort``.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import ManifestError
from simulations.datasets.tables import find_table, read_table

__all__ = ["read_cmmd"]

_CLASSES = {"benign": "benign", "malignant": "malignant"}


def read_cmmd(source: str | Path) -> list[dict[str, object]]:
    """One row per DICOM whose (patient, breast) the clinical table classifies.

    Raises
    ------
    ManifestError
        If the clinical table is missing or lacks ``ID1``/``LeftRight``/``classification``, or no DICOM
        file matches it.
    """
    from common.data import read_manifest_header  # pydicom: here, not when the CLI builds its parser

    source = Path(source).expanduser()
    table = find_table(source, ("CMMD_clinicaldata_revision", "CMMD_clinicaldata"))
    labels: dict[tuple[str, str], str] = {}
    for raw in read_table(table):
        if not {"id1", "leftright", "classification"} <= raw.keys():
            raise ManifestError(f"{table} needs columns ID1, LeftRight, classification; it has {sorted(raw)}")
        finding = _CLASSES.get(raw["classification"].lower())
        if finding:
            labels[(raw["id1"], raw["leftright"].upper()[:1])] = finding
    images = source / "CMMD" if (source / "CMMD").is_dir() else source
    rows: list[dict[str, object]] = []
    for path in sorted(images.rglob("*.dcm")):
        try:
            header = read_manifest_header(path)
        except ManifestError:
            continue  # not DICOM: nothing to label
        patient = header.patient_id or path.relative_to(images).parts[0]
        finding = labels.get((patient, header.laterality))
        if finding is None:
            continue
        rows.append(
            {
                "image_path": path.resolve(),
                "patient_id": patient,
                "study_id": header.study_id,
                "laterality": header.laterality,
                "view": header.view,
                "finding": finding,
                "group": f"cohort_{patient.split('-')[0]}",
            }
        )
    if not rows:
        raise ManifestError(f"no DICOM under {images} matched a (ID1, LeftRight) row of {table}")
    return rows
