"""``fedmammo prepare``: a public dataset (or a pooled manifest) -> one ``<site>/manifest.csv`` per site."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.data import (
    BOX_COLUMNS,
    MANIFEST_NAME,
    NUM_CLASSES_KEY,
    ManifestRow,
    read_manifest,
    write_federation_index,
    write_manifest,
)
from common.errors import ConfigError, ManifestError
from simulations.datasets.cbis_ddsm import read_cbis_ddsm
from simulations.datasets.cdd_cesm import read_cdd_cesm
from simulations.datasets.cmmd import read_cmmd
from simulations.datasets.inbreast import read_inbreast
from simulations.datasets.labels import BENIGN_VS_MALIGNANT, NORMAL_VS_ABNORMAL, TASK_CLASSES, THREE_CLASS, apply_task
from simulations.datasets.mini_mias import read_mini_mias
from simulations.datasets.partition import IID, MIN_SITE_PATIENTS, partition_patients
from simulations.datasets.vindr import read_vindr

__all__ = ["ADAPTERS", "POOLED", "PreparedSite", "prepare_dataset", "prepare_partition", "split_sites", "write_sites"]

logger = logging.getLogger(__name__)

Adapter = Callable[[Path], list[dict[str, object]]]


@dataclass(frozen=True)
class DatasetAdapter:
    """How to read one public dataset: its reader, its natural site grouping and its default task."""

    read: Adapter
    grouping: str
    default_task: str


ADAPTERS: dict[str, DatasetAdapter] = {
    "mini-mias": DatasetAdapter(read_mini_mias, "tissue", NORMAL_VS_ABNORMAL),
    "cbis-ddsm": DatasetAdapter(read_cbis_ddsm, "density", BENIGN_VS_MALIGNANT),
    "inbreast": DatasetAdapter(read_inbreast, "density", NORMAL_VS_ABNORMAL),
    "cmmd": DatasetAdapter(read_cmmd, "cohort", BENIGN_VS_MALIGNANT),
    "vindr": DatasetAdapter(read_vindr, "density", NORMAL_VS_ABNORMAL),
    "cdd-cesm": DatasetAdapter(read_cdd_cesm, "machine", THREE_CLASS),
}
"""``fedmammo prepare <name>`` -> adapter."""

POOLED = "pooled"
"""``--sites pooled``: one site holding everything (for centralized baselines or a later partition)."""


@dataclass(frozen=True)
class PreparedSite:
    """One written site: safe to print (counts only)."""

    name: str
    manifest: Path
    images: int
    patients: int
    labels: dict[int, int]
    missing_images: int


def split_sites(
    rows: Sequence[dict[str, object]],
    sites: str,
    *,
    grouping: str = "",
    scheme: str = IID,
    alpha: float = 0.5,
    seed: int = 42,
) -> dict[str, list[dict[str, object]]]:
    """Rows per site name: ``pooled``, the dataset's natural ``grouping`` (e.g. ``tissue``), or ``N`` sites.

    A natural grouping puts each patient wholly in the group of their first image that has one (an image
    with an empty ``group``, such as a CDD-CESM image of unrecorded machine, follows its patient), and leaves
    out with a warning the patients without any group and a group of fewer than :data:`MIN_SITE_PATIENTS`
    patients, which could never train; ``N`` sites are drawn by
    :func:`simulations.datasets.partition.partition_patients` and named ``site_0`` ... ``site_<N-1>``.

    Raises
    ------
    ConfigError
        If ``sites`` is none of those.
    """
    if sites == POOLED:
        return {POOLED: list(rows)}
    if grouping and sites == grouping:
        return _natural_sites(rows, grouping)
    if sites.isdigit() and int(sites) >= 1:
        parts = partition_patients(rows, int(sites), scheme=scheme, alpha=alpha, seed=seed)
        return {f"site_{i}": part for i, part in enumerate(parts)}
    natural = f", {grouping}" if grouping else ""
    raise ConfigError(f"--sites {sites!r} must be {POOLED}{natural} or a number of sites")


def _natural_sites(rows: Sequence[dict[str, object]], grouping: str) -> dict[str, list[dict[str, object]]]:
    """Rows per natural group (see :func:`split_sites`), a patient never split between groups."""
    first: dict[str, str] = {}
    for row in rows:
        if row.get("group"):
            first.setdefault(str(row["patient_id"]), str(row["group"]))
    out: dict[str, list[dict[str, object]]] = {}
    ungrouped = [row for row in rows if str(row["patient_id"]) not in first]
    for row in rows:
        if str(row["patient_id"]) in first:
            out.setdefault(first[str(row["patient_id"])], []).append(row)
    followers = sum(1 for row in rows if not row.get("group") and str(row["patient_id"]) in first)
    if followers:
        logger.info("%d image(s) without a %s joined their patient's group", followers, grouping)
    if ungrouped:
        logger.warning(
            "%d image(s) of %d patient(s) have no %s; left out",
            len(ungrouped),
            len({row["patient_id"] for row in ungrouped}),
            grouping,
        )
    for group, members in list(out.items()):
        patients = len({row["patient_id"] for row in members})
        if patients < MIN_SITE_PATIENTS:  # it could not split into train/val/test: a site that never trains
            logger.warning(
                "%s group %s has %d patient(s), fewer than the %d a site needs for its own splits; left out",
                grouping,
                group,
                patients,
                MIN_SITE_PATIENTS,
            )
            del out[group]
    if not out:
        raise ConfigError(f"no {grouping} group has {MIN_SITE_PATIENTS} patients; use --sites N or {POOLED}")
    return dict(sorted(out.items()))


def _exists(path: object) -> bool:
    return Path(str(path)).is_file()


def write_sites(
    out: str | Path, sites: dict[str, list[dict[str, object]]], info: dict[str, object]
) -> list[PreparedSite]:
    """Write ``<out>/<site>/manifest.csv`` per site (absolute image paths) and ``<out>/federation.json``.

    Rows whose image file does not exist are left out and counted, so a partial download still
    gives usable sites; a site left empty is an error naming the expected layout.

    Raises
    ------
    ManifestError
        If a site has no existing image.
    """
    out = Path(out).expanduser().resolve()
    written = []
    for name, rows in sites.items():
        present = [
            {**row, "image_path": str(row["image_path"])} for row in rows if Path(str(row["image_path"])).is_file()
        ]
        if not present:
            raise ManifestError(
                f"site {name}: none of its {len(rows)} image file(s) exist (first expected at "
                f"{rows[0]['image_path']}); check the source folder against the layout in the adapter's documentation"
            )
        manifest = write_manifest(out / name / MANIFEST_NAME, present)
        labels = Counter(int(row["label"]) for row in present)  # type: ignore[call-overload]
        patients = len({row["patient_id"] for row in present})
        written.append(PreparedSite(name, manifest, len(present), patients, dict(sorted(labels.items())),
                                    len(rows) - len(present)))  # fmt: skip
        logger.info("site %s: %d image(s), %d missing", name, len(present), len(rows) - len(present))
    write_federation_index(out, list(sites), info)
    return written


def prepare_dataset(
    dataset: str,
    source: str | Path,
    out: str | Path,
    *,
    task: str = "",
    sites: str = POOLED,
    scheme: str = IID,
    alpha: float = 0.5,
    seed: int = 42,
) -> list[PreparedSite]:
    """Read ``dataset`` from ``source``, label it for ``task`` and write its sites under ``out``.

    Raises
    ------
    ConfigError
        For an unknown dataset, task or site choice.
    ManifestError
        If the source does not match the dataset's published layout.
    """
    if dataset not in ADAPTERS:
        raise ConfigError(f"dataset {dataset!r} is not one of {', '.join(ADAPTERS)}")
    adapter = ADAPTERS[dataset]
    task = task or adapter.default_task
    rows = apply_task(adapter.read(Path(source).expanduser()), task, dataset=dataset)
    grouped = split_sites(rows, sites, grouping=adapter.grouping, scheme=scheme, alpha=alpha, seed=seed)
    info: dict[str, object] = {
        "dataset": dataset,
        "task": task,
        NUM_CLASSES_KEY: len(TASK_CLASSES[task]),
        "classes": list(TASK_CLASSES[task]),
        "sites_by": sites,
    }
    if sites.isdigit():
        info.update(scheme=scheme, alpha=alpha, seed=seed)
    return write_sites(out, grouped, info)


def _as_dict(row: ManifestRow) -> dict[str, object]:
    box = dict(zip(BOX_COLUMNS, row.lesion_box or (None,) * 4, strict=True))
    return {**row.__dict__, **box, "image_path": row.image_path.resolve(), "mask_path": row.mask_path or ""}


def prepare_partition(
    manifest: str | Path, out: str | Path, *, num_sites: int, scheme: str = IID, alpha: float = 0.5, seed: int = 42
) -> list[PreparedSite]:
    """Split a pooled manifest into ``num_sites`` patient-disjoint sites under ``out``."""
    rows = [_as_dict(row) for row in read_manifest(manifest)]
    grouped = split_sites(rows, str(num_sites), scheme=scheme, alpha=alpha, seed=seed)
    info = {"source_manifest": str(Path(manifest).resolve()), "scheme": scheme, "alpha": alpha, "seed": seed}
    return write_sites(out, grouped, info)
