"""Training batches made on the device: the whole split stays there, batches are augmented in bulk.

A :class:`DeviceSplit` holds a split's images on the training device (uint8 [N, C, H, W], a
quarter of float32's memory: CIFAR-10's 50,000 images are 150 MiB) and its labels (int64 [N]).
A batch is gathered by index, augmented with :func:`crop_flip` (random crop with zero padding and
a random horizontal flip, all samples at once), then converted to float32 and normalized there,
so the host only sends a few hundred bytes of indices and offsets per batch.

A :class:`DiskSplit` serves the same batches from an image folder too large for memory
(:class:`dcsim.data.FolderSplit`): each epoch's batches are decoded and augmented in DataLoader
worker processes, and under torchrun each rank decodes only its own rows of every global batch.
Both give ``epoch_batches`` (training) and ``eval_batches`` (accuracy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import torch
from torch.utils.data import DataLoader

from ..checks import check_int
from ..data.disk import FolderSplit, _stack, loader_batches, split_batches

Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
Local = Callable[[torch.Tensor], torch.Tensor]
"""This rank's rows of a global batch (see :meth:`dcsim.parallel.distributed.DataParallel.local`)."""


class DeviceSplit:
    """A split on ``device``: images uint8 or float32 [N, C, H, W], labels int64 [N], and the normalization.

    mean, std: C floats applied to intensities in [0, 1] (uint8 images are divided by 255 first);
    float images are taken as they are when mean = 0 and std = 1 (already normalized).
    channels_last: batches come out in that memory layout (faster convs on GPUs).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str,
        channels_last: bool = False,
    ) -> None:
        if (
            not isinstance(images, torch.Tensor)
            or images.dim() != 4
            or images.dtype not in (torch.uint8, torch.float32)
        ):
            raise ValueError("DeviceSplit: images must be a uint8 or float32 tensor [N, C, H, W]")
        if not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],):
            raise ValueError(f"DeviceSplit: labels must be a tensor [{images.shape[0]}] (one per image)")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels or not all(s > 0 for s in std):
            raise ValueError(f"DeviceSplit: mean and std need {channels} values each (std > 0)")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self._mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(list(std), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.channels_last = channels_last

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(
        self, idx: torch.Tensor, augment: Augment | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalized float32 [b, C, H, W], labels [b]) of the images at ``idx`` (int64 [b], any device).

        augment(x, generator) -> x transforms the gathered images (uint8 or float, as stored)
        before they are normalized, e.g. :func:`random_crop_flip` (its zero padding is black for
        uint8 images, the mean colour for normalized floats).
        """
        idx = idx.to(self.device, non_blocking=True)
        x = self.images.index_select(0, idx)
        if augment is not None:
            x = augment(x, generator)
        x = x.float()
        if self.images.dtype == torch.uint8:
            x = x / 255.0
        x = (x - self._mean) / self._std  # the operations of Dataset.normalized, so the values are the same
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels.index_select(0, idx)

    def epoch_batches(
        self,
        perm: torch.Tensor,
        batch_size: int,
        n_batches: int,
        *,
        epoch: int,
        augment: Augment | None = None,
        generator: torch.Generator | None = None,
        local: Local | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(x, y, global rows) for the first ``n_batches`` global batches of ``batch_size`` in ``perm``.

        Each global batch is gathered and augmented whole (the draws do not depend on the ranks),
        then ``local`` keeps this rank's rows. ``epoch`` is not needed here (the generator's state
        carries the draws) and is accepted for the interface shared with :class:`DiskSplit`.
        """
        del epoch
        for b in range(n_batches):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            x, y = self.batch(idx, augment, generator)
            if local is not None:
                x, y = local(x), local(y)
            yield x, y, len(idx)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(normalized x, y) on the device for the whole split in order, ``batch_size`` at a time."""
        for lo in range(0, len(self), batch_size):
            yield self.batch(torch.arange(lo, min(lo + batch_size, len(self))))


class DiskSplit:
    """A split decoded from disk batch by batch: a :class:`dcsim.data.FolderSplit` fed to the device.

    With the "train" transform each image is augmented as it is decoded (random-resized crop and
    flip, drawn from a generator seeded by (seed, epoch, image), so the batches do not depend on
    the number of workers or ranks); ``augment`` must then be None. workers: DataLoader worker
    processes (0: decode in this process). Memory holds only the batches in flight.
    """

    def __init__(
        self, split: FolderSplit, device: torch.device | str, channels_last: bool = False, workers: int = 0
    ) -> None:
        if not isinstance(split, FolderSplit):
            raise ValueError(f"DiskSplit: split must be a dcsim.data.FolderSplit, got {type(split).__name__}")
        workers = check_int(workers, "DiskSplit: workers", minimum=0)
        self.split, self.device, self.channels_last, self.workers = split, torch.device(device), channels_last, workers

    def __len__(self) -> int:
        return len(self.split)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.split.normalize(x, y).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def epoch_batches(
        self,
        perm: torch.Tensor,
        batch_size: int,
        n_batches: int,
        *,
        epoch: int,
        augment: Augment | None = None,
        generator: torch.Generator | None = None,
        local: Local | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(x, y, global rows) as :meth:`DeviceSplit.epoch_batches`; only this rank's rows are decoded."""
        del generator  # the decode draws come from (seed, epoch, image)
        if augment is not None:
            raise ValueError(
                "a training split read from disk is augmented as it is decoded (its 'train' transform); pass augment=None"
            )
        globals_ = [perm[b * batch_size : (b + 1) * batch_size] for b in range(n_batches)]
        rows = [g if local is None else local(g) for g in globals_]
        loader = DataLoader(
            replace(self.split, epoch=epoch),
            batch_sampler=[r.tolist() for r in rows if len(r)],
            num_workers=self.workers,
            collate_fn=_stack,
        )
        decoded = loader_batches(loader)
        none = (torch.empty((0, *self.split.image_shape), dtype=torch.uint8), torch.empty(0, dtype=torch.int64))
        for g, r in zip(globals_, rows, strict=True):  # a rank with no rows of a batch (more ranks than rows)
            x, y = self._to_device(*(next(decoded) if len(r) else none))
            yield x, y, len(g)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(normalized x, y) on the device for the whole split in order (decoded by the workers)."""
        for _, x, y in split_batches(self.split, batch_size, workers=self.workers):
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
