"""`fedmammo study`: a cross-site generalization study on one machine (and `-m` sweeps of it), with its report."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["add_study_parser", "run_one_study", "sweep_exit_code"]

logger = logging.getLogger(__name__)

_STUDY = "study.enabled=true"


def _latest_arm(run_dir: Path) -> str:
    """Which model is training now and its last finished round, from the arms' metrics files (for the status line)."""
    arms = sorted((run_dir / "arms").glob("*/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
    started = sorted((run_dir / "arms").glob("*/config.yaml"), key=lambda p: p.stat().st_mtime)
    if not started:
        return "starting the simulated hospitals"
    current = started[-1].parent
    rounds = 0
    if arms and arms[-1].parent == current:
        lines = arms[-1].read_text(encoding="utf-8").splitlines()
        rounds = max((json.loads(line).get("round", 0) for line in lines if line.strip()), default=0)
    return f"training {current.name} (model {len(started)}), round {rounds} done"


def quote_arms(overrides: list[str]) -> list[str]:
    """``study.arms=local,federated`` as one value: Hydra's grammar would read the comma as a sweep (and refuse it
    outside ``-m``, or with ``-m`` run one study per arm)."""
    quoted = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key.lstrip("+~") == "study.arms" and "," in value and value[:1] not in "'\"":
            override = f"{key}='{value}'"
        quoted.append(override)
    return quoted


def run_one_study(overrides: list[str], run_dir: Path | None, console: Console, *, verbose: bool = False) -> Path:
    """Compose the config with ``study.enabled=true``, prepare phantoms if needed, run the study; return its folder."""
    from dataclasses import replace

    from server.report.run_folder import claim_run_dir
    from simulations.hydra_config import compose_simulation
    from simulations.launcher import run_simulation, simulated_nodes
    from simulations.phantoms import generate_configured_federation

    config, resources = compose_simulation([*quote_arms(overrides), _STUDY])
    if run_dir is not None:
        config = replace(config, output=replace(config.output, run_dir=str(run_dir)))
    if config.federation.synthetic:
        with console.status(f"preparing {config.federation.num_sites} synthetic hospitals"):
            generate_configured_federation(config.federation, seed=config.seed)
    else:
        from client.site import PARTITION_ID_KEY, resolve_site

        resolve_site({PARTITION_ID_KEY: 0}, config)
    folder = claim_run_dir(config.output.run_dir)
    console.print(
        f"[bold]fedmammo study[/] {config.federation.num_sites} sites · {escape(config.study.arms)} · "
        f"{config.model.name} @ {config.data.image_size}px · {config.strategy.num_rounds} rounds · privacy "
        f"{config.privacy.mode} · {simulated_nodes(config)} simulated nodes · {escape(str(folder))}",
        highlight=False,
    )
    started = time.monotonic()
    with console.status("starting") as status:

        def on_output(line: str) -> None:
            if verbose:
                console.print(line, markup=False, highlight=False)
            status.update(f"{_latest_arm(folder)} · {time.monotonic() - started:.0f}s")

        run_simulation(config, folder, resources=resources, on_output=on_output, claimed=True)
    return folder


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):+.{digits}f}" if digits < 0 else f"{float(value):.{digits}f}"


def _ci(row: dict[str, Any] | None) -> str:
    """An AUC alone: the terminal is narrow, and its CI is in study.html; the paired differences carry theirs."""
    return "n/a" if not row or row.get("auc") is None else f"{row['auc']:.3f}"


def _difference(row: dict[str, Any] | None) -> str:
    if not row or row.get("difference") is None:
        return "n/a"
    low, high = row.get("ci_low"), row.get("ci_high")
    ci = f" [{low:+.2f},{high:+.2f}]" if low is not None and high is not None else ""
    return f"{row['difference']:+.3f}{ci}"


