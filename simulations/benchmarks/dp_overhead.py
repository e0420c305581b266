"""Benchmark: DP-SGD step time and memory against plain SGD, for each Opacus grad-sample mode and architecture.

Run ``python -m simulations.benchmarks.dp_overhead [--arch NAME ...] [--image-size N] [--batch-size B]
[--repeats R] [--json PATH]``. For each architecture the plain step and one DP step per grad-sample mode run
interleaved on the same batch in one process (median of ``repeats``). Modes that fail for a model are
reported, not fatal. The last lines are ``best DP/non-DP ratio: <arch> <mode> <ratio>x``, one per arch.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import opacus
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.config import PrivacyConfig
from common.errors import ConfigError
from common.models import available_models, build_model
from common.privacy import grad_sample_mode_guard, make_private_training
from common.training import resolve_device

__all__ = ["main", "measure_architecture"]

Step = Callable[[], None]

CPU_MEMORY_NOTE = (
    "CPU: growth of the process's max-RSS high-water mark (getrusage) during the variant's first step, "
    "variants in table order; a variant that fits under an earlier peak shows ~0, so compare with care"
)
GPU_MEMORY_NOTE = "CUDA: torch.cuda.max_memory_allocated during one step minus what was allocated before it"


def _plain_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Step:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _dp_step(model: nn.Module, mode: str, images: torch.Tensor, labels: torch.Tensor) -> Step:
    privacy = PrivacyConfig(noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode=mode)
    loader = DataLoader(TensorDataset(images, labels), batch_size=len(labels))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    private = make_private_training(model, optimizer, loader, privacy=privacy, seed=0)

    def step() -> None:
        private.optimizer.zero_grad(set_to_none=True)
        private.criterion(private.module(images), labels).backward()
        private.optimizer.step()
        private.optimizer.zero_grad(set_to_none=True)  # frees per-sample gradients before the next variant

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _first_step_memory_mib(step: Step, device: torch.device) -> float:
    """Memory the variant's first (warm-up) step needed, in MiB (see the notes above for what it means)."""
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kib) / 1024


def _timed(step: Step, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def measure_architecture(
    arch: str,
    *,
    image_size: int = 64,
    batch_size: int = 32,
    repeats: int = 5,
    device: str = "auto",
    modes: Sequence[str] = PrivacyConfig.GRAD_SAMPLE_MODES,
    seed: int = 0,
) -> dict[str, Any]:
    """Time plain and DP steps of ``arch`` side by side on one batch, one variant after another per repeat.

    Every variant starts from the same weights and sees the same batch; DP uses noise 1.0, clipping 1.0 and
    no Poisson sampling (a fixed batch, so the modes do identical work). A mode that Opacus refuses for the
    model, or that fails on its first step, is reported with its error instead of timed.

    Returns
    -------
    dict
        ``{"non_dp": {"step_s", "memory_mib"}, "modes": {mode: {"ok", "step_s", "ratio", "memory_mib"} or
        {"ok": False, "error"}}}``.
    """
    target = resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 1, image_size, image_size, generator=generator).to(target)
    labels = torch.randint(0, 2, (batch_size,), generator=generator).to(target)
    torch.manual_seed(seed)
    base = build_model(arch, num_classes=2, in_channels=1, norm="groupnorm").to(target).train()
    steps: dict[str, Step] = {"non_dp": _plain_step(copy.deepcopy(base), images, labels)}
    memory = {"non_dp": _first_step_memory_mib(steps["non_dp"], target)}
    failures: dict[str, str] = {}
    for mode in modes:
        model = copy.deepcopy(base)
        try:
            with grad_sample_mode_guard(mode, model):
                step = _dp_step(model, mode, images, labels)
                memory[mode] = _first_step_memory_mib(step, target)
            steps[mode] = step
        except (ConfigError, torch.OutOfMemoryError) as exc:
            failures[mode] = str(exc)
            logging.getLogger(__name__).warning("%s: mode %s failed: %s", arch, mode, exc)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(_timed(step, target))
    plain_s = statistics.median(times["non_dp"])
    result: dict[str, Any] = {
        "non_dp": {"step_s": plain_s, "memory_mib": memory["non_dp"]},
        "modes": {mode: {"ok": False, "error": error} for mode, error in failures.items()},
    }
    for mode in steps.keys() - {"non_dp"}:
        step_s = statistics.median(times[mode])
        result["modes"][mode] = {"ok": True, "step_s": step_s, "ratio": step_s / plain_s, "memory_mib": memory[mode]}
    result["modes"] = {mode: result["modes"][mode] for mode in modes if mode in result["modes"]}
    return result


def _table(arch: str, figures: dict[str, Any], header: str) -> list[str]:
    lines = [f"{arch} @ {header}", f"{'variant':<14} {'step s':>9} {'DP/non-DP':>10} {'memory MiB':>11}"]
    plain = figures["non_dp"]
    lines.append(f"{'non-DP':<14} {plain['step_s']:>9.4f} {1.0:>9.2f}x {plain['memory_mib']:>11.1f}")
    for mode, row in figures["modes"].items():
        if row["ok"]:
            lines.append(f"{'DP ' + mode:<14} {row['step_s']:>9.4f} {row['ratio']:>9.2f}x {row['memory_mib']:>11.1f}")
        else:
            lines.append(f"{'DP ' + mode:<14} failed: {row['error']}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", action="append", help="architecture (repeatable); default resnet18 and small_cnn")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", default="runs/benchmarks/dp_overhead.json", help="where to write the figures")
    args = parser.parse_args(argv)
    archs = args.arch or ["resnet18", "small_cnn"]
    unknown = [a for a in archs if a not in available_models()]
    if unknown:
        parser.error(f"unknown --arch {unknown}; available: {available_models()}")
    engine_logger = logging.getLogger("common.privacy.engine")
    engine_level = engine_logger.level
    engine_logger.setLevel(logging.ERROR)  # a fixed batch on purpose: the Poisson caveat does not apply
    try:
        return _run(args, archs)
    finally:
        engine_logger.setLevel(engine_level)


def _run(args: argparse.Namespace, archs: list[str]) -> int:
    device = resolve_device(args.device)
    header = f"{args.image_size}px, batch {args.batch_size}, {device.type}, median of {args.repeats}"
    results: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Using a non-full backward hook")
        for arch in archs:
            results[arch] = measure_architecture(
                arch, image_size=args.image_size, batch_size=args.batch_size, repeats=args.repeats, device=args.device
            )
            print("\n".join(_table(arch, results[arch], header)), end="\n\n")
    note = GPU_MEMORY_NOTE if device.type == "cuda" else CPU_MEMORY_NOTE
    print(f"memory: {note}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "device": device.type,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "opacus": opacus.__version__},
        "memory_note": note,
        "architectures": results,
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"figures written to {out}")
    for arch, figures in results.items():
        ok = {mode: row["ratio"] for mode, row in figures["modes"].items() if row["ok"]}
        if ok:
            mode = min(ok, key=ok.__getitem__)
            print(f"best DP/non-DP ratio: {arch} {mode} {ok[mode]:.2f}x")
        else:
            print(f"best DP/non-DP ratio: {arch} none nanx")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
