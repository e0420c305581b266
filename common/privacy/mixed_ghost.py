"""The ``mixed_ghost`` grad-sample mode: Opacus' ghost clipping with mixed per-layer norms and book-keeping."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from opacus import PrivacyEngine
from opacus.grad_sample import AbstractGradSampleModule, GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping, DPTensorFastGradientClipping
from opacus.utils.module_utils import trainable_parameters
from torch import Tensor, nn

from common.errors import ConfigError
from common.privacy.ghost_norms import CLIPPED_SUM
from common.privacy.ghost_norms import NORM_SAMPLERS as MIXED_NORM_SAMPLERS

__all__ = [
    "LOSS_WRAPPER_MODES",
    "MIXED_GHOST",
    "MixedGhostGradSampleModule",
    "MixedGhostLoss",
    "MixedGhostPrivacyEngine",
    "MixedGhostTensor",
    "opacus_grad_sample_mode",
]

MIXED_GHOST = "mixed_ghost"
"""The ``privacy.grad_sample_mode`` value of this module's mode."""
LOSS_WRAPPER_MODES = ("ghost", MIXED_GHOST)
"""Modes whose loss must be the wrapper `make_private_training` returns (its ``backward`` clips)."""


def opacus_grad_sample_mode(mode: str) -> str:
    """The Opacus mode behind a ``privacy.grad_sample_mode``: ``mixed_ghost`` is Opacus' ``ghost`` machinery."""
    return "ghost" if mode == MIXED_GHOST else mode


