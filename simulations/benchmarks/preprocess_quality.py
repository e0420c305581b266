"""Benchmark: how much breast the preprocessing damages: holes punched into it, and breast left outside the crop.

Run ``python -m simulations.benchmarks.preprocess_quality [--manifest PATH ...] [--image-size N]``. It measures
phantom sites generated into a temporary folder, every mini-MIAS and CDD-CESM image in the shared data folder
when present, and each ``--manifest`` given. Per image, through the same :class:`ImagePipeline` as training:

- ``holes``: the share of the output's own filled foreground (``output > 0`` with its holes filled) that is
  exactly zero: pixels inside the breast's outline that are black;
- ``blanked``: those of the holes that the pipeline set to zero (the same crop, pad and resize of the unmasked
  image is not zero there); the rest were black in the source (a dark cavity, a windowed-out vessel);
- ``outside``: the share of the breast, by a simple mask of the original image that shares nothing with the
  pipeline's segmentation (a fixed fraction of the image's range above its dark floor, largest component), that
  lies outside the crop box;
- ``zeroed``: the share of that reference breast which is inside the crop but zero in the output (cut at the
  skin line or blanked as background).

It prints median, 99th percentile and maximum of each per image set, with the worst images, and writes JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.measure import label as label_components

from common.data import ImagePipeline, preprocess_with_geometry, read_mammogram, read_manifest
from common.errors import DicomError
from simulations.benchmarks.data_throughput import SHARED_DATA
from simulations.phantoms import generate_site

__all__ = ["ImageQuality", "main", "measure_image", "reference_breast", "summarise"]

_FIGURES = ("holes", "blanked", "outside", "zeroed")
_REFERENCE_FRACTION = 0.05
"""The reference breast is everything above the dark floor plus this share of the image's range."""


@dataclass(frozen=True)
class ImageQuality:
    """The damage figures of one image (shares in [0, 1])."""

    name: str
    holes: float
    blanked: float
    outside: float
    zeroed: float


def reference_breast(image: np.ndarray) -> np.ndarray:
    """A deliberately plain breast mask of an oriented [0, 1] image, independent of the pipeline's own.

    A 3x3 median removes salt noise; the floor and range are the 1st and 99th percentiles; the breast is the
    largest 8-connected component above the floor plus :data:`_REFERENCE_FRACTION` of the range. No holes are
    filled, so a dark region inside the breast that this mask misses is not counted against the pipeline.
    """
    smooth = ndimage.median_filter(image, size=3, mode="nearest")
    floor, top = np.percentile(smooth, [1, 99])
    above = smooth > floor + _REFERENCE_FRACTION * max(float(top - floor), 1e-6)
    labels = label_components(above, connectivity=2)
    if labels.max() == 0:
        return above
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def measure_image(name: str, pixels: np.ndarray, laterality: str, size: int) -> ImageQuality:
    """Preprocess one normalised image and measure what it lost (see the module docstring)."""
    output, geometry = preprocess_with_geometry(pixels, laterality, size=size)
    foreground = output > 0
    filled = ndimage.binary_fill_holes(foreground)
    hole_mask = filled & ~foreground
    area = max(int(filled.sum()), 1)
    source = np.clip(np.nan_to_num(np.asarray(pixels, dtype=np.float32)), 0.0, 1.0)
    unmasked = geometry.apply(source)
    holes = float(hole_mask.sum()) / area
    blanked = float((hole_mask & (unmasked > 0)).sum()) / area

    oriented = source[:, ::-1] if geometry.flipped else source
    reference = reference_breast(oriented)
    top, bottom, left, right = geometry.box
    inside = np.zeros_like(reference)
    inside[top:bottom, left:right] = True
    total = max(int(reference.sum()), 1)
    outside = float((reference & ~inside).sum()) / total
    unflipped = reference[:, ::-1] if geometry.flipped else reference
    reference_out = geometry.apply(unflipped.astype(np.float32)) > 0.5
    zeroed = float((reference_out & (output == 0)).sum()) / max(int(reference_out.sum()), 1)
    return ImageQuality(name, holes, blanked, outside, zeroed)


def summarise(results: Sequence[ImageQuality], worst: int = 3) -> dict[str, Any]:
    """Median, 99th percentile and maximum of each figure, and the worst images by each."""
    summary: dict[str, Any] = {"images": len(results)}
    for key in _FIGURES:
        values = np.array([getattr(r, key) for r in results], dtype=np.float64)
        order = np.argsort(values)[::-1][:worst]
        summary[key] = {
            "median": float(np.median(values)) if values.size else float("nan"),
            "p99": float(np.percentile(values, 99)) if values.size else float("nan"),
            "max": float(values.max()) if values.size else float("nan"),
            "worst": [[results[i].name, float(values[i])] for i in order if values[i] > 0],
        }
    return summary


