"""Benchmark: where a trained global model's Grad-CAM points on a prepared federation's lesion-marked test images.

Run ``python -m simulations.benchmarks.localization --model RUN_DIR/global_model.pt --data FEDERATION_DIR
[--split test] [--max-images N] [--json PATH]``. The model and its settings (architecture, image size, seed,
splits) come from its model card (``global_model.pt.json``, loaded and hash-checked as ``fedmammo predict`` loads it)
when it has one, else from the run folder's ``config.yaml``, so the images are preprocessed and split exactly as in
training; ``--data`` replaces only where the sites are (phantoms in ``~/.fedmammo/phantoms``, mini-MIAS prepared
into ``~/.fedmammo/mini_mias``). The JSON (``--json``) holds no NaN token: an undefined rate is ``null``.

Each site scores its split with `client.localization.localization_counts`, the function the federated evaluation's
final round runs: images of the last class with a lesion mark (at most ``--max-images`` per site), the pointing game
(the peak of the map read as ``fedmammo predict`` reads it inside the lesion) and the box IoU, beside the
brightest-spot, breast-centre and random-point baselines. Printed per site and pooled (counts summed) with the hit
rate's Wilson 95% CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.table import Table
from torch import nn

from client.localization import MAX_LOCALIZATION_IMAGES, localization_counts
from client.predict.model_file import load_predict_model
from client.site import PARTITION_ID_KEY, phantom_site_dir, resolve_site
from client.task import load_site_data, model_with
from common.config import AppConfig, load_config
from common.data import FEDERATION_INDEX
from common.errors import ConfigError
from common.metrics.localization_counts import LocalizationCounts
from common.models import read_card
from server.report.json_safe import to_json_safe

__all__ = ["main", "model_and_config", "score_federation"]

logger = logging.getLogger(__name__)


def model_and_config(model: Path, data: Path) -> tuple[nn.Module, AppConfig]:
    """The network in ``model`` and its run's config, pointed at the sites in ``data``.

    With a model card (``global_model.pt.json``) the file is loaded as ``fedmammo predict`` loads it
    (`client.predict.model_file.load_predict_model`: the card's SHA-256 checked, its architecture and config,
    ``_module.`` keys of an Opacus wrapper read); without one, from the run folder's ``config.yaml`` and the weights.

    Raises
    ------
    ModelError
        If the model has a card that does not match it (hash, architecture, preprocessing version).
    ConfigError
        If neither a card nor ``config.yaml`` beside the model exists, or ``data`` holds no sites.
    """
    if read_card(model) is not None:
        loaded = load_predict_model(model)
        values: dict[str, Any] = loaded.config.to_nested()
        network: nn.Module | None = loaded.model
    elif (model.parent / "config.yaml").is_file():
        values = yaml.safe_load((model.parent / "config.yaml").read_text(encoding="utf-8")) or {}
        network = None
    else:
        raise ConfigError(
            f"{model} has no model card (global_model.pt.json) and its folder no config.yaml: the image size, "
            "architecture and splits it was trained with are unknown; pass the global_model.pt of a run folder"
        )
    index = data / FEDERATION_INDEX
    if index.is_file():  # a folder `fedmammo prepare` wrote
        sites = json.loads(index.read_text(encoding="utf-8")).get("sites") or []
        federation = {"data_dir": str(data), "synthetic": False, "num_sites": len(sites)}
    else:
        count = 0
        while phantom_site_dir(data, count).is_dir():
            count += 1
        federation = {"data_dir": str(data), "synthetic": True, "num_sites": count}
    if federation["num_sites"] < 1:
        raise ConfigError(f"--data {data} holds no sites (no {FEDERATION_INDEX} and no site_0 folder)")
    values["federation"] = {**(values.get("federation") or {}), **federation}
    values["output"] = {**(values.get("output") or {}), "run_dir": str(model.parent)}
    config = load_config(values)
    if network is None:
        network = model_with(config, torch.load(model, map_location="cpu", weights_only=True))
    return network, config


def score_federation(
    model: Path, data: Path, split: str = "test", max_images: int = MAX_LOCALIZATION_IMAGES
) -> dict[str, LocalizationCounts]:
    """Each site's localization counts of ``model`` on its ``split``, by site name, and ``pooled`` (summed)."""
    network, config = model_and_config(model, data)
    counts: dict[str, LocalizationCounts] = {}
    for index in range(config.federation.num_sites):
        site = resolve_site({PARTITION_ID_KEY: index}, config)
        counts[site.name] = localization_counts(site, config, network, load_site_data(site, config), split, max_images)
    counts["pooled"] = LocalizationCounts.pooled(counts.values())
    return counts


def _table(counts: dict[str, LocalizationCounts], title: str) -> Table:
    table = Table(title=title)
    for header in ("site", "images", "hit rate [95% CI]", "mean IoU", "IoU>=0.1", "IoU>=0.3", "brightest", "centre",
                   "random", "flat"):  # fmt: skip
        table.add_column(header, justify="left" if header == "site" else "right")
    for site, part in counts.items():
        f = part.figures()
        rate = f"{f['loc_hit_rate']:.2f} [{f['loc_hit_rate_ci_low']:.2f}, {f['loc_hit_rate_ci_high']:.2f}]"
        shares = ("loc_mean_iou", "loc_iou10_share", "loc_iou30_share", "loc_baseline_bright_rate",
                  "loc_baseline_centre_rate", "loc_baseline_chance_rate", "loc_flat_share")  # fmt: skip
        table.add_row(site, str(part.images), rate, *(f"{f[key]:.2f}" for key in shares))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Print the localization figures per site and pooled; write them as JSON when ``--json`` is given."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.benchmarks.localization",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="a run's global_model.pt")
    parser.add_argument("--data", type=Path, required=True, help="the federation folder (phantoms or prepared)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--max-images", type=int, default=MAX_LOCALIZATION_IMAGES, help="per site")
    parser.add_argument("--json", type=Path, help="also write the counts and figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    started = time.perf_counter()
    model, data = args.model.expanduser(), args.data.expanduser()
    counts = score_federation(model, data, args.split, args.max_images)
    console = Console()
    title = f"Grad-CAM localization of {model} on {data} ({args.split} split, lesion-marked images of the last class)"
    console.print(_table(counts, title))
    console.print(
        "hit rate: the map's maximum inside the lesion (Wilson 95% CI); IoU: the box of the map's region at half its "
        "peak or more against the lesion's box; brightest / centre / random: the same pointing game for the image's "
        "brightest spot, the breast's centroid and a uniform point in the breast; flat: maps zero everywhere "
        f"(misses). {time.perf_counter() - started:.0f} s"
    )
    if args.json:
        figures = {site: {**part.to_flat(), **part.figures()} for site, part in counts.items()}
        report = to_json_safe({"model": str(model), "data": str(data), "split": args.split, "sites": figures})
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, allow_nan=False))  # NaN (no image scored) as null
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
