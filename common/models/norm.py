"""Normalisation policies that Opacus accepts: GroupNorm, or BatchNorm frozen in eval mode."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from common.errors import ModelError

__all__ = ["NORM_POLICIES", "FrozenBatchNorm2d", "group_norm", "norm_layer_for", "replace_batchnorm"]

NORM_POLICIES = ("groupnorm", "frozen_bn")
_MAX_GROUPS = 32


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose affine parameters never train and whose running statistics never update.

    DP-SGD cannot privatise batch statistics (each sample's output depends on its batch peers), so
    Opacus refuses trainable BatchNorm. Frozen, the layer is a fixed per-channel affine map, which is
    private and keeps pretrained ImageNet statistics. It stays a ``BatchNorm2d`` subclass with the same
    state-dict keys, so torchvision weights load unchanged; ``train()`` is overridden so that
    ``model.train()`` cannot switch it back to batch statistics.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:
        """Ignore ``mode``: the layer always normalises with its running statistics."""
        return super().train(False)


def group_norm(num_channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups, always a divisor of ``num_channels``.

    Parameters
    ----------
    num_channels : int
        Channels of the normalised feature map (the argument torchvision passes to ``norm_layer``).

    Returns
    -------
    nn.GroupNorm
        ``gcd(32, num_channels)`` groups: 32 for ResNet widths, and still valid for odd widths.
    """
    return nn.GroupNorm(math.gcd(_MAX_GROUPS, num_channels), num_channels)


def norm_layer_for(norm: str) -> Callable[[int], nn.Module]:
    """The ``norm_layer`` factory torchvision builders take, for a policy name.

    Parameters
    ----------
    norm : str
        ``"groupnorm"`` (trainable, batch-independent) or ``"frozen_bn"`` (pretrained statistics kept).

    Raises
    ------
    ModelError
        For any other policy name.
    """
    if norm == "groupnorm":
        return group_norm
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    raise ModelError(f"model norm {norm!r} is unknown: it must be one of {list(NORM_POLICIES)}; set model.norm to one")


def replace_batchnorm(model: nn.Module, norm_layer: Callable[[int], nn.Module]) -> nn.Module:
    """Swap every ``BatchNorm2d`` in ``model`` for ``norm_layer(channels)``, in place, keeping its key.

    For architectures whose torchvision class hard-codes ``nn.BatchNorm2d`` (DenseNet, Inception) and
    so takes no ``norm_layer``. The new module sits under the same name, so state-dict keys are unchanged
    (GroupNorm keeps ``weight``/``bias``; frozen BatchNorm keeps the running statistics too). A BatchNorm
    replacement inherits the original ``eps``/``momentum`` so pretrained statistics normalise exactly
    as in torchvision.

    Parameters
    ----------
    model : nn.Module
        Freshly built network; modified in place.
    norm_layer : callable
        Factory from channels to a norm module (`group_norm` or `FrozenBatchNorm2d`).

    Returns
    -------
    nn.Module
        ``model`` itself.
    """
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d) and not isinstance(child, FrozenBatchNorm2d):
                new = norm_layer(child.num_features)
                if isinstance(new, nn.BatchNorm2d):
                    new.eps, new.momentum = child.eps, child.momentum
                setattr(parent, child_name, new)
    return model
