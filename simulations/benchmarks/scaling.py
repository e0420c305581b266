"""Benchmark: how a round's time grows with the number of sites, split into where it goes, plus peak memory.

Run ``python -m simulations.benchmarks.scaling [--sites 3 10 30] [--images-per-site 100] [--rounds 6]
[--cpus-per-site 2] [hydra overrides ...]``. For each size it runs the demo settings (small_cnn @ 64 px, DP-SGD)
on phantom hospitals of that many sites through the launcher (the code path of ``fedmammo simulate``), with every
process traced (`trace_hook`) and its memory sampled (`proc_memory`). Each round after the first is split into:
site training and evaluation (the seconds the sites report), client handling (the rest of the ClientApp's time in
its Ray actor: data load, model build, ledger, records), serialization and transport (Ray's submit and fetch
around the actor), server (the strategy's configure and aggregate calls) and what is left (Flower's queue polling,
lanes idle at a phase's end). Site-side figures are summed over sites, then divided by the lanes (Ray actors at
work at once); the round's wall time is from one round's pooled evaluation row to the next (`round_walls`).
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simulations.benchmarks.proc_memory import MemorySampler
from simulations.benchmarks.round_overhead import round_ends, round_walls
from simulations.benchmarks.trace_hook import TRACE_ENV, read_trace, trace_environment

__all__ = ["COLUMNS", "format_table", "growth", "main", "run_federation", "split_round", "summarize"]

APP_DIR = Path(__file__).resolve().parents[2]
SERVER_CALLS = ("strategy.configure_train", "strategy.aggregate_train", "strategy.configure_evaluate",
                "strategy.aggregate_evaluate")  # fmt: skip
ACTOR_RUN, SUBMIT_AND_FETCH = "ClientApp.__call__", "RayBackend.process_message"
COLUMNS = ("train_s", "evaluate_s", "client_other_s", "transport_s", "server_s", "rest_s")
"""The parts of a round's wall time, in the order they are printed (site-side parts already divided by lanes)."""


def _in(events: Sequence[Mapping[str, Any]], name: str, start: float, end: float) -> list[Mapping[str, Any]]:
    return [e for e in events if e.get("event") == "call" and e.get("name") == name and start <= e["start"] < end]


