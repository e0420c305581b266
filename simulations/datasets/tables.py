"""Reading the label tables public datasets ship (CSV, or Excel when pandas is installed) with normalised headers."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from common.errors import ManifestError

__all__ = ["find_table", "normalise_header", "read_table"]


def normalise_header(name: str) -> str:
    """``'Left or Right Breast'`` -> ``'left_or_right_breast'``: datasets spell the same column differently."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def _read_excel(path: Path) -> list[dict[str, str]]:
    try:
        import pandas as pd  # optional: only for .xls/.xlsx label files
    except ImportError as exc:
        raise ManifestError(
            f"{path} is an Excel file and pandas is not installed; export it as CSV next to it "
            f"({path.with_suffix('.csv').name}) or install the Excel readers: `pip install 'fedmammo[datasets]'`"
        ) from exc
    try:
        frame = pd.read_excel(path, dtype=str).fillna("")
    except Exception as exc:  # corrupt workbook, wrong format behind the suffix, missing engine...
        raise ManifestError(f"label table {path} cannot be read as Excel ({type(exc).__name__}: {exc})") from exc
    return [{normalise_header(str(k)): str(v).strip() for k, v in row.items()} for row in frame.to_dict("records")]


def read_table(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV (any of ``, ; \\t`` as delimiter) or Excel table, keyed by normalised header.

    Raises
    ------
    ManifestError
        If the file is missing or has no header.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"label table {path} does not exist")
    if path.suffix.lower() in (".xls", ".xlsx"):
        return _read_excel(path)
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    first = text.splitlines()[0] if text.strip() else ""
    if not first:
        raise ManifestError(f"label table {path} is empty")
    delimiter = max(",;\t", key=first.count)
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    reader.fieldnames = [normalise_header(h) for h in reader.fieldnames or []]
    return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def find_table(source: Path, stems: tuple[str, ...]) -> Path:
    """The first ``<stem>.csv``, ``.xlsx`` or ``.xls`` found in ``source`` or its sub-folders (CSV preferred).

    Raises
    ------
    ManifestError
        If none exists; the message lists the names looked for.
    """
    for suffix in (".csv", ".xlsx", ".xls"):
        for stem in stems:
            direct = source / f"{stem}{suffix}"
            if direct.is_file():
                return direct
            found = sorted(source.rglob(f"{stem}{suffix}"))
            if found:
                return found[0]
    names = ", ".join(f"{s}.csv/.xlsx/.xls" for s in stems)
    raise ManifestError(f"no label table ({names}) found under {source}")
