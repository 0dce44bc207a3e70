"""Batch norm over the global batch of every rank, on any device (``dcsim train --sync-bn`` on the CPU).

PyTorch's ``nn.SyncBatchNorm`` runs on GPUs only. :class:`GlobalBatchNorm2d` computes the same
statistics with two all-reductions per layer and forward (the per-channel sum and count, then the
sum of squared deviations from the global mean) over any backend, gloo included, and its
backward all-reduces their gradients, so N ranks training on the rows of a global batch normalise
with, and differentiate through, the statistics one process would compute on the whole batch.
Statistics are accumulated in float64. Outside training, or without a process group, it is a
plain ``nn.BatchNorm2d``: the state dict and the converted SNN are the same.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks of ``group``; the gradient of every rank's input is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=ctx.group)
        return out, None


def _all_reduce_sum(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _AllReduceSum.apply(x, group)  # type: ignore[no-any-return, no-untyped-call]  # torch leaves apply untyped


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics span the ranks of ``group``.

    x [n_r, C, H, W] on each rank (n_r may be 0 on some ranks); the mean and the biased variance
    used to normalise are those of the concatenation of every rank's x, the running variance is
    updated with the unbiased one, as ``nn.BatchNorm2d`` does on one process.
    """

    group: dist.ProcessGroup | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.group is not None):
            return super().forward(x)
        self._check_input_dim(x)
        dims = (0, 2, 3)
        count = x.new_full((1,), x.numel() // max(x.shape[1], 1), dtype=torch.float64)
        first = _all_reduce_sum(torch.cat([x.sum(dims, dtype=torch.float64), count]), self.group)
        n = first[-1]
        if n <= 1:
            raise ValueError(f"batch norm over the global batch needs more than 1 value per channel, got {int(n)}")
        mean = first[:-1] / n
        centred = x - mean.to(x.dtype)[None, :, None, None]
        var = _all_reduce_sum(centred.pow(2).sum(dims, dtype=torch.float64), self.group) / n
        y = centred * torch.rsqrt(var + self.eps).to(x.dtype)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                unbiased = var * (n / (n - 1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return y


def convert_global_batchnorm(model: nn.Module, group: dist.ProcessGroup) -> nn.Module:
    """Make every ``nn.BatchNorm2d`` of ``model`` a :class:`GlobalBatchNorm2d` over ``group``, in place.

    Parameters and buffers are shared with the replaced layers (an optimizer built before keeps
    working); converting twice changes nothing. Returns the model (a new object only when the
    model itself is a batch norm).
    """
    if isinstance(model, GlobalBatchNorm2d):
        model.group = group
        return model
    if isinstance(model, nn.BatchNorm2d):
        bn = GlobalBatchNorm2d(model.num_features, model.eps, model.momentum, model.affine, model.track_running_stats)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(bn, name, getattr(model, name))
        bn.training, bn.group = model.training, group
        return bn
    for name, child in model.named_children():
        new = convert_global_batchnorm(child, group)
        if new is not child:
            setattr(model, name, new)
    return model
