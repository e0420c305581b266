"""Per-sample gradient norms of Conv2d, Linear and GroupNorm (ghost or instantiated per layer), with book-keeping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from opacus.grad_sample.group_norm import compute_group_norm_grad_sample
from torch import Tensor, nn
from torch.nn import functional

__all__ = [
    "CLIPPED_SUM",
    "FOLD_BATCH_DEVICES",
    "NORM_SAMPLERS",
    "conv2d_norm_sample",
    "group_norm_norm_sample",
    "linear_norm_sample",
    "norm_method",
]

NormMethod = Literal["ghost", "instantiate"]
ClippedSum = Callable[[Tensor], Tensor]
"""Per-sample clipping coefficients ``(B,)`` to the parameter's clipped gradient sum ``sum_i c_i g_i``."""

FOLD_BATCH_DEVICES = ("cpu",)
"""Device types on which per-sample convolution gradients fold the batch into groups (see `_per_sample_conv_grads`)."""
CLIPPED_SUM = "_mixed_ghost_clipped_sum"
"""Attribute each sampler sets on a parameter: its `ClippedSum` for this batch (book-keeping, Bu et al. 2023)."""


def norm_method(positions: int, inputs: int, outputs: int) -> NormMethod:
    """Which way computes one layer's per-sample weight-gradient norms with fewer operations.

    A layer whose per-sample gradient is ``G_i^T A_i`` (``A_i``: ``positions x inputs`` unfolded activations,
    ``G_i``: ``positions x outputs`` output gradients) has ``||G_i^T A_i||^2 = <A_i A_i^T, G_i G_i^T>``. The ghost
    form builds the two ``T x T`` Gram matrices, about ``T^2 (D + p)`` multiply-adds per sample; instantiating
    the ``p x D`` gradient costs about ``T p D``. The rule ``T (D + p) < p D`` is Bu et al.'s mixed ghost
    clipping (NeurIPS 2022); read it as a memory and bandwidth rule: it implies ``T^2 < p D``, so a ghost layer's
    Gram matrices are never larger than the per-sample gradient it avoids (no blow-up at 512 px), while the
    clipped sum of a ghost layer still costs one weight-gradient product (``T p D``) in book-keeping. Early
    convolutions (many positions, few channels) instantiate; late ones (few positions, many channels) and fully
    connected layers (T = 1) go ghost. The boundary was measured on CPU only (no GPU here).

    Parameters
    ----------
    positions, inputs, outputs : int
        ``T`` (output positions of a convolution, 1 for a plain linear layer), ``D`` (inputs per output, for a
        convolution ``in_channels / groups x kernel area``) and ``p`` (outputs per group).
    """
    return "ghost" if positions * (inputs + outputs) < inputs * outputs else "instantiate"


def _gram_norms(cols: Tensor, grads: Tensor) -> Tensor:
    """Ghost norms ``sqrt(<A A^T, G G^T>)`` summed over groups; ``cols (B, g, D, T)``, ``grads (B, g, p, T)``."""
    squared = (cols.transpose(-1, -2) @ cols).mul_(grads.transpose(-1, -2) @ grads).sum(dim=(1, 2, 3))
    return squared.clamp_(min=0).sqrt_()


def _instantiated(param: nn.Parameter, per_sample: Tensor) -> Tensor:
    """Norms of instantiated per-sample gradients ``(B, ...)``; their clipped sum is kept for the parameter."""
    setattr(param, CLIPPED_SUM, lambda c: torch.tensordot(c.to(per_sample.dtype), per_sample, dims=1))
    return torch.linalg.vector_norm(per_sample.flatten(1), dim=1)


def _empty(layer: nn.Module, like: Tensor) -> dict[nn.Parameter, Tensor]:
    """Norms of a zero-example (empty Poisson) batch, whose clipped sum is zero."""
    params = [p for p in layer.parameters(recurse=False) if p.requires_grad]
    for param in params:
        setattr(param, CLIPPED_SUM, lambda _c, p=param: torch.zeros_like(p))
    return {p: like.new_zeros(0) for p in params}


