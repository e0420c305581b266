"""Check a site's data before it joins a federation: what its manifest holds and which rows cannot be used."""

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
    cache_root,
    duplicate_rows,
    preprocess_site,
    read_header,
    read_manifest,
    unknown_labels,
)
from common.errors import DicomError, ManifestError, public_text

__all__ = ["DEFAULT_NUM_CLASSES", "UNKNOWN", "BadFile", "Duplicate", "SiteCheck", "check_site"]

DEFAULT_NUM_CLASSES = 2
"""The model's classes ``check-data`` judges labels against when not told (a binary run)."""

UNKNOWN = "(unknown)"
"""The bucket of a count whose value the manifest and the file's header both leave empty."""

_PLAIN_BITS = {"1": 1, "L": 8, "P": 8, "RGB": 8, "RGBA": 8, "LA": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32}


@dataclass(frozen=True)
class BadFile:
    """A manifest line whose image cannot be used, and why; the line, not the file's name, says which.

    ``reason`` is the error's type and fixed public reason (:func:`common.errors.public_text`), the same words
    a failing site sends: file and folder names are left out because in hospitals they often carry identifiers
    (patient ids in folder names, the SOP Instance UID as file name in PACS exports); the line finds the file.
    """

    line: int
    reason: str


@dataclass(frozen=True)
class Duplicate:
    """A manifest line listing the same image as an earlier line (same path, or one file by two paths)."""

    line: int
    same_as: int


@dataclass
class SiteCheck:
    """What a site's manifest holds: counts (no identifiers: no patient ids, UIDs, files or folders), bad rows.

    Counts describe every listed row (a header that cannot be read counts as ``(unknown)``); ``usable``,
    ``usable_patients`` and ``usable_labels`` count the images that pass row by row: readable, with a label the
    model has, each image once (a repeated row is in ``duplicates``, not ``bad_files``). Spreads are
    ``{min, median, max}``. ``refused`` is empty, or says why training refuses the whole manifest (then no
    image trains, whatever ``usable`` counts): a label that is no class of the model means the manifest and
    the run disagree on the task, and training (``client.task.check_labels``) refuses such a manifest outright.
    """

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
    duplicates: list[Duplicate] = field(default_factory=list)
    num_classes: int = DEFAULT_NUM_CLASSES
    refused: str = ""

    @property
    def trainable(self) -> bool:
        """Whether training would accept this site: some image is usable and nothing refuses the manifest."""
        return self.usable > 0 and not self.refused

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (for ``--json``)."""
        return asdict(self)


def check_site(
    manifest_path: str | Path,
    pipeline: ImagePipeline,
    *,
    num_classes: int = DEFAULT_NUM_CLASSES,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> SiteCheck:
    """Read every header of a site, run every image through the training pipeline, and count what is there.

    The verdict on each row comes from the same code as training (:func:`preprocess_site`, and the label
    rule of :func:`common.data.unknown_labels`), so a row passes here exactly when it will train; the images
    land in the site's cache on the way, so the first round does not decode them again. A row whose label is
    no class of the model is a bad row, and it makes the whole site unusable (``refused``), as training refuses
    such a manifest outright; a row repeating an earlier row's image is listed in ``duplicates`` (training uses
    the image once).

    Parameters
    ----------
    manifest_path : str or Path
        The site's manifest.
    pipeline : ImagePipeline
        The preprocessing the federation will use.
    num_classes : int
        The run's ``model.num_classes``: labels must be class indices below it.
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
    repeats = duplicate_rows(rows)
    unknown = unknown_labels(rows, num_classes)
    reasons = {row.row_number: _label_reason(row.label, num_classes) for row in unknown}
    _, skipped = preprocess_site(
        manifest_path,
        [row for row in rows if row.row_number not in repeats and row.row_number not in reasons],
        pipeline,
        cache_root(manifest_path, cache_dir),
        workers=workers,
        progress=progress,
        collect=False,
    )
    reasons.update({item.row_number: item.public for item in skipped})
    usable = [row for row in rows if row.row_number not in reasons and row.row_number not in repeats]
    pairs = list(zip(rows, headers, strict=True))  # the manifest's view and side win; the header fills gaps

    def count(values: list[str]) -> dict[str, int]:
        return dict(Counter(value or UNKNOWN for value in values).most_common())

    return SiteCheck(
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
        bad_files=[BadFile(row.row_number, reasons[row.row_number]) for row in rows if row.row_number in reasons],
        duplicates=[Duplicate(line, first) for line, first in repeats.items() if line not in reasons],
        num_classes=num_classes,
        refused=_refusal(len(unknown), num_classes),
    )


def _refusal(unknown: int, num_classes: int) -> str:
    """Why training refuses the whole manifest (``unknown`` rows hold no class of the model), or ``""``."""
    if not unknown:
        return ""
    return (
        f"training refuses this manifest: {unknown} row(s) have labels outside [0, {num_classes}); fix the manifest "
        "or check with --num-classes of the run"
    )


def _label_reason(label: int, num_classes: int) -> str:
    """Why a row's label makes it unusable, in the fixed words of a public reason (the label is a number)."""
    return public_text(
        ManifestError(
            f"label {label} is not a class of a {num_classes}-class model",
            public="its label {} is not a class of a {}-class model (labels are class indices 0 to {}); fix the "
            "manifest or check with --num-classes of the run",
            figures=(label, num_classes, num_classes - 1),
        )
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
    except (DicomError, OSError, RuntimeError, ValueError):  # the decoding step says why, per line
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
