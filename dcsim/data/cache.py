"""The decoded-image cache of a class folder: ``<folder>/.dcsim-cache/images.npy`` + ``cache.json`` (written last)."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np

from ..io.atomic import atomic_output, write_text_atomic
from .archives import _writable
from .scan import _Scan

CACHE_DIR = ".dcsim-cache"
_CACHE_VERSION = 1


def _cache_key(
    scan: _Scan, resize: int | None, crop: tuple[int, int] | None, image_size: tuple[int, int] | None
) -> str:
    blob = json.dumps([_CACHE_VERSION, resize, crop, image_size, scan.stamp])
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_cache(scan: _Scan, key: str) -> np.ndarray | None:
    folder = scan.root / CACHE_DIR
    try:
        info = json.loads((folder / "cache.json").read_text())
        if info.get("key") != key:
            return None
        images: np.ndarray = np.load(folder / "images.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != len(scan.files) or images.shape[3] != 3:
        return None
    return images


def _write_cache(scan: _Scan, key: str, images: np.ndarray) -> None:
    folder = scan.root / CACHE_DIR
    if not _writable(scan.root):
        return
    try:
        folder.mkdir(exist_ok=True)
        (folder / "cache.json").unlink(missing_ok=True)
        with atomic_output(folder / "images.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, images, allow_pickle=False)
        info = {"key": key, "classes": scan.classes, "shape": list(images.shape)}
        write_text_atomic(folder / "cache.json", json.dumps(info))
    except OSError as err:
        warnings.warn(
            f"{scan.root}: cannot write the decoded-image cache ({err}); the next load decodes again", stacklevel=3
        )
