"""The `fedmammo` command: simulate a federation, make phantom hospitals, prepare site manifests, rebuild a report."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from client.check_data_cli import add_check_data_parser
from common.config import AppConfig, FederationConfig
from common.errors import FedMammoError
from simulations.cli_prepare import add_prepare_parser

__all__ = ["main"]

logger = logging.getLogger("fedmammo")


def _simulate(args: argparse.Namespace, console: Console) -> int:
    from simulations.hydra_config import compose_simulation
    from simulations.launcher import run_simulation
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
    run_dir = Path(config.output.run_dir).expanduser().resolve()
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
    with RoundProgress(run_dir / "metrics.jsonl", config.strategy.num_rounds, console=console) as progress:
        echo = (
            (lambda line: (console.print(line, markup=False, highlight=False), progress.poll()))
            if args.verbose
            else None
        )
        run_simulation(config, run_dir, resources=resources, on_output=echo or progress.poll)
    _print_summary(run_dir, console)
    console.print(f"\n[bold green]report:[/] {run_dir / 'report.html'}")
    return 0


def _print_summary(run_dir: Path, console: Console) -> None:
    import json

    from rich.table import Table

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    table = Table(title="global model on each site's test split (final round)")
    for column in ("site", "test images", "AUC (95% CI)", "sensitivity", "specificity", "epsilon"):
        table.add_column(column, justify="right" if column != "site" else "left")

    def fmt(value: object, digits: int = 3) -> str:
        return "n/a" if value is None or value != value else f"{float(value):.{digits}f}"  # NaN != NaN

    rows = [*summary["sites"].items(), ("pooled", summary["pooled"])]
    private = summary.get("privacy", {}).get("mode", "local") != "none"  # no DP: no guarantee, not epsilon 0
    for site, values in rows:
        auc = f"{fmt(values.get('auc'))} ({fmt(values.get('auc_ci_low'), 2)}-{fmt(values.get('auc_ci_high'), 2)})"
        table.add_row(
            site,
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


def _report(args: argparse.Namespace, console: Console) -> int:
    from server.report import build_report

    console.print(f"report: {build_report(Path(args.run_dir))}")
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
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
