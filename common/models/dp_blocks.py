"""DP-safe versions of torchvision blocks whose forward code works in place, with identical state-dict keys."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional
from torchvision.models.densenet import DenseNet
from torchvision.models.efficientnet import MBConv
from torchvision.models.inception import BasicConv2d
from torchvision.models.mobilenetv3 import InvertedResidual

__all__ = ["DPBasicConv2d", "DPDenseNet", "DPInvertedResidual", "DPMBConv", "disable_inplace", "retype"]


def disable_inplace(model: nn.Module) -> nn.Module:
    """Turn off ``inplace`` on every module that has the flag (ReLU, ReLU6, Hardswish, SiLU, Dropout...).

    Opacus records each trainable layer's output for its backward hook; an in-place activation
    overwrites that tensor and autograd then fails ("a view ... is being modified inplace"). The flag
    holds no state, so state-dict keys are unchanged.

    Returns
    -------
    nn.Module
        ``model`` itself, modified in place.
    """
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    return model


def retype(model: nn.Module, mapping: dict[type[nn.Module], type[nn.Module]]) -> nn.Module:
    """Re-class modules of exactly a key type to its DP-safe subclass, in place.

    For blocks a torchvision builder instantiates itself with no hook to pass another class (EfficientNet's
    ``MBConv``). The subclasses add no state and only override ``forward``, so switching the class of a
    constructed instance is exact.
    """
    for module in model.modules():
        target = mapping.get(type(module))
        if target is not None:
            module.__class__ = target
    return model


class DPInvertedResidual(InvertedResidual):
    """MobileNetV3's inverted residual with an out-of-place residual sum (torchvision uses ``+=``)."""

    def forward(self, input: Tensor) -> Tensor:
        """The block, plus its input when shapes allow."""
        result = self.block(input)
        return result + input if self.use_res_connect else result


class DPMBConv(MBConv):
    """EfficientNet's MBConv with an out-of-place residual sum after stochastic depth.

    Stochastic depth drops whole samples' residual branches with a per-sample mask, so each output still
    depends on one sample only and per-sample gradients stay exact.
    """

    def forward(self, input: Tensor) -> Tensor:
        """The block (stochastically dropped in training), plus its input when shapes allow."""
        result = self.block(input)
        if self.use_res_connect:
            return self.stochastic_depth(result) + input
        return result


class DPBasicConv2d(BasicConv2d):
    """Inception's conv-norm-ReLU unit with an out-of-place ReLU (torchvision calls ``F.relu(inplace=True)``)."""

    def forward(self, x: Tensor) -> Tensor:
        """Conv, norm, ReLU."""
        return functional.relu(self.bn(self.conv(x)))


class DPDenseNet(DenseNet):
    """torchvision ``DenseNet`` whose final ReLU is out of place (torchvision's acts on ``norm5``'s output)."""

    def forward(self, x: Tensor) -> Tensor:
        """Features, ReLU, global average pool, classifier."""
        out = functional.relu(self.features(x))
        out = torch.flatten(functional.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)
