"""The `fedmammo` command: simulate a federation or a cross-site study, make phantom hospitals, pretrain on them,
prepare site manifests, rebuild a report."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from client.check_data_cli import add_check_data_parser
from client.predict.cli import add_predict_parser
from common.config import AppConfig, FederationConfig
from common.errors import ConfigError, FedMammoError, ModelError
from simulations.cli_prepare import add_prepare_parser
from simulations.cli_simulate import add_simulate_parser
from simulations.cli_study import add_study_parser

__all__ = ["main"]

logger = logging.getLogger("fedmammo")


def _phantoms(args: argparse.Namespace, console: Console) -> int:
    from simulations.phantoms import generate_federation

    with console.status(f"writing {args.sites} synthetic hospitals to {args.out}"):
        manifests = generate_federation(
            Path(args.out).expanduser(),
            num_sites=args.sites,
            images_per_site=args.images,
            seed=args.seed,
            lesion_contrast=args.lesion_contrast,
        )
    for manifest in manifests:
        console.print(f"site manifest: {manifest}")
    return 0


def _pretrain(args: argparse.Namespace, console: Console) -> int:
    """Pretrain on phantom hospitals; a bad option, override or existing output exits 2 with one line.

    Exit 2, as for argparse's own usage errors: the command line asked for something impossible and nothing
    was trained. A failure while generating, loading or training (exit 1) goes through `main`.
    """
    from simulations.hydra_config import compose_simulation
    from simulations.pretrain import (
        DEFAULT_DATA_DIR,
        DEFAULT_EPOCHS,
        DEFAULT_SITES,
        EpochResult,
        check_output,
        pretrain,
    )

    epochs = DEFAULT_EPOCHS if args.epochs is None else args.epochs
    sites = DEFAULT_SITES if args.sites is None else args.sites

    def fmt(value: float) -> str:
        return "n/a" if value != value else f"{value:.3f}"  # NaN != NaN

    def on_epoch(result: EpochResult) -> None:
        mark = "  [bold green]best[/]" if result.best else ""
        console.print(
            f"epoch {result.epoch}/{epochs}  train loss {fmt(result.train_loss)}  val loss "
            f"{fmt(result.val_loss)}  val AUC {fmt(result.val_auc)}  {result.seconds:.1f}s{mark}",
            highlight=False,
        )

    try:
        config, _ = compose_simulation(args.overrides)
        check_output(args.out, force=args.force)  # before any phantom is generated
        console.print(
            f"[bold]fedmammo pretrain[/] {config.model.name} @ {config.data.image_size}px · {sites} phantom "
            f"hospitals · {epochs} epoch(s) · no DP (synthetic data) · {escape(str(args.out))}",
            highlight=False,
        )
        with console.status("pretraining") as status:
            result = pretrain(
                config,
                args.out,
                epochs=epochs,
                num_sites=sites,
                images_per_site=args.images_per_site,
                data_dir=args.data_dir or DEFAULT_DATA_DIR,
                matrix_scale=args.matrix_scale,
                force=args.force,
                patch_epochs=args.patch_epochs,
                on_stage=lambda text: status.update(escape(text)),
                on_epoch=on_epoch,
            )
    except (ConfigError, ModelError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    console.print(f"\n[bold green]weights:[/] {escape(str(result.weights_path))}", highlight=False, soft_wrap=True)
    console.print(f"card: {escape(str(result.card_path))}", highlight=False, soft_wrap=True)
    console.print(
        f"best val AUC {fmt(result.best_val_auc)} at epoch {result.best_epoch}/{len(result.epochs)} "
        f"({result.seconds:.0f}s)",
        highlight=False,
    )
    override = shlex.quote(f"model.weights_path={result.weights_path.resolve()}")  # absolute: Hydra keeps ~ as is
    console.print(f"start a federation from it with: {override}", markup=False, highlight=False, soft_wrap=True)
    return 0


def _report(args: argparse.Namespace, console: Console) -> int:
    """Rebuild the report (a study folder's study.html); a missing, empty or broken folder exits 2 with one line."""
    from server.report import RunFolderError, StudyFolderError, build_report, build_study_report

    folder = Path(args.run_dir)
    try:
        report = build_study_report(folder) if (folder / "study.json").is_file() else build_report(folder)
    except (RunFolderError, StudyFolderError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except (OSError, ValueError, TypeError, KeyError) as exc:  # a run file that parses but holds odd values
        logger.debug("report of %s failed", args.run_dir, exc_info=True)
        message = f"cannot build a report from {args.run_dir}: {type(exc).__name__}: {' '.join(str(exc).split())}"
        console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        return 2
    console.print(f"report: {report}", highlight=False, soft_wrap=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmammo", description=__doc__)
    parser.add_argument("--log-level", default="WARNING", help="Python logging level (default WARNING)")
    commands = parser.add_subparsers(dest="command", required=True)

    add_simulate_parser(commands)

    federation, seed = FederationConfig(), AppConfig().seed  # defaults match what `flwr run .` expects
    phantoms = commands.add_parser("phantoms", help="write synthetic DICOM hospitals and their manifests")
    phantoms.add_argument("--out", default=federation.data_dir, help=f"folder for site_0/, ... ({federation.data_dir})")
    phantoms.add_argument("--sites", type=int, default=federation.num_sites)
    phantoms.add_argument("--images", type=int, default=federation.images_per_site, help="images per site")
    phantoms.add_argument("--seed", type=int, default=seed)
    phantoms.add_argument("--lesion-contrast", type=float, default=federation.lesion_contrast, help="lower is harder")
    phantoms.set_defaults(handler=_phantoms)

    # Defaults live in simulations.pretrain (which imports torch: not at parse time); tests keep the help equal.
    pretrain = commands.add_parser(
        "pretrain",
        help="pretrain a model on phantom hospitals for model.weights_path (Hydra overrides: key=value)",
    )
    pretrain.add_argument("--out", required=True, help="weights file to write (its card: <out>.json)")
    pretrain.add_argument("--epochs", type=int, help="passes over the phantoms' train splits (default 5)")
    pretrain.add_argument(
        "--patch-epochs",
        type=int,
        default=0,
        help="the first N epochs train on lesion vs normal-tissue patches (training.patch_size), then whole images",
    )
    pretrain.add_argument("--sites", type=int, help="phantom hospitals, one scanner each (default 8)")
    pretrain.add_argument("--images-per-site", type=int, help="default: the config's federation.images_per_site")
    pretrain.add_argument("--data-dir", help="phantom folder (default ~/.fedmammo/pretrain_phantoms)")
    pretrain.add_argument(
        "--matrix-scale", type=float, default=1.0, help="phantom matrix size factor (1.0 as the demo; less is faster)"
    )
    pretrain.add_argument("--force", action="store_true", help="replace an existing --out and its card")
    pretrain.add_argument("overrides", nargs="*", help="e.g. model=resnet18 data.image_size=128")
    pretrain.set_defaults(handler=_pretrain)

    add_study_parser(commands)
    add_prepare_parser(commands)
    add_check_data_parser(commands)
    add_predict_parser(commands)

    report = commands.add_parser(
        "report", help="rebuild report.html and plots from a run directory (study.html from a study's folder)"
    )
    report.add_argument("run_dir")
    report.set_defaults(handler=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the process exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s", force=True)
    console = Console(stderr=False)
    try:
        return int(args.handler(args, console))
    except FedMammoError as exc:  # config, data and launcher errors carry the file/key and the fix
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside a simulation (which handles its own): one line, no traceback
        console.print("[bold red]stopped by SIGINT[/]")
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
