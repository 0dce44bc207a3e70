"""Choosing the data path of a command: whole splits in memory, or class folders read from disk batch by batch.

``loader="auto"`` keeps digits and CIFAR-10 in memory (they fit, and slicing a tensor is faster than
decoding files) and reads an image folder from disk where its decoded splits would exceed
:data:`DISK_ABOVE_BYTES`; "memory" and "disk" force either ("stream", the old name of "disk", is read as
it with a FutureWarning for one release). The validation split is the same draw of the same images on
both paths."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..checks import existing
from .cifar10 import load_cifar10, locate_cifar10
from .dataset import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, Dataset
from .digits import load_digits_splits
from .disk import FolderSplit, folder_splits
from .folders import load_imagenet_style
from .scan import _scan_pair

LOADERS = ("auto", "memory", "disk")
DISK_ABOVE_BYTES = 2 * 1024**3
"""With loader="auto", an image folder is read from disk when its decoded train + test images exceed this (bytes)."""
IMAGENET_RESIZE, IMAGENET_CROP = 256, 224
DEFAULT_VAL_SIZE = {"digits": 300, "cifar10": 5000, "imagefolder": 10000}


def loader_name(name: str) -> str:
    """``name``, but "stream", the old name of "disk", is read as "disk" with a FutureWarning (for one release)."""
    if name == "stream":
        warnings.warn('loader "stream" is now "disk"; the old name goes away in the next release', FutureWarning, 3)
        return "disk"
    return name


def open_splits(
    dataset: str,
    root: str | os.PathLike[str] | None = None,
    *,
    loader: str = "auto",
    val_size: int | None = None,
    seed: int = 0,
) -> dict[str, Dataset | FolderSplit]:
    """{"train", "val", "test"} of ``dataset`` ("digits", "cifar10" or "imagefolder"): in memory, or read from
    disk batch by batch.

    root: the data's location (cifar10: see :func:`load_cifar10`; imagefolder: ``root/train`` and
    ``root/val`` class folders, resized to 256 and center-cropped to 224). val_size: validation
    images drawn from train (default 300 / 5000 / 10000). A training split read from disk is augmented
    (random-resized crop and flip), validation and test use the eval transform.
    """
    loader = loader_name(loader)
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {LOADERS}, got {loader!r}")
    if dataset not in DEFAULT_VAL_SIZE:
        raise ValueError(f"dataset must be one of {tuple(DEFAULT_VAL_SIZE)}, got {dataset!r}")
    val_size = DEFAULT_VAL_SIZE[dataset] if val_size is None else val_size
    # dict(...): each loader's dict of one split type, as the dict of either type this returns
    if dataset == "digits":
        if loader == "disk":
            raise ValueError("loader 'disk' reads image files; the digits are built in (use loader 'memory' or 'auto')")
        return dict(load_digits_splits(seed=seed, val_size=val_size))
    if root is None:
        raise ValueError(f"dataset {dataset!r} needs a data root (--data-root)")
    # a folder (or, for cifar10, an archive file); a FIFO, socket or device is refused before any read
    existing(root, "--data-root", folder=True, file=dataset == "cifar10")
    if dataset == "cifar10":
        if loader != "disk":
            return dict(load_cifar10(root, val_size=val_size, seed=seed))
        layout, folder = locate_cifar10(root)
        if layout != "folders":
            raise ValueError(
                f"{folder}: loader 'disk' needs train/<class>/ and test/<class>/ image folders, "
                "not the python batches (use loader 'memory')"
            )
        train, test = _scan_pair(folder / "train", folder / "test")
        cifar = folder_splits(
            train, test, val_size, seed, resize=None, crop=(32, 32), mean=CIFAR10_MEAN, std=CIFAR10_STD, name="cifar10"
        )
        return dict(cifar)
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    if loader == "memory":
        return dict(load_imagenet_style(root, val_size=val_size, seed=seed))
    train, test = _scan_pair(root / "train", root / "val")
    decoded = (len(train.files) + len(test.files)) * 3 * IMAGENET_CROP * IMAGENET_CROP
    if loader == "auto" and decoded <= DISK_ABOVE_BYTES:
        return dict(load_imagenet_style(root, val_size=val_size, seed=seed))
    from_disk = folder_splits(
        train,
        test,
        val_size,
        seed,
        resize=IMAGENET_RESIZE,
        crop=(IMAGENET_CROP, IMAGENET_CROP),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        name=root.name,
    )
    return dict(from_disk)
