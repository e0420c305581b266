"""The global model's arrays at the start and end of a federation: seeded or pretrained init, last released."""

from __future__ import annotations

import logging

import torch
from flwr.app import ArrayRecord

from common.config import AppConfig
from common.models import build_model

__all__ = ["final_weights", "initial_arrays"]

logger = logging.getLogger(__name__)


def initial_arrays(config: AppConfig) -> ArrayRecord:
    """Round-0 weights: seeded random init, or the pretrained file the server operator names."""
    torch.manual_seed(config.seed)
    weights = config.model.weights_path or None
    model = build_model(
        config.model.name,
        num_classes=config.model.num_classes,
        in_channels=1,
        norm=config.model.norm,
        weights_path=weights,
        image_size=config.data.image_size,
    )
    return ArrayRecord(model.state_dict())


def final_weights(released: ArrayRecord, initial: ArrayRecord) -> ArrayRecord:
    """The last released global model, or the initial one when no round released any (all sites failed or
    declined, e.g. limited sites under central DP), so ``global_model.pt`` always loads into the model."""
    if len(released):
        return released
    logger.warning("no round produced a global model; global_model.pt holds the initial weights")
    return initial
