"""A prepared federation folder: one ``<site>/manifest.csv`` per site, listed in order by ``federation.json``."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from common.errors import ConfigError, ManifestError

__all__ = [
    "FEDERATION_INDEX",
    "MANIFEST_NAME",
    "NUM_CLASSES_KEY",
    "list_sites",
    "recorded_num_classes",
    "site_manifest",
    "write_federation_index",
]

FEDERATION_INDEX = "federation.json"
"""File at the root of a prepared federation naming its site folders in partition order."""

MANIFEST_NAME = "manifest.csv"
"""Every site folder holds its manifest under this name."""

SITES_KEY = "sites"

NUM_CLASSES_KEY = "num_classes"
"""Index key: how many label classes the sites' manifests use (``fedmammo prepare <dataset>`` records it)."""


def write_federation_index(root: str | Path, sites: Sequence[str], info: Mapping[str, object] | None = None) -> Path:
    """Write ``federation.json`` listing ``sites`` (folder names, in partition order) plus descriptive ``info``.

    The order is explicit rather than implied by folder names so that simulated partition ``i`` always
    reaches the same site, whatever the file system lists first.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / FEDERATION_INDEX
    payload = {SITES_KEY: list(sites), **dict(info or {})}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_sites(root: str | Path) -> list[str]:
    """Site folder names of a prepared federation, in partition order.

    From ``federation.json`` when present, else every sub-folder holding a ``manifest.csv``, sorted
    naturally (``site_2`` before ``site_10``).

    Raises
    ------
    ManifestError
        If the folder is missing, its index is unreadable or names a site without a manifest,
        or it holds no site at all.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ManifestError(
            f"federation folder {root} does not exist; prepare it first, e.g. "
            f"`fedmammo prepare mini-mias <source> {root} --sites tissue`"
        )
    index = root / FEDERATION_INDEX
    if index.is_file():
        try:
            names = json.loads(index.read_text(encoding="utf-8"))[SITES_KEY]
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"{index} is not a federation index (expected JSON with a '{SITES_KEY}' list)") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ManifestError(f"{index}: '{SITES_KEY}' must be a list of site folder names, got {names!r}")
        missing = [n for n in names if not (root / n / MANIFEST_NAME).is_file()]
        if missing:
            raise ManifestError(
                f"{index} names site(s) {', '.join(missing)} without a {MANIFEST_NAME}; re-run `fedmammo prepare`"
            )
        return list(names)
    names = sorted((p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file()), key=_natural_key)
    if not names:
        raise ManifestError(f"federation folder {root} has no <site>/{MANIFEST_NAME}; prepare it first")
    return names


def recorded_num_classes(root: str | Path) -> int | None:
    """How many classes the federation at ``root`` was labelled with, or None where its index does not say.

    Indexes written before the task was recorded, by ``prepare partition``, or a folder without an index
    say nothing, so a caller keeps ``model.num_classes`` as configured; where it is recorded, a model with
    another number of classes would mis-train silently (labels out of range, or a class never seen).

    Raises
    ------
    ManifestError
        If the index is not JSON, or records a number of classes that is not an integer >= 2.
    """
    index = Path(root).expanduser() / FEDERATION_INDEX
    if not index.is_file():
        return None
    try:
        value = json.loads(index.read_text(encoding="utf-8")).get(NUM_CLASSES_KEY)
    except (ValueError, AttributeError) as exc:
        raise ManifestError(f"{index} is not a federation index (expected a JSON object)") from exc
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ManifestError(
            f"{index}: '{NUM_CLASSES_KEY}' = {value!r} must be an integer >= 2; re-run `fedmammo prepare`"
        )
    return value


def site_manifest(root: str | Path, index: int, num_sites: int) -> tuple[str, Path]:
    """Name and manifest of site ``index`` of the prepared federation at ``root``.

    Raises
    ------
    ConfigError
        If the folder holds a different number of sites than ``num_sites`` (the simulation would
        silently leave sites out or fail on a missing one), or ``index`` is out of range.
    """
    names = list_sites(root)
    if len(names) != num_sites:
        raise ConfigError(
            f"federation.num_sites = {num_sites} but {Path(root).expanduser()} holds {len(names)} site(s) "
            f"({', '.join(names)}); set federation.num_sites={len(names)}"
        )
    if not 0 <= index < len(names):
        raise ConfigError(f"partition {index} is out of range for the {len(names)} site(s) in {root}")
    return names[index], Path(root).expanduser() / names[index] / MANIFEST_NAME
