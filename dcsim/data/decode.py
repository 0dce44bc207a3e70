"""Decoding image files to uint8 RGB arrays (resize + center crop), in this process or a forked pool."""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .scan import _Scan


def _pool_settings() -> tuple[int, int]:
    """(fewest images decoded by the pool, images per pool task): ``dcsim.data._POOL_MIN_FILES`` and
    ``dcsim.data._POOL_CHUNK``, read from the package at call time so they can be tuned there."""
    from . import _POOL_CHUNK, _POOL_MIN_FILES

    return _POOL_MIN_FILES, _POOL_CHUNK


def _decode(path: str, resize: int | None, crop: tuple[int, int] | None) -> np.ndarray:
    """uint8 [H, W, 3]: the image at ``path`` as RGB, shorter side resized to ``resize`` (bilinear),
    then center-cropped to ``crop`` = (height, width)."""
    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except Exception as err:  # Pillow raises OSError, SyntaxError, DecompressionBombError, ... on bad files
        raise ValueError(f"{path}: cannot read the image ({type(err).__name__}: {err})") from None
    if resize is not None:
        w, h = img.size
        size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
        if size != img.size:
            img = img.resize(size, Image.Resampling.BILINEAR)
    if crop is not None:
        w, h = img.size
        ch, cw = crop
        if ch > h or cw > w:
            raise ValueError(f"{path}: the image is {w}x{h} (after resizing), smaller than the crop {cw}x{ch}")
        top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
        img = img.crop((left, top, left + cw, top + ch))
    return np.asarray(img)


def _decode_chunk(paths: list[str], resize: int | None, crop: tuple[int, int] | None) -> list[np.ndarray]:
    return [_decode(p, resize, crop) for p in paths]


def _can_fork() -> bool:
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 8))


def _decode_all(
    scan: _Scan, resize: int | None, crop: tuple[int, int] | None, image_size: tuple[int, int] | None, workers: int
) -> np.ndarray:
    """uint8 [N, H, W, 3], every file of ``scan`` decoded; all must have the same size."""
    paths = [str(scan.root / f) for f in scan.files]
    pool_min_files, pool_chunk = _pool_settings()
    decode = functools.partial(_decode_chunk, resize=resize, crop=crop)
    chunks = [paths[i : i + pool_chunk] for i in range(0, len(paths), pool_chunk)]
    out: np.ndarray | None = None
    i = 0
    # fork, as torch's DataLoader does on Linux: spawn/forkserver would re-run the caller's
    # __main__ (breaking scripts without a main guard) and re-import torch in every worker.
    pool = (
        ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=multiprocessing.get_context("fork"))
        if workers > 1 and len(paths) >= pool_min_files and _can_fork()
        else None
    )
    with tqdm(total=len(paths), desc=f"decoding {scan.root}", unit="img", disable=None, leave=False) as bar:
        try:
            if pool is not None:
                with warnings.catch_warnings():  # the children only run Pillow and numpy
                    warnings.filterwarnings(
                        "ignore", message=r".*multi-threaded, use of fork\(\)", category=DeprecationWarning
                    )
                    results = pool.map(decode, chunks)
            else:
                results = map(decode, chunks)
            size: tuple[int, ...] | None = image_size  # (height, width); the first image's when None
            for chunk in results:
                for img in chunk:
                    if size is None:
                        size = img.shape[:2]
                    if out is None:
                        out = np.empty((len(paths), *size, 3), dtype=np.uint8)
                    if img.shape[:2] != tuple(size):
                        raise ValueError(
                            f"{paths[i]}: the image is {img.shape[1]}x{img.shape[0]} but "
                            f"{size[1]}x{size[0]} was expected (width x height); "
                            "pass resize/crop to bring images of different sizes to one size"
                        )
                    out[i] = img
                    i += 1
                bar.update(len(chunk))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    assert out is not None  # _scan never returns an empty folder
    return out
