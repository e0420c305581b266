"""Benchmark: DP-SGD step time and memory against plain SGD, for each grad-sample mode and architecture.

Run ``python -m simulations.benchmarks.dp_overhead [--arch NAME ...] [--image-size N ...] [--batch-size B]
[--mode MODE ...] [--repeats R] [--suite zoo] [--json PATH]``. For each architecture and image size the plain
step and one DP step per grad-sample mode (Opacus' four and fedmammo's ``mixed_ghost``) run interleaved on the
same batch in one process (median of ``repeats``). Modes that fail for a model are reported, not fatal.
``--suite zoo`` is ResNet18/50, DenseNet121 and VGG16 at 64 and 128 px, and on CUDA also at 512 px. The last
lines are ``best DP/non-DP ratio: <arch> <mode> <ratio>x``, one per arch (``<arch>@<N>px`` when several sizes run).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
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
    "CPU: peak resident set size during the variant's first step minus the resident size before it (Linux VmHWM, "
    "reset and free heap trimmed before each variant; elsewhere getrusage max-RSS growth, order-dependent)"
)
SUITE_ARCHS = ("resnet18", "resnet50", "densenet121", "vgg16")
SUITE_SIZES = (64, 128)
SUITE_CUDA_SIZE = 512
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
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)  # glibc: hand freed heap back, so the step's own growth shows
    peak_kib: Callable[[], int]
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: reset the peak RSS (VmHWM)
        before_kib, peak_kib = _status_kib("VmRSS"), lambda: _status_kib("VmHWM")
    except OSError:  # elsewhere: growth of the lifetime max-RSS (KiB on Linux), which depends on the order
        peak_kib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731
        before_kib = peak_kib()
    step()
    return (peak_kib() - before_kib) / 1024


def _status_kib(field: str) -> int:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in KiB."""
    return next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith(f"{field}:")
    )


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
    no Poisson sampling (a fixed batch, so the modes do identical work). A mode that fails for the model (at
    wrapping or its first step) is reported with its error instead of timed.

    Returns
    -------
    dict
        ``{"arch", "image_size", "batch_size", "non_dp": {"step_s", "step_min_s", "memory_mib"}, "modes": {mode:
        {"ok", "step_s", "step_min_s", "ratio", "memory_mib"} or {"ok": False, "error"}}}``; ``step_s`` is the
        median of the repeats, ``ratio`` its ratio to the plain median.
    """
    target = resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 1, image_size, image_size, generator=generator).to(target)
    labels = torch.randint(0, 2, (batch_size,), generator=generator).to(target)
    torch.manual_seed(seed)
    base = build_model(arch, num_classes=2, in_channels=1, norm="groupnorm").to(target).train()
    steps: dict[str, Step] = {"non_dp": _plain_step(copy.deepcopy(base), images, labels)}
    memory_mib = {"non_dp": _first_step_memory_mib(steps["non_dp"], target)}
    failures: dict[str, str] = {}
    for mode in modes:
        model = copy.deepcopy(base)
        try:
            with grad_sample_mode_guard(mode, model):
                step = _dp_step(model, mode, images, labels)
                memory_mib[mode] = _first_step_memory_mib(step, target)
            steps[mode] = step
        except (ConfigError, torch.OutOfMemoryError) as exc:
            failures[mode] = str(exc)
            logging.getLogger(__name__).warning("%s: mode %s failed: %s", arch, mode, exc)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(_timed(step, target))
    plain_s = statistics.median(times["non_dp"])
    rows = {  # step_min_s: less sensitive to other processes on a shared machine
        name: {"ok": True, "step_s": statistics.median(ts), "step_min_s": min(ts), "memory_mib": memory_mib[name]}
        for name, ts in times.items()
    }
    for row in rows.values():
        row["ratio"] = row["step_s"] / plain_s
    failed = {mode: {"ok": False, "error": error} for mode, error in failures.items()}
    plain = {key: rows["non_dp"][key] for key in ("step_s", "step_min_s", "memory_mib")}
    by_mode = {mode: rows.get(mode) or failed[mode] for mode in modes}
    return {"arch": arch, "image_size": image_size, "batch_size": batch_size, "non_dp": plain, "modes": by_mode}


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
    parser.add_argument("--image-size", type=int, action="append", help="square input side (repeatable); default 64")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mode", action="append", choices=PrivacyConfig.GRAD_SAMPLE_MODES, help="default: all")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--suite", choices=("zoo",), help="zoo: ResNet18/50, DenseNet121, VGG16 at 64, 128 (+512 CUDA)")
    parser.add_argument("--json", default="runs/benchmarks/dp_overhead.json", help="where to write the figures")
    args = parser.parse_args(argv)
    archs = args.arch or (list(SUITE_ARCHS) if args.suite else ["resnet18", "small_cnn"])
    unknown = [a for a in archs if a not in available_models()]
    if unknown:
        parser.error(f"unknown --arch {unknown}; available: {available_models()}")
    if not args.image_size:
        cuda = resolve_device(args.device).type == "cuda"
        args.image_size = [*SUITE_SIZES, *([SUITE_CUDA_SIZE] if cuda else [])] if args.suite else [64]
    engine_logger = logging.getLogger("common.privacy.engine")
    engine_level = engine_logger.level
    engine_logger.setLevel(logging.ERROR)  # a fixed batch on purpose: the Poisson caveat does not apply
    try:
        return _run(args, archs)
    finally:
        engine_logger.setLevel(engine_level)


def _run(args: argparse.Namespace, archs: list[str]) -> int:
    device = resolve_device(args.device)
    sizes: list[int] = args.image_size
    modes = tuple(args.mode or PrivacyConfig.GRAD_SAMPLE_MODES)
    results: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Using a non-full backward hook")
        for size in sizes:
            header = f"{size}px, batch {args.batch_size}, {device.type}, median of {args.repeats}"
            for arch in archs:
                label = arch if len(sizes) == 1 else f"{arch}@{size}px"
                results[label] = measure_architecture(
                    arch,
                    image_size=size,
                    batch_size=args.batch_size,
                    repeats=args.repeats,
                    device=args.device,
                    modes=modes,
                )
                print("\n".join(_table(label, results[label], header)), end="\n\n")
    note = GPU_MEMORY_NOTE if device.type == "cuda" else CPU_MEMORY_NOTE
    print(f"memory: {note}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "device": device.type,
        "image_size": sizes[0] if len(sizes) == 1 else sizes,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "opacus": opacus.__version__},
        "threads": torch.get_num_threads(),
        "memory_note": note,
        "architectures": results,
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"figures written to {out}")
    for label, figures in results.items():
        ok = {mode: row["ratio"] for mode, row in figures["modes"].items() if row["ok"]}
        if ok:
            mode = min(ok, key=ok.__getitem__)
            print(f"best DP/non-DP ratio: {label} {mode} {ok[mode]:.2f}x")
        else:
            print(f"best DP/non-DP ratio: {label} none nanx")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
