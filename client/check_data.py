"""Check a site's data before it joins a federation: what its manifest holds and which files cannot be used."""

from __future__ import annotations

import statistics
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from common.data import (
    IMAGE_SUFFIXES,
    ImagePipeline,
    ManifestRow,
    cache_root,
    preprocess_site,
    read_header,
    read_manifest,
)
from common.errors import DicomError

__all__ = ["UNKNOWN", "BadFile", "SiteCheck", "check_site"]

UNKNOWN = "(unknown)"
"""The bucket of a count whose value the manifest and the file's header both leave empty."""

_PLAIN_BITS = {"1": 1, "L": 8, "P": 8, "RGB": 8, "RGBA": 8, "LA": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32}


@dataclass(frozen=True)
class BadFile:
    """A manifest line whose image cannot be used, and why; the line, not the file's name, says which.

    File and folder names are left out because in hospitals they often carry identifiers (patient ids
    in folder names, the SOP Instance UID as file name in PACS exports); the manifest's line finds it.
    """

    line: int
    reason: str


@dataclass
class SiteCheck:
    """What a site's manifest holds: counts (no identifiers: no patient ids, UIDs or folders) and its bad files.

    Counts describe every listed image (a header that cannot be read counts as ``(unknown)``);
    ``usable_labels`` counts only the images that will train. Spreads are ``{min, median, max}``.
    """

    manifest: str
    images: int
    usable: int
    patients: int
    usable_patients: int
    labels: dict[str, int]
    usable_labels: dict[str, int]
    views: dict[str, int]
    lateralities: dict[str, int]
    vendors: dict[str, int]
    photometric: dict[str, int]
    presentation_intent: dict[str, int]
    rows_px: dict[str, float]
    columns_px: dict[str, float]
    bits_stored: dict[str, float]
    bad_files: list[BadFile] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (for ``--json``)."""
        return asdict(self)


def check_site(
    manifest_path: str | Path,
    pipeline: ImagePipeline,
    *,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> SiteCheck:
    """Read every header of a site, run every image through the training pipeline, and count what is there.

    The verdict on each file comes from the same code as training (:func:`preprocess_site`), so a file
    passes here exactly when it will train; the images land in the site's cache on the way, so the
    first round does not decode them again.

    Parameters
    ----------
    manifest_path : str or Path
        The site's manifest.
    pipeline : ImagePipeline
        The preprocessing the federation will use.
    cache_dir : str, Path or None
        The site's cache folder (``None``: ``<manifest dir>/.cache/preprocessed``, as training uses).
    workers : int or None
        Threads reading headers and decoding.
    progress : bool or None
        Progress bar while decoding (``None``: only on a terminal).

    Raises
    ------
    ManifestError
        If the manifest itself is invalid (every problem listed with its line).
    """
    manifest_path = Path(manifest_path).expanduser()
    rows = read_manifest(manifest_path)
    with ThreadPoolExecutor(max_workers=workers or 4) as pool:
        headers = list(pool.map(_header_facts, [row.image_path for row in rows]))
    _, skipped = preprocess_site(
        manifest_path,
        rows,
        pipeline,
        cache_root(manifest_path, cache_dir),
        workers=workers,
        progress=progress,
        collect=False,
    )
    reasons = {item.row_number: item.reason for item in skipped}
    usable = [row for row in rows if row.row_number not in reasons]
    pairs = list(zip(rows, headers, strict=True))  # the manifest's view and side win; the header fills gaps

    def count(values: list[str]) -> dict[str, int]:
        return dict(Counter(value or UNKNOWN for value in values).most_common())

    return SiteCheck(
        manifest=str(manifest_path),
        images=len(rows),
        usable=len(usable),
        patients=len({row.patient_id for row in rows}),
        usable_patients=len({row.patient_id for row in usable}),
        labels=count([str(row.label) for row in rows]),
        usable_labels=count([str(row.label) for row in usable]),
        views=count([row.view or str(h.get("view", "")) for row, h in pairs]),
        lateralities=count([row.laterality or str(h.get("laterality", "")) for row, h in pairs]),
        vendors=count([str(h.get("manufacturer", "")) for h in headers]),
        photometric=count([str(h.get("photometric", "")) for h in headers]),
        presentation_intent=count([str(h.get("presentation_intent", "")) for h in headers]),
        rows_px=_spread([h.get("rows") for h in headers]),
        columns_px=_spread([h.get("columns") for h in headers]),
        bits_stored=_spread([h.get("bits_stored") for h in headers]),
        bad_files=[_bad_file(row, reasons[row.row_number]) for row in rows if row.row_number in reasons],
    )


def _header_facts(path: Path) -> dict[str, object]:
    """Header facts of one file without decoding its pixels; ``{}`` when unreadable (decoding says why)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        try:
            with Image.open(path) as image:
                return {
                    "rows": image.height,
                    "columns": image.width,
                    "bits_stored": _PLAIN_BITS.get(image.mode),
                    "photometric": f"{path.suffix.lower().lstrip('.')} ({image.mode})",
                }
        except Exception:  # e.g. Pillow's DecompressionBombError; decoding gives the reason
            return {}
    try:
        header = read_header(path)
    except DicomError:
        return {}
    return {
        "rows": header.rows,
        "columns": header.columns,
        "bits_stored": header.bits_stored,
        "photometric": header.photometric,
        "presentation_intent": header.presentation_intent,
        "manufacturer": header.manufacturer,
        "view": header.view,
        "laterality": header.laterality,
    }


def _spread(values: list[object]) -> dict[str, float]:
    numbers = [float(value) for value in values if isinstance(value, int | float)]
    if not numbers:
        return {}
    return {"min": min(numbers), "median": statistics.median(numbers), "max": max(numbers)}


def _bad_file(row: ManifestRow, reason: str) -> BadFile:
    """The reason with the file's path and name replaced by ``<file>`` (see :class:`BadFile`)."""
    path = Path(row.image_path)
    spellings = {str(path), str(path.expanduser()), str(path.resolve()), path.name}
    for spelled in sorted(spellings, key=len, reverse=True):
        reason = reason.replace(spelled, "<file>")
    return BadFile(row.row_number, reason)
