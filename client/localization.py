"""A site's localization counts: where the global model's Grad-CAM points on its lesion-marked test images."""

from __future__ import annotations

import logging
import time

import torch

from client.lesion_regions import marked_images
from client.site import SiteSpec
from client.task import load_site_data, model_with, pick_device
from common.config import AppConfig
from common.explain import class_activation_maps, peak_location, suspicious_box
from common.metrics.localization import ImageLocalization, score_image
from common.metrics.localization_counts import LocalizationCounts

__all__ = ["BOX_FRACTION", "MAX_LOCALIZATION_IMAGES", "localization_counts", "localization_on_site", "localizes"]

logger = logging.getLogger(__name__)

MAX_LOCALIZATION_IMAGES = 200
"""At most this many images a site scores (per node; the first in its test split's order). Grad-CAM costs a forward
and a partial backward pass per image (27 mini-MIAS images at 256 px took about 2 s with small_cnn on two CPU cores),
so a large archive's final round grows by at most 200 such passes, while a Wilson 95% interval at 200 images is still
about +-7 points."""

BOX_FRACTION = 0.5
"""The suspicious box holds the heatmap's connected region at or above half its peak (`suspicious_box`)."""

_BATCH = 16


def localizes(config: AppConfig, server_round: int) -> bool:
    """Whether this evaluate request scores localization: ``evaluation.localization`` on, and the final round.

    Only the final round's global model is the one a reader is given; scoring every round would multiply the
    heatmaps' cost by the number of rounds for figures nobody reads.
    """
    return bool(config.evaluation.localization) and server_round == config.strategy.num_rounds


def localization_counts(
    site: SiteSpec,
    config: AppConfig,
    state_dict: dict[str, torch.Tensor],
    split: str = "test",
    max_images: int = MAX_LOCALIZATION_IMAGES,
) -> LocalizationCounts:
    """Score the Grad-CAM of the last class on ``split``'s lesion-marked images of that class (`marked_images`).

    Per image: the pointing game (the map's maximum in the lesion), the IoU of the map's suspicious box with the
    lesion's box, and the baselines on the same image (`common.metrics.localization.score_image`). A pooled node
    (the study's centralized reference) scores each member site's split and sums them.
    """
    if site.pooled:
        return LocalizationCounts.pooled(
            localization_counts(member, config, state_dict, split, max_images) for member in site.members
        )
    started = time.perf_counter()
    images = getattr(load_site_data(site, config), split)
    marked = marked_images(site, config, images, max_images)
    if not marked:
        return LocalizationCounts()
    device = pick_device(config.training.device)
    model = model_with(config, state_dict).to(device)
    scores: list[ImageLocalization] = []
    for start in range(0, len(marked), _BATCH):
        batch = marked[start : start + _BATCH]
        pixels = [images.image(item.index) for item in batch]
        tensor = torch.stack([torch.from_numpy(p) for p in pixels]).unsqueeze(1).to(device)
        maps = class_activation_maps(model, tensor)  # the last class: the headline (malignant) score
        for item, image, heatmap in zip(batch, pixels, maps, strict=True):
            peak, box = peak_location(heatmap), suspicious_box(heatmap, BOX_FRACTION)
            scores.append(score_image(item.region, peak, box, image, flat=not heatmap.max() > 0))
    counts = LocalizationCounts.of(scores)
    logger.info("site %s: localization on %d lesion-marked %s image(s): %d pointing-game hit(s) in %.1f s",
                site.name, counts.images, split, counts.hits, time.perf_counter() - started)  # fmt: skip
    return counts


def localization_on_site(
    site: SiteSpec, config: AppConfig, state_dict: dict[str, torch.Tensor]
) -> dict[str, int | float]:
    """The evaluate reply's localization entries (`common.wire.LOCALIZATION_KEYS`): counts only.

    A failure to make heatmaps (an architecture without a known CAM layer, a mask that breaks the pipeline) must not
    cost the site its evaluation, which the heatmaps only add to: it is logged here with its traceback and the reply
    says ``loc_failed`` = 1 with no image scored. Every site sends the same keys, as FedAvg requires.
    """
    try:
        counts = localization_counts(site, config, state_dict)
    except Exception:  # any failure of the optional heatmaps; the site's own figures still go
        logger.exception("site %s: localization failed; its other evaluation figures are sent", site.name)
        counts = LocalizationCounts(failed=1)
    return counts.to_flat()
