"""Grad-CAM heatmaps (Captum's ``LayerGradCam``) for the zoo's models, one [0, 1] map per image."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from common.errors import ModelError
from common.explain.cam_layers import cam_layer

__all__ = ["class_activation_maps", "scores_and_maps"]


@contextmanager
def _inference_only(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration, then the model exactly as it was.

    Eval mode: frozen BatchNorm and GroupNorm behave as at test time, dropout is off, and Opacus' hooks (which act
    only in training mode on parameters that need gradients) record nothing. Frozen parameters: the backward pass
    starts at the hooked layer (Captum asks for its output's gradient only), so no ``.grad`` or ``grad_sample`` is
    left on any parameter and nothing before that layer is differentiated. Opacus' wrappers also get their hooks
    switched off (``hooks_enabled``), as their backward hooks would fire on the layers after the hooked one.
    """
    was_training = model.training
    parameters = list(model.parameters())
    wanted = [p.requires_grad for p in parameters]
    wrappers = [m for m in model.modules() if isinstance(getattr(m, "hooks_enabled", None), bool)]
    hooks = [m.hooks_enabled for m in wrappers]
    model.eval()
    for p in parameters:
        p.requires_grad_(False)
    for wrapper in wrappers:
        wrapper.hooks_enabled = False
    try:
        yield
    finally:
        for wrapper, flag in zip(wrappers, hooks, strict=True):
            wrapper.hooks_enabled = flag
        for p, flag in zip(parameters, wanted, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def _normalised(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its own maximum (an all-zero map stays zero), as float32 in [0, 1]."""
    maps = np.clip(np.nan_to_num(maps.astype(np.float32, copy=False), nan=0.0), 0.0, None)
    peaks = maps.reshape(len(maps), -1).max(axis=1) if maps.size else np.zeros(0, np.float32)
    scale = np.where(peaks > 0, peaks, 1.0).astype(np.float32)
    return np.clip(maps / scale[:, None, None], 0.0, 1.0)


def scores_and_maps(
    model: nn.Module, images: torch.Tensor, target_class: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and Grad-CAM maps of a batch from one forward and one partial backward pass.

    Parameters
    ----------
    model : nn.Module
        A model of the zoo (see `common.explain.cam_layers.cam_layer`), on the images' device; its mode and its
        parameters' ``requires_grad`` flags are restored afterwards.
    images : torch.Tensor
        ``(N, C, H, W)`` float batch as the model was trained on (C = 1 for mammograms).
    target_class : int or None
        Class whose score the map explains; None is the last class (the headline one: malignant).

    Returns
    -------
    tuple of numpy.ndarray
        ``(probabilities, maps)``: softmax probabilities ``(N, num_classes)`` float32, and Grad-CAM maps
        ``(N, H, W)`` float32 in [0, 1]: the layer's channels weighed by the mean gradient of the class logit,
        summed, ReLU, upsampled bilinearly (pixel centres aligned) to the input, divided by each map's maximum.

    Raises
    ------
    ValueError
        If ``images`` is not a 4-D batch.
    ModelError
        If ``target_class`` is no class of the model, or the architecture has no known CAM layer.
    """
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"class activation maps need a (N, C, H, W) batch, got shape {tuple(images.shape)}")
    layer = cam_layer(model)
    logits: list[torch.Tensor] = []

    def target_logit(batch: torch.Tensor) -> torch.Tensor:
        out = model(batch)
        logits.append(out.detach())
        classes = int(out.shape[1])
        index = classes - 1 if target_class is None else int(target_class)
        if not 0 <= index < classes:
            raise ModelError(
                f"target_class {target_class} is no class of this {classes}-class model; give 0..{classes - 1}"
            )
        return out[:, index : index + 1]

    height, width = int(images.shape[-2]), int(images.shape[-1])
    with _inference_only(model):
        attributions = LayerGradCam(target_logit, layer).attribute(
            images.float(), target=0, relu_attributions=True, attr_dim_summation=True
        )
        upsampled = LayerAttribution.interpolate(attributions, (height, width), interpolate_mode="bilinear")
    maps = _normalised(upsampled[:, 0].detach().float().cpu().numpy())
    probabilities = torch.softmax(logits[-1].float(), dim=1).cpu().numpy().astype(np.float32)
    return probabilities, maps


def class_activation_maps(model: nn.Module, images: torch.Tensor, target_class: int | None = None) -> np.ndarray:
    """Grad-CAM maps ``(N, H, W)`` float32 in [0, 1] of ``images`` for ``target_class`` (None: the last class).

    Where the model looked when scoring the class: see `scores_and_maps`, which also returns the probabilities
    from the same forward pass.
    """
    return scores_and_maps(model, images, target_class)[1]
