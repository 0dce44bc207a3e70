"""Iterating over an in-memory Dataset in batches, and CIFAR-style augmentation of a batch."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..checks import check_int
from .augment import random_crop_flip
from .dataset import Dataset


def augment_cifar(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    """Random crop with ``padding`` pixels of zero padding, then a random horizontal flip (p = 0.5).

    x: float [B, C, H, W] (any device; usually already normalized, so the padding is the mean
    colour). Offsets and flips are drawn from ``generator`` on its own device. Returns a new
    tensor [B, C, H, W] of x's dtype and device; all samples are done at once (two gathers).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"augment_cifar: x must be a float tensor [B, C, H, W], got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    padding = check_int(padding, "augment_cifar: padding", minimum=0)
    return random_crop_flip(x, generator, padding)


def batches(
    dataset: Dataset, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate over ``dataset`` in batches: (normalized float32 [b, C, H, W], int64 labels [b]).

    With ``shuffle`` the order is a permutation drawn from ``generator``; the last batch may be smaller.
    """
    batch_size = check_int(batch_size, "batch_size")
    n = len(dataset)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)

    def it() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            yield dataset.normalized(idx), dataset.labels[idx]

    return it()
