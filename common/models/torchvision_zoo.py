"""Registry builders for torchvision VGG, AlexNet, DenseNet, Inception, MobileNetV3 and EfficientNet, made DP-safe."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torchvision
from torch import nn
from torchvision.models.efficientnet import MBConv
from torchvision.models.inception import BasicConv2d, Inception3

from common.models.adapters import fold_first_conv
from common.models.dp_blocks import DPBasicConv2d, DPDenseNet, DPInvertedResidual, DPMBConv, disable_inplace, retype
from common.models.norm import replace_batchnorm

__all__ = [
    "alexnet",
    "densenet121",
    "efficientnet_b0",
    "inception_v3",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "vgg16",
    "vgg19",
]

NormFactory = Callable[[int], nn.Module]


def _finish(model: nn.Module, in_channels: int) -> nn.Module:
    """Common tail of every builder: no in-place ops, first conv fitted to ``in_channels``."""
    return fold_first_conv(disable_inplace(model), in_channels)


def _norm_with_bn_settings(norm_layer: NormFactory, eps: float, momentum: float, channels: int) -> nn.Module:
    """``norm_layer(channels)``; a BatchNorm result takes torchvision's ``eps``/``momentum`` for the architecture."""
    layer = norm_layer(channels)
    if isinstance(layer, nn.BatchNorm2d):
        layer.eps, layer.momentum = eps, momentum
    return layer


def vgg16(*, num_classes: int, in_channels: int, norm_layer: NormFactory) -> nn.Module:
    """torchvision ``vgg16`` (plain, no BatchNorm: ``norm_layer`` has nothing to replace)."""
    del norm_layer
    return _finish(torchvision.models.vgg16(weights=None, num_classes=num_classes), in_channels)


def vgg19(*, num_classes: int, in_channels: int, norm_layer: NormFactory) -> nn.Module:
    """torchvision ``vgg19`` (plain, no BatchNorm: ``norm_layer`` has nothing to replace)."""
    del norm_layer
    return _finish(torchvision.models.vgg19(weights=None, num_classes=num_classes), in_channels)


def alexnet(*, num_classes: int, in_channels: int, norm_layer: NormFactory) -> nn.Module:
    """torchvision ``alexnet`` (no normalisation layers: ``norm_layer`` has nothing to replace)."""
    del norm_layer
    return _finish(torchvision.models.alexnet(weights=None, num_classes=num_classes), in_channels)


def densenet121(*, num_classes: int, in_channels: int, norm_layer: NormFactory) -> nn.Module:
    """DenseNet-121 without gradient checkpointing (it bypasses Opacus' hooks), BatchNorm swapped after build."""
    model = DPDenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes, memory_efficient=False)
    return _finish(replace_batchnorm(model, norm_layer), in_channels)


def inception_v3(*, num_classes: int, in_channels: int, norm_layer: NormFactory) -> nn.Module:
    """Inception v3 without the auxiliary head or input re-normalisation; conv units out of place."""
    model = Inception3(num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=True)
    # Inception3 passes its conv_block only to the stem; the Inception* blocks build plain BasicConv2d.
    return _finish(replace_batchnorm(retype(model, {BasicConv2d: DPBasicConv2d}), norm_layer), in_channels)


def _mobilenet_v3(arch: str, *, num_classes: int, in_channels: int, norm_layer: NormFactory) -> nn.Module:
    factory = partial(_norm_with_bn_settings, norm_layer, 0.001, 0.01)
    builder = getattr(torchvision.models, arch)
    model = builder(weights=None, num_classes=num_classes, block=DPInvertedResidual, norm_layer=factory)
    return _finish(model, in_channels)


def mobilenet_v3_small(*, num_classes: int, in_channels: int, norm_layer: NormFactory) -> nn.Module:
    """MobileNetV3-Small with out-of-place residual sums and activations."""
    return _mobilenet_v3("mobilenet_v3_small", num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer)


def mobilenet_v3_large(*, num_classes: int, in_channels: int, norm_layer: NormFactory) -> nn.Module:
    """MobileNetV3-Large with out-of-place residual sums and activations."""
    return _mobilenet_v3("mobilenet_v3_large", num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer)


def efficientnet_b0(*, num_classes: int, in_channels: int, norm_layer: NormFactory) -> nn.Module:
    """EfficientNet-B0 with out-of-place residual sums (MBConv re-classed) and activations."""
    model = torchvision.models.efficientnet_b0(weights=None, num_classes=num_classes, norm_layer=norm_layer)
    return _finish(retype(model, {MBConv: DPMBConv}), in_channels)
