"""Site manifests: the CSV that lists a hospital's images, labels and patients, validated row by row."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import ManifestError

__all__ = [
    "FINDINGS",
    "MANIFEST_COLUMNS",
    "REQUIRED_COLUMNS",
    "SPLITS",
    "ManifestRow",
    "read_manifest",
    "write_manifest",
]

REQUIRED_COLUMNS: tuple[str, ...] = ("image_path", "label", "patient_id")
"""Columns every manifest must have. ``image_path`` is relative to the manifest's folder or absolute."""

MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_path",
    "label",
    "patient_id",
    "study_id",
    "laterality",
    "view",
    "split",
    "finding",
    "lesion_row",
    "lesion_col",
    "lesion_radius_px",
)
"""All columns we read, in the order we write them. Unknown extra columns are ignored."""

SPLITS = ("train", "val", "test")
FINDINGS = ("normal", "benign", "malignant")
_LATERALITIES = ("L", "R", "")
_VIEWS = ("CC", "MLO", "ML", "LM", "XCCL", "")


@dataclass(frozen=True)
class ManifestRow:
    """One image of a site. ``row_number`` is the CSV line (header = 1) used in error messages."""

    image_path: Path
    label: int
    patient_id: str
    row_number: int
    study_id: str = ""
    laterality: str = ""
    view: str = ""
    split: str = ""
    finding: str = ""
    lesion_row: float | None = None
    lesion_col: float | None = None
    lesion_radius_px: float | None = None


def _optional_float(text: str, column: str, problems: list[str], where: str) -> float | None:
    if text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        problems.append(f"{where}: column '{column}' = {text!r} is not a number")
        return None


def _parse_row(raw: dict[str, str], line: int, root: Path, problems: list[str], where: str) -> ManifestRow | None:
    start = len(problems)
    get = lambda name: (raw.get(name) or "").strip()  # noqa: E731 - tiny local accessor
    path_text = get("image_path")
    if not path_text:
        problems.append(f"{where}: column 'image_path' is empty")
    label_text = get("label")
    label = -1
    try:
        label = int(label_text)
        if label < 0:
            raise ValueError
    except ValueError:
        problems.append(
            f"{where}: column 'label' = {label_text!r} must be a non-negative integer (0 benign/normal, 1 malignant)"
        )
    patient = get("patient_id")
    if not patient:
        problems.append(f"{where}: column 'patient_id' is empty; splits are by patient, so every row needs one")
    laterality = get("laterality").upper()
    if laterality not in _LATERALITIES:
        problems.append(f"{where}: column 'laterality' = {laterality!r} must be L, R or empty")
    view = get("view").upper()
    if view not in _VIEWS:
        problems.append(
            f"{where}: column 'view' = {view!r} must be one of {', '.join(v for v in _VIEWS if v)} or empty"
        )
    split = get("split").lower()
    if split not in (*SPLITS, ""):
        problems.append(f"{where}: column 'split' = {split!r} must be train, val, test or empty")
    finding = get("finding").lower()
    if finding not in (*FINDINGS, ""):
        problems.append(f"{where}: column 'finding' = {finding!r} must be normal, benign, malignant or empty")
    lesion = [_optional_float(get(c), c, problems, where) for c in ("lesion_row", "lesion_col", "lesion_radius_px")]
    if len(problems) > start:
        return None
    path = Path(path_text)
    return ManifestRow(
        image_path=path if path.is_absolute() else root / path,
        label=label,
        patient_id=patient,
        row_number=line,
        study_id=get("study_id"),
        laterality=laterality,
        view=view,
        split=split,
        finding=finding,
        lesion_row=lesion[0],
        lesion_col=lesion[1],
        lesion_radius_px=lesion[2],
    )


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read and validate a site manifest, reporting every bad row at once.

    Files named in the manifest are not opened here: a missing or corrupt image is the data
    loader's business (it skips that image with a reason), while a malformed manifest is the
    site's configuration error and stops the site before any round.

    Raises
    ------
    ManifestError
        If the file is missing, has no header or lacks a required column, has no rows, or
        any row is invalid; the message lists each problem with its line number.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ManifestError(
            f"manifest {path} does not exist (expected a CSV with columns {', '.join(REQUIRED_COLUMNS)})"
        )
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ManifestError(f"manifest {path} lacks required column(s) {', '.join(missing)}; header is {header}")
        reader.fieldnames = header
        problems: list[str] = []
        rows: list[ManifestRow] = []
        for line, raw in enumerate(reader, start=2):
            row = _parse_row(raw, line, path.parent, problems, f"manifest {path} line {line}")
            if row is not None:
                rows.append(row)
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise ManifestError(f"manifest {path} has {len(problems)} problem(s):\n  {shown}{more}")
    if not rows:
        raise ManifestError(f"manifest {path} has a header but no image rows")
    return rows


def write_manifest(
    path: str | Path, rows: Iterable[dict[str, object]], columns: Sequence[str] = MANIFEST_COLUMNS
) -> Path:
    """Write manifest rows (dicts keyed by column) as CSV; missing columns are left empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    return path
