"""A site's localization counts: where the global model's Grad-CAM points on its lesion-marked test images."""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from client.lesion_regions import marked_images
from client.site import SiteSpec
from common.config import AppConfig
from common.data import SiteData
from common.data.geometry_inverse import content_box
from common.explain import class_activation_maps, headline_region
from common.file_log import file_log
from common.metrics.localization import ImageLocalization, score_image
from common.metrics.localization_counts import LocalizationCounts

__all__ = ["MAX_LOCALIZATION_IMAGES", "localization_counts", "localization_on_site", "localizes"]

logger = logging.getLogger(__name__)

MAX_LOCALIZATION_IMAGES = 200
"""At most this many images a site scores (per node; the first in its test split's order). Grad-CAM costs a forward
and a partial backward pass per image (27 mini-MIAS images at 256 px took about 2 s with small_cnn on two CPU cores),
so a large archive's final round grows by at most 200 such passes, while a Wilson 95% interval at 200 images is still
about +-7 points."""

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
    model: nn.Module,
    data: SiteData,
    split: str = "test",
    max_images: int = MAX_LOCALIZATION_IMAGES,
) -> LocalizationCounts:
    """Score the Grad-CAM of the last class on ``split``'s lesion-marked images of that class (`marked_images`).

    Each map is read as ``fedmammo predict`` reads it (`common.explain.headline_region`: zero in the image's square
    padding, renormalised, no peak and no box when nothing is left), so the figures describe the boxes a radiologist
    is shown. Per image: the pointing game (the peak in the lesion), the IoU of the suspicious box with the lesion's
    box, and the baselines on the same image (`common.metrics.localization.score_image`).

    Parameters
    ----------
    site : SiteSpec
        The site; a pooled node (the study's centralized reference) scores each member site's split in
        ``data.parts`` and sums them, as manifest lines (masks, boxes) are per site.
    config : AppConfig
        The run's config (``model.num_classes``: the last class is the one explained).
    model : nn.Module
        The model to explain, on the device its maps are made on.
    data : SiteData
        The site's data as the evaluation loaded it (`client.task.load_site_data`): loaded once per request.
    split : str
        ``train``, ``val`` or ``test``.
    max_images : int
        At most this many images per site (`MAX_LOCALIZATION_IMAGES`).

    Raises
    ------
    ValueError
        If ``site`` is pooled and ``data`` does not hold one part per member site.
    """
    if site.pooled:
        if len(data.parts) != len(site.members):
            raise ValueError(f"pooled site {site.name}: {len(site.members)} member site(s), {len(data.parts)} part(s)")
        return LocalizationCounts.pooled(
            localization_counts(member, config, model, part, split, max_images)
            for member, part in zip(site.members, data.parts, strict=True)
        )
    started = time.perf_counter()
    images = getattr(data, split)
    marked = marked_images(site, config, images, max_images)
    if not marked:
        return LocalizationCounts()
    device = next(model.parameters()).device
    scores: list[ImageLocalization] = []
    for start in range(0, len(marked), _BATCH):
        batch = marked[start : start + _BATCH]
        pixels = [images.image(item.index) for item in batch]
        tensor = torch.stack([torch.from_numpy(p) for p in pixels]).unsqueeze(1).to(device)
        maps = class_activation_maps(model, tensor)  # the last class: the headline (malignant) score
        for item, image, heatmap in zip(batch, pixels, maps, strict=True):
            geometry = images.geometries[item.index] if images.geometries is not None else None
            region = headline_region(heatmap, content=content_box(geometry) if geometry is not None else None)
            scores.append(score_image(item.region, region.peak, region.box, image))
    counts = LocalizationCounts.of(scores)
    logger.info("site %s: localization on %d lesion-marked %s image(s): %d pointing-game hit(s) in %.1f s",
                site.name, counts.images, split, counts.hits, time.perf_counter() - started)  # fmt: skip
    return counts


def localization_on_site(
    site: SiteSpec, config: AppConfig, model: nn.Module, data: SiteData, split: str = "test"
) -> dict[str, int | float]:
    """The evaluate reply's localization entries (`common.wire.LOCALIZATION_KEYS`): counts only.

    A failure to make heatmaps (an architecture without a known CAM layer, a mask that breaks the pipeline) must not
    cost the site its evaluation, which the heatmaps only add to: the reply says ``loc_failed`` = 1 with no image
    scored. Every site sends the same keys, as FedAvg requires. The traceback, whose text can name manifests and
    files, goes to the site's own log (`common.file_log`); the shared log, which simulations copy into flower.log,
    gets the site's name and the exception's type.
    """
    try:
        counts = localization_counts(site, config, model, data, split)
    except Exception as exc:  # any failure of the optional heatmaps; the site's own figures still go
        logger.error("site %s: localization failed (%s; the reason is in the site's own log); its other "
                     "evaluation figures are sent", site.name, type(exc).__name__)  # fmt: skip
        file_log().exception("site %s: localization failed", site.name)
        counts = LocalizationCounts(failed=1)
    return counts.to_flat()