def split_round(rnd: int, rows: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Split round ``rnd`` (not the first) into `COLUMNS`, from metrics rows and trace events.

    Lanes are the Ray actors (distinct processes) that ran a ClientApp call in the round; summed site-side seconds
    are divided by them, which assumes the lanes were kept busy (idle lanes show up in ``rest_s``).
    """
    wall = next(r for r in round_walls(rows) if r["round"] == rnd)["wall_s"]
    ends = round_ends(rows)
    start, end = ends[rnd - 1], ends[rnd]
    site_rows = [r for r in rows if r["round"] == rnd and r["site"] != "pooled" and "seconds" in r]
    train = sum(r["seconds"] for r in site_rows if r["phase"] == "train")
    evaluate = sum(r["seconds"] for r in site_rows if r["phase"] == "evaluate")
    runs = _in(events, ACTOR_RUN, start, end)
    actor = sum(e["end"] - e["start"] for e in runs)
    submitted = sum(e["end"] - e["start"] for e in _in(events, SUBMIT_AND_FETCH, start, end))
    server = sum(e["end"] - e["start"] for name in SERVER_CALLS for e in _in(events, name, start, end))
    lanes = max(1, len({e["pid"] for e in runs}))
    parts = {
        "train_s": train / lanes,
        "evaluate_s": evaluate / lanes,
        "client_other_s": max(0.0, actor - train - evaluate) / lanes,
        "transport_s": max(0.0, submitted - actor) / lanes,
        "server_s": server,
    }
    parts["rest_s"] = wall - sum(parts.values())
    return {"round": rnd, "wall_s": wall, "lanes": lanes, "sites": len({r["site"] for r in site_rows}), **parts,
            "outside_share": 1 - (parts["train_s"] + parts["evaluate_s"]) / wall, "messages": len(runs)}  # fmt: skip


def summarize(num_sites: int, splits: Sequence[Mapping[str, Any]], extra: Mapping[str, Any]) -> dict[str, Any]:
    """One table row: medians over the measured rounds of each figure of `split_round`, the fastest round's wall
    time (the least disturbed by other work on the machine), plus ``extra``."""
    keys = ("wall_s", *COLUMNS, "outside_share", "lanes")
    medians = {key: statistics.median(s[key] for s in splits) for key in keys} if splits else {}
    fastest = {"wall_min_s": min(s["wall_s"] for s in splits)} if splits else {}
    return {"num_sites": num_sites, "rounds_measured": len(splits), **medians, **fastest, **extra}


def growth(table: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its round time and site count relative to the first row's (linear growth: equal factors)."""
    if not table:
        return []
    first = table[0]
    return [
        {**row, "wall_factor": row["wall_s"] / first["wall_s"], "sites_factor": row["num_sites"] / first["num_sites"]}
        for row in table
    ]


def format_table(table: Sequence[Mapping[str, Any]]) -> str:
    """The scaling table as text: one line per federation size."""
    head = (f"{'sites':>5} {'lanes':>5} {'round s':>8} {'min':>6} {'train':>7} {'eval':>7} {'client':>7} {'transp':>7} "
            f"{'server':>7} {'rest':>7} {'outside':>8} {'growth':>13} {'peak PSS':>9}")  # fmt: skip
    lines = [head]
    for row in growth(table):
        grew = f"x{row['wall_factor']:.2f}/x{row['sites_factor']:.1f}"
        lines.append(
            f"{row['num_sites']:>5} {row['lanes']:>5.0f} {row['wall_s']:>8.2f} {row['wall_min_s']:>6.2f} "
            + " ".join(f"{row[key]:>7.2f}" for key in COLUMNS)
            + f" {row['outside_share']:>8.1%} {grew:>13} {row['peak_pss_mib']:>6.0f} MiB"
        )
    return "\n".join(lines)


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` for the block (the launcher passes its environment to every process)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_federation(overrides: Sequence[str], folder: Path) -> dict[str, Any]:
    """Run one federation (composed from ``overrides``) traced into ``folder``; return its rows, events, memory."""
    from server.report import RunDirectory
    from simulations.hydra_config import compose_simulation
    from simulations.launcher import run_simulation
    from simulations.phantoms import generate_configured_federation

    config, resources = compose_simulation([*overrides, f"output.run_dir={folder / 'run'}"])
    generate_configured_federation(config.federation, seed=config.seed)
    trace = folder / "trace.jsonl"
    env = trace_environment(folder / "hook", trace, APP_DIR)
    with _environment(env), MemorySampler(f"{TRACE_ENV}={env[TRACE_ENV]}") as memory:
        started = time.time()
        run_dir = run_simulation(config, folder / "run", resources=resources)
        total = time.time() - started
    rows = RunDirectory(run_dir).read_metrics()
    ends = round_ends(rows)
    return {
        "rows": rows,
        "events": read_trace(trace),
        "total_s": total,
        "memory": memory.peak.__dict__,
        "first_round_end_s": ends[1] - started if 1 in ends else None,
        "setting": f"{config.model.name} @ {config.data.image_size} px, privacy {config.privacy.mode}",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the demo settings")
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10, 30], help="federation sizes")
    parser.add_argument("--images-per-site", type=int, default=100, help="phantom images per site (demo: 400)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per federation (the first is not measured)")
    parser.add_argument("--cpus-per-site", type=int, default=2, help="Ray CPUs per site (demo: 2; lanes = cores/this)")
    parser.add_argument("--data-dir", help="phantom sites, reused (default ~/.fedmammo/phantoms-scaling-<images>)")
    parser.add_argument("--json", default="runs/benchmarks/scaling.json", help="where to write the figures")
    args = parser.parse_args(argv)
    default_dir = f"~/.fedmammo/phantoms-scaling-{args.images_per_site}"
    data_dir = Path(args.data_dir or default_dir).expanduser()  # Hydra overrides take no "~"
    table, runs = [], []
    for num_sites in args.sites:
        overrides = [
            f"federation.num_sites={num_sites}",
            f"federation.images_per_site={args.images_per_site}",
            f"federation.data_dir={data_dir}",
            f"strategy.num_rounds={args.rounds}",
            f"simulation.cpus_per_site={args.cpus_per_site}",
            *args.overrides,
        ]
        load = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(prefix="fedmammo-scaling-") as tmp:
            run = run_federation(overrides, Path(tmp))
        splits = [split_round(r["round"], run["rows"], run["events"]) for r in round_walls(run["rows"])]
        extra = {"peak_pss_mib": run["memory"]["pss_mib"], "peak_rss_mib": run["memory"]["rss_mib"],
                 "processes_at_peak": run["memory"]["processes"], "total_s": run["total_s"],
                 "first_round_end_s": run["first_round_end_s"], "load_before": load,
                 "load_after": os.getloadavg()[0]}  # fmt: skip
        table.append(summarize(num_sites, splits, extra))
        runs.append({"num_sites": num_sites, "overrides": overrides, "setting": run["setting"], "splits": splits,
                     "memory": run["memory"]})  # fmt: skip
        print(f"{num_sites} sites: {run['total_s']:.0f} s, median round {table[-1].get('wall_s', float('nan')):.2f} s "
              f"(load average before {load:.2f})", flush=True)  # fmt: skip
    print(f"\n{run['setting']}, {args.images_per_site} images per site, {args.rounds} rounds (first not "
          f"measured), {args.cpus_per_site} Ray CPUs per site on {os.cpu_count()} cores; seconds per round, "
          "site-side parts divided by lanes (medians over rounds; min: the fastest round); growth: round time / sites, "
          "vs the first size")  # fmt: skip
    print(format_table(table))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "table": growth(table), "runs": runs}, indent=2))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
