"""Fit a network to grey mammograms: fold its first conv to 1 channel, or repeat the input to RGB."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

__all__ = ["GRAYSCALE_MODES", "RepeatChannels", "attach_repeat", "first_conv_name", "fold_first_conv"]

GRAYSCALE_MODES = ("fold", "repeat")


def first_conv_name(model: nn.Module) -> str:
    """Dotted name of the first ``Conv2d`` in registration order (the input stem in every registry model)."""
    return next(name for name, module in model.named_modules() if isinstance(module, nn.Conv2d))


def fold_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Give ``model`` a first conv of ``in_channels`` inputs, keeping the architecture's own initialisation.

    The new kernel tiles the freshly initialised RGB kernel's channels (a slice for 1 channel), so each
    weight keeps the distribution torchvision's init scheme gave it; pretrained weights are folded
    separately by `common.models.weights.adapt_input_conv` when loaded.

    Parameters
    ----------
    model : nn.Module
        Freshly built 3-channel network; modified in place.
    in_channels : int
        Channels of the images it will see (1 for mammograms).

    Returns
    -------
    nn.Module
        ``model`` itself.
    """
    name = first_conv_name(model)
    old: nn.Conv2d = model.get_submodule(name)
    if old.in_channels == in_channels:
        return model
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
    )
    repeats = math.ceil(in_channels / old.in_channels)
    new.weight.data.copy_(old.weight.data.repeat(1, repeats, 1, 1)[:, :in_channels])
    if old.bias is not None:
        new.bias.data.copy_(old.bias.data)
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name), leaf, new)
    return model


class RepeatChannels(nn.Module):
    """Repeat a 1-channel image to ``channels`` identical channels (no parameters, no state-dict keys).

    A grey image shown to an RGB network as three equal channels gives exactly the response the
    pretrained RGB kernels were trained for, and the checkpoint loads unchanged.
    """

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        """``x`` of shape (N, 1, H, W) as (N, channels, H, W); an input already that wide passes through."""
        return x if x.shape[1] == self.channels else x.expand(-1, self.channels, -1, -1)

    def extra_repr(self) -> str:
        """Shown in the model's repr."""
        return f"channels={self.channels}"


def _repeat_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: route the model's input through its ``grayscale_repeat`` child."""
    return (module.grayscale_repeat(args[0]), *args[1:])


def attach_repeat(model: nn.Module, channels: int = 3) -> nn.Module:
    """Make ``model`` accept 1-channel input by repeating it, without changing any state-dict key.

    The `RepeatChannels` child is stateless and a forward pre-hook applies it to the input, so the
    model's own ``forward`` and parameter names stay torchvision's (a wrapping module would prefix every
    key). Opacus sees the first conv's real 3-channel input, so per-sample gradients are exact.

    Returns
    -------
    nn.Module
        ``model`` itself, modified in place.
    """
    model.add_module("grayscale_repeat", RepeatChannels(channels))
    model.register_forward_pre_hook(_repeat_input)
    return model
