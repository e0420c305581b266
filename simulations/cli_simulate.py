"""`fedmammo simulate`: one local federation (or a `-m` sweep of them) and its final table per site."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from common.errors import ConfigError

__all__ = ["add_simulate_parser"]


def _simulate(args: argparse.Namespace, console: Console) -> int:
    from simulations.launcher import SimulationInterrupted

    try:
        if args.multirun:
            import time

            from simulations.resume_run import split_resume

            if split_resume(args.overrides)[0] is not None:
                raise ConfigError("'resume=' continues one stopped run; it cannot be swept (-m): drop one of them")

            from simulations.cli_study import sweep_exit_code
            from simulations.sweep import run_sweep

            root = Path(args.sweep_dir or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}")
            done = run_sweep(
                args.overrides,
                root=root,
                kind="simulate",
                run_one=lambda overrides, folder: _simulate_one(overrides, folder, console, args.verbose),
                on_job=lambda job: console.rule(f"run {job.index + 1}: {' '.join(job.overrides)}"),
            )
            return sweep_exit_code(done, console)
        run_dir = _simulate_one(args.overrides, None, console, args.verbose)
    except SimulationInterrupted as exc:  # everything it started is stopped by now: one line, no traceback
        name = signal.Signals(exc.signum).name
        ended = f"every process of this run has ended; partial results in {getattr(exc, 'run_dir', 'the run folder')}"
        console.print(f"[bold red]stopped by {name}[/]: {escape(ended)}", highlight=False, soft_wrap=True)
        return 128 + exc.signum
    _print_summary(run_dir, console)
    console.print(f"\n[bold green]report:[/] {run_dir / 'report.html'}")
    return 0


def _simulate_one(overrides: list[str], run_dir: Path | None, console: Console, verbose: bool) -> Path:
    """Compose, prepare the sites and run one federation into ``run_dir`` (else the config's); return its folder."""
    from dataclasses import replace

    from server.report.run_folder import claim_run_dir
    from simulations.hydra_config import compose_simulation
    from simulations.launcher import SimulationInterrupted, run_simulation
    from simulations.phantoms import generate_configured_federation
    from simulations.progress import RoundProgress
    from simulations.resume_run import resumed_simulation, split_resume

    resume, overrides = split_resume(overrides)  # resume=RUN_DIR: that run's own config, continued in its folder
    config, resources = resumed_simulation(resume, overrides) if resume else compose_simulation(overrides)
    if config.study.enabled:  # the ServerApp would run a study, and this command print a table it does not write
        raise ConfigError(
            "config key 'study.enabled' = True is set by `fedmammo study`, which runs and reports the cross-site "
            "study; `fedmammo simulate` runs one federation: drop study.enabled, or run `fedmammo study`"
        )
    if run_dir is not None:
        config = replace(config, output=replace(config.output, run_dir=str(run_dir)))
    if config.federation.synthetic:
        with console.status(
            f"preparing {config.federation.num_sites} synthetic hospitals in {config.federation.data_dir}"
        ):
            generate_configured_federation(config.federation, seed=config.seed)
    else:  # a prepared federation (`fedmammo prepare`): fail now, not inside every simulated client
        from client.site import PARTITION_ID_KEY, resolve_site

        resolve_site({PARTITION_ID_KEY: 0}, config)
    # runs/<timestamp>, or <timestamp>-2 if another run took it; a resumed run goes on in its own folder
    run_dir = resume if resume is not None else claim_run_dir(config.output.run_dir)
    target = config.privacy.target_epsilon
    noise = f"to ε={target:g}" if target > 0 else f"σ={config.privacy.noise_multiplier}"  # σ then derived
    privacy = {
        "local": f"DP-SGD {noise} per site",
        "central": f"central DP {noise} ({config.privacy.central_clipping} clipping)",
        "none": "no DP",
    }[config.privacy.mode]
    console.print(
        f"[bold]fedmammo[/] {config.federation.num_sites} sites · {config.model.name} @ {config.data.image_size}px · "
        f"{config.strategy.num_rounds} rounds · {privacy} · {'resuming' if resume else 'run dir'} {run_dir}"
    )
    with RoundProgress(run_dir / "metrics.jsonl", config.strategy.num_rounds, console=console) as progress:
        echo = (lambda line: (console.print(line, markup=False, highlight=False), progress.poll())) if verbose else None
        try:
            run_simulation(config, run_dir, resources=resources, on_output=echo or progress.poll, claimed=True)
        except SimulationInterrupted as exc:
            exc.run_dir = run_dir  # type: ignore[attr-defined]  # for the one line the command prints
            raise
    return run_dir


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


def add_simulate_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``fedmammo simulate``."""
    simulate = commands.add_parser("simulate", help="run a local federated simulation (Hydra overrides: key=value)")
    simulate.add_argument(
        "overrides",
        nargs="*",
        help="e.g. model=resnet50 privacy=none strategy.num_rounds=3; resume=RUN_DIR continues a stopped run",
    )
    simulate.add_argument("-v", "--verbose", action="store_true", help="echo Flower's log while running")
    simulate.add_argument("-m", "--multirun", action="store_true", help="sweep: one run per combination of values")
    simulate.add_argument("--sweep-dir", help="folder of a sweep's runs and summary (default runs/sweep-<time>)")
    simulate.set_defaults(handler=_simulate)
