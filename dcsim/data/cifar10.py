"""CIFAR-10 from its python batches, train/ + test/ class folders, or an archive of either."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from ..checks import existing
from .archives import _ARCHIVE_SUFFIXES, extract_archive
from .cifar_batches import _CIFAR_BATCH_FILES, _load_python_batches
from .dataset import CIFAR10_MEAN, CIFAR10_STD, Dataset, _with_val
from .folders import _check_same_shape, _load_scanned
from .scan import _scan_pair


def _find_cifar_layout(root: Path) -> tuple[str, Path]:
    """("batches", folder with data_batch_1..) or ("folders", folder with train/ and test/)."""
    folder = root
    for _ in range(2):  # the folder itself, or its only sub-folder (an archive's top folder)
        if (folder / "data_batch_1").is_file():
            return "batches", folder
        if (folder / "cifar-10-batches-py").is_dir():
            return "batches", folder / "cifar-10-batches-py"
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return "folders", folder
        subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(subdirs) != 1:
            break
        folder = subdirs[0]
    raise ValueError(
        f"{root}: not a CIFAR-10 folder: expected the python batches (cifar-10-batches-py/ with "
        f"{', '.join(_CIFAR_BATCH_FILES)}, batches.meta) or train/<class>/ and test/<class>/ "
        "image folders"
    )


def locate_cifar10(root: str | os.PathLike[str], extract_to: str | os.PathLike[str] | None = None) -> tuple[str, Path]:
    """("batches", folder of the python batches) or ("folders", folder with train/ and test/) for
    ``root`` (a folder or an archive, extracted once; see :func:`load_cifar10`)."""
    root = existing(root, "data root", folder=True, file=True)  # a FIFO or device is never opened
    if root.is_file():
        if not root.name.lower().endswith(_ARCHIVE_SUFFIXES):
            raise ValueError(f"{root}: not a folder or a {'/'.join(_ARCHIVE_SUFFIXES)} archive")
        root = extract_archive(root, extract_to)
    return _find_cifar_layout(root)


def load_cifar10(
    root: str | os.PathLike[str],
    val_size: int = 5000,
    seed: int = 0,
    *,
    extract_to: str | os.PathLike[str] | None = None,
    cache: bool = True,
    workers: int | None = None,
) -> dict[str, Dataset]:
    """CIFAR-10 as {"train", "val", "test"}: uint8 [N, 3, 32, 32] images, CIFAR-10 mean/std.

    root: (a) the python batches folder ``cifar-10-batches-py/`` (or its parent), read with a
    restricted unpickler that accepts only containers, bytes and numpy arrays (a file naming any
    other global is refused with a ValueError naming it, before anything runs); (b) a folder with
    ``train/<class>/*`` and ``test/<class>/*`` images (classes sorted by name: for CIFAR-10 that is
    the official label order); (c) a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive of (a) or (b),
    extracted once by :func:`extract_archive` into ``extract_to`` (default beside the archive).
    "val" holds ``val_size`` training images (seeded, stratified), removed from "train"
    (50,000 - val_size remain); "test" is the 10,000-image test set. ``cache`` and ``workers``
    apply to image folders, as in :func:`load_image_folder`.
    """
    layout, folder = locate_cifar10(root, extract_to)
    if layout == "batches":
        train, test = _load_python_batches(folder)
    else:
        train_dir, test_dir = folder / "train", folder / "test"
        train_scan, test_scan = _scan_pair(train_dir, test_dir)
        load = functools.partial(
            _load_scanned,
            image_size=None,
            resize=None,
            crop=None,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            name="cifar10",
            cache=cache,
            workers=workers,
        )
        train, test = load(train_scan), load(test_scan)
        _check_same_shape(train, test, train_dir, test_dir)
    return _with_val(train, test, val_size, seed)
