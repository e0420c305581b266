"""Transfer learning: each architecture's top-level feature blocks, and freezing all but the last few."""

from __future__ import annotations

import logging

from torch import nn

from common.errors import ModelError

__all__ = [
    "classifier_blocks",
    "densenet_blocks",
    "freeze_except_last",
    "inception_blocks",
    "mobile_blocks",
    "resnet_blocks",
    "small_cnn_blocks",
]

logger = logging.getLogger(__name__)

Blocks = list[list[nn.Module]]


def _split_at_maxpool(features: nn.Sequential) -> Blocks:
    """Conv stages of a plain CNN: each ends with (and includes) a ``MaxPool2d``."""
    stages: Blocks = [[]]
    for module in features:
        stages[-1].append(module)
        if isinstance(module, nn.MaxPool2d):
            stages.append([])
    return [stage for stage in stages if stage]


def _classifier_body(model: nn.Module) -> Blocks:
    """The hidden layers of ``model.classifier`` before its head, as one block when they have parameters."""
    body = list(model.classifier)[:-1]
    return [body] if any(p.numel() for m in body for p in m.parameters()) else []


def resnet_blocks(model: nn.Module) -> Blocks:
    """ResNet: ``layer1`` ... ``layer4`` (the stem is never in a block)."""
    return [[model.layer1], [model.layer2], [model.layer3], [model.layer4]]


def small_cnn_blocks(model: nn.Module) -> Blocks:
    """SmallCNN: its three conv/norm/ReLU/pool stages."""
    return _split_at_maxpool(model.features)


def classifier_blocks(model: nn.Module) -> Blocks:
    """VGG, AlexNet: conv stages split after each max-pool, then the hidden fully connected layers."""
    return _split_at_maxpool(model.features) + _classifier_body(model)


def densenet_blocks(model: nn.Module) -> Blocks:
    """DenseNet: each dense block with the transition (or final ``norm5``) after it; the stem is not a block."""
    blocks: Blocks = []
    for name, module in model.features.named_children():
        if name.startswith("denseblock"):
            blocks.append([module])
        elif blocks:
            blocks[-1].append(module)
    return blocks


def inception_blocks(model: nn.Module) -> Blocks:
    """Inception v3: the eleven ``Mixed_*`` modules; the stem convolutions are not blocks."""
    return [[module] for name, module in model.named_children() if name.startswith("Mixed_")]


def mobile_blocks(model: nn.Module) -> Blocks:
    """MobileNetV3, EfficientNet: each ``features[i]``, then the classifier's hidden layer if it has one."""
    return [[module] for module in model.features] + _classifier_body(model)


def freeze_except_last(model: nn.Module, blocks: Blocks, head: nn.Module, trainable_blocks: int, *, name: str) -> None:
    """Freeze every parameter except those of the last ``trainable_blocks`` blocks and the head.

    Fine-tuning only the layers nearest the output keeps the generic pretrained features, needs less
    data, and under DP spends the noise on far fewer coordinates. Parameters that were already frozen
    (frozen BatchNorm) stay frozen. Opacus ignores frozen layers, so the model remains valid for it.

    Parameters
    ----------
    model : nn.Module
        The built network; modified in place.
    blocks : list of list of nn.Module
        Its top-level feature blocks, input side first (see the ``*_blocks`` functions).
    head : nn.Module
        The classification layer, always trainable.
    trainable_blocks : int
        How many blocks, counted from the output side, stay trainable; 0 trains the head only.
    name : str
        Registry name, for messages.

    Raises
    ------
    ModelError
        If ``trainable_blocks`` is negative or exceeds the number of blocks.
    """
    if not 0 <= trainable_blocks <= len(blocks):
        raise ModelError(
            f"model '{name}': trainable_blocks={trainable_blocks} is out of range; it has {len(blocks)} blocks, so "
            f"use 0..{len(blocks)} (0 = head only), or None to fine-tune every layer"
        )
    keep = [head] + [module for block in blocks[len(blocks) - trainable_blocks :] for module in block]
    kept = {id(p) for module in keep for p in module.parameters() if p.requires_grad}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in kept)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("model '%s': last %d block(s) and head trainable (%d parameters)", name, trainable_blocks, count)
