"""Site manifests: the CSV that lists a hospital's images, labels and patients, validated row by row.

A manifest is a UTF-8 CSV with a header row; one row per image. It stays on the hospital's disk:
only counts and metrics derived from it ever leave the site, so it may hold the real patient id.

==================  ========  ==================================================================
column              required  meaning
==================  ========  ==================================================================
image_path          yes       DICOM, PNG, PGM or JPEG file; absolute, or relative to the manifest's folder
label               yes       class index: 0 benign/normal, 1 malignant; 3 classes: 0 normal, 1 benign, 2 malignant
patient_id          yes       any stable per-patient key; splits are by patient, never by image
study_id            no        exam key (e.g. StudyInstanceUID)
laterality          no        L, R or empty
view                no        CC, MLO, ML, LM, XCCL or empty
split               no        train, val or test on every row (a curated split), or empty on every row
finding             no        normal, benign, malignant or empty (finer than ``label``)
lesion_row/_col     no        lesion centre in pixels (row from the top, column from the left)
lesion_radius_px    no        radius of the lesion circle in pixels
lesion_x0/y0/x1/y1  no        lesion bounding box in pixels (x = column, y = row; x0 < x1, y0 < y1),
                              all four or none
mask_path           no        lesion mask image (non-zero = lesion); absolute or relative like image_path
density             no        BI-RADS breast density: A-D or 1-4 (subgroup analyses; other texts count as unknown)
age                 no        patient age in years at the exam, or a DICOM age string (052Y); subgroups only
==================  ========  ==================================================================

Unknown extra columns are ignored, so a site may keep its own bookkeeping columns. Every problem in a
file is collected and reported once, each naming the line, the column, the value and the rule.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import ManifestError

__all__ = [
    "BOX_COLUMNS",
    "FINDINGS",
    "MANIFEST_COLUMNS",
    "REQUIRED_COLUMNS",
    "SPLITS",
    "ManifestRow",
    "csv_read_errors",
    "read_manifest",
    "unknown_labels",
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
    "lesion_x0",
    "lesion_y0",
    "lesion_x1",
    "lesion_y1",
    "mask_path",
    "density",
    "age",
)
"""All columns we read, in the order we write them. Unknown extra columns are ignored."""

BOX_COLUMNS: tuple[str, ...] = ("lesion_x0", "lesion_y0", "lesion_x1", "lesion_y1")
"""The optional lesion bounding box, in pixels; all four or none."""

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
    lesion_box: tuple[float, float, float, float] | None = None
    """Lesion bounding box ``(x0, y0, x1, y1)`` in pixels, x the column and y the row."""
    mask_path: Path | None = None
    density: str = ""
    """BI-RADS density as written (A-D or 1-4); read only by site-side subgroup analyses."""
    age: str = ""
    """Patient age as written (years, or a DICOM AS string); read only by site-side subgroup analyses."""


def _optional_float(text: str, column: str, problems: list[str], where: str) -> float | None:
    if text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        problems.append(f"{where}: column '{column}' = {text!r} is not a number")
        return None


def _lesion_box(get: Callable[[str], str], problems: list[str], where: str) -> tuple[float, float, float, float] | None:
    """All four box columns or none; pixels are non-negative and the box has positive width and height."""
    texts = {c: get(c) for c in BOX_COLUMNS}
    given = [c for c, t in texts.items() if t]
    if not given:
        return None
    if len(given) < len(BOX_COLUMNS):
        missing = ", ".join(c for c in BOX_COLUMNS if c not in given)
        problems.append(
            f"{where}: lesion box is partial ({missing} empty); fill all of {', '.join(BOX_COLUMNS)} or none"
        )
        return None
    start = len(problems)
    values = [_optional_float(texts[c], c, problems, where) for c in BOX_COLUMNS]
    if len(problems) > start:
        return None
    x0, y0, x1, y1 = (float(v or 0.0) for v in values)
    if min(x0, y0) < 0 or x1 <= x0 or y1 <= y0:
        problems.append(
            f"{where}: lesion box (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}) must have 0 <= x0 < x1 and "
            "0 <= y0 < y1 (pixels, x = column, y = row)"
        )
        return None
    return (x0, y0, x1, y1)


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
            f"{where}: column 'label' = {label_text!r} must be a class index (0 benign/normal, 1 malignant)"
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
    if (lesion[0] is None) != (lesion[1] is None):
        problems.append(f"{where}: a lesion centre needs both 'lesion_row' and 'lesion_col' (or neither)")
    if lesion[2] is not None and (lesion[2] < 0 or lesion[0] is None):
        problems.append(
            f"{where}: column 'lesion_radius_px' = {lesion[2]:g} must be >= 0 and given with a lesion centre"
        )
    box = _lesion_box(get, problems, where)
    mask_text = get("mask_path")
    if len(problems) > start:
        return None
    path = Path(path_text)
    mask = Path(mask_text) if mask_text else None
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
        lesion_box=box,
        mask_path=None if mask is None else (mask if mask.is_absolute() else root / mask),
        density=get("density"),
        age=get("age"),
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
            f"manifest {path} does not exist (expected a CSV with columns {', '.join(REQUIRED_COLUMNS)})",
            public="the site's manifest does not exist (a CSV with columns image_path, label, patient_id)",
        )
    with csv_read_errors(path, "manifest"), path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ManifestError(
                f"manifest {path} lacks required column(s) {', '.join(missing)}; header is {header}",
                public="the manifest lacks a required column (it needs image_path, label and patient_id)",
            )
        reader.fieldnames = header
        problems: list[str] = []
        bad_lines: list[int] = []
        rows: list[ManifestRow] = []
        for line, raw in enumerate(reader, start=2):
            before = len(problems)
            row = _parse_row(raw, line, path.parent, problems, f"manifest {path} line {line}")
            if row is not None:
                rows.append(row)
            if len(problems) > before:
                bad_lines.append(line)
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise ManifestError(
            f"manifest {path} has {len(problems)} problem(s):\n  {shown}{more}",
            public="the manifest has {} invalid row(s); each problem, with the rule it breaks, is in the site's log",
            figures=(len(bad_lines),),
            lines=bad_lines,
        )
    if not rows:
        raise ManifestError(
            f"manifest {path} has a header but no image rows", public="the manifest has a header but no image rows"
        )
    return rows


def unknown_labels(rows: Iterable[ManifestRow], num_classes: int) -> list[ManifestRow]:
    """The rows whose label is not a class index of a ``num_classes``-class model (``label >= num_classes``).

    One rule for training (which refuses such a manifest) and ``check-data`` (which lists the rows), so a row
    that passes the check is one training accepts.
    """
    return [row for row in rows if not 0 <= row.label < num_classes]


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


@contextlib.contextmanager
def csv_read_errors(path: Path, what: str) -> Iterator[None]:
    """Turn a table that is not UTF-8 text, or not CSV, into a ManifestError that names it and the fix.

    Spreadsheets often export in the system's code page (cp1252 'Müller'), which would otherwise
    surface as a bare UnicodeDecodeError that names neither the file nor the remedy.
    """
    try:
        yield
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as 'CSV UTF-8'",
            public="a table of the site (its manifest) is not UTF-8 text; save it as 'CSV UTF-8'",
        ) from exc
    except csv.Error as exc:
        raise ManifestError(
            f"{what} {path} is not a readable CSV ({exc})",
            public="a table of the site (its manifest) is not a readable CSV",
        ) from exc
