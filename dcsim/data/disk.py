"""Class folders read from disk batch by batch: images decoded in DataLoader worker processes.

A :class:`FolderSplit` holds only the file list and labels of a split; pixels exist only for the
batches in flight (each worker prefetches two batches), so memory stays bounded whatever the
folder's size. Transforms:

- "eval": shorter side resized to ``resize`` (bilinear), center crop ``crop`` -- the same decoding
  as the in-memory loader, so a split read from disk has exactly the in-memory split's pixels;
- "train": random-resized crop (area 8-100 %, aspect 3/4-4/3, as torchvision's) to ``crop``, then a
  horizontal flip with p = 0.5; the draws of image i in epoch e come from a generator seeded with
  (seed, e, i), so they do not depend on the number of workers or ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ..checks import check_int
from .dataset import Dataset, _split_indices
from .decode import _decode, _default_workers
from .scan import _Scan

TRANSFORMS = ("eval", "train")


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height) in pixels, drawn as torchvision's RandomResizedCrop does.

    Ten tries at an area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio`` that fit
    inside the image; otherwise the largest centered crop whose aspect lies within ``ratio``.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _decode_train(path: str, crop: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """uint8 [crop_h, crop_w, 3]: random-resized crop of the image at ``path``, flipped with p = 0.5."""
    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except Exception as err:  # Pillow raises OSError, SyntaxError, DecompressionBombError, ... on bad files
        raise ValueError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from None
    left, top, w, h = random_resized_crop_box(img.width, img.height, rng)
    out = img.resize((crop[1], crop[0]), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out)


@dataclass
class FolderSplit(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """One split of a class folder, decoded on demand (a map-style torch Dataset).

    scan: the folder listing; indices: int64 [n], the split's files (indices into ``scan.files``);
    transform: "eval" or "train" (see the module doc); resize: shorter side in pixels before the
    eval crop (None: none); crop: (height, width) of every image; mean, std: per-channel
    normalization of [0, 1] intensities; seed and epoch: the train transform's draws.
    ``split[i]`` is (uint8 [3, crop_h, crop_w], label).
    """

    scan: _Scan
    indices: np.ndarray
    transform: str
    resize: int | None
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    seed: int = 0
    epoch: int = 0
    labels: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.labels = torch.from_numpy(self.scan.labels[self.indices].copy())

    @property
    def classes(self) -> list[str]:
        return list(self.scan.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """[C, H, W] of every image."""
        return (3, *self.crop)

    def __len__(self) -> int:
        return len(self.indices)

    def path(self, i: int) -> str:
        """The file of sample i."""
        return str(self.scan.root / self.scan.files[int(self.indices[i])])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.transform == "train":
            rng = np.random.default_rng([self.seed, self.epoch, int(self.indices[i])])
            img = _decode_train(self.path(i), self.crop, rng)
        else:
            img = _decode(self.path(i), self.resize, self.crop)
            if img.shape[:2] != self.crop:
                raise ValueError(
                    f"{self.path(i)}: the image is {img.shape[1]}x{img.shape[0]} but "
                    f"{self.crop[1]}x{self.crop[0]} was expected (width x height); "
                    "give resize/crop to bring images of different sizes to one size"
                )
        return torch.from_numpy(np.require(img, requirements=["C", "W"])).permute(2, 0, 1), int(self.labels[i])

    def subset(self, indices: Sequence[int] | np.ndarray) -> FolderSplit:
        """The samples at ``indices`` (positions in this split) as a new FolderSplit (nothing decoded)."""
        return replace(self, indices=self.indices[np.asarray(indices, dtype=np.int64)])

    def normalize(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """float32 [b, 3, H, W] from uint8 images [b, 3, H, W], exactly as :meth:`Dataset.normalized`."""
        return Dataset(images, labels, self.classes, self.mean, self.std, self.name).normalized()


def folder_splits(
    train: _Scan,
    test: _Scan,
    val_size: int,
    seed: int,
    resize: int | None,
    crop: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    name: str,
) -> dict[str, FolderSplit]:
    """{"train", "val", "test"} read from two scanned class folders, batch by batch.

    "val" is the same draw from the training files as the in-memory loaders make (same seed, same
    images); "train" uses the train transform, "val" and "test" the eval transform.
    """
    rest, val = _split_indices(train.labels, val_size, seed, "val_size")

    def split(scan: _Scan, indices: np.ndarray, transform: str) -> FolderSplit:
        return FolderSplit(
            scan, indices, transform, resize=resize, crop=crop, mean=tuple(mean), std=tuple(std), name=name, seed=seed
        )

    return {
        "train": split(train, rest, "train"),
        "val": split(train, val, "eval"),
        "test": split(test, np.arange(len(test.files), dtype=np.int64), "eval"),
    }


def _stack(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)


def _worker_error(err: Exception) -> ValueError | None:
    """The ValueError a DataLoader worker raised (its last line names the file), or None."""
    lines = [ln for ln in str(err).splitlines() if ln.startswith("ValueError: ")]
    return ValueError(lines[-1][len("ValueError: ") :]) if lines else None


def split_batches(
    split: Dataset | FolderSplit, batch_size: int, batch_ids: Sequence[int] | None = None, workers: int | None = None
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(batch id, normalized float32 [b, C, H, W], int64 labels [b]) for batches of ``batch_size``.

    Batch k holds samples k*batch_size .. (k+1)*batch_size - 1; batch_ids chooses which (default
    all, in order). An in-memory Dataset is sliced; a FolderSplit is decoded by ``workers``
    DataLoader processes (default: the usable CPUs, at most 8; 0: in this process). A file that
    cannot be decoded raises a ValueError naming it.
    """
    batch_size = check_int(batch_size, "batch_size")
    n = len(split)
    ids = list(range(-(-n // batch_size))) if batch_ids is None else [int(b) for b in batch_ids]
    bounds = [(b * batch_size, min(n, (b + 1) * batch_size)) for b in ids]
    if isinstance(split, Dataset):
        for b, (lo, hi) in zip(ids, bounds, strict=True):
            yield b, split.normalized(slice(lo, hi)), split.labels[lo:hi]
        return
    if workers is None:
        workers = _default_workers()
    workers = check_int(workers, "workers", minimum=0)
    loader = DataLoader(
        split,
        batch_sampler=[list(range(lo, hi)) for lo, hi in bounds],
        num_workers=workers,
        collate_fn=_stack,
        persistent_workers=False,
    )
    for b, (images, labels) in zip(ids, loader_batches(loader), strict=True):
        yield b, split.normalize(images, labels), labels


def loader_batches(loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (uint8 images, labels) batches of a DataLoader over a FolderSplit; a file a worker could not
    decode raises this process's ValueError naming it."""
    it = iter(loader)
    while True:
        try:
            images, labels = next(it)
        except StopIteration:
            return
        except ValueError as err:  # re-raised from a worker, with its traceback in the message
            raise (_worker_error(err) or err) from None
        yield images, labels
