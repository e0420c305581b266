"""Which state-dict entries of a model belong to its normalization layers (what FedBN keeps at each site)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBatchNorm2d

from common.models.norm import norm_layer_for
from common.models.registry import _spec

__all__ = ["NORM_MODULE_TYPES", "is_norm_layer", "model_norm_state_names", "norm_state_names"]

NORM_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    _NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*, and our FrozenBatchNorm2d (a BatchNorm2d)
    nn.GroupNorm,
    nn.LayerNorm,
    nn.RMSNorm,
    TorchvisionFrozenBatchNorm2d,  # torchvision's own frozen BatchNorm (not a BatchNorm2d subclass)
)
"""Module types whose parameters and buffers normalize features: the layers FedBN (Li et al. 2021) keeps local.

Listed by type, not by state-dict key names (``bn1``, ``norm5``, ``features.1``...), which differ per architecture
and say nothing reliable about what a layer is."""


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (`NORM_MODULE_TYPES`)."""
    return isinstance(module, NORM_MODULE_TYPES)


def norm_state_names(model: nn.Module) -> frozenset[str]:
    """The state-dict keys of every normalization layer of ``model``: weights, biases and buffers.

    Buffers count as much as parameters: a BatchNorm's running mean and variance are statistics of the site's own
    images (and ``num_batches_tracked`` goes with them), so under FedBN they stay with the weights they normalize
    for. Only each norm module's own entries are taken (``recurse=False``), so a module nested inside one is
    judged by its own type. A buffer registered as non-persistent is not in the state dict and not listed.

    Parameters
    ----------
    model : nn.Module
        Any model; `build_model`'s keep torchvision's key names.

    Returns
    -------
    frozenset of str
        Keys of ``model.state_dict()``; empty for a model without normalization layers (VGG, AlexNet).
    """
    keys = set(model.state_dict())
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if not is_norm_layer(module):
            continue
        own = [name for name, _ in module.named_parameters(recurse=False)]
        own += [name for name, _ in module.named_buffers(recurse=False)]
        names.update(f"{prefix}.{name}" if prefix else name for name in own)
    return frozenset(names & keys)


def model_norm_state_names(name: str, *, norm: str, num_classes: int = 2, in_channels: int = 1) -> frozenset[str]:
    """`norm_state_names` of the registry's model ``name`` built with ``norm``, as a run's config builds it.

    Only the architecture's builder runs, on PyTorch's ``meta`` device: the structure is all that is needed, so no
    memory is allocated, no weight is initialized (a ResNet-101 takes milliseconds rather than a second) and
    `build_model`'s warnings about weights are not repeated. Loading weights or freezing blocks changes no key.

    Raises
    ------
    ModelError
        For an unknown model name or norm policy (as `build_model`).
    """
    with torch.device("meta"):
        model = _spec(name).builder(num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer_for(norm))
    return norm_state_names(model)
