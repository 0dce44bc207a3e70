"""ImageNet-style class folders loaded into memory (decoded once, then cached)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..checks import check_int
from .cache import _cache_key, _read_cache, _write_cache
from .dataset import IMAGENET_MEAN, IMAGENET_STD, Dataset, _with_val
from .decode import _decode_all, _default_workers
from .scan import _as_size, _Scan, _scan, _scan_pair


def _load_scanned(
    scan: _Scan,
    image_size: int | Sequence[int] | None,
    resize: int | None,
    crop: int | Sequence[int] | None,
    mean: Sequence[float],
    std: Sequence[float],
    name: str,
    cache: bool,
    workers: int | None,
) -> Dataset:
    if resize is not None:
        resize = check_int(resize, "resize (the shorter side in pixels)")
    crop_hw, size_hw = _as_size(crop, "crop"), _as_size(image_size, "image_size")
    workers = _default_workers() if workers is None else check_int(workers, "workers")
    key = _cache_key(scan, resize, crop_hw, size_hw)
    images = _read_cache(scan, key) if cache else None
    if images is None:
        images = _decode_all(scan, resize, crop_hw, size_hw, workers)
        if cache:
            _write_cache(scan, key, images)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return Dataset(tensor, torch.from_numpy(scan.labels), scan.classes, tuple(mean), tuple(std), name)


def load_image_folder(
    root: str | os.PathLike[str],
    image_size: int | Sequence[int] | None = None,
    resize: int | None = None,
    crop: int | Sequence[int] | None = None,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    name: str | None = None,
    cache: bool = True,
    workers: int | None = None,
) -> Dataset:
    """Images in ``root/<class>/<file>`` class folders as a Dataset (uint8 [N, 3, H, W], RGB).

    Classes are the sub-folder names sorted (label i = i-th name; hidden folders are skipped);
    image files (IMAGE_EXTENSIONS) directly inside each class folder are read in name order.
    Each image is decoded with Pillow and converted to RGB; with ``resize`` its shorter side is
    scaled to ``resize`` pixels (bilinear), then with ``crop`` (int or (height, width)) the centre
    crop is kept: resize=256, crop=224 is the usual ImageNet evaluation transform. All images must
    end up with one size, ``image_size`` (int or (height, width)) when given, else the first
    image's; otherwise a ValueError names the first file that differs. On Linux, large folders
    (>= 4096 images) are decoded by ``workers`` forked processes (default: the usable CPUs, at
    most 8); elsewhere, or with workers=1, in this process.
    mean/std: the normalization stored in the Dataset (default ImageNet's). See the module doc
    for the decoded-image cache (``cache``).
    """
    root = Path(root)
    scan = _scan(root)
    return _load_scanned(
        scan,
        image_size=image_size,
        resize=resize,
        crop=crop,
        mean=mean,
        std=std,
        name=name or root.name,
        cache=cache,
        workers=workers,
    )


def _check_same_shape(train: Dataset, test: Dataset, train_dir: Path, test_dir: Path) -> None:
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(
            f"images in {train_dir} are {list(train.images.shape[1:])} but images in {test_dir} are "
            f"{list(test.images.shape[1:])} ([C, H, W])"
        )


def load_imagenet_style(
    root: str | os.PathLike[str],
    val_size: int = 10000,
    seed: int = 0,
    resize: int | None = 256,
    crop: int | Sequence[int] | None = 224,
    *,
    cache: bool = True,
    workers: int | None = None,
) -> dict[str, Dataset]:
    """{"train", "val", "test"} from ``root/train/<class>/*`` and ``root/val/<class>/*`` (the test split).

    Images are uint8 [N, 3, crop, crop] after the resize/crop of :func:`load_image_folder`;
    normalization is ImageNet's. ``val_size`` training images (seeded, stratified) form "val".
    Everything is held in memory: N * 3 * crop * crop bytes per split.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    train_dir, test_dir = root / "train", root / "val"
    train_scan, test_scan = _scan_pair(train_dir, test_dir)
    load = functools.partial(
        _load_scanned,
        image_size=None,
        resize=resize,
        crop=crop,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        name=root.name,
        cache=cache,
        workers=workers,
    )
    train, test = load(train_scan), load(test_scan)
    _check_same_shape(train, test, train_dir, test_dir)
    return _with_val(train, test, val_size, seed)