def _folder_images(folder: Path, suffixes: tuple[str, ...]) -> Iterable[tuple[str, Path, str]]:
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in suffixes:
            yield path.name, path, ""


def _mini_mias_images(source: Path) -> Iterable[tuple[str, Path, str]]:
    """Every film, with its side from the file number's parity, as ``fedmammo prepare mini-mias`` sets it."""
    with (source / "labels_per_image.csv").open(newline="") as handle:
        for raw in csv.DictReader(handle):
            yield Path(raw["file"]).name, source / raw["file"], raw["laterality_from_parity"]


def _manifest_images(manifest: Path) -> Iterable[tuple[str, Path, str]]:
    for row in read_manifest(manifest):
        # row numbers, not file names: a hospital's file names can carry identifiers
        yield f"row {row.row_number}", row.image_path, row.laterality


def _measure_set(
    images: Iterable[tuple[str, Path, str]], pipeline: ImagePipeline, log: logging.Logger
) -> list[ImageQuality]:
    results = []
    for name, path, laterality in images:
        try:
            mammogram = read_mammogram(
                path, require_mg=pipeline.require_mg, presentation_intent=pipeline.presentation_intent
            )
        except DicomError as exc:
            log.warning("%s skipped: %s", name, type(exc).__name__)
            continue
        side = laterality or mammogram.laterality
        results.append(measure_image(name, mammogram.pixels, side, pipeline.image_size))
    return results


def _image_sets(args: argparse.Namespace, scratch: Path) -> dict[str, Iterable[tuple[str, Path, str]]]:
    sets: dict[str, Iterable[tuple[str, Path, str]]] = {}
    if args.phantoms > 0:
        for index in range(args.phantom_sites):
            site = generate_site(scratch / f"site_{index}", site_index=index, num_images=args.phantoms, seed=7)
            sets[f"phantom site_{index}"] = _manifest_images(site)
    if not args.no_shared:
        mias, cesm = SHARED_DATA / "mini_mias" / "images", SHARED_DATA / "cdd_cesm" / "images"
        if mias.is_dir():
            sets["mini-MIAS"] = _mini_mias_images(mias.parent)
        if cesm.is_dir():
            sets["CDD-CESM"] = _folder_images(cesm, (".png",))
    for manifest in args.manifest:
        sets[f"manifest {Path(manifest).name}"] = _manifest_images(Path(manifest))
    return sets


def main(argv: Sequence[str] | None = None) -> int:
    """Print the damage figures per image set and write them as JSON."""
    parser = argparse.ArgumentParser(prog="python -m simulations.benchmarks.preprocess_quality", description=__doc__)
    parser.add_argument("--manifest", action="append", default=[], help="a site manifest to measure (repeatable)")
    parser.add_argument("--image-size", type=int, default=512, help="output side (default 512)")
    parser.add_argument("--phantoms", type=int, default=60, help="phantom images per site (0: none)")
    parser.add_argument("--phantom-sites", type=int, default=3, help="phantom sites (each its own scanner)")
    parser.add_argument("--no-shared", action="store_true", help="skip the shared mini-MIAS and CDD-CESM folders")
    parser.add_argument("--json", default="runs/benchmarks/preprocess_quality.json", help="where to write figures")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    log = logging.getLogger("preprocess_quality")
    pipeline = ImagePipeline(args.image_size, require_mg=False)  # PNG sets have no Modality
    figures: dict[str, Any] = {"image_size": args.image_size, "sets": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for name, images in _image_sets(args, Path(scratch)).items():
            summary = summarise(_measure_set(images, pipeline, log))
            figures["sets"][name] = summary
            print(_format(name, summary))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    print(f"figures: {out}")
    return 0


def _format(name: str, summary: dict[str, Any]) -> str:
    lines = [f"{name}: {summary['images']} images (shares of the breast, %)"]
    for key in _FIGURES:
        figure = summary[key]
        worst = ", ".join(f"{n} {100 * v:.2f}" for n, v in figure["worst"]) or "none"
        lines.append(
            f"  {key:8s} median {100 * figure['median']:.3f}  p99 {100 * figure['p99']:.3f}  "
            f"max {100 * figure['max']:.3f}   worst: {worst}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
