"""CIFAR-10's python batch files, read with a restricted unpickler (containers, bytes and numpy arrays only)."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from .dataset import CIFAR10_MEAN, CIFAR10_STD, Dataset

_CIFAR_BATCH_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles of bytes use it (protocols 0-2), restricted to latin-1."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1", errors)


def _numpy_core_global(module: str, name: str) -> object:
    """``from <module> import <name>`` for numpy's private helpers, which numpy's type stubs do not declare."""
    try:
        return getattr(importlib.import_module(module), name)
    except AttributeError as err:
        raise ImportError(f"cannot import name {name!r} from {module!r}") from err


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR-10 batch pickle may name: numpy array/dtype reconstruction and latin-1 bytes."""
    try:
        _reconstruct = _numpy_core_global("numpy._core.multiarray", "_reconstruct")
        _frombuffer = _numpy_core_global("numpy._core.numeric", "_frombuffer")
    except ImportError:  # numpy < 2
        _reconstruct = _numpy_core_global("numpy.core.multiarray", "_reconstruct")
        _frombuffer = _numpy_core_global("numpy.core.numeric", "_frombuffer")
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR-10 batch files: plain containers, numpy arrays and nothing else."""

    def __init__(self, file: IO[bytes], path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self._path}: refusing to load the global {module}.{name}: a CIFAR-10 batch file holds only "
                "dicts, lists, bytes and numpy arrays"
            ) from None


def _read_pickle(path: Path) -> dict[Any, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing CIFAR-10 batch file")
    try:
        with path.open("rb") as f:
            obj = _BatchUnpickler(f, path).load()
    except pickle.UnpicklingError as err:
        raise ValueError(str(err) if str(path) in str(err) else f"{path}: not a CIFAR-10 batch file ({err})") from None
    except Exception as err:  # any malformed pickle stream: EOFError, ValueError, TypeError, ...
        raise ValueError(f"{path}: not a CIFAR-10 batch file ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch file (holds a {type(obj).__name__}, not a dict)")
    return obj


def _get(d: dict[Any, Any], key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise ValueError(f"{path}: not a CIFAR-10 batch file (no {key!r} entry)")


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, 3, 32, 32] images and int64 [n] labels of one batch file."""
    d = _read_pickle(path)
    data = _get(d, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: 'data' must be a uint8 array [n, 3072], got {desc}")
    raw = _get(d, "labels", path)
    integral = (
        isinstance(raw, list) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw)
    ) or (isinstance(raw, np.ndarray) and raw.ndim == 1 and np.issubdtype(raw.dtype, np.integer))
    if not integral:
        raise ValueError(f"{path}: 'labels' must be a list of integers, got {type(raw).__name__}")
    try:
        labels = np.asarray(raw, dtype=np.int64).reshape(-1)
    except (OverflowError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: 'labels' must be a list of integers ({err})") from None
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels must lie in [0, {num_classes})")
    return data.reshape(-1, 3, 32, 32), labels


def _load_python_batches(folder: Path) -> tuple[Dataset, Dataset]:
    meta_path = folder / "batches.meta"
    names = _get(_read_pickle(meta_path), "label_names", meta_path)
    if not isinstance(names, list) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise ValueError(f"{meta_path}: 'label_names' must be a non-empty list of names")
    try:
        classes = [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as err:
        raise ValueError(f"{meta_path}: 'label_names' must be UTF-8 text ({err})") from None
    if len(set(classes)) != len(classes):
        raise ValueError(f"{meta_path}: 'label_names' must be distinct, got {classes}")
    parts = [_read_batch(folder / f, len(classes)) for f in _CIFAR_BATCH_FILES]

    def make(batches: list[tuple[np.ndarray, np.ndarray]]) -> Dataset:
        images = torch.from_numpy(np.concatenate([b[0] for b in batches]))
        labels = torch.from_numpy(np.concatenate([b[1] for b in batches]))
        return Dataset(images, labels, classes, CIFAR10_MEAN, CIFAR10_STD, "cifar10")

    return make(parts[:5]), make(parts[5:])