def print_study(folder: Path, console: Console) -> None:
    """Each model's AUC per site, then the paired differences with their CIs (two tables: a terminal is narrow)."""
    study = json.loads((folder / "study.json").read_text(encoding="utf-8"))
    matrix, rows = study["matrix"], study["comparisons"]
    aucs = Table(title="AUC on each site's test split (CIs in study.html)")
    for column in ("site", "local (own)", "centralized", "federated", "held out (LOSO)"):
        aucs.add_column(column, justify="left" if column == "site" else "right")
    for site in [*study["sites"], "pooled"]:
        own = _ci(matrix.get(f"local:{site}", {}).get(site)) if site != "pooled" else ""
        held = _ci(matrix.get(f"loso:{site}", {}).get(site) if site != "pooled" else study.get("held_out_pooled"))
        aucs.add_row(escape(site), own, _ci(matrix.get("centralized", {}).get(site)),
                     _ci(matrix.get("federated", {}).get(site)), held)  # fmt: skip
    console.print(aucs)
    differences = Table(title="paired on the same test images: difference in AUC [95% CI]")
    labels = {"local": "federated − local", "centralized": "federated − centralized", "loso": "federated − held out"}
    for column in ("site", *labels.values()):
        differences.add_column(column, justify="left" if column == "site" else "right")
    for site in study["sites"]:
        mine = {row["b"].split(":")[0]: row for row in rows if row["site"] == site}
        differences.add_row(escape(site), *(_difference(mine.get(kind)) for kind in labels))
    console.print(differences)
    for failure in study.get("failures", []):
        console.print(f"failed: {failure}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"study took {study['wall_time_s']:.0f}s")
    console.print(f"\n[bold green]report:[/] {folder / 'study.html'}", soft_wrap=True)


def sweep_exit_code(root: Path, console: Console) -> int:
    """Print where a sweep's summary is and how many of its jobs finished; 0 only when every job did."""
    jobs = json.loads((root / "sweep.json").read_text(encoding="utf-8"))["jobs"]
    failed = [job for job in jobs if job["status"] != "ok"]
    console.print(f"\n{len(jobs) - len(failed)} of {len(jobs)} job(s) finished", highlight=False)
    console.print(f"[bold green]sweep summary:[/] {root / 'sweep_summary.md'}", soft_wrap=True)
    return 1 if failed else 0


def _study(args: argparse.Namespace, console: Console) -> int:
    from simulations.launcher import SimulationInterrupted

    try:
        if args.multirun:
            from simulations.sweep import run_sweep

            root = Path(args.sweep_dir or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}")
            done = run_sweep(
                quote_arms(args.overrides),
                root=root,
                kind="study",
                run_one=lambda overrides, folder: run_one_study(overrides, folder, console, verbose=args.verbose),
                on_job=lambda job: console.rule(f"study {job.index + 1}: {' '.join(job.overrides)}"),
            )
            return sweep_exit_code(done, console)
        folder = run_one_study(args.overrides, None, console, verbose=args.verbose)
    except SimulationInterrupted as exc:
        console.print(f"[bold red]stopped by {signal.Signals(exc.signum).name}[/]: every process has ended")
        return 128 + exc.signum
    print_study(folder, console)
    return 0


def add_study_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``fedmammo study``."""
    study = commands.add_parser(
        "study",
        help="cross-site generalization study: local-only, centralized, federated and leave-one-site-out models, "
        "each scored at every site (Hydra overrides: key=value; -m sweeps comma-separated values)",
    )
    study.add_argument("overrides", nargs="*", help="e.g. federation=mini_mias privacy=none study.arms=local,federated")
    study.add_argument("-m", "--multirun", action="store_true", help="sweep: one study per combination of values")
    study.add_argument("--sweep-dir", help="folder of a sweep's studies and summary (default runs/sweep-<time>)")
    study.add_argument("-v", "--verbose", action="store_true", help="echo Flower's log while running")
    study.set_defaults(handler=_study)
