"""Benchmark: how long `fedmammo predict` takes on one full-size mammogram (about 4000 x 3000 pixels), step by step.

Run ``python -m simulations.benchmarks.predict_speed [--model PATH] [--threads 2] [--repeats 3] [overrides ...]``.
It writes one phantom DICOM of the demo's first scanner at ``--matrix-scale`` (7.5: 3840 x 3120 pixels), a model file
with its card (the demo's settings from ``simulations/conf``, random weights, unless ``--model`` gives a trained one),
then runs predict on it: once cold (the first image pays the lazy imports of Captum, Matplotlib and highdicom) and
``--repeats`` times warm. Printed per step (median of the warm runs): read (decode the DICOM), preprocess (segment,
crop, resize), model + Grad-CAM, map back (box and peak to the file's pixels), overlay (render and write the PNG),
DICOM outputs (Secondary Capture and presentation state), and the whole call. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from client.predict.model_file import load_predict_model
from client.predict.run import predict_files
from common.models import build_model
from server.model_card import base_fields
from simulations.hydra_config import compose_simulation
from simulations.phantoms.dicom_writer import ImageHeader, phantom_uid, write_dicom
from simulations.phantoms.patients import render_patient
from simulations.phantoms.scanners import scanner_profile

__all__ = ["STEPS", "main", "write_full_size_dicom"]

STEPS = ("read", "preprocess", "model_cam", "map_back", "overlay", "dicom_outputs")
_LABELS = {
    "read": "read",
    "preprocess": "preprocess",
    "model_cam": "model + Grad-CAM",
    "map_back": "map back",
    "overlay": "overlay PNG",
    "dicom_outputs": "DICOM outputs",
}


def write_full_size_dicom(path: Path, matrix_scale: float, seed: int = 7) -> tuple[int, int]:
    """One phantom left CC view of scanner 0 at ``matrix_scale`` (8 = 4096 x 3328), written as DICOM; its shape."""
    profile = scanner_profile(0)
    image = render_patient(
        seed=seed,
        site_index=0,
        patient_index=0,
        finding="malignant",
        profile=profile,
        matrix_scale=matrix_scale,
        lesion_contrast=12.0,
        num_views=1,
    )[0]
    header = ImageHeader(
        patient_id="BENCH-1",
        study_uid=phantom_uid("bench", seed, "study"),
        series_uid=phantom_uid("bench", seed, "series"),
        sop_uid=phantom_uid("bench", seed, "image"),
        series_number=1,
        instance_number=1,
        laterality=image.laterality,
        view=image.view,
        pixel_spacing_mm=profile.pixel_spacing_mm / matrix_scale,
        institution="Benchmark",
    )
    write_dicom(path, image.pixels, header, profile)
    return image.pixels.shape


def _demo_model(folder: Path, overrides: Sequence[str]) -> Path:
    """The demo's model (random weights) saved with a model card as the server writes it."""
    from common.models import write_card

    config, _ = compose_simulation(list(overrides))
    model = build_model(config.model.name, num_classes=config.model.num_classes, in_channels=1, norm=config.model.norm)
    path = folder / "global_model.pt"
    torch.save(model.state_dict(), path)
    write_card(path, base_fields(config, "benchmark-random-weights"))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the demo settings (model=resnet18 ...)")
    parser.add_argument("--model", help="a trained model file with its card (default: the demo's, random weights)")
    parser.add_argument("--matrix-scale", type=float, default=7.5, help="phantom size factor (7.5: 3840 x 3120 px)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (2: the target machine's cores)")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs after the cold one; medians shown")
    parser.add_argument("--json", default="runs/benchmarks/predict_speed.json", help="where to write the figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="fedmammo-predict-speed-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        shape = write_full_size_dicom(folder / "full_size.dcm", args.matrix_scale)
        print(f"phantom DICOM {shape[0]} x {shape[1]} written in {time.perf_counter() - start:.1f} s", flush=True)
        model_path = Path(args.model) if args.model else _demo_model(folder, args.overrides)
        start = time.perf_counter()
        model = load_predict_model(model_path)
        load_seconds = time.perf_counter() - start
        card = model.card["model"]
        size, threads = model.pipeline.image_size, torch.get_num_threads()
        print(f"model {card['name']} ({card['norm']}) at {size} px loaded in {load_seconds:.2f} s; {threads} thread(s)")
        runs = []
        for repeat in range(args.repeats + 1):
            start = time.perf_counter()
            record = predict_files(model, [folder / "full_size.dcm"], folder / f"out_{repeat}").records[0]
            total = time.perf_counter() - start
            if record["status"] != "ok":
                print(f"predict failed: {record['error']}")
                return 1
            runs.append({**record["seconds"], "total": total})
            found = "flat heatmap, no box" if record["heatmap"]["flat"] else f"box {record['box']}"
            print(f"{'cold' if repeat == 0 else f'warm {repeat}'}: {total:.2f} s ({found})", flush=True)
    warm = runs[1:] or runs
    print(f"\n{'step':<18} {'cold s':>7} {'warm s (median)':>16}")
    for step in (*STEPS, "total"):
        label = _LABELS.get(step, "whole call")
        print(f"{label:<18} {runs[0].get(step, 0.0):>7.3f} {statistics.median(r.get(step, 0.0) for r in warm):>16.3f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = {
        "shape": list(shape),
        "model": card,
        "image_size": model.pipeline.image_size,
        "threads": args.threads,
        "load_seconds": load_seconds,
        "heatmap_flat": record["heatmap"]["flat"],
        "cold": runs[0],
        "warm": warm,
    }
    out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
