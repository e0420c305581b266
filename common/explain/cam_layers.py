"""Which layer a class-activation map is taken from, for each architecture of the model zoo."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models import VGG, AlexNet, DenseNet, EfficientNet, Inception3, MobileNetV3, ResNet

from common.errors import ModelError
from common.models.small_cnn import SmallCNN

__all__ = ["cam_layer", "unwrapped"]


def unwrapped(model: nn.Module) -> nn.Module:
    """The network inside Opacus' wrappers (``GradSampleModule`` and DP-DDP keep it as ``_module``), else ``model``.

    A model fine-tuned with DP-SGD in this process may still be wrapped; its layers are the inner network's.
    """
    inner = model
    while isinstance(getattr(inner, "_module", None), nn.Module):
        inner = inner._module  # Opacus keeps the wrapped network there
    return inner


def _last_relu(features: nn.Module) -> nn.Module:
    """The last ReLU of a plain conv stack: the last conv's activations, before the final pooling halves them."""
    relus = [module for module in features.modules() if isinstance(module, nn.ReLU)]
    return relus[-1] if relus else features


_LAYERS: tuple[tuple[type[nn.Module], Callable[[nn.Module], nn.Module], str], ...] = (
    (ResNet, lambda m: m.layer4, "layer4"),
    (Inception3, lambda m: m.Mixed_7c, "Mixed_7c"),
    (DenseNet, lambda m: m.features, "features (ends with norm5)"),
    (VGG, lambda m: _last_relu(m.features), "the last ReLU of features"),
    (AlexNet, lambda m: _last_relu(m.features), "the last ReLU of features"),
    (SmallCNN, lambda m: _last_relu(m.features), "the last ReLU of features"),
    (MobileNetV3, lambda m: m.features[-1], "features[-1]"),
    (EfficientNet, lambda m: m.features[-1], "features[-1]"),
)
"""Architecture -> its last convolutional feature layer (the widest map that still carries class evidence)."""


def cam_layer(model: nn.Module) -> nn.Module:
    """The layer whose activations and gradients make the model's class-activation map.

    Grad-CAM weighs the channels of one convolutional layer by the gradient of a class score; the last feature
    layer before global pooling holds the most class-specific evidence at the finest resolution left. It is found
    by the architecture's class (torchvision's ``ResNet``, ``VGG``, ``AlexNet``, ``DenseNet``, ``Inception3``,
    ``MobileNetV3``, ``EfficientNet`` and fedmammo's ``SmallCNN``, whatever their norm layers), never by a
    module name, so a renamed module cannot silently pick another layer.

    Parameters
    ----------
    model : nn.Module
        A model of the zoo (`common.models.build_model`), possibly inside an Opacus wrapper.

    Returns
    -------
    nn.Module
        The submodule to hook (``layer4`` for ResNets, ``Mixed_7c`` for Inception v3, ``features`` for DenseNet,
        the last ReLU of ``features`` for VGG, AlexNet and small_cnn, ``features[-1]`` for MobileNet/EfficientNet).

    Raises
    ------
    ModelError
        If the architecture is none of the zoo's.
    """
    inner = unwrapped(model)
    for kind, pick, _ in _LAYERS:
        if isinstance(inner, kind):
            return pick(inner)
    known = ", ".join(kind.__name__ for kind, _, _ in _LAYERS)
    raise ModelError(
        f"no class-activation layer is known for a {type(inner).__name__} model; heatmaps are made for the "
        f"zoo's architectures ({known}): build the model with common.models.build_model"
    )
