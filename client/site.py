"""One place that maps a node's config (simulation partition or real SuperNode) to the site it serves."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from client.ledger import LEDGER_FILE_NAME, LEDGER_KEY
from common.config import AppConfig
from common.data import FEDERATION_INDEX, NUM_CLASSES_KEY, recorded_num_classes, site_manifest
from common.errors import ConfigError, ManifestError
from common.file_names import file_safe

__all__ = [
    "PARTITION_ID_KEY",
    "POOLED_SITE_NAME",
    "SITE_NAME_KEY",
    "UNNAMED_SITE_NAME",
    "SiteSpec",
    "phantom_site_dir",
    "resolve_site",
    "study_ledger",
]

# SuperNode --node-config keys a hospital sets (deployment).
MANIFEST_KEY = "manifest"
SITE_NAME_KEY = "site-name"
CACHE_DIR_KEY = "cache-dir"
# LEDGER_KEY (the privacy ledger file) is defined with the ledger, which refuses a bad one naming it.
UNNAMED_SITE_NAME = "unnamed-site"
"""What a SuperNode without ``site-name`` reports, in replies and error replies alike (`client.safe_reply`): never
its manifest's folder name, which may carry identifiers."""
# Keys the simulation engine sets.
PARTITION_ID_KEY = "partition-id"
NUM_PARTITIONS_KEY = "num-partitions"
POOLED_SITE_NAME = "all-sites-pooled"
"""The simulated node that holds every site's data: the study's centralized reference (never in a deployment)."""


@dataclass(frozen=True)
class SiteSpec:
    """What a client needs to find its own data; ``index`` seeds per-site randomness.

    ``ledger`` is the site's privacy ledger file: node config ``ledger``, else beside the manifest.
    """

    name: str
    manifest: Path
    cache_dir: Path | None
    index: int
    ledger: Path
    members: tuple[SiteSpec, ...] = ()
    """The sites whose data this node pools (the study's centralized reference); empty for a real site."""
    deployed: bool = False
    """A real SuperNode (its node config names a manifest), not a node the simulation engine made: its DP noise
    seeds take a secret of its own (`client.noise_secret`)."""

    @property
    def pooled(self) -> bool:
        """Whether this node holds several sites' data (simulation only)."""
        return bool(self.members)


def phantom_site_dir(data_dir: str | Path, index: int) -> Path:
    """Folder of synthetic site ``index`` under the federation's data dir (layout shared with the generator)."""
    return Path(data_dir).expanduser() / f"site_{index}"


