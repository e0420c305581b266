"""Benchmark: seconds per round of the demo federation, the share spent outside site work, DP vs plain step time.

Run ``python -m simulations.benchmarks.round_overhead [hydra overrides ...]``. It runs the demo settings
(the Hydra defaults, plus any overrides) as a real `flwr run` simulation, then times ResNet18 plain and
DP-SGD steps side by side (interleaved, same batch, same process). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from common.config import AppConfig
from common.models import build_model
from common.privacy import make_private
from server.report import RunDirectory
from simulations.hydra_config import compose_simulation
from simulations.launcher import SimulationResources, run_simulation
from simulations.phantoms import generate_configured_federation

__all__ = ["main", "measure_rounds", "measure_step_times", "round_ends", "round_walls"]


def measure_rounds(config: AppConfig, resources: SimulationResources, run_dir: Path) -> dict[str, Any]:
    """Run the federation and split each round's wall time into site work and everything else.

    Site work is the sum of every site's reported training and scoring seconds; with one CPU-bound
    site at a time (the default on 2 cores) that sum is what the sites occupied of the round.
    Round 1 includes starting the simulation's actors and is reported apart.
    """
    started = time.time()
    run_dir = run_simulation(config, run_dir, resources=resources)  # run_dir-2 if run_dir already held a run
    total = time.time() - started
    rows = RunDirectory(run_dir).read_metrics()
    ends = round_ends(rows)
    rounds = round_walls(rows)
    return {
        "total_s": total,
        "first_round_end_s": ends.get(1, float("nan")) - started if ends else float("nan"),
        "rounds": rounds,
        "mean_round_s": statistics.fmean(r["wall_s"] for r in rounds) if rounds else float("nan"),
        "mean_outside_share": statistics.fmean(r["outside_share"] for r in rounds) if rounds else float("nan"),
    }


def round_ends(rows: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """Round number to the time its pooled evaluation row was written (the round's end), from metrics rows."""
    return {r["round"]: r["time"] for r in rows if r["phase"] == "evaluate" and r["site"] == "pooled"}


def round_walls(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per round after the first: wall seconds (previous round's end to its own), site work and the share outside.

    Site work is the sum of every site's reported ``seconds`` (training and scoring) in that round.
    """
    ends = round_ends(rows)
    rounds = []
    for rnd in sorted(ends):
        if rnd - 1 not in ends:
            continue
        site_rows = [r for r in rows if r["round"] == rnd and r["site"] != "pooled" and "seconds" in r]
        wall = ends[rnd] - ends[rnd - 1]
        site_work = sum(r["seconds"] for r in site_rows)
        rounds.append({"round": rnd, "wall_s": wall, "site_work_s": site_work, "outside_share": 1 - site_work / wall})
    return rounds


def measure_step_times(config: AppConfig, *, arch: str = "resnet18", repeats: int = 10) -> dict[str, float]:
    """Median seconds of one optimizer step, plain and DP-SGD (Opacus hooks), interleaved on one batch."""
    size, batch = config.data.image_size, config.training.batch_size
    generator = torch.Generator().manual_seed(config.seed)
    images = torch.rand(batch, 1, size, size, generator=generator)
    labels = torch.randint(0, 2, (batch,), generator=generator)
    plain = build_model(arch, num_classes=2, in_channels=1, norm=config.model.norm)
    private = build_model(arch, num_classes=2, in_channels=1, norm=config.model.norm)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch)
    no_poisson = type(config.privacy)(**{**config.privacy.__dict__, "poisson_sampling": False, "mode": "local"})
    module, dp_opt, _, _ = make_private(
        private, torch.optim.SGD(private.parameters(), lr=0.01), loader, privacy=no_poisson, history=None, seed=0
    )

    def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
        start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        return time.perf_counter() - start

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        step(plain, plain_opt), step(module, dp_opt)  # warm-up
        plain_times, dp_times = [], []
        for _ in range(repeats):
            plain_times.append(step(plain, plain_opt))
            dp_times.append(step(module, dp_opt))
    plain_s, dp_s = statistics.median(plain_times), statistics.median(dp_times)
    return {"arch": arch, "image_size": size, "batch_size": batch, "plain_step_s": plain_s, "dp_step_s": dp_s,
            "dp_over_plain": dp_s / plain_s}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the demo settings")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--json", default="runs/benchmarks/round_overhead.json", help="where to write the figures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, force=True)
    # The step timing uses one fixed batch on purpose; the Poisson-sampling caveat does not apply to it.
    logging.getLogger("common.privacy.engine").setLevel(logging.ERROR)
    torch.manual_seed(0)

    config, resources = compose_simulation(args.overrides)
    generate_configured_federation(config.federation, seed=config.seed)
    with tempfile.TemporaryDirectory(prefix="fedmammo-bench-") as tmp:
        rounds = measure_rounds(config, resources, Path(tmp) / "run")
    steps = measure_step_times(config, repeats=args.repeats)

    print(f"demo: {config.federation.num_sites} sites, {config.model.name} @ {config.data.image_size}px, "
          f"{config.strategy.num_rounds} rounds, privacy {config.privacy.mode}")  # fmt: skip
    print(f"{'round':>5} {'wall s':>8} {'site work s':>12} {'outside share':>14}")
    for r in rounds["rounds"]:
        print(f"{r['round']:>5} {r['wall_s']:>8.2f} {r['site_work_s']:>12.2f} {r['outside_share']:>14.1%}")
    print(f"whole run {rounds['total_s']:.1f} s; round 1 (with actor start-up) ended at "
          f"{rounds['first_round_end_s']:.1f} s")  # fmt: skip
    print(f"mean seconds per round (rounds 2+): {rounds['mean_round_s']:.2f}; outside site work: "
          f"{rounds['mean_outside_share']:.1%}")  # fmt: skip
    print(f"{steps['arch']} @ {steps['image_size']}px batch {steps['batch_size']}: "
          f"plain step {steps['plain_step_s']:.3f} s, DP step {steps['dp_step_s']:.3f} s, "
          f"DP/plain {steps['dp_over_plain']:.2f}x")  # fmt: skip
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": config.to_nested(), "rounds": rounds, "steps": steps}, indent=2))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
