"""CDD-CESM adapter: ``labels.csv`` + recombined contrast-enhanced PNGs -> manifest rows, two sites by machine.

Expected layout (our copy of the recombined images of TCIA's CDD-CESM collection; see its README)::

    <source>/labels.csv              # image, patient_id, laterality, view, pathology, machine, acr_density,
                                     # birads, age: one row per image
    <source>/images/P1_L_CM_MLO.png  # 512 x 512 8-bit grayscale, ``image`` is relative to <source>

Assumptions, from the collection's annotation sheet:

- ``pathology`` (biopsy or follow-up, per breast and view) is the finding: normal, benign or malignant,
  so every task applies; the default is three-class (normal 0, benign 1, malignant 2).
- All of a patient's images are one contrast-enhanced exam, so ``study_id`` is the patient id.
- ``machine`` (1 or 2, the acquisition unit) is the ``group`` for ``--sites machine``: a natural two-site
  federation with quantity skew (about 512 against 51 images). A row with a blank machine (two in the
  collection, each of a patient whose other images name machine 1) gets an empty group, so the natural
  grouping puts it with the rest of its patient; a patient with no machine at all is left out of
  ``--sites machine`` with a warning, and kept by ``pooled`` and ``N`` sites.
- ``acr_density`` is almost always ``_`` (not given) and the manifest has no density column, so it is not used.
- Values are stripped (the sheet has ``'CC '``); file names may hold a space (``P3_L_CM_CC .png``).
"""

from __future__ import annotations

from pathlib import Path

from common.errors import ManifestError
from simulations.datasets.tables import read_table

__all__ = ["LABELS_NAME", "MACHINE_GROUPS", "read_cdd_cesm"]

LABELS_NAME = "labels.csv"
"""The one-row-per-image label table at the top of the source folder."""

MACHINE_GROUPS = {"1": "machine_1", "2": "machine_2"}
"""``machine`` value -> site folder name for ``--sites machine``."""

_PATHOLOGIES = ("normal", "benign", "malignant")
_COLUMNS = ("image", "patient_id", "laterality", "view", "pathology", "machine")


def _check_row(raw: dict[str, str], line: int) -> list[str]:
    """Every problem of one label row, each naming its line, column, value and rule."""
    problems = []
    where = f"{LABELS_NAME} line {line}"
    for column in ("image", "patient_id"):
        if not raw[column]:
            problems.append(f"{where}: column '{column}' is empty")
    checks = (
        ("laterality", raw["laterality"].upper(), ("L", "R")),
        ("view", raw["view"].upper(), ("CC", "MLO")),
        ("pathology", raw["pathology"].lower(), _PATHOLOGIES),
        ("machine", raw["machine"], (*MACHINE_GROUPS, "")),
    )
    for column, value, allowed in checks:
        if value not in allowed:
            shown = ", ".join(a or "empty" for a in allowed)
            problems.append(f"{where}: column '{column}' = {value!r} must be one of {shown}")
    return problems


def read_cdd_cesm(source: str | Path) -> list[dict[str, object]]:
    """One row per image of ``labels.csv`` (565 in our copy), ``finding`` set, ``label`` left to the task.

    Image files are not opened here: a missing one is counted and left out by the site writer, like the
    other adapters' missing downloads.

    Raises
    ------
    ManifestError
        If ``labels.csv`` is missing, lacks a column, has no rows, or has rows with an empty image or patient,
        or an unknown laterality, view, pathology or machine; every problem is listed once with its line.
    """
    source = Path(source).expanduser()
    table = source / LABELS_NAME
    if not table.is_file():
        raise ManifestError(
            f"{table} not found: point `fedmammo prepare cdd-cesm` at the folder holding {LABELS_NAME} and images/"
        )
    raw_rows = read_table(table)
    if not raw_rows:
        raise ManifestError(f"{table} has no image rows")
    missing = [c for c in _COLUMNS if c not in raw_rows[0]]
    if missing:
        raise ManifestError(f"{table} lacks column(s) {', '.join(missing)}; it has {sorted(raw_rows[0])}")
    rows: list[dict[str, object]] = []
    problems: list[str] = []
    for line, raw in enumerate(raw_rows, start=2):
        found = _check_row(raw, line)
        if found:
            problems.extend(found)
            continue
        rows.append(
            {
                "image_path": (source / raw["image"]).resolve(),
                "patient_id": raw["patient_id"],
                "study_id": raw["patient_id"],
                "laterality": raw["laterality"].upper(),
                "view": raw["view"].upper(),
                "finding": raw["pathology"].lower(),
                "group": MACHINE_GROUPS.get(raw["machine"], ""),
            }
        )
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise ManifestError(f"{table} has {len(problems)} problem(s):\n  {shown}{more}")
    return rows
