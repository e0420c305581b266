"""ResNets built by torchvision's own ``ResNet`` class with blocks that Opacus' backward hooks accept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["DPBasicBlock", "DPBottleneck", "DPResNet", "resnet18", "resnet34", "resnet50", "resnet101"]


class DPBasicBlock(BasicBlock):
    """torchvision's ``BasicBlock`` without in-place ops.

    Opacus wraps each trainable layer's output in a backward hook; an in-place ReLU or
    ``out += identity`` then modifies that view and autograd fails. Same submodules, same state-dict keys.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        """Two 3x3 convs and a residual sum, out of place."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class DPBottleneck(Bottleneck):
    """torchvision's ``Bottleneck`` without in-place ops (see `DPBasicBlock`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        """1x1, 3x3, 1x1 convs and a residual sum, out of place."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DPResNet(ResNet):
    """torchvision ``ResNet`` with a non-in-place stem ReLU and an ``in_channels`` first conv.

    Parameters
    ----------
    block : type
        `DPBasicBlock` or `DPBottleneck`.
    layers : list of int
        Blocks per stage, as in torchvision.
    num_classes, in_channels : int
        Head width and input channels (1 for mammograms).
    norm_layer : callable
        Factory from channels to a norm module (GroupNorm or frozen BatchNorm).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        *,
        num_classes: int,
        in_channels: int,
        norm_layer: Callable[[int], nn.Module],
    ) -> None:
        super().__init__(block, layers, num_classes=num_classes, norm_layer=norm_layer)
        self.relu = nn.ReLU(inplace=False)
        if in_channels != self.conv1.in_channels:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")


def _builder(block: type[BasicBlock | Bottleneck], layers: list[int]) -> Callable[..., nn.Module]:
    def build(*, num_classes: int, in_channels: int, norm_layer: Callable[[int], nn.Module]) -> nn.Module:
        return DPResNet(block, layers, num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer)

    return build


resnet18 = _builder(DPBasicBlock, [2, 2, 2, 2])
resnet34 = _builder(DPBasicBlock, [3, 4, 6, 3])
resnet50 = _builder(DPBottleneck, [3, 4, 6, 3])
resnet101 = _builder(DPBottleneck, [3, 4, 23, 3])
