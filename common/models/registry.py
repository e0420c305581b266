"""The model registry: one public builder over private per-architecture builders."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

from torch import nn

from common.errors import ModelError
from common.models import resnet, small_cnn
from common.models.norm import norm_layer_for
from common.models.weights import load_weights

__all__ = ["available_models", "build_model"]

logger = logging.getLogger(__name__)

_REGISTRY: MappingProxyType[str, Callable[..., nn.Module]] = MappingProxyType(
    {
        "resnet18": resnet.resnet18,
        "resnet34": resnet.resnet34,
        "resnet50": resnet.resnet50,
        "resnet101": resnet.resnet101,
        "small_cnn": small_cnn.small_cnn,
    }
)


def available_models() -> list[str]:
    """Names `build_model` accepts, sorted."""
    return sorted(_REGISTRY)


def build_model(
    name: str,
    *,
    num_classes: int = 2,
    in_channels: int = 1,
    norm: str = "groupnorm",
    weights_path: str | Path | None = None,
) -> nn.Module:
    """Build a DP-compatible network by name, optionally from local pretrained weights.

    Every model passes ``opacus.validators.ModuleValidator.validate(model, strict=True)``: ReLUs and
    residual sums are out of place, and BatchNorm is either replaced by GroupNorm or frozen.
    Parameters are initialised from torch's global RNG (seed it, or load weights, for reproducibility).

    Parameters
    ----------
    name : str
        One of `available_models()`.
    num_classes : int
        Width of the classification head (2: benign/normal vs malignant).
    in_channels : int
        Image channels; mammograms are 1.
    norm : str
        ``"groupnorm"`` (BatchNorm replaced through torchvision's ``norm_layer``) or ``"frozen_bn"``
        (BatchNorm kept with pretrained statistics, never trained, always in eval mode).
    weights_path : str, Path or None
        torchvision-format state dict to start from (see `load_weights` for what is adapted). ``None`` or
        ``""`` means random initialisation. Nothing is ever downloaded.

    Returns
    -------
    nn.Module
        The model, in training mode, on the CPU.

    Raises
    ------
    ModelError
        Unknown name or norm policy, invalid sizes, or weights that do not fit.
    """
    builder = _REGISTRY.get(name)
    if builder is None:
        raise ModelError(f"model name {name!r} is unknown; available models: {available_models()}")
    if num_classes < 1 or in_channels < 1:
        raise ModelError(f"model '{name}': num_classes={num_classes} and in_channels={in_channels} must both be >= 1")
    model = builder(num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer_for(norm))
    if weights_path:
        load_weights(model, weights_path, name=name)
    elif norm == "frozen_bn":
        logger.warning(
            "model '%s' uses norm 'frozen_bn' without weights_path: its BatchNorm layers are fixed identity maps "
            "(no normalisation at all), so deep networks train poorly; use norm 'groupnorm' or pretrained weights",
            name,
        )
    return model.train()
