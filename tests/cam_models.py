"""Test models whose Grad-CAM is known in advance: where the image is brightest, the map peaks."""

from __future__ import annotations

import torch
from torch import nn

from common.models import build_model

__all__ = ["bright_detector"]


def bright_detector() -> nn.Module:
    """small_cnn whose class-1 logit grows with local brightness: every conv passes its input's centre tap on."""
    model = build_model("small_cnn", norm="groupnorm")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.zero_()
                module.weight[:, :, 1, 1] = 1.0 / module.in_channels
        model.fc.weight.copy_(torch.stack([-torch.ones(64), torch.ones(64)]))
        model.fc.bias.zero_()
    return model
