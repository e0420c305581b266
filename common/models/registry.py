"""The model registry: one public builder over private per-architecture builders, with each one's input sizes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from torch import nn

from common.errors import ModelError
from common.models import resnet, small_cnn, torchvision_zoo, transfer
from common.models.adapters import GRAYSCALE_MODES, attach_repeat
from common.models.norm import norm_layer_for
from common.models.weights import load_weights
from common.models.weights_card import check_weights_card

__all__ = ["ModelSpec", "available_models", "build_model", "input_size", "min_input_size"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one architecture.

    Attributes
    ----------
    builder : callable
        ``builder(*, num_classes, in_channels, norm_layer) -> nn.Module``, DP-safe, random weights.
    blocks : callable
        The model's top-level feature blocks, input side first (for ``trainable_blocks``).
    head : str
        Dotted name of the classification ``nn.Linear`` (resized to ``num_classes``, always trainable).
    input_size : int
        Nominal square input side the architecture was designed (and pretrained) for.
    min_input_size : int
        Smallest side supported: exact for AlexNet (63) and Inception (75); 32 (one pixel after the
        stride-32 stem and stages, though some forward passes accept less) for the others; 8 for small_cnn.
    """

    builder: Callable[..., nn.Module]
    blocks: Callable[[nn.Module], list[list[nn.Module]]]
    head: str
    input_size: int = 224
    min_input_size: int = 32


_REGISTRY: MappingProxyType[str, ModelSpec] = MappingProxyType(
    {
        "resnet18": ModelSpec(resnet.resnet18, transfer.resnet_blocks, "fc"),
        "resnet34": ModelSpec(resnet.resnet34, transfer.resnet_blocks, "fc"),
        "resnet50": ModelSpec(resnet.resnet50, transfer.resnet_blocks, "fc"),
        "resnet101": ModelSpec(resnet.resnet101, transfer.resnet_blocks, "fc"),
        "small_cnn": ModelSpec(small_cnn.small_cnn, transfer.small_cnn_blocks, "fc", 64, 8),
        "vgg16": ModelSpec(torchvision_zoo.vgg16, transfer.classifier_blocks, "classifier.6"),
        "vgg19": ModelSpec(torchvision_zoo.vgg19, transfer.classifier_blocks, "classifier.6"),
        "alexnet": ModelSpec(torchvision_zoo.alexnet, transfer.classifier_blocks, "classifier.6", 224, 63),
        "densenet121": ModelSpec(torchvision_zoo.densenet121, transfer.densenet_blocks, "classifier"),
        "inception_v3": ModelSpec(torchvision_zoo.inception_v3, transfer.inception_blocks, "fc", 299, 75),
        "mobilenet_v3_small": ModelSpec(torchvision_zoo.mobilenet_v3_small, transfer.mobile_blocks, "classifier.3"),
        "mobilenet_v3_large": ModelSpec(torchvision_zoo.mobilenet_v3_large, transfer.mobile_blocks, "classifier.3"),
        "efficientnet_b0": ModelSpec(torchvision_zoo.efficientnet_b0, transfer.mobile_blocks, "classifier.1"),
    }
)


def available_models() -> list[str]:
    """Names `build_model` accepts, sorted."""
    return sorted(_REGISTRY)


def _spec(name: str) -> ModelSpec:
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ModelError(f"model name {name!r} is unknown; available models: {available_models()}")
    return spec


def input_size(name: str) -> int:
    """Nominal square input side of model ``name`` (299 for inception_v3, 224 for ImageNet CNNs, 64 small_cnn).

    Pretrained weights work best at this size; preprocessing should resize to it unless memory forbids.

    Raises
    ------
    ModelError
        Unknown name.
    """
    return _spec(name).input_size


def min_input_size(name: str) -> int:
    """Smallest square input side model ``name`` supports (75 for inception_v3, 63 for alexnet, 8 small_cnn, else 32).

    Raises
    ------
    ModelError
        Unknown name.
    """
    return _spec(name).min_input_size


