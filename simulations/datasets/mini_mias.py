"""mini-MIAS adapter: ``Info.txt`` + ``mdbNNN`` images -> manifest rows, one patient per pair of films.

Expected layout (the Pilot European Image Processing Archive distribution, or our PNG copy)::

    <source>/Info.txt              # REFNUM TISSUE CLASS [SEVERITY X Y RADIUS], one line per lesion
    <source>/mdb001.pgm ...        # original 1024x1024 8-bit PGM, or
    <source>/images/mdb001.png ... # a lossless PNG conversion

Assumptions, from the database's own notes:

- Consecutive films are one patient's left/right pair: ``mdb001`` + ``mdb002`` is patient 1, so the
  patient id is ``mias_<(n + 1) // 2>`` and a pair is never split across sites or splits.
- Odd numbers are right breasts, even numbers left; every film is an MLO view.
- ``Info.txt`` coordinates have their origin at the bottom-left corner of the 1024-pixel image, so
  ``lesion_row = 1024 - y``; a few calcification lines have no centre (left empty).
- An image with several lesions gets its most severe finding (B = benign, M = malignant, NORM = normal).
- The background tissue (F fatty, G fatty-glandular, D dense-glandular) is the ``group`` used by
  ``--sites tissue``; both films of a patient share it.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import ManifestError
from simulations.datasets.labels import worst_finding

__all__ = ["IMAGE_SIDE", "TISSUE_SITES", "read_mini_mias"]

IMAGE_SIDE = 1024
"""mini-MIAS films are clipped/padded to 1024 x 1024 pixels of 200 microns."""

TISSUE_SITES = {"F": "fatty", "G": "fatty_glandular", "D": "dense_glandular"}
"""Background tissue code -> site folder name for ``--sites tissue``."""

_SEVERITY = {"B": "benign", "M": "malignant"}


def _image_file(source: Path, refnum: str) -> Path:
    images = source / "images"
    for folder, suffix in ((images, ".png"), (source, ".pgm"), (images, ".pgm"), (source, ".png")):
        candidate = folder / f"{refnum}{suffix}"
        if candidate.is_file():
            return candidate.resolve()
    return (source / "images" / f"{refnum}.png").resolve()  # reported missing by the writer


def _parse_info(info: Path) -> dict[str, list[list[str]]]:
    lines: dict[str, list[list[str]]] = {}
    for text in info.read_text(encoding="latin-1").splitlines():
        fields = text.split()
        if fields and fields[0].startswith("mdb") and len(fields) >= 3:
            lines.setdefault(fields[0], []).append(fields)
    if not lines:
        raise ManifestError(f"{info} lists no films (expected lines like 'mdb001 G CIRC B 535 425 197')")
    return lines


def _lesion(fields: list[str]) -> tuple[float, float, float] | None:
    try:
        x, y, radius = (float(v) for v in fields[4:7])
    except ValueError:
        return None  # "*NOTE 3*" or no centre given
    return IMAGE_SIDE - y, x, radius


def read_mini_mias(source: str | Path) -> list[dict[str, object]]:
    """One manifest row per film (322 in the full database), ``finding`` set, ``label`` left to the task.

    Raises
    ------
    ManifestError
        If ``Info.txt`` is missing or lists no films, or a line has an unknown tissue or severity code.
    """
    source = Path(source).expanduser()
    info = source / "Info.txt"
    if not info.is_file():
        raise ManifestError(f"{info} not found: point `fedmammo prepare mini-mias` at the folder holding Info.txt")
    rows: list[dict[str, object]] = []
    problems: list[str] = []
    for refnum, entries in sorted(_parse_info(info).items()):
        tissue = entries[0][1]
        findings = []
        for fields in entries:
            if fields[2] == "NORM":
                findings.append("normal")
            elif len(fields) >= 4 and fields[3] in _SEVERITY:
                findings.append(_SEVERITY[fields[3]])
            else:
                problems.append(f"line {' '.join(fields)!r} has abnormality {fields[2]} but severity not B or M")
        if tissue not in TISSUE_SITES:
            problems.append(f"{refnum} has tissue {tissue!r}, expected one of F, G, D")
        number = int(refnum[3:])
        # The mark is the most severe lesion's (a film with a benign and a malignant lesion is labelled malignant,
        # so its lesion patches must show the malignant one); Info.txt order breaks ties.
        marked = [(f[3] == "M", -i, les) for i, f in enumerate(entries) if f[2] != "NORM" and (les := _lesion(f))]
        first = max(marked)[2] if marked else (None, None, None)
        rows.append(
            {
                "image_path": _image_file(source, refnum),
                "patient_id": f"mias_{(number + 1) // 2:03d}",
                "study_id": f"mias_{(number + 1) // 2:03d}",
                "laterality": "R" if number % 2 else "L",
                "view": "MLO",
                "finding": worst_finding(findings),
                "lesion_row": first[0],
                "lesion_col": first[1],
                "lesion_radius_px": first[2],
                "group": TISSUE_SITES.get(tissue, tissue),
            }
        )
    if problems:
        raise ManifestError(f"{info} has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return rows