def _stable_index(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def _is_prepared(config: AppConfig, index: int) -> bool:
    """A non-synthetic folder with a ``federation.json``, or without the phantom ``site_<i>`` layout."""
    root = Path(config.federation.data_dir).expanduser()
    if config.federation.synthetic:
        return False
    return (root / FEDERATION_INDEX).is_file() or not phantom_site_dir(root, index).is_dir()


def resolve_site(node_config: Mapping[str, object], config: AppConfig) -> SiteSpec:
    """Describe the site this node serves.

    A real SuperNode is started with ``--node-config 'manifest="/data/site.csv" site-name="hospital-a"'``
    (optionally ``cache-dir``); without ``site-name`` it is ``unnamed-site`` (a folder name is never sent: it
    may carry identifiers). A simulated node only knows its ``partition-id``. In the phantom layout
    it selects ``<federation.data_dir>/site_<id>/manifest.csv`` (site ``site-<id>``); in a prepared
    folder (``federation.synthetic=false`` and a ``federation.json`` written by ``fedmammo prepare``,
    or named site folders) the ``id``-th site listed by the index (else in natural order), named
    after its folder: a simulation's folders are named by ``fedmammo prepare`` (``site_0``, ``fatty``,
    ``machine_1``) on the machine that also runs the server, so that name crosses no trust boundary.

    Raises
    ------
    ConfigError
        If the node config names neither a manifest nor a partition, or a prepared federation holds
        a different number of sites than ``federation.num_sites``, or was labelled with another number of
        classes than ``model.num_classes``.
    ManifestError
        If a simulated site's manifest is missing (the fix: generate phantoms first).
    """
    cache_override = str(node_config.get(CACHE_DIR_KEY, "") or config.data.cache_dir)
    cache_dir = Path(cache_override).expanduser() if cache_override else None

    def ledger_for(manifest: Path) -> Path:
        chosen = str(node_config.get(LEDGER_KEY, "") or "")
        return Path(chosen).expanduser() if chosen else manifest.parent / LEDGER_FILE_NAME

    if MANIFEST_KEY in node_config:
        manifest = Path(str(node_config[MANIFEST_KEY])).expanduser()
        # The name goes to the server: the hospital's chosen one, never a folder name from its disk.
        chosen = str(node_config.get(SITE_NAME_KEY, "") or "")
        index = _stable_index(chosen or str(manifest))  # seeds only; it never leaves the site
        return SiteSpec(chosen or UNNAMED_SITE_NAME, manifest, cache_dir, index, ledger_for(manifest), deployed=True)
    if PARTITION_ID_KEY in node_config:
        try:
            index = int(node_config[PARTITION_ID_KEY])  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"node config '{PARTITION_ID_KEY}' = {node_config[PARTITION_ID_KEY]!r} is not an integer"
            ) from exc
        if _is_pooled_partition(config, index):
            members = tuple(resolve_site({PARTITION_ID_KEY: i}, config) for i in range(config.federation.num_sites))
            ledger = Path(config.output.run_dir).expanduser() / "ledgers" / f"{POOLED_SITE_NAME}.json"
            return SiteSpec(POOLED_SITE_NAME, members[0].manifest, cache_dir, index, ledger, members)
        if _is_prepared(config, index):
            _check_recorded_classes(config)
            name, manifest = site_manifest(config.federation.data_dir, index, config.federation.num_sites)
            return SiteSpec(name, manifest, cache_dir, index, ledger_for(manifest))
        manifest = phantom_site_dir(config.federation.data_dir, index) / "manifest.csv"
        if not manifest.is_file():
            raise ManifestError(
                f"simulated site {index} has no manifest at {manifest}; generate the synthetic hospitals first "
                f"with `fedmammo phantoms --out {config.federation.data_dir}` (or use `fedmammo simulate`, which does)",
                public="this simulated site has no manifest; generate the synthetic hospitals first with "
                "`fedmammo phantoms` (or use `fedmammo simulate`, which does)",
            )
        return SiteSpec(f"site-{index}", manifest, cache_dir, index, ledger_for(manifest))
    raise ConfigError(
        f"node config {dict(node_config)} names no site: start the SuperNode with "
        f'--node-config \'{MANIFEST_KEY}="/path/to/manifest.csv" {SITE_NAME_KEY}="hospital-a"\''
    )


def _is_pooled_partition(config: AppConfig, index: int) -> bool:
    """The partition after the last site, in a study with a centralized arm: the launcher starts one more node."""
    return index == config.federation.num_sites and config.study.enabled and "centralized" in config.study.arm_names


def study_ledger(site: SiteSpec, node_config: Mapping[str, object], config: AppConfig, arm: str) -> Path:
    """The privacy ledger a study round of model ``arm`` charges.

    A node the simulation engine made (its node config holds only ``partition-id`` and ``num-partitions``) gives each
    of a study's models its own ledger under the run folder, so every arm is planned and reported from zero, as if
    it were the only use of the data (the report says so: a site taking part in every arm has spent the sum). Any
    other node (a real SuperNode with its ``manifest``, or one whose operator named a ``ledger`` or limits) always
    charges its one ledger, whatever the server names: a server must not reset a hospital's spending by inventing
    model names.
    """
    if not arm or not node_config or set(node_config) - {PARTITION_ID_KEY, NUM_PARTITIONS_KEY}:
        return site.ledger
    folder = Path(config.output.run_dir).expanduser() / "ledgers" / file_safe(arm)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{file_safe(site.name)}.json"


def _check_recorded_classes(config: AppConfig) -> None:
    """A prepared federation labelled for K classes trained with another number would mis-train silently.

    Labels above the model's classes are also refused per manifest, but a binary-prepared folder run with a
    3-class model would train an output no image ever has; the index written by ``fedmammo prepare`` says K.
    """
    recorded = recorded_num_classes(config.federation.data_dir)
    if recorded is not None and recorded != config.model.num_classes:
        raise ConfigError(
            f"the federation at {config.federation.data_dir} was prepared with {recorded} classes "
            f"({FEDERATION_INDEX} '{NUM_CLASSES_KEY}'), but model.num_classes = {config.model.num_classes}; "
            f"run with model.num_classes={recorded} or prepare it again with the task you mean"
        )