class MixedGhostGradSampleModule(GradSampleModuleFastGradientClipping):
    """Opacus' fast-gradient-clipping module with `common.privacy.ghost_norms` as its norm samplers.

    The norm samplers are registered on this subclass, not with ``register_norm_sampler`` (which would change
    Opacus' own ``ghost`` mode for every caller in the process). Layer types without one here (a custom layer)
    keep Opacus' path, instantiated per-sample gradients and their norms, and get their clipped gradient from a
    second backward pass restricted to their parameters.

    A forward pre-hook on every trainable layer whose input does not require grad (the first convolution; the
    first trainable layer after frozen blocks when fine-tuning) swaps that input for a leaf view that does. The
    norm pass then asks autograd for the gradients of those leaves only: every layer's output gradient is
    computed (Opacus' backward hooks fire as usual) but no parameter gradient is, and frozen layers below still
    record no graph.

    Opacus' fast-gradient-clipping optimizer only noises ``p.grad``, so a plain ``loss.backward()`` (not the
    `MixedGhostLoss` wrapper's) would train on unclipped gradients: a post-accumulate-grad hook on every
    trainable parameter refuses any gradient that backward accumulates outside the wrapper's own passes.
    """

    NORM_SAMPLERS: ClassVar[dict[type[nn.Module], Callable[..., dict[nn.Parameter, Tensor]]]] = {
        **GradSampleModuleFastGradientClipping.NORM_SAMPLERS,
        **MIXED_NORM_SAMPLERS,
    }

    def add_hooks(self, **kwargs: Any) -> None:
        """Opacus' hooks, plus the input pre-hooks (removed with them by ``remove_hooks``)."""
        super().add_hooks(**kwargs)
        self._pass_leaves: list[Tensor] = []
        self.accumulation_allowed = False
        """True only while `MixedGhostTensor.backward` itself accumulates gradients into parameters."""
        self.second_pass_params: list[nn.Parameter] = []
        """Trainable parameters of layers `common.privacy.ghost_norms` has no sampler for."""
        booked: list[nn.Parameter] = []
        for module in self.iterate_submodules(self._module):
            self.autograd_grad_sample_hooks.append(module.register_forward_pre_hook(self._leaf_inputs))
            if type(module) not in MIXED_NORM_SAMPLERS:  # Opacus handles its whole subtree
                self.second_pass_params.extend(p for p in module.parameters() if p.requires_grad)
            else:
                booked.extend(p for p in module.parameters(recurse=False) if p.requires_grad)
        _refuse_shared(booked, self.second_pass_params)
        self.second_pass_params = list({id(p): p for p in self.second_pass_params}.values())
        for _, param in trainable_parameters(self._module):
            self.autograd_grad_sample_hooks.append(param.register_post_accumulate_grad_hook(self._refuse_unclipped))

    def _refuse_unclipped(self, param: Tensor) -> None:
        if self.hooks_enabled and not self.accumulation_allowed:
            raise RuntimeError(
                f"a gradient of shape {tuple(param.shape)} was accumulated outside the clipping of grad_sample_mode "
                "'mixed_ghost', whose loss wrapper's backward() clips: a plain loss.backward() would train on "
                "unclipped gradients; compute the loss with PrivateTraining.criterion, or use grad_sample_mode 'hooks'"
            )

    def _leaf_inputs(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not (self.hooks_enabled and module.training and torch.is_grad_enabled()):
            return None
        swapped = [
            a.detach().requires_grad_(True)
            if isinstance(a, Tensor) and a.is_floating_point() and not a.requires_grad
            else a
            for a in args
        ]
        new = [s for s, a in zip(swapped, args, strict=True) if s is not a]
        self._pass_leaves.extend(new)
        return tuple(swapped) if new else None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's forward; the leaves of the previous forward are dropped."""
        self._pass_leaves = []
        return self._module(*args, **kwargs)

    def take_pass_leaves(self) -> list[Tensor]:
        """The input leaves the last forward created (then forgotten, so their memory goes with the graph)."""
        leaves, self._pass_leaves = self._pass_leaves, []
        return leaves


def _refuse_shared(booked: list[nn.Parameter], second: list[nn.Parameter]) -> None:
    """Refuse a parameter that two layers use (or a book-kept layer and a second-pass one).

    Its per-sample norm would come from one use only while its gradient sums both: an example's contribution could
    exceed ``max_grad_norm`` with noise scaled to it, so the reported epsilon would understate the privacy loss.
    """
    seen: set[int] = set()
    shared = [tuple(p.shape) for p in booked if id(p) in seen or seen.add(id(p))]  # type: ignore[func-returns-value]
    shared += [tuple(p.shape) for p in second if id(p) in seen]
    if shared:
        raise ConfigError(
            f"privacy.grad_sample_mode = 'mixed_ghost' cannot clip a parameter shared by two layers (shape(s) "
            f"{shared}): its per-sample norm would count one use only; untie the weights or use 'hooks'"
        )


class MixedGhostTensor(DPTensorFastGradientClipping):
    """Opacus' per-sample loss whose ``backward()`` clips with one backward pass that computes no weight gradient.

    The pass computes only the layers' output gradients; their hooks store each parameter's per-sample
    gradient norms and its clipped-sum function (`common.privacy.ghost_norms`). With the clipping coefficients
    ``c_i = min(1, C / (||g_i|| + 1e-6))`` (Opacus' ``get_clipping_coef``) each ``p.grad`` becomes
    ``sum_i c_i g_i``, the clipped sum Opacus' ghost mode gets from its second, weighted backward pass, and that
    ``DPOptimizerFastGradientClipping`` then noises. Only parameters of layers without such a sampler take a
    second pass, restricted to them.
    """

    def backward(self) -> None:
        """Clip; raises RuntimeError if a trainable parameter got no norm in the pass."""
        module: MixedGhostGradSampleModule = self.module
        if self.loss_reduction == "mean":
            reduced = torch.mean(self.loss_per_sample, dim=0)
        elif self.loss_reduction == "sum":
            reduced = torch.sum(self.loss_per_sample, dim=0)
        else:
            raise ValueError(f"loss_reduction = {self.loss_reduction!r}: only 'sum' and 'mean' losses are supported")
        leaves, params, second = module.take_pass_leaves(), module.trainable_parameters, module.second_pass_params
        for param in params:
            param._norm_sample = None
        try:
            if leaves:
                torch.autograd.grad(reduced, leaves, retain_graph=bool(second), allow_unused=True)
            else:  # no input could become a leaf (not float, or already requiring grad): Opacus' own first pass,
                # whose parameter gradients are zeroed below
                module.accumulation_allowed = True
                reduced.backward(retain_graph=bool(second))
                module.accumulation_allowed = False
            missing = sum(1 for param in params if param._norm_sample is None)
            if missing:
                raise RuntimeError(
                    f"{missing} trainable parameter(s) got no per-sample gradient norm: their layer's input does "
                    "not depend on the model input through hooked layers, which grad_sample_mode 'mixed_ghost' needs"
                )
            self.optimizer.zero_grad()
            coefficients = module.get_clipping_coef().to(self.loss_per_sample.device)
            for param in params:
                clipped_sum = param.__dict__.pop(CLIPPED_SUM, None)
                if clipped_sum is None:
                    continue
                grad = clipped_sum(coefficients.to(param.device)).view_as(param)
                param.grad = grad if param.grad is None else param.grad.add_(grad)
            if second:
                module.disable_hooks()
                try:
                    torch.autograd.backward(torch.sum(coefficients * self.loss_per_sample), inputs=second)
                finally:
                    module.enable_hooks()
        finally:
            module.accumulation_allowed = False
            for param in params:
                param.__dict__.pop(CLIPPED_SUM, None)  # drop the kept activations even when the pass failed


def _keeping_class(operation: Callable[..., DPTensorFastGradientClipping]) -> Callable[..., Any]:
    def wrapped(self: MixedGhostTensor, *args: Any) -> MixedGhostTensor:
        result = operation(self, *args)
        result.__class__ = type(self)  # Opacus builds its base class; same fields, so the re-class is exact
        return result

    return wrapped


for _name in ("__truediv__", "__mul__", "__rmul__", "__add__", "__radd__", "__sub__", "__rsub__", "__neg__"):
    setattr(MixedGhostTensor, _name, _keeping_class(getattr(DPTensorFastGradientClipping, _name)))


class MixedGhostLoss(DPLossFastGradientClipping):
    """Opacus' fast-gradient-clipping loss wrapper, returning a `MixedGhostTensor`."""

    def __call__(self, *args: Any, shape: Any = None, **kwargs: Any) -> MixedGhostTensor:
        """The per-sample losses of ``criterion(*args)``, wrapped; call ``.backward()`` on the result."""
        loss = super().__call__(*args, shape=shape, **kwargs)
        return MixedGhostTensor(loss.module, loss.optimizer, loss.loss_per_sample, loss.loss_reduction)


class MixedGhostPrivacyEngine(PrivacyEngine):
    """A ``PrivacyEngine`` whose ``make_private(..., grad_sample_mode="ghost")`` wraps for ``mixed_ghost``.

    Only the model wrapper and the loss wrapper differ from Opacus' ghost mode; the data loader (Poisson
    sampling), ``DPOptimizerFastGradientClipping`` (noise ``sigma x C`` on the clipped sum) and the accountant
    hook are Opacus' own, so sampling rate, noise and steps, and hence epsilon, are those of every other mode.
    """

    def _prepare_model(
        self,
        module: nn.Module,
        *,
        batch_first: bool = True,
        max_grad_norm: float | list[float] = 1.0,
        loss_reduction: str = "mean",
        grad_sample_mode: str = "ghost",
        wrap_model: bool = True,
    ) -> MixedGhostGradSampleModule:
        if isinstance(module, AbstractGradSampleModule) or not wrap_model or grad_sample_mode != "ghost":
            raise ValueError(
                f"grad_sample_mode 'mixed_ghost' wraps a plain nn.Module itself (got {type(module).__name__}, "
                f"wrap_model={wrap_model}, Opacus mode {grad_sample_mode!r}); pass the unwrapped model"
            )
        self.validate(module=module, optimizer=None, data_loader=None)
        return MixedGhostGradSampleModule(
            module, batch_first=batch_first, loss_reduction=loss_reduction, max_grad_norm=max_grad_norm
        )

    def _prepare_criterion(
        self,
        *,
        module: MixedGhostGradSampleModule,
        optimizer: DPOptimizerFastGradientClipping,
        criterion: nn.Module,
        loss_reduction: str = "mean",
        **kwargs: Any,
    ) -> MixedGhostLoss:
        return MixedGhostLoss(module, optimizer, criterion, loss_reduction)
