"""``fedmammo prepare``: turn a public dataset, a DICOM folder or a pooled manifest into per-site manifests."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from simulations.datasets import PreparedSite

__all__ = ["add_prepare_parser"]

_DATASET_HELP = {
    "mini-mias": "mini-MIAS: folder with Info.txt and mdbNNN images (--sites tissue: fatty / fatty_glandular / dense)",
    "cbis-ddsm": "CBIS-DDSM: case-description CSVs + TCIA CBIS-DDSM/ DICOM folders (benign-vs-malignant)",
    "inbreast": "INbreast: INbreast.xls/.csv + AllDICOMs/ (labels from BI-RADS)",
    "cmmd": "CMMD: CMMD_clinicaldata_revision.xlsx/.csv + TCIA CMMD/ DICOM folders (benign-vs-malignant)",
    "vindr": "VinDr-Mammo: breast-level_annotations.csv + images/<study>/<image>.dicom (labels from BI-RADS)",
    "cdd-cesm": "CDD-CESM: labels.csv + images/*.png, contrast-enhanced (--sites machine: machine_1 / machine_2)",
}


def _print_sites(sites: Sequence[PreparedSite], out: Path, console: Console, num_classes: int = 2) -> None:
    table = Table(title=f"prepared federation: {out}")
    for column in ("site", "images", "patients", "labels (class: images)", "missing images"):
        table.add_column(column, justify="left" if column == "site" else "right")
    for site in sites:
        labels = ", ".join(f"{k}: {v}" for k, v in site.labels.items())
        table.add_row(site.name, str(site.images), str(site.patients), labels, str(site.missing_images))
    console.print(table)
    classes = f" model.num_classes={num_classes}" if num_classes != 2 else ""  # the schema's default is 2
    console.print(
        f"simulate it with: fedmammo simulate federation.synthetic=false federation.data_dir={out} "
        f"federation.num_sites={len(sites)}{classes}"
    )


def _dataset(args: argparse.Namespace, console: Console) -> int:
    from simulations.datasets import ADAPTERS, prepare_dataset
    from simulations.datasets.labels import task_num_classes

    out = Path(args.out).expanduser().resolve()
    with console.status(f"preparing {args.dataset} from {args.source}"):
        sites = prepare_dataset(args.dataset, args.source, out, task=args.task, sites=args.sites, scheme=args.scheme,
                                alpha=args.alpha, seed=args.seed)  # fmt: skip
    _print_sites(sites, out, console, task_num_classes(args.task or ADAPTERS[args.dataset].default_task))
    return 0


def _partition(args: argparse.Namespace, console: Console) -> int:
    from simulations.datasets import prepare_partition

    out = Path(args.out).expanduser().resolve()
    sites = prepare_partition(args.manifest, out, num_sites=args.sites, scheme=args.scheme, alpha=args.alpha,
                              seed=args.seed)  # fmt: skip
    _print_sites(sites, out, console)
    return 0


def _dicom_folder(args: argparse.Namespace, console: Console) -> int:
    from common.data import dicom_folder_manifest

    with console.status(f"reading DICOM headers under {args.folder}"):
        result = dicom_folder_manifest(args.folder, args.out, args.labels)
    console.print(f"manifest: {result.path} ({result.rows} image(s), {len(result.skipped)} file(s) skipped)")
    for reason in result.skipped[:20]:  # shown on the site's own console only
        console.print(f"  skipped {reason}", highlight=False, markup=False)
    return 0


def _partition_options(parser: argparse.ArgumentParser) -> None:
    from simulations.datasets.partition import IID, SCHEMES

    parser.add_argument("--scheme", choices=SCHEMES, default=IID, help="how N sites are drawn (default iid)")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration; smaller = more skew")
    parser.add_argument("--seed", type=int, default=42)


def add_prepare_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``prepare`` and its sub-commands (one per dataset, ``partition``, ``dicom-folder``) to the CLI."""
    from simulations.datasets import ADAPTERS, TASKS

    prepare = commands.add_parser("prepare", help="write per-site manifests from a public dataset or a DICOM folder")
    kinds = prepare.add_subparsers(dest="prepare_kind", required=True)
    for name, adapter in ADAPTERS.items():
        sub = kinds.add_parser(name, help=_DATASET_HELP[name], description=_DATASET_HELP[name])
        sub.add_argument("source", help="the dataset's folder, as published")
        sub.add_argument("out", help="output folder: <out>/<site>/manifest.csv and <out>/federation.json")
        sub.add_argument("--task", choices=TASKS, default="", help=f"default {adapter.default_task}")
        sub.add_argument("--sites", default="pooled", help=f"pooled, {adapter.grouping} or a number of sites")
        _partition_options(sub)
        sub.set_defaults(handler=_dataset, dataset=name)
    partition = kinds.add_parser("partition", help="split a pooled manifest into N patient-disjoint sites")
    partition.add_argument("manifest")
    partition.add_argument("out")
    partition.add_argument("--sites", type=int, required=True, help="number of sites")
    _partition_options(partition)
    partition.set_defaults(handler=_partition)
    folder = kinds.add_parser("dicom-folder", help="DICOM folder + label CSV -> manifest (headers only)")
    folder.add_argument("folder", help="folder searched recursively for DICOM files")
    folder.add_argument("out", help="manifest CSV to write (keep it on the site: it holds patient ids)")
    folder.add_argument("--labels", required=True, help="CSV with 'label' and SOPInstanceUID or file name column")
    folder.set_defaults(handler=_dicom_folder)
