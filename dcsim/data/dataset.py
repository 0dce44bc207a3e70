"""The in-memory split (:class:`Dataset`) and its batches, the standard normalizations, and the seeded validation split."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..checks import check_int

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Dataset:
    """One split in memory.

    images: torch.uint8 [N, C, H, W] (0..255) or torch.float32 [N, C, H, W] (values in [0, 1]);
    labels: torch.int64 [N] in [0, len(classes)); mean, std: C floats each, the normalization
    to apply to intensities in [0, 1]; name: the data set's name (e.g. "cifar10"); source: int64 [N],
    where a training or validation split's images lie in the pool they were drawn from (the data set's
    training images), or None (see :func:`outside_held_out`).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    source: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dim() != 4:
            raise ValueError(f"Dataset {self.name!r}: images must be a 4-D tensor [N, C, H, W]")
        if self.images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"Dataset {self.name!r}: images must be uint8 or float32, got {self.images.dtype}")
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"Dataset {self.name!r}: labels must be an int64 tensor [N]")
        if len(self.labels) != len(self.images):
            raise ValueError(f"Dataset {self.name!r}: {len(self.images)} images but {len(self.labels)} labels")
        self.classes = [str(c) for c in self.classes]
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise ValueError(f"Dataset {self.name!r}: labels must lie in [0, {len(self.classes)})")
        channels = self.images.shape[1]
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"Dataset {self.name!r}: mean and std need {channels} values (one per channel), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if not all(s > 0 for s in self.std):
            raise ValueError(f"Dataset {self.name!r}: std must be > 0, got {self.std}")

    def __len__(self) -> int:
        return len(self.labels)

    def normalized(self, idx: torch.Tensor | Sequence[int] | slice | None = None) -> torch.Tensor:
        """float32 [n, C, H, W]: ``(x - mean) / std`` with x in [0, 1] (uint8 images are divided by 255).

        idx: which images (indices, a slice or None for all).
        """
        x = self.images if idx is None else self.images[idx]
        x = x.to(torch.float32, copy=True)
        if self.images.dtype == torch.uint8:
            x.div_(255.0)
        x.sub_(torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1))
        return x.div_(torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1))

    def subset(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> Dataset:
        """A new Dataset with the images and labels at ``indices`` (integers [n]; copies the data)."""
        idx = indices if isinstance(indices, torch.Tensor) else torch.from_numpy(np.asarray(indices, dtype=np.int64))
        idx = idx.to(torch.int64)
        source = None if self.source is None else self.source[idx.numpy()]
        return Dataset(self.images[idx], self.labels[idx], list(self.classes), self.mean, self.std, self.name, source)


# ------------------------------------------------------------------ splitting


def _split_indices(labels: np.ndarray, size: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(rest, drawn): ``size`` indices drawn from range(len(labels)), seeded; both sorted int64.

    Stratified by label where every class has at least 2 members and both parts can hold every class.
    """
    from sklearn.model_selection import train_test_split

    n = len(labels)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size < n:
        raise ValueError(f"{what} must be an integer in [1, {n - 1}] (the training split has {n} images), got {size!r}")
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    stratify = labels if counts.min() >= 2 and len(counts) <= min(size, n - size) else None
    rest, drawn = train_test_split(
        np.arange(n, dtype=np.int64), test_size=int(size), random_state=seed, shuffle=True, stratify=stratify
    )
    return np.sort(rest), np.sort(drawn)


def _with_val(train: Dataset, test: Dataset, val_size: int, seed: int) -> dict[str, Dataset]:
    rest, val = _split_indices(train.labels.numpy(), val_size, seed, "val_size")
    pool = dataclasses.replace(train, source=np.arange(len(train), dtype=np.int64))
    return {"train": pool.subset(rest), "val": pool.subset(val), "test": test}


def outside_held_out(train: Any, val: Any, held_out: int, seed: int) -> int | None:
    """How many of ``val``'s images lie outside the validation draw of ``held_out`` images with ``seed``
    from the same pool (the images a network trained on those splits never saw); None where the splits
    do not say where their images lie in the pool.

    train, val: the training and validation splits of one draw (:class:`Dataset` with ``source``, or
    splits read from disk, with ``scan`` and ``indices``); together they are the whole pool.
    """
    if hasattr(val, "scan"):  # read from disk: indices into the scanned training files
        pool_labels, where = np.asarray(val.scan.labels), np.asarray(val.indices)
    elif train.source is not None and val.source is not None:
        pool_labels = np.empty(len(train) + len(val), dtype=np.int64)
        pool_labels[train.source], pool_labels[val.source] = train.labels.numpy(), val.labels.numpy()
        where = val.source
    else:
        return None
    _, held = _split_indices(pool_labels, held_out, seed, "the held-out validation size")
    return int((~np.isin(where, held)).sum())


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
