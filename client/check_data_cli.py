"""`fedmammo check-data`: check one site's manifest, or a folder of them, and show the result as tables or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from common.config import DataConfig
from common.errors import ConfigError

DEFAULT_NUM_CLASSES = 2
"""``--num-classes`` when neither given nor recorded by ``fedmammo prepare`` (a binary run); the same as
``client.check_data.DEFAULT_NUM_CLASSES``."""

if TYPE_CHECKING:  # the checker imports torch; `fedmammo --help` should not wait for it
    from client.check_data import SiteCheck

__all__ = ["add_check_data_parser", "find_manifests", "render_check", "run_check_data"]


def add_check_data_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the ``check-data`` subcommand on the ``fedmammo`` parser."""
    data = DataConfig()
    parser = commands.add_parser(
        "check-data",
        help="count a site's images, patients, labels, views, vendors, sizes, and list every unusable row",
        description="Exit status 1 when a site has no usable image, or training would refuse its manifest (a "
        "label that is no class of --num-classes), or the manifest is invalid. Give the "
        "run's data settings (image size, presentation intent, pixel spacing) and its number of classes so the "
        "verdicts and the warmed cache are the ones training will use. The output names no file or folder (in "
        "hospitals they often carry identifiers): rows are given by manifest line, sites by their number in the "
        "sorted list of manifests.",
    )
    parser.add_argument("manifest", nargs="?", help="the site's manifest CSV")
    parser.add_argument("--data-dir", help="a folder of site manifests (*.csv and */manifest.csv)")
    parser.add_argument("--image-size", type=int, default=data.image_size, help=f"pipeline size ({data.image_size})")
    parser.add_argument("--cache-dir", default=data.cache_dir, help="preprocessed-image cache (default: beside it)")
    parser.add_argument(
        "--presentation-intent",
        default=data.presentation_intent,
        choices=DataConfig.PRESENTATION_INTENTS,
        help=f"which DICOM intent training admits ({data.presentation_intent})",
    )
    parser.add_argument(
        "--pixel-spacing-mm",
        type=float,
        default=data.pixel_spacing_mm,
        help=f"physical pixel size training resamples to, 0 = off ({data.pixel_spacing_mm})",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="the run's model.num_classes: labels must be class indices below it (default: what `fedmammo "
        f"prepare` recorded in the federation.json above the manifest, else {DEFAULT_NUM_CLASSES})",
    )
    parser.add_argument("--any-modality", action="store_true", help="admit DICOM whose Modality is not MG")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: up to 4)")
    parser.add_argument("--json", action="store_true", help="print JSON for machines instead of tables")
    parser.set_defaults(handler=run_check_data)


def find_manifests(manifest: str | None, data_dir: str | None) -> list[Path]:
    """The manifests named by the arguments: one file, or every ``*.csv`` and ``*/manifest.csv`` of a folder."""
    if bool(manifest) == bool(data_dir):
        raise ConfigError("check-data needs exactly one of a manifest path or --data-dir FOLDER")
    if manifest:
        return [Path(manifest).expanduser()]
    folder = Path(str(data_dir)).expanduser()
    found = sorted({*folder.glob("*.csv"), *folder.glob("*/manifest.csv")})
    if not found:
        raise ConfigError(f"--data-dir {folder} holds no *.csv or */manifest.csv; give a folder of site manifests")
    return found


def run_check_data(args: argparse.Namespace, console: Console) -> int:
    """Check every named site; exit status 1 when training would not use one of them (`SiteCheck.trainable`)."""
    if args.num_classes is not None and args.num_classes < 2:
        raise ConfigError(f"--num-classes {args.num_classes} is invalid: a model has at least 2 classes")
    from client.check_data import check_site
    from common.data import ImagePipeline

    data = DataConfig(
        image_size=args.image_size,
        cache_dir=args.cache_dir,
        presentation_intent=args.presentation_intent,
        pixel_spacing_mm=args.pixel_spacing_mm,
    )  # the run's data settings: the same verdicts as training, and the cache training will read
    pipeline = ImagePipeline.from_config(data, require_mg=not args.any_modality)
    checks = [
        check_site(
            path,
            pipeline,
            num_classes=args.num_classes or _recorded_classes(path),
            cache_dir=args.cache_dir or None,
            workers=args.workers,
            progress=not args.json,
        )
        for path in find_manifests(args.manifest, args.data_dir)
    ]
    if args.json:
        sites = [{"site": number, **check.to_dict()} for number, check in enumerate(checks, start=1)]
        console.print(json.dumps({"sites": sites}, indent=2), markup=False, highlight=False, soft_wrap=True)
    else:
        for number, check in enumerate(checks, start=1):
            render_check(check, console, title=f"site {number} of {len(checks)}")
    return 0 if all(check.trainable for check in checks) else 1


def _recorded_classes(manifest: Path) -> int:
    """The classes ``fedmammo prepare`` labelled a site's federation with (``<out>/<site>/manifest.csv``), else 2.

    A three-class federation checked as binary would be refused for its label 2 rows; the index beside the sites
    already says how many classes the run's model needs.
    """
    from common.data import recorded_num_classes

    return recorded_num_classes(manifest.parent.parent) or DEFAULT_NUM_CLASSES


def render_check(check: SiteCheck, console: Console, *, title: str = "site") -> None:
    """Print one site's counts, its bad rows and its repeated rows as tables (lines, never file names)."""
    summary = Table(title=title, show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row(
        "images",
        f"{check.images} listed, {check.usable} usable, {len(check.bad_files)} bad, {len(check.duplicates)} repeated",
    )
    summary.add_row("patients", f"{check.patients} listed, {check.usable_patients} with a usable image")
    for name, counts in (
        ("labels (listed)", check.labels),
        ("labels (usable)", check.usable_labels),
        ("views", check.views),
        ("lateralities", check.lateralities),
        ("vendors", check.vendors),
        ("photometric", check.photometric),
        ("presentation intent", check.presentation_intent),
    ):
        summary.add_row(name, ", ".join(f"{key}: {value}" for key, value in counts.items()) or "-")
    for name, spread in (("rows (px)", check.rows_px), ("columns (px)", check.columns_px), ("bits", check.bits_stored)):
        text = f"min {spread['min']:g} / median {spread['median']:g} / max {spread['max']:g}" if spread else "-"
        summary.add_row(name, text)
    console.print(summary)
    if check.duplicates:
        repeated = Table(
            title=f"{len(check.duplicates)} row(s) repeat an image listed earlier: it is used once",
            title_justify="left",
        )
        for column in ("manifest line", "same image as line"):
            repeated.add_column(column)
        for item in check.duplicates:
            repeated.add_row(str(item.line), str(item.same_as))
        console.print(repeated)
    if not check.bad_files:
        console.print("[green]no bad files[/]")
    else:
        title = f"{len(check.bad_files)} bad row(s)" + ("" if check.refused else ", not used in training")
        bad = Table(title=title, title_justify="left")
        for column in ("manifest line", "reason"):
            bad.add_column(column, overflow="fold")
        for item in check.bad_files:
            bad.add_row(str(item.line), item.reason)
        console.print(bad)
    if check.refused:
        console.print(f"[bold red]{escape(check.refused)}[/]: this site cannot join a federation", soft_wrap=True)
    elif not check.usable:
        console.print("[bold red]no usable image: this site cannot join a federation[/]")
