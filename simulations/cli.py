"""The `fedmammo` command: simulate a federation, make phantom hospitals, pretrain on them, prepare site manifests,
rebuild a report."""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from client.check_data_cli import add_check_data_parser
from common.config import AppConfig, FederationConfig
from common.errors import ConfigError, FedMammoError, ModelError
from simulations.cli_prepare import add_prepare_parser

__all__ = ["main"]

logger = logging.getLogger("fedmammo")


def _simulate(args: argparse.Namespace, console: Console) -> int:
    from server.report.run_folder import claim_run_dir
    from simulations.hydra_config import compose_simulation
    from simulations.launcher import SimulationInterrupted, run_simulation
    from simulations.phantoms import generate_configured_federation
    from simulations.progress import RoundProgress

    config, resources = compose_simulation(args.overrides)
    if config.federation.synthetic:
        with console.status(
            f"preparing {config.federation.num_sites} synthetic hospitals in {config.federation.data_dir}"
        ):
            generate_configured_federation(config.federation, seed=config.seed)
    else:  # a prepared federation (`fedmammo prepare`): fail now, not inside every simulated client
        from client.site import PARTITION_ID_KEY, resolve_site

        resolve_site({PARTITION_ID_KEY: 0}, config)
    run_dir = claim_run_dir(config.output.run_dir)  # runs/<timestamp>, or <timestamp>-2 if another run took it
    target = config.privacy.target_epsilon
    noise = f"to ε={target:g}" if target > 0 else f"σ={config.privacy.noise_multiplier}"  # σ then derived
    privacy = {
        "local": f"DP-SGD {noise} per site",
        "central": f"central DP {noise} ({config.privacy.central_clipping} clipping)",
        "none": "no DP",
    }[config.privacy.mode]
    console.print(
        f"[bold]fedmammo[/] {config.federation.num_sites} sites · {config.model.name} @ {config.data.image_size}px · "
        f"{config.strategy.num_rounds} rounds · {privacy} · run dir {run_dir}"
    )
    try:
        with RoundProgress(run_dir / "metrics.jsonl", config.strategy.num_rounds, console=console) as progress:
            echo = (
                (lambda line: (console.print(line, markup=False, highlight=False), progress.poll()))
                if args.verbose
                else None
            )
            run_simulation(config, run_dir, resources=resources, on_output=echo or progress.poll, claimed=True)
    except SimulationInterrupted as exc:  # everything it started is stopped by now: one line, no traceback
        name = signal.Signals(exc.signum).name
        ended = f"every process of this run has ended; partial results in {run_dir}"
        console.print(f"[bold red]stopped by {name}[/]: {escape(ended)}", highlight=False, soft_wrap=True)
        return 128 + exc.signum
    _print_summary(run_dir, console)
    console.print(f"\n[bold green]report:[/] {run_dir / 'report.html'}")
    return 0


def _print_summary(run_dir: Path, console: Console) -> None:
    """The final table per site and pooled. A site whose figures are older than the final round (it failed or
    declined later) gets a round column, a mark and a line saying why, as the pooled row does not include it."""
    import json

    from rich.table import Table

    from server.report.final_round import FINAL_ROUND, NOT_IN_FINAL_ROUND, ROUND, final_round, sites_in_final_round

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    rows = [*summary["sites"].items(), ("pooled", summary["pooled"])]
    last = summary.get(FINAL_ROUND) or final_round(dict(rows))
    behind = {site: str(v[NOT_IN_FINAL_ROUND]) for site, v in summary["sites"].items() if NOT_IN_FINAL_ROUND in v}
    table = Table(title=f"global model on each site's test split ({f'round {last}' if last else 'final round'})")
    columns = ("site", *(("round",) if behind else ()), "test images", "AUC (95% CI)", "sensitivity", "specificity")
    for column in (*columns, "epsilon"):
        table.add_column(column, justify="right" if column != "site" else "left")

    def fmt(value: object, digits: int = 3) -> str:
        return "n/a" if value is None or value != value else f"{float(value):.{digits}f}"  # NaN != NaN

    private = summary.get("privacy", {}).get("mode", "local") != "none"  # no DP: no guarantee, not epsilon 0
    for site, values in rows:
        auc = f"{fmt(values.get('auc'))} ({fmt(values.get('auc_ci_low'), 2)}-{fmt(values.get('auc_ci_high'), 2)})"
        table.add_row(
            escape(site) + (" *" if site in behind else ""),
            *([str(values.get(ROUND, "n/a"))] if behind else []),
            str(values.get("num_examples", "")),
            auc,
            fmt(values.get("sensitivity")),
            fmt(values.get("specificity")),
            fmt(values.get("epsilon"), 2) if private else "off",
        )
    classes = [str(name) for name in summary.get("classes") or []]
    if len(classes) > 2:
        table.title += f": {classes[-1]} vs rest"
    console.print(table)
    for site, why in behind.items():
        console.print(f"* {site}: not in round {last}: {why}", markup=False, highlight=False, soft_wrap=True)
    if behind:
        pooled = ", ".join(sites_in_final_round(dict(rows))) or "no site"
        console.print(f"  pooled: round {last}, over {pooled} only", markup=False, highlight=False, soft_wrap=True)
    if len(classes) > 2:
        _print_classes(rows, classes, fmt, console)


def _print_classes(rows: list, classes: list[str], fmt: Callable[..., str], console: Console) -> None:
    """Per-class one-vs-rest AUC, macro AUC and the pooled argmax confusion matrix, for more than two classes."""
    from rich.table import Table

    from server.report import class_results, confusion_matrix

    table = Table(title="per class, one vs rest: AUC (95% CI)")
    for column in ("site", "cases", *classes, "macro AUC"):
        table.add_column(column, justify="right" if column != "site" else "left")
    for site, values in rows:
        per_class = class_results(values, classes)
        if not per_class:
            continue
        cases = "/".join(fmt(c.get("num_cases"), 0) for c in per_class)
        aucs = [
            f"{fmt(c.get('auc'))} ({fmt(c.get('auc_ci_low'), 2)}-{fmt(c.get('auc_ci_high'), 2)})" for c in per_class
        ]
        table.add_row(site, cases, *aucs, fmt(values.get("macro_auc")))
    console.print(table)
    matrix = confusion_matrix(rows[-1][1])
    if matrix is not None:
        confusion = Table(title="pooled confusion matrix (rows: true class, columns: argmax prediction)")
        for column in ("true \\ predicted", *classes):
            confusion.add_column(column, justify="right")
        for name, counts in zip(classes, matrix, strict=False):
            confusion.add_row(name, *(str(count) for count in counts))
        console.print(confusion)


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
    """Rebuild the report; a missing, empty or broken run folder exits 2 with one line saying which and why."""
    from server.report import RunFolderError, build_report

    try:
        report = build_report(Path(args.run_dir))
    except RunFolderError as exc:
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

    simulate = commands.add_parser("simulate", help="run a local federated simulation (Hydra overrides: key=value)")
    simulate.add_argument("overrides", nargs="*", help="e.g. model=resnet50 privacy=none strategy.num_rounds=3")
    simulate.add_argument("-v", "--verbose", action="store_true", help="echo Flower's log while running")
    simulate.set_defaults(handler=_simulate)

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

    add_prepare_parser(commands)
    add_check_data_parser(commands)

    report = commands.add_parser("report", help="rebuild report.html and plots from a run directory")
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
