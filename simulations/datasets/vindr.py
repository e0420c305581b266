"""VinDr-Mammo adapter: ``breast-level_annotations.csv`` + ``images/<study>/<image>.dicom`` -> manifest rows.

Expected layout (PhysioNet's VinDr-Mammo 1.0.0)::

    <source>/breast-level_annotations.csv   # study_id, series_id, image_id, laterality, view_position,
                                            # height, width, breast_birads, breast_density, split
    <source>/images/<study_id>/<image_id>.dicom

Assumptions:

- Each study is one patient's screening exam and the release has one exam per patient, so the
  ``study_id`` is also the patient id (the DICOM ``PatientID`` is anonymised).
- ``breast_birads`` (``BI-RADS 1`` ... ``BI-RADS 5``) -> finding by
  :func:`simulations.datasets.birads.birads_finding`: 1 normal, 2-3 benign, 4-5 malignant (a proxy:
  VinDr has no pathology). Both tasks apply.
- The published ``split`` (training/test) is not copied: each site splits its own patients.
- ``breast_density`` (``DENSITY A`` ... ``D``) is the ``group`` for ``--sites density``.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import ManifestError
from simulations.datasets.birads import birads_finding
from simulations.datasets.tables import read_table

__all__ = ["ANNOTATIONS", "read_vindr"]

ANNOTATIONS = "breast-level_annotations.csv"
_REQUIRED = ("study_id", "image_id", "laterality", "view_position", "breast_birads")


def read_vindr(source: str | Path) -> list[dict[str, object]]:
    """One row per annotated image with a known BI-RADS grade.

    Raises
    ------
    ManifestError
        If the annotation table is missing or lacks a required column.
    """
    source = Path(source).expanduser()
    table = source / ANNOTATIONS
    raw_rows = read_table(table)
    missing = [c for c in _REQUIRED if raw_rows and c not in raw_rows[0]]
    if missing:
        raise ManifestError(f"{table} lacks column(s) {', '.join(missing)}; expected VinDr-Mammo's {ANNOTATIONS}")
    rows: list[dict[str, object]] = []
    for raw in raw_rows:
        finding = birads_finding(raw["breast_birads"])
        if finding is None:
            continue
        density = raw.get("breast_density", "").replace("DENSITY", "").strip() or "unknown"
        rows.append(
            {
                "image_path": (source / "images" / raw["study_id"] / f"{raw['image_id']}.dicom").resolve(),
                "patient_id": raw["study_id"],
                "study_id": raw["study_id"],
                "laterality": raw["laterality"].upper() if raw["laterality"].upper() in ("L", "R") else "",
                "view": raw["view_position"].upper() if raw["view_position"].upper() in ("CC", "MLO") else "",
                "finding": finding,
                "group": f"density_{density}",
            }
        )
    return rows
