"""FedProx's proximal term ``mu / 2 x ||w - w_global||^2``, added to the gradient as each optimizer step is taken."""

from __future__ import annotations

import math

import torch
from torch.utils.hooks import RemovableHandle

__all__ = ["attach_proximal_term"]


def attach_proximal_term(optimizer: torch.optim.Optimizer, mu: float) -> RemovableHandle | None:
    """Add ``mu x (w - w_global)`` to every parameter's gradient just before ``optimizer`` steps.

    ``w_global`` is each parameter as it is now (call this before the first step, on the received global
    weights). The term's gradient is added at step time rather than through the loss because it depends on no
    example: under DP-SGD, Opacus' ``DPOptimizer`` clips and noises the per-sample gradients of the loss and only
    then calls the wrapped optimizer's ``step``, whose pre-hook this is, so the term is post-processing of the
    private gradient, outside the clipping (which would otherwise shrink it and let it eat into each example's
    clipping budget), and costs no privacy. Without DP it is the same gradient as the loss term would give. The
    reported training loss stays the plain cross-entropy.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        The plain optimizer (before Opacus wraps it); its parameter groups say which parameters are pulled.
    mu : float
        The proximal weight (the ``proximal-mu`` Flower's FedProx sends); 0 attaches nothing.

    Returns
    -------
    RemovableHandle or None
        Remove it when the round's training ends; None when ``mu`` is 0.

    Raises
    ------
    ValueError
        If ``mu`` is negative or not finite.
    """
    if not math.isfinite(mu) or mu < 0:
        raise ValueError(f"the proximal weight (proximal-mu) must be a finite number >= 0, got {mu!r}")
    if mu == 0:
        return None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    anchors = [p.detach().clone() for p in params]

    def pull_towards_global(*_: object) -> None:
        with torch.no_grad():
            for param, anchor in zip(params, anchors, strict=True):
                if param.grad is None:  # a parameter the loss did not reach is still pulled, as the loss term would
                    param.grad = mu * (param - anchor)
                else:
                    param.grad.add_(param - anchor, alpha=mu)

    return optimizer.register_step_pre_hook(pull_towards_global)