def _padded(layer: nn.Conv2d, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """``x`` and the symmetric padding left to apply, so that a padding-free view matches the layer's own."""
    if layer.padding_mode == "zeros" and not isinstance(layer.padding, str):
        return x, (layer.padding[0], layer.padding[1])
    if isinstance(layer.padding, str):  # "valid", or "same" (stride 1) split as Conv2d splits it: extra at the end
        total = [
            0 if layer.padding == "valid" else d * (k - 1)
            for d, k in zip(layer.dilation, layer.kernel_size, strict=True)
        ]
        pad = (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
    else:
        pad = (layer.padding[1], layer.padding[1], layer.padding[0], layer.padding[0])
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    return (functional.pad(x, pad, mode=mode) if any(pad) else x), (0, 0)


def _conv_weight_grad(layer: nn.Conv2d, x: Tensor, grads: Tensor, padding: tuple[int, int], groups: int) -> Tensor:
    """The weight gradient of a convolution (the library's own backward kernel), ``groups`` as given."""
    shape = (grads.shape[1], x.shape[1] // groups, *layer.kernel_size)
    return nn.grad.conv2d_weight(x, shape, grads, layer.stride, padding, layer.dilation, groups)


def _per_sample_conv_grads(layer: nn.Conv2d, x: Tensor, grads: Tensor, padding: tuple[int, int]) -> Tensor:
    """Per-sample weight gradients ``(B, *weight.shape)``.

    On the CPU (`FOLD_BATCH_DEVICES`) a kernel larger than 1x1 folds the batch into the groups of one
    convolution backward (the oneDNN kernel, 2-5x faster on 2 cores than Opacus' unfold and batched matmul for
    ResNet's 3x3 layers); elsewhere (CUDA, not measured here) and for 1x1 kernels, a plain matmul, the patches
    are unfolded and multiplied per sample as Opacus does.
    """
    batch, groups = x.shape[0], layer.groups
    if x.device.type in FOLD_BATCH_DEVICES and layer.kernel_size != (1, 1):
        folded = _conv_weight_grad(
            layer, x.reshape(1, -1, *x.shape[2:]), grads.reshape(1, -1, *grads.shape[2:]), padding, batch * groups
        )
        return folded.view(batch, *layer.weight.shape)
    cols = functional.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=padding, stride=layer.stride)
    outputs = grads.reshape(batch, groups, layer.out_channels // groups, -1)
    per_sample = outputs @ cols.view(batch, groups, -1, cols.shape[-1]).transpose(-1, -2)
    return per_sample.view(batch, *layer.weight.shape)


def conv2d_norm_sample(layer: nn.Conv2d, activations: list[Tensor], backprops: Tensor) -> dict[nn.Parameter, Tensor]:
    """Per-sample gradient norms of a ``Conv2d`` (any groups, stride, padding, dilation and padding mode).

    `norm_method` picks ghost or instantiated norms from this batch's shapes. Each parameter also gets its
    `ClippedSum` (`CLIPPED_SUM`): the weighted sum of the instantiated gradients, or for a ghost layer one
    convolution backward with the output gradients scaled per sample, so no second backward pass is needed.

    Parameters
    ----------
    layer : nn.Conv2d
        The layer Opacus' hooks fired for.
    activations : list of Tensor
        ``[input]`` as the forward hook captured it, ``(B, C_in, H, W)``.
    backprops : Tensor
        Per-sample output gradients (Opacus rescales a mean loss's by ``B``), ``(B, C_out, H', W')``.

    Returns
    -------
    dict
        Each trainable parameter of the layer to its ``(B,)`` per-sample gradient norms.
    """
    x = activations[0].to(backprops.dtype)
    batch = x.shape[0]
    if batch == 0:
        return _empty(layer, backprops)
    norms: dict[nn.Parameter, Tensor] = {}
    if layer.weight.requires_grad:
        x, padding = _padded(layer, x)
        groups, area = layer.groups, layer.kernel_size[0] * layer.kernel_size[1]
        positions, outputs = backprops.shape[2] * backprops.shape[3], layer.out_channels // groups
        if norm_method(positions, layer.in_channels // groups * area, outputs) == "ghost":
            cols = functional.unfold(
                x, layer.kernel_size, dilation=layer.dilation, padding=padding, stride=layer.stride
            )
            grads = backprops.reshape(batch, groups, outputs, positions)
            norms[layer.weight] = _gram_norms(cols.view(batch, groups, -1, positions), grads)

            def clipped_sum(c: Tensor) -> Tensor:
                return _conv_weight_grad(layer, x, backprops * c.view(-1, 1, 1, 1), padding, groups)

            setattr(layer.weight, CLIPPED_SUM, clipped_sum)
        else:
            norms[layer.weight] = _instantiated(layer.weight, _per_sample_conv_grads(layer, x, backprops, padding))
    if layer.bias is not None and layer.bias.requires_grad:
        norms[layer.bias] = _instantiated(layer.bias, backprops.flatten(2).sum(dim=2))
    return norms


def linear_norm_sample(layer: nn.Linear, activations: list[Tensor], backprops: Tensor) -> dict[nn.Parameter, Tensor]:
    """Per-sample gradient norms of a ``Linear`` on ``(B, in)`` or ``(B, ..., in)`` inputs, with their clipped sums.

    Every position of the middle dimensions is one of ``T`` positions, as for a convolution; with ``T = 1`` the
    ghost norm is ``||a_i|| ||g_i||`` exactly (Opacus' own rank-one formula).
    """
    x = activations[0].to(backprops.dtype)
    batch = x.shape[0]
    if batch == 0:
        return _empty(layer, backprops)
    x = x.reshape(batch, -1, layer.in_features)
    grads = backprops.reshape(batch, -1, layer.out_features)
    norms: dict[nn.Parameter, Tensor] = {}
    if layer.weight.requires_grad:
        if norm_method(x.shape[1], layer.in_features, layer.out_features) == "ghost":
            norms[layer.weight] = _gram_norms(x.transpose(1, 2).unsqueeze(1), grads.transpose(1, 2).unsqueeze(1))

            def clipped_sum(c: Tensor) -> Tensor:
                return (grads * c.view(-1, 1, 1)).flatten(0, 1).T @ x.flatten(0, 1)

            setattr(layer.weight, CLIPPED_SUM, clipped_sum)
        else:
            norms[layer.weight] = _instantiated(layer.weight, grads.transpose(1, 2) @ x)
    if layer.bias is not None and layer.bias.requires_grad:
        norms[layer.bias] = _instantiated(layer.bias, grads.sum(dim=1))
    return norms


def group_norm_norm_sample(
    layer: nn.GroupNorm, activations: list[Tensor], backprops: Tensor
) -> dict[nn.Parameter, Tensor]:
    """Per-sample gradient norms of a ``GroupNorm``: its per-sample gradients are only ``B x C``, so instantiated."""
    if activations[0].shape[0] == 0:
        return _empty(layer, backprops)
    grads = compute_group_norm_grad_sample(layer, activations, backprops)
    return {param: _instantiated(param, grad) for param, grad in grads.items()}


NORM_SAMPLERS = {nn.Conv2d: conv2d_norm_sample, nn.Linear: linear_norm_sample, nn.GroupNorm: group_norm_norm_sample}
"""The norm samplers of this module by layer type, for `common.privacy.mixed_ghost` to register."""