def build_model(
    name: str,
    *,
    num_classes: int = 2,
    in_channels: int = 1,
    norm: str = "groupnorm",
    weights_path: str | Path | None = None,
    grayscale: str = "fold",
    trainable_blocks: int | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """Build a DP-compatible network by name, optionally from local pretrained weights.

    Every model passes ``opacus.validators.ModuleValidator.validate(model, strict=True)``: activations,
    residual sums and other ops on layer outputs are out of place, BatchNorm is either replaced by
    GroupNorm or frozen, and torchvision's state-dict keys are kept so its ``.pth`` files load.
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
        ``"groupnorm"`` (BatchNorm replaced by GroupNorm) or ``"frozen_bn"`` (BatchNorm kept with pretrained
        statistics, never trained, always in eval mode). A no-op for VGG and AlexNet, which have no norm layers.
    weights_path : str, Path or None
        torchvision-format state dict to start from (see `load_weights` for what is adapted). ``None`` or
        ``""`` means random initialisation. Nothing is ever downloaded.
    grayscale : str
        How a 1-channel input meets an RGB architecture: ``"fold"`` gives the first conv ``in_channels`` inputs
        (pretrained RGB kernels are summed, the same response to a grey image); ``"repeat"`` keeps the 3-channel
        conv and repeats the input to 3 channels (weights load unchanged; ``in_channels`` must be 1 or 3).
    trainable_blocks : int or None
        ``None`` fine-tunes every layer. ``k >= 0`` freezes everything except the last ``k`` top-level feature
        blocks (ResNet ``layer*``, VGG/AlexNet conv stages and hidden FC layers, DenseNet dense blocks,
        Inception ``Mixed_*``, MobileNet/EfficientNet ``features[i]``) and the classification head.
    image_size : int or None
        The run's ``data.image_size``, compared with a weights card's (a warning when they differ); None skips it.

    Returns
    -------
    nn.Module
        The model, in training mode, on the CPU.

    Raises
    ------
    ModelError
        Unknown name, norm policy or grayscale mode, invalid sizes or ``trainable_blocks``, weights that
        do not fit, or weights whose card (`common.models.weights_card`) says they are other bytes or were
        made for another model name or norm.
    """
    spec = _spec(name)
    if num_classes < 1 or in_channels < 1:
        raise ModelError(f"model '{name}': num_classes={num_classes} and in_channels={in_channels} must both be >= 1")
    if grayscale not in GRAYSCALE_MODES:
        raise ModelError(
            f"model '{name}': grayscale {grayscale!r} is unknown; it must be one of {list(GRAYSCALE_MODES)}"
        )
    if grayscale == "repeat" and in_channels not in (1, 3):
        raise ModelError(
            f"model '{name}': grayscale 'repeat' needs in_channels 1 or 3, got {in_channels}; use grayscale 'fold'"
        )
    built_channels = 3 if grayscale == "repeat" else in_channels
    model = spec.builder(num_classes=num_classes, in_channels=built_channels, norm_layer=norm_layer_for(norm))
    if built_channels != in_channels:
        attach_repeat(model, built_channels)
    if weights_path:
        check_weights_card(weights_path, model_name=name, norm=norm, image_size=image_size)
        load_weights(model, weights_path, name=name, head=spec.head)
    elif norm == "frozen_bn" and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        logger.warning(
            "model '%s' uses norm 'frozen_bn' without weights_path: its BatchNorm layers are fixed identity maps "
            "(no normalisation at all), so deep networks train poorly; use norm 'groupnorm' or pretrained weights",
            name,
        )
    if trainable_blocks is not None:
        head = model.get_submodule(spec.head)
        transfer.freeze_except_last(model, spec.blocks(model), head, trainable_blocks, name=name)
    return model.train()
