"""INbreast adapter: ``INbreast.xls`` (or its CSV export) + ``AllDICOMs/`` -> manifest rows labelled by BI-RADS.

Expected layout (the INbreast release as distributed by its authors)::

    <source>/INbreast.xls  (or INbreast.csv)   # Laterality; View; Acquisition date; File Name; ACR; Bi-Rads
    <source>/AllDICOMs/22678622_61b13c59bcba149e_MG_R_CC_ANON.dcm

Assumptions:

- ``File Name`` is the number a DICOM file name starts with; the second ``_``-separated part of the
  file name is the case hash, which is the same for all of a patient's images, so it is the patient
  id (the table's ``Patient ID`` column is anonymised away in the release).
- Laterality and view come from the table (``R``/``L``, ``CC``/``MLO``), else from the file name.
- BI-RADS -> finding by :func:`simulations.datasets.birads.birads_finding` (1 normal, 2-3 benign,
  4a-6 malignant); rows with another value are dropped. Both tasks apply.
- ``ACR`` breast density (1-4) is the ``group`` for ``--sites density``.
- A CSV export may be ``;``-separated (as the authors' own CSV is); either delimiter is read.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import ManifestError
from simulations.datasets.birads import birads_finding
from simulations.datasets.tables import find_table, read_table

__all__ = ["read_inbreast"]


def _file_index(source: Path) -> dict[str, Path]:
    folder = source / "AllDICOMs" if (source / "AllDICOMs").is_dir() else source
    return {p.name.split("_")[0]: p.resolve() for p in sorted(folder.rglob("*.dcm"))}


def read_inbreast(source: str | Path) -> list[dict[str, object]]:
    """One row per image in the table that has a DICOM file and a usable BI-RADS grade.

    Raises
    ------
    ManifestError
        If the table is missing, lacks ``File Name`` or ``Bi-Rads``, or no row matches a DICOM file.
    """
    source = Path(source).expanduser()
    table = find_table(source, ("INbreast",))
    raw_rows = read_table(table)
    if raw_rows and not {"file_name", "bi_rads"} <= raw_rows[0].keys():
        raise ManifestError(f"{table} needs columns 'File Name' and 'Bi-Rads'; it has {sorted(raw_rows[0])}")
    files = _file_index(source)
    rows: list[dict[str, object]] = []
    for raw in raw_rows:
        number = raw.get("file_name", "").split(".")[0]
        finding = birads_finding(raw.get("bi_rads", ""))
        path = files.get(number)
        if path is None or finding is None:
            continue
        parts = path.stem.split("_")
        laterality = (raw.get("laterality", "") or (parts[3] if len(parts) > 4 else "")).upper()
        view = (raw.get("view", "") or (parts[4] if len(parts) > 4 else "")).upper()
        rows.append(
            {
                "image_path": path,
                "patient_id": parts[1] if len(parts) > 1 else number,
                "laterality": laterality if laterality in ("L", "R") else "",
                "view": view if view in ("CC", "MLO") else "",
                "finding": finding,
                "group": f"density_{raw.get('acr', '') or 'unknown'}",
            }
        )
    if not rows:
        raise ManifestError(
            f"no row of {table} matched a DICOM file under {source}/AllDICOMs (file names start with 'File Name')"
        )
    return rows
