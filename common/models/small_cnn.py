"""A tiny CNN for CPU runs and tests: three conv/norm/ReLU/pool stages and a linear head."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["SmallCNN", "small_cnn"]

_WIDTHS = (16, 32, 64)


class SmallCNN(nn.Module):
    """Three conv stages (3x3 conv, norm, ReLU, 2x2 max-pool), global average pool, linear head.

    About 25k parameters: a DP step at 64x64 takes milliseconds on one CPU core, so a whole
    federated simulation runs on a laptop. ReLUs are not in place, as Opacus' hooks require.
    """

    def __init__(self, *, num_classes: int, in_channels: int, norm_layer: Callable[[int], nn.Module]) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        previous = in_channels
        for width in _WIDTHS:
            stages += [
                nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=False),
                norm_layer(width),
                nn.ReLU(inplace=False),
                nn.MaxPool2d(2),
            ]
            previous = width
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (N, num_classes)."""
        return self.fc(self.pool(self.features(x)).flatten(1))


def small_cnn(*, num_classes: int, in_channels: int, norm_layer: Callable[[int], nn.Module]) -> nn.Module:
    """Registry builder of `SmallCNN` (same keyword signature as the ResNet builders)."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, norm_layer=norm_layer)
