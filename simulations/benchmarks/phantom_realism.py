"""Benchmark: whether trivial image statistics alone tell positive images from the rest, phantoms beside real data.

Run ``python -m simulations.benchmarks.phantom_realism [OVERRIDES ...] [--image-size N ...] [--manifest PATH ...]``.
A model learns the easiest cue that separates its labels. If the brightest pixel of a phantom already finds its
lesion, the demo's AUC says little about learning mammography, so this measures that cue directly. Per
preprocessed image (the same :class:`ImagePipeline` as training, at the run config's ``data.image_size`` unless
``--image-size`` is given) it takes the mean, standard deviation, maximum and 99.5th percentile of the whole image
and of the breast alone (pixels > 0: the preprocessing zeroes the background), and reports each feature's AUC
against the label with a bootstrap 95% CI, per:

- phantom site, generated into a temporary folder exactly as the demo makes them (the composed Hydra config,
  so ``OVERRIDES`` such as ``federation.lesion_contrast=1.0`` apply; ``--phantom-images`` makes sites smaller);
  malignant vs rest;
- mini-MIAS (``../shared/data/mini_mias``): abnormal vs normal, overall and per tissue site (as ``fedmammo
  prepare mini-mias --sites tissue``), and malignant vs rest; each film's side from its number's parity;
- CDD-CESM (``../shared/data/cdd_cesm``): malignant vs rest, and each other class vs rest;
- each ``--manifest``: its last class vs rest.

An AUC is reported as max(AUC, 1 - AUC): a feature that separates inverted is as much a shortcut. So a random
feature scores a little above 0.5, not 0.5. The goal (for the phantoms) is every such AUC at most 0.70.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from common.data import ImagePipeline, read_manifest
from common.errors import DicomError
from common.metrics import bootstrap_auc_ci
from simulations.benchmarks.data_throughput import SHARED_DATA
from simulations.datasets.mini_mias import TISSUE_SITES
from simulations.hydra_config import compose_simulation
from simulations.phantoms import generate_configured_federation

__all__ = ["FEATURES", "GOAL", "Comparison", "ImageSet", "feature_aucs", "main", "trivial_features"]

FEATURES = ("mean", "std", "max", "p99.5", "breast mean", "breast std", "breast max", "breast p99.5")
"""Per image: four statistics of the whole image, then the same over the breast (pixels > 0)."""

GOAL = 0.70
"""Phantoms are realistic enough when no trivial feature reaches a higher AUC (folded) on any site."""


@dataclass(frozen=True)
class Comparison:
    """One table row: which images of a set take part (``include``) and which of those are positive."""

    name: str
    include: np.ndarray
    positive: np.ndarray


@dataclass(frozen=True)
class ImageSet:
    """Images (path, side) measured once, and the label comparisons made on them."""

    name: str
    images: list[tuple[Path, str]]
    comparisons: list[Comparison]
    phantom: bool = False


def trivial_features(image: np.ndarray) -> np.ndarray:
    """The :data:`FEATURES` of one preprocessed image; breast features are 0 when no pixel is above 0."""
    whole = np.asarray(image, dtype=np.float64).ravel()
    breast = whole[whole > 0]
    if breast.size == 0:
        breast = np.zeros(1)
    stats = [(v.mean(), v.std(), v.max(), np.percentile(v, 99.5)) for v in (whole, breast)]
    return np.array([value for group in stats for value in group], dtype=np.float64)


def feature_aucs(features: np.ndarray, positive: np.ndarray, *, resamples: int = 1000) -> dict[str, dict[str, Any]]:
    """Per feature column: folded AUC max(AUC, 1 - AUC), whether it was inverted, and its bootstrap 95% CI.

    The CI is of the AUC in the direction the full sample chose (flipped with it), so it can reach below 0.5.
    All values are NaN when ``positive`` holds a single class.
    """
    labels = np.asarray(positive, dtype=np.int64)
    out: dict[str, dict[str, Any]] = {}
    for column, name in enumerate(FEATURES):
        scores = features[:, column]
        if labels.size == 0 or labels.min() == labels.max():
            out[name] = {"auc": float("nan"), "raw_auc": float("nan"), "inverted": False, "ci": [None, None]}
            continue
        raw = float(roc_auc_score(labels, scores))
        low, high = bootstrap_auc_ci(labels, scores, resamples=resamples, seed=column)
        inverted = raw < 0.5
        ci = [1.0 - high, 1.0 - low] if inverted else [low, high]
        out[name] = {"auc": max(raw, 1.0 - raw), "raw_auc": raw, "inverted": inverted, "ci": ci}
    return out


def _measure(images: list[tuple[Path, str]], pipeline: ImagePipeline, log: logging.Logger) -> np.ndarray:
    """Feature rows per image; a row of NaN where the image could not be read or preprocessed."""
    rows = np.full((len(images), len(FEATURES)), np.nan)
    for index, (path, side) in enumerate(images):
        try:
            rows[index] = trivial_features(pipeline.load(path, side))
        except DicomError as exc:
            log.warning("image %d skipped: %s", index, type(exc).__name__)  # no file names: they may identify
    return rows


def _one_vs_rest(name: str, classes: np.ndarray, positive: set[str], include: np.ndarray | None = None) -> Comparison:
    mask = np.ones(classes.size, dtype=bool) if include is None else include
    return Comparison(name, mask, np.isin(classes, sorted(positive)))


def _manifest_set(name: str, manifest: Path, *, phantom: bool = False) -> ImageSet:
    """A site manifest: its highest label vs the rest (malignant vs rest on phantoms)."""
    rows = read_manifest(manifest)
    labels = np.array([str(row.label) for row in rows])
    last = str(max(row.label for row in rows))
    what = "malignant vs rest" if phantom else f"label {last} vs rest"
    return ImageSet(name, [(r.image_path, r.laterality) for r in rows], [_one_vs_rest(what, labels, {last})], phantom)


def _mini_mias_set(source: Path) -> ImageSet:
    with (source / "labels_per_image.csv").open(newline="") as handle:
        raw = list(csv.DictReader(handle))
    findings = np.array([r["label"] for r in raw])
    tissue = np.array([r["tissue"] for r in raw])
    abnormal = {"benign", "malignant"}
    rows = [_one_vs_rest("abnormal vs normal", findings, abnormal)]
    rows += [
        _one_vs_rest(f"{site}: abnormal vs normal", findings, abnormal, tissue == c) for c, site in TISSUE_SITES.items()
    ]
    rows.append(_one_vs_rest("malignant vs rest", findings, {"malignant"}))
    images = [(source / r["file"], r["laterality_from_parity"]) for r in raw]
    return ImageSet("mini-MIAS", images, rows)


def _cdd_cesm_set(source: Path) -> ImageSet:
    with (source / "labels.csv").open(newline="") as handle:
        raw = list(csv.DictReader(handle))
    pathology = np.array([r["pathology"] for r in raw])
    rows = [_one_vs_rest(f"{c} vs rest", pathology, {c}) for c in ("malignant", "benign", "normal")]
    return ImageSet("CDD-CESM", [(source / r["image"], r["laterality"]) for r in raw], rows)


def _image_sets(args: argparse.Namespace, scratch: Path) -> tuple[list[ImageSet], ImagePipeline]:
    """Phantom sites as the demo generates them, the shared sets that are present, then each ``--manifest``.

    Returns the sets and the training pipeline of the composed config (``require_mg`` off: PNG sets have no
    Modality, and it changes no pixel).
    """
    config, _ = compose_simulation([*args.overrides, f"output.run_dir={scratch / 'run'}"])
    sets = []
    if args.phantom_images != 0:
        federation = dataclasses.replace(config.federation, data_dir=str(scratch / "phantoms"))
        if args.phantom_images > 0:
            federation = dataclasses.replace(federation, images_per_site=args.phantom_images)
        for index, manifest in enumerate(generate_configured_federation(federation, seed=config.seed)):
            sets.append(_manifest_set(f"phantom site_{index}", manifest, phantom=True))
    if not args.no_shared:
        if (SHARED_DATA / "mini_mias" / "labels_per_image.csv").is_file():
            sets.append(_mini_mias_set(SHARED_DATA / "mini_mias"))
        if (SHARED_DATA / "cdd_cesm" / "labels.csv").is_file():
            sets.append(_cdd_cesm_set(SHARED_DATA / "cdd_cesm"))
    sets += [_manifest_set(f"manifest {Path(m).name}", Path(m)) for m in args.manifest]
    return sets, ImagePipeline.from_config(config.data, require_mg=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the trivial-feature AUCs per image set and comparison, and write them as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.benchmarks.phantom_realism",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the demo settings (phantoms, data)")
    parser.add_argument("--image-size", type=int, nargs="+", help="output sides (default: the config's)")
    parser.add_argument(
        "--phantom-images", type=int, default=-1, help="images per phantom site (-1: config's, 0: none)"
    )
    parser.add_argument("--manifest", action="append", default=[], help="also measure this site (repeatable)")
    parser.add_argument("--no-shared", action="store_true", help="skip the shared mini-MIAS and CDD-CESM folders")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per AUC")
    parser.add_argument("--json", default="runs/benchmarks/phantom_realism.json", help="where to write the figures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    log = logging.getLogger("phantom_realism")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedmammo-realism-") as scratch:
        sets, training_pipeline = _image_sets(args, Path(scratch))
        for size in args.image_size or [training_pipeline.image_size]:
            pipeline = dataclasses.replace(training_pipeline, image_size=size)
            for image_set in sets:
                features = _measure(image_set.images, pipeline, log)
                usable = np.isfinite(features).all(axis=1)
                for comparison in image_set.comparisons:
                    keep = comparison.include & usable
                    positive = comparison.positive[keep]
                    results.append(
                        {
                            "set": image_set.name,
                            "comparison": comparison.name,
                            "image_size": size,
                            "phantom": image_set.phantom,
                            "n": int(keep.sum()),
                            "positives": int(positive.sum()),
                            "skipped": int((comparison.include & ~usable).sum()),
                            "features": feature_aucs(features[keep], positive, resamples=args.resamples),
                        }
                    )
    print(_format(results))
    worst = _phantom_worst(results)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = {"features": FEATURES, "goal_max_phantom_auc": GOAL, "phantom_max_auc": worst, "results": results}
    out.write_text(json.dumps(figures, indent=2))
    print(f"figures: {out}")
    return 0


def _phantom_worst(results: list[dict[str, Any]]) -> float | None:
    aucs = [f["auc"] for r in results if r["phantom"] for f in r["features"].values() if np.isfinite(f["auc"])]
    return max(aucs) if aucs else None


def _format(results: list[dict[str, Any]]) -> str:
    lines = [
        "AUC of each trivial feature vs the label, as max(AUC, 1-AUC): a feature that separates inverted is as much",
        f"a shortcut ('-' marks inverted ones); '!' marks phantom AUCs above the goal of {GOAL:.2f}. Whole image, then",
        "'b.' the breast only (pixels > 0); last column: the highest AUC of the row with its bootstrap 95% CI.",
    ]
    width = max([len("set: comparison"), *(len(f"{r['set']}: {r['comparison']}") for r in results)])
    names = " ".join(f"{name.replace('breast ', 'b.'):>8s}" for name in FEATURES)
    header = f"{'set: comparison':{width}s} {'px':>4s} {'n':>5s} {'pos':>4s} {names}  highest [95% CI]"
    lines += [header, "-" * len(header)]
    for row in results:
        cells, figures = [], list(row["features"].values())
        for figure in figures:
            auc = figure["auc"]
            mark = ("-" if figure["inverted"] else " ") + ("!" if row["phantom"] and auc > GOAL else " ")
            cells.append(f"{auc:6.2f}{mark}" if np.isfinite(auc) else f"{'n/a':>6s}  ")
        top = max(figures, key=lambda f: f["auc"] if np.isfinite(f["auc"]) else -1.0)
        best = f"{top['auc']:.2f} [{top['ci'][0]:.2f}, {top['ci'][1]:.2f}]" if np.isfinite(top["auc"]) else ""
        label = f"{row['set']}: {row['comparison']}"
        size, n, pos = row["image_size"], row["n"], row["positives"]
        lines.append(f"{label:{width}s} {size:>4d} {n:>5d} {pos:>4d} {' '.join(cells)}  {best}")
    worst = _phantom_worst(results)
    if worst is not None:
        verdict = "met" if worst <= GOAL else "NOT met"
        lines.append(f"highest phantom trivial-feature AUC: {worst:.2f} (goal <= {GOAL:.2f}: {verdict})")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
