"""Benchmark: images/second decoded cold and read from the site cache, and whether the cache keeps training fed.

Run ``python -m simulations.benchmarks.data_throughput [--manifest PATH] [--image-size N]``. It measures
phantoms generated into a temporary folder, the mini-MIAS PNGs in the shared data folder when present, and
``--manifest`` when given: each site is preprocessed once into an empty cache (cold: read, decode, preprocess,
store) and again from the cache (warm, what every round does: stat, look up, checksum, map). It then draws
shuffled training batches through the site's dataset (read the mapped uint16 slots, dequantise, collate),
times one plain SGD step of ResNet18 (GroupNorm, 1 channel) at the same size on the CPU, and prints the time
to load one batch as a share of that step: well below 1 means the cache keeps a training loop fed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.data import ImagePipeline, SiteImages, preprocess_site, read_manifest, write_manifest
from common.models import build_model
from simulations.phantoms import generate_site

__all__ = ["main", "measure_site", "measure_train_step", "mini_mias_manifest"]

SHARED_DATA = Path(os.environ.get("FEDMAMMO_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
"""The shared public data (``FEDMAMMO_SHARED_DATA`` or ``../shared/data`` beside the repository)."""


def mini_mias_manifest(source: Path, out: Path, count: int | None = None) -> Path:
    """Write a manifest of mini-MIAS (``labels_per_image.csv``): malignant = 1; mdb001/mdb002 are one patient."""
    rows = []
    with (source / "labels_per_image.csv").open(newline="") as handle:
        for raw in list(csv.DictReader(handle))[:count]:
            number = int(raw["refnum"][3:])
            rows.append(
                {
                    "image_path": str(source / raw["file"]),
                    "label": int(raw["label"] == "malignant"),
                    "patient_id": f"mias{(number + 1) // 2:03d}",
                    "laterality": raw["laterality_from_parity"],
                    "view": "MLO",
                    "finding": raw["label"],
                }
            )
    return write_manifest(out / "manifest.csv", rows)


def measure_site(
    manifest: Path, pipeline: ImagePipeline, cache_dir: Path, *, workers: int | None, batch_size: int
) -> dict[str, Any]:
    """Preprocessing cold (empty ``cache_dir``) and warm (from the cache), and a training batch's loading time."""
    rows = read_manifest(manifest)

    def timed() -> tuple[float, dict[int, np.ndarray], int]:
        start = time.perf_counter()
        images, skipped = preprocess_site(manifest, rows, pipeline, cache_dir, workers=workers, progress=False)
        return time.perf_counter() - start, images, len(skipped)

    cold_s, images, bad = timed()
    warm_s, images, _ = timed()
    labels = {row.row_number: row.label for row in rows}
    dataset = SiteImages(list(images.values()), [labels[n] for n in images], pipeline.image_size)
    loader = DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=True)
    start, batches = time.perf_counter(), 0
    while time.perf_counter() - start < 1.0 or batches < 3:  # whole epochs, at least a second
        batches += sum(1 for _ in loader)
    batch_s = (time.perf_counter() - start) / batches
    usable = len(images)
    return {
        "images": len(rows),
        "usable": usable,
        "bad": bad,
        "cold_s": cold_s,
        "warm_s": warm_s,
        "cold_images_per_s": usable / cold_s if cold_s else float("nan"),
        "warm_images_per_s": usable / warm_s if warm_s else float("nan"),
        "batch_s": batch_s,
        "cache_bytes": sum(path.stat().st_size for path in cache_dir.glob("*") if path.is_file()),
    }


def measure_train_step(image_size: int, batch_size: int, *, repeats: int = 10) -> float:
    """Median seconds of one plain SGD step of ResNet18 (GroupNorm, 1 channel, 2 classes) on the CPU."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 1, image_size, image_size, generator=generator)
    labels = torch.randint(0, 2, (batch_size,), generator=generator)
    model = build_model("resnet18", num_classes=2, in_channels=1, norm="groupnorm")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        return time.perf_counter() - start

    step()  # warm-up
    return statistics.median(step() for _ in range(repeats))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", help="also measure this site")
    parser.add_argument("--image-size", type=int, default=64, help="pipeline output side (64: the demo)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch of the step timing")
    parser.add_argument("--phantom-images", type=int, default=96, help="images in the phantom site")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: up to 4)")
    parser.add_argument("--repeats", type=int, default=10, help="timed training steps")
    parser.add_argument("--json", default="runs/benchmarks/data_throughput.json", help="where to write the figures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, force=True)
    torch.manual_seed(0)
    pipeline = ImagePipeline(image_size=args.image_size)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fedmammo-throughput-") as tmp:
        root = Path(tmp)
        sites = {"phantoms": generate_site(root / "phantoms", site_index=0, num_images=args.phantom_images, seed=1)}
        if (SHARED_DATA / "mini_mias" / "labels_per_image.csv").is_file():
            sites["mini-MIAS"] = mini_mias_manifest(SHARED_DATA / "mini_mias", root / "mini_mias")
        if args.manifest:
            sites["--manifest"] = Path(args.manifest).expanduser()
        for name, manifest in sites.items():
            results[name] = measure_site(
                manifest, pipeline, root / "cache" / name, workers=args.workers, batch_size=args.batch_size
            )
    step_s = measure_train_step(args.image_size, args.batch_size, repeats=args.repeats)

    print(f"preprocessing to {args.image_size}px, {args.workers or min(4, os.cpu_count() or 1)} decoding threads, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'site':<12} {'images':>7} {'bad':>4} {'cold img/s':>11} {'cached img/s':>13} {'round open':>11} "
          f"{'batch load':>11} {'/ train step':>13}")  # fmt: skip
    for name, r in results.items():
        r["batch_over_step"] = r["batch_s"] / step_s
        print(f"{name:<12} {r['images']:>7} {r['bad']:>4} {r['cold_images_per_s']:>11.1f} "
              f"{r['warm_images_per_s']:>13.0f} {r['warm_s']:>10.2f}s {r['batch_s'] * 1000:>8.2f} ms "
              f"{r['batch_over_step']:>12.2%}")  # fmt: skip
    print("round open: a round's preprocessing pass over the warm cache; batch load: one shuffled batch of "
          f"{args.batch_size} through the site's dataset")  # fmt: skip
    print(f"ResNet18 (GroupNorm) plain SGD step @ {args.image_size}px batch {args.batch_size} on CPU: "
          f"{step_s * 1000:.0f} ms")  # fmt: skip
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = {"image_size": args.image_size, "batch_size": args.batch_size, "train_step_s": step_s, "sites": results}
    out.write_text(json.dumps(figures, indent=2))
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
