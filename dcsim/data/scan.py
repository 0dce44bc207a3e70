"""Listing ``<root>/<class>/<image>`` class folders: classes, files, labels and a change stamp."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
"""File name endings (case-insensitive) read as images in class folders; other files are ignored."""


@dataclass(frozen=True)
class _Scan:
    root: Path
    classes: list[str]
    files: list[str]  # paths relative to root, "<class>/<file>"
    labels: np.ndarray  # int64 [N]
    stamp: list[tuple[str, int, int]]  # (relative path, size, mtime_ns) per file


def _scan(root: Path) -> _Scan:
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (expected <root>/<class>/<image files>)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class folders (expected <root>/<class>/<image files>)")
    files: list[str] = []
    labels: list[int] = []
    stamp: list[tuple[str, int, int]] = []
    for label, cls in enumerate(classes):
        entries = sorted(
            (
                e
                for e in os.scandir(root / cls)
                if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
            ),
            key=lambda e: e.name,
        )
        if not entries:
            raise ValueError(f"{root / cls}: class folder holds no images ({' '.join(IMAGE_EXTENSIONS)})")
        for e in entries:
            st = e.stat()
            rel = f"{cls}/{e.name}"
            files.append(rel)
            labels.append(label)
            stamp.append((rel, st.st_size, st.st_mtime_ns))
    return _Scan(root, classes, files, np.asarray(labels, dtype=np.int64), stamp)


def _as_size(value: int | Sequence[int] | None, what: str) -> tuple[int, int] | None:
    """None or (height, width) from an int (square) or a pair; positive integers."""
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
        raise ValueError(f"{what} must be a positive integer or a (height, width) pair, got {value!r}")
    return (int(pair[0]), int(pair[1]))


def _scan_pair(train_dir: Path, test_dir: Path) -> tuple[_Scan, _Scan]:
    """Scan both class-folder trees and require the same classes (before decoding anything)."""
    train, test = _scan(train_dir), _scan(test_dir)
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise ValueError(
            f"the classes of {train_dir} and {test_dir} differ: only in train {only_train}, only in test {only_test}"
        )
    return train, test
