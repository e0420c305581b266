"""Opacus batch plumbing: logical batches split into physical ones, and noise-only steps on empty batches."""

from __future__ import annotations

import torch
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch.utils.data import DataLoader

__all__ = ["MODES_WITHOUT_EMPTY_BATCHES", "empty_batch_step", "physical_batches"]

MODES_WITHOUT_EMPTY_BATCHES = ("ew", "functorch")
"""Grad-sample modes whose forward/backward fails on a zero-size batch (GroupNorm with N = 0)."""


def physical_batches(data_loader: DataLoader, max_physical_batch_size: int, optimizer: DPOptimizer) -> DataLoader:
    """The DP loader with each logical (Poisson) batch split into chunks of at most ``max_physical_batch_size``.

    Opacus' ``BatchMemoryManager`` tells ``optimizer`` which chunk ends a logical batch; before that its
    ``step()`` only clips and accumulates, so the update, the noise and the accountant see logical batches,
    while memory holds one physical batch of per-sample gradients at a time.
    """
    with BatchMemoryManager(
        data_loader=data_loader, max_physical_batch_size=max_physical_batch_size, optimizer=optimizer
    ) as batches:
        return batches


def empty_batch_step(optimizer: DPOptimizer) -> None:
    """Take the DP step of an empty Poisson batch without running the model: noise only, and accounted.

    Skipping an empty batch would break the Poisson analysis, and ``ew``/``functorch`` cannot run the
    model on zero examples; empty per-sample gradients make ``DPOptimizer`` clip nothing, add noise and
    call the accountant, exactly as hooks mode does after its own (empty) backward pass.
    """
    for param in optimizer.params:
        param.grad_sample = torch.zeros((0, *param.shape), device=param.device, dtype=param.dtype)
    optimizer.step()
