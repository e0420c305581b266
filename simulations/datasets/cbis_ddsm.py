"""CBIS-DDSM adapter: the four case-description CSVs -> one manifest row per mammogram, label = worst lesion.

Expected layout (TCIA's CBIS-DDSM collection downloaded with the NBIA Data Retriever, "classic" folders)::

    <source>/mass_case_description_train_set.csv   # and mass_..._test_set, calc_..._train_set, calc_..._test_set
    <source>/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/<study uid>/<series uid>/1-1.dcm
    <source>/CBIS-DDSM/Calc-Test_P_00038_LEFT_MLO/...

The CSVs may sit anywhere under ``<source>`` and the ``CBIS-DDSM/`` level is optional. The full
mammogram of a case is the folder named ``<Mass|Calc>-<Training|Test>_<patient>_<LEFT|RIGHT>_<CC|MLO>``
(no ``_<abnormality id>`` suffix: those are the ROI and crop folders). When the CSV still has its
``image file path`` column its first component names that folder; the UID sub-folders are searched for
the first ``.dcm`` because NBIA renames them between releases.

Assumptions:

- One row per lesion; an image's label is the worst over its lesions: ``MALIGNANT`` = malignant,
  ``BENIGN`` and ``BENIGN_WITHOUT_CALLBACK`` = benign. There are no normal images, so only the
  benign-vs-malignant task applies.
- A mammogram listed in both the mass and the calcification tables is the same DDSM film: rows are
  merged on (patient, side, view).
- ``breast density`` (1-4; spelled ``breast_density`` in the mass tables) is the ``group`` for
  ``--sites density``; the image's first lesion row gives it.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import ManifestError
from simulations.datasets.labels import worst_finding
from simulations.datasets.tables import read_table

__all__ = ["PATHOLOGY_FINDINGS", "read_cbis_ddsm", "subject_folder"]

PATHOLOGY_FINDINGS = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
"""CBIS-DDSM ``pathology`` value -> finding."""

_SIDES = {"LEFT": "L", "RIGHT": "R"}
_TABLE_GLOB = "*_case_description_*_set.csv"


def subject_folder(csv_name: str, patient: str, side: str, view: str) -> str:
    """The TCIA subject folder of a full mammogram, e.g. ``Mass-Training_P_00001_LEFT_CC``."""
    kind = "Mass" if csv_name.lower().startswith("mass") else "Calc"
    part = "Test" if "_test_" in csv_name.lower() else "Training"
    return f"{kind}-{part}_{patient}_{side}_{view}"


def _find_dicom(source: Path, folders: list[str]) -> Path:
    """The first DICOM in any of the image's subject folders (a film in both tables has two)."""
    for folder in folders:
        for root in (source / "CBIS-DDSM", source):
            found = sorted((root / folder).rglob("*.dcm")) if (root / folder).is_dir() else []
            if found:
                return found[0].resolve()
    return (source / "CBIS-DDSM" / folders[0] / "1-1.dcm").resolve()  # reported missing by the writer


def read_cbis_ddsm(source: str | Path, *, locate_images: bool = True) -> list[dict[str, object]]:
    """One row per (patient, side, view), merging the mass and calcification tables.

    ``locate_images=False`` skips the folder search (for parsing the tables alone).

    Raises
    ------
    ManifestError
        If no case-description CSV is found, or rows have an unknown pathology, side or view; every
        problem is listed once with its file and line.
    """
    source = Path(source).expanduser()
    tables = sorted(source.rglob(_TABLE_GLOB))
    if not tables:
        raise ManifestError(f"no CBIS-DDSM case-description CSV ({_TABLE_GLOB}) under {source}")
    images: dict[tuple[str, str, str], dict[str, object]] = {}
    findings: dict[tuple[str, str, str], list[str]] = {}
    folders: dict[tuple[str, str, str], list[str]] = {}
    problems: list[str] = []
    for table in tables:
        for line, raw in enumerate(read_table(table), start=2):
            patient, side = raw.get("patient_id", ""), raw.get("left_or_right_breast", "").upper()
            view, pathology = raw.get("image_view", "").upper(), raw.get("pathology", "").upper()
            if not patient or side not in _SIDES or view not in ("CC", "MLO") or pathology not in PATHOLOGY_FINDINGS:
                problems.append(
                    f"{table.name} line {line}: patient {patient!r}, side {side!r}, view {view!r}, pathology "
                    f"{pathology!r} (need a patient, LEFT/RIGHT, CC/MLO, one of {', '.join(PATHOLOGY_FINDINGS)})"
                )
                continue
            key = (patient, side, view)
            findings.setdefault(key, []).append(PATHOLOGY_FINDINGS[pathology])
            given = raw.get("image_file_path", "").split("/")[0]
            folder = given or subject_folder(table.name, patient, side, view)
            if folder not in folders.setdefault(key, []):
                folders[key].append(folder)
            if key not in images:
                images[key] = {
                    "patient_id": patient,
                    "laterality": _SIDES[side],
                    "view": view,
                    "group": _density_group(raw.get("breast_density", "")),
                }
    if problems:
        listed = "\n  ".join(problems)
        raise ManifestError(f"CBIS-DDSM tables under {source} have {len(problems)} problem(s):\n  {listed}")
    return [
        {
            **images[key],
            "image_path": _find_dicom(source, folders[key]) if locate_images else folders[key][0],
            "finding": worst_finding(findings[key]),
        }
        for key in sorted(images)
    ]


def _density_group(value: str) -> str:
    """``density_1`` ... ``density_4`` (BI-RADS breast density); anything else (CBIS has a 0) is ``density_unknown``."""
    value = value.strip()
    return f"density_{value}" if value in ("1", "2", "3", "4") else "density_unknown"
