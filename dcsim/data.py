"""Data sets as in-memory tensors: scikit-learn's digits, CIFAR-10 and ImageNet-style class folders.

Every loader returns :class:`Dataset` objects holding the whole split in memory:

- images: torch.uint8 [N, C, H, W] (pixel values 0..255) for image files, or torch.float32
  [N, 1, 8, 8] with values in [0, 1] for the digits;
- labels: torch.int64 [N], indices into ``classes``;
- mean / std: the per-channel normalization to apply, in units of [0, 1] pixel intensity.

Layouts read (nothing is ever downloaded):

- scikit-learn's bundled ``load_digits`` (1,797 8x8 images), split by :func:`load_digits_splits`;
- CIFAR-10 (:func:`load_cifar10`): the torchvision/official python batches (``cifar-10-batches-py/``),
  ``train/<class>/*`` and ``test/<class>/*`` image folders, or a ``.tar.gz`` / ``.tgz`` / ``.tar``
  archive of either, extracted once (safely) by :func:`extract_archive`;
- ImageNet-style ``<root>/<class>/<image>`` folders (:func:`load_image_folder`,
  :func:`load_imagenet_style` for ``root/train`` and ``root/val``).

The validation split is always drawn from the training images, seeded, disjoint from the rest of
train, and stratified by class (scikit-learn's ``train_test_split``) whenever every class can appear
on both sides; otherwise (tiny data) it is a uniformly random draw.

Decoded-image cache: after decoding an image folder, the uint8 pixels are saved to
``<folder>/.dcsim-cache/images.npy`` with ``cache.json`` written last; the json stores a key over
every file's relative path, size and modification time and the resize/crop settings, so a later
load of the same unchanged folder reads one ``.npy`` file instead of decoding every image (CIFAR-10:
about 1 s instead of 15-20 s). A read-only folder (no write permission bit) is not cached; a failed
write only warns. Pass ``cache=False`` to neither read nor write the cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import pickle
import sys
import tarfile
import warnings
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .fileio import atomic_output, write_text_atomic

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
"""File name endings (case-insensitive) read as images in class folders; other files are ignored."""

CACHE_DIR = ".dcsim-cache"
EXTRACTED_MARKER = ".dcsim-extracted"
_CACHE_VERSION = 1
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CIFAR_BATCH_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
_POOL_MIN_FILES = 4096
"""Folders with fewer images are decoded in this process: for them the pool's start-up and the transfer
of results cost more than the second core saves."""
_POOL_CHUNK = 1024


# ------------------------------------------------------------------ the Dataset


@dataclass
class Dataset:
    """One split in memory.

    images: torch.uint8 [N, C, H, W] (0..255) or torch.float32 [N, C, H, W] (values in [0, 1]);
    labels: torch.int64 [N] in [0, len(classes)); mean, std: C floats each, the normalization
    to apply to intensities in [0, 1]; name: the data set's name (e.g. "cifar10").
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

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
            raise ValueError(f"Dataset {self.name!r}: mean and std need {channels} values (one per channel), "
                             f"got {len(self.mean)} and {len(self.std)}")
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
        return Dataset(self.images[idx], self.labels[idx], list(self.classes), self.mean, self.std, self.name)


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
    rest, drawn = train_test_split(np.arange(n, dtype=np.int64), test_size=int(size), random_state=seed,
                                   shuffle=True, stratify=stratify)
    return np.sort(rest), np.sort(drawn)


def _with_val(train: Dataset, test: Dataset, val_size: int, seed: int) -> dict[str, Dataset]:
    rest, val = _split_indices(train.labels.numpy(), val_size, seed, "val_size")
    return {"train": train.subset(rest), "val": train.subset(val), "test": test}


# ------------------------------------------------------------------ digits


def load_digits_splits(seed: int = 0, test_size: int = 360, val_size: int = 300) -> dict[str, Dataset]:
    """scikit-learn's bundled digits as {"train", "val", "test"} (1797 - test_size - val_size / val_size / test_size).

    images: float32 [N, 1, 8, 8], the 0..16 pixel values scaled to [0, 1]; labels 0..9; classes "0".."9".
    The splits are stratified and seeded; mean/std are the training split's pixel mean and std.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    rest, test = _split_indices(labels.numpy(), test_size, seed, "test_size")
    train, val = _split_indices(labels.numpy()[rest], val_size, seed, "val_size")
    train, val = rest[train], rest[val]
    pixels = images[torch.from_numpy(train)].double()
    mean, std = (float(pixels.mean()),), (float(pixels.std()),)
    classes = [str(i) for i in range(10)]

    def part(idx: np.ndarray) -> Dataset:
        t = torch.from_numpy(idx)
        return Dataset(images[t].contiguous(), labels[t].contiguous(), classes, mean, std, "digits")

    return {"train": part(train), "val": part(val), "test": part(test)}


# ------------------------------------------------------------------ archives


def _archive_stem(archive: Path) -> str:
    name = archive.name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return archive.stem


def _writable(folder: Path) -> bool:
    """Writable, and with some write permission bit set (a read-only marked folder counts as such even for root)."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _default_extract_dir(archive: Path) -> Path:
    """``<archive folder>/<stem>`` where that folder is writable, else ``$XDG_CACHE_HOME/dcsim/<stem>-<hash>``.
    """
    if _writable(archive.parent):
        return archive.parent / _archive_stem(archive)
    digest = hashlib.sha256(str(archive.resolve()).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dcsim" / f"{_archive_stem(archive)}-{digest}"


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")) or ".." in name.parts or ":" in member.name:
        raise ValueError(f"{archive}: refusing to extract member {member.name!r}: absolute path or '..' component")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"{archive}: refusing to extract member {member.name!r}: only regular files and folders "
                         "are allowed (no links or devices)")


def extract_archive(archive: str | os.PathLike, extract_to: str | os.PathLike | None = None) -> Path:
    """Extract a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive safely; returns the folder it was extracted to.

    Every member is checked before anything is written: absolute names, ``..`` components, links
    and devices are refused (ValueError naming the member), and tarfile's ``"data"`` filter is
    applied as well. extract_to defaults to a sibling folder named after the archive
    (``cifar10-jpeg.tar.gz`` -> ``cifar10-jpeg/``), or ``$XDG_CACHE_HOME/dcsim/<stem>-<hash>``
    (default ``~/.cache/dcsim/``) when the archive's folder is read-only (not writable, or with no
    write permission bit set). A marker file written last
    (``.dcsim-extracted``, recording the archive's path, size and modification time) makes a second
    call return at once; an interrupted extraction has no marker and is redone.
    """
    archive = Path(archive)
    if not archive.exists():
        raise FileNotFoundError(f"{archive}: no such archive")
    if not archive.is_file():
        raise ValueError(f"{archive}: not a file")
    dest = Path(extract_to) if extract_to is not None else _default_extract_dir(archive)
    st = archive.stat()
    stamp = json.dumps({"archive": str(archive.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    marker = dest / EXTRACTED_MARKER
    if marker.is_file() and marker.read_text() == stamp:
        return dest
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(archive, m)
            dest.mkdir(parents=True, exist_ok=True)
            marker.unlink(missing_ok=True)
            bar = tqdm(members, desc=f"extracting {archive.name}", unit="file", disable=None, leave=False)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=bar, filter="data")
            else:  # Python without extraction filters: the member checks above already refuse unsafe entries
                tar.extractall(dest, members=bar)
    except OSError as err:
        if err.filename is not None:  # writing into dest failed: the error already names the file
            raise
        raise ValueError(f"{archive}: cannot read the archive ({err})") from err
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise ValueError(f"{archive}: cannot read the archive ({err})") from err
    marker.write_text(stamp)
    return dest


# ------------------------------------------------------------------ CIFAR-10 python batches


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles of bytes use it (protocols 0-2), restricted to latin-1."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1", errors)


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR-10 batch pickle may name: numpy array/dtype reconstruction and latin-1 bytes."""
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                              ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR-10 batch files: plain containers, numpy arrays and nothing else."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self._path}: refusing to load the global {module}.{name}: a CIFAR-10 batch file holds only "
                "dicts, lists, bytes and numpy arrays") from None


def _read_pickle(path: Path) -> dict:
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


def _get(d: dict, key: str, path: Path):
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
    try:
        labels = np.asarray(_get(d, "labels", path), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as err:
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
    classes = [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    parts = [_read_batch(folder / f, len(classes)) for f in _CIFAR_BATCH_FILES]

    def make(batches: list[tuple[np.ndarray, np.ndarray]]) -> Dataset:
        images = torch.from_numpy(np.concatenate([b[0] for b in batches]))
        labels = torch.from_numpy(np.concatenate([b[1] for b in batches]))
        return Dataset(images, labels, classes, CIFAR10_MEAN, CIFAR10_STD, "cifar10")

    return make(parts[:5]), make(parts[5:])


# ------------------------------------------------------------------ image folders


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
        entries = sorted((e for e in os.scandir(root / cls) if e.is_file() and not e.name.startswith(".")
                          and e.name.lower().endswith(IMAGE_EXTENSIONS)), key=lambda e: e.name)
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
            img = img.resize(size, Image.BILINEAR)
    if crop is not None:
        w, h = img.size
        ch, cw = crop
        if ch > h or cw > w:
            raise ValueError(f"{path}: the image is {w}x{h} (after resizing), smaller than the crop {cw}x{ch}")
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        img = img.crop((left, top, left + cw, top + ch))
    return np.asarray(img)


def _decode_chunk(paths: list[str], resize: int | None, crop: tuple[int, int] | None) -> list[np.ndarray]:
    return [_decode(p, resize, crop) for p in paths]


def _can_fork() -> bool:
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 8))


def _decode_all(scan: _Scan, resize: int | None, crop: tuple[int, int] | None,
                image_size: tuple[int, int] | None, workers: int) -> np.ndarray:
    """uint8 [N, H, W, 3], every file of ``scan`` decoded; all must have the same size."""
    paths = [str(scan.root / f) for f in scan.files]
    decode = functools.partial(_decode_chunk, resize=resize, crop=crop)
    chunks = [paths[i:i + _POOL_CHUNK] for i in range(0, len(paths), _POOL_CHUNK)]
    out: np.ndarray | None = None
    i = 0
    # fork, as torch's DataLoader does on Linux: spawn/forkserver would re-run the caller's
    # __main__ (breaking scripts without a main guard) and re-import torch in every worker.
    pool = (ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=multiprocessing.get_context("fork"))
            if workers > 1 and len(paths) >= _POOL_MIN_FILES and _can_fork() else None)
    with tqdm(total=len(paths), desc=f"decoding {scan.root}", unit="img", disable=None, leave=False) as bar:
        try:
            if pool is not None:
                with warnings.catch_warnings():  # the children only run Pillow and numpy
                    warnings.filterwarnings("ignore", message=r".*multi-threaded, use of fork\(\)",
                                            category=DeprecationWarning)
                    results = pool.map(decode, chunks)
            else:
                results = map(decode, chunks)
            for chunk in results:
                for img in chunk:
                    if out is None:
                        image_size = image_size or img.shape[:2]
                        out = np.empty((len(paths), *image_size, 3), dtype=np.uint8)
                    if img.shape[:2] != tuple(image_size):
                        raise ValueError(f"{paths[i]}: the image is {img.shape[1]}x{img.shape[0]} but "
                                         f"{image_size[1]}x{image_size[0]} was expected (width x height); "
                                         "pass resize/crop to bring images of different sizes to one size")
                    out[i] = img
                    i += 1
                bar.update(len(chunk))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    assert out is not None  # _scan never returns an empty folder
    return out


def _cache_key(scan: _Scan, resize: int | None, crop: tuple[int, int] | None,
               image_size: tuple[int, int] | None) -> str:
    blob = json.dumps([_CACHE_VERSION, resize, crop, image_size, scan.stamp])
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_cache(scan: _Scan, key: str) -> np.ndarray | None:
    folder = scan.root / CACHE_DIR
    try:
        info = json.loads((folder / "cache.json").read_text())
        if info.get("key") != key:
            return None
        images = np.load(folder / "images.npy", allow_pickle=False)
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
        warnings.warn(f"{scan.root}: cannot write the decoded-image cache ({err}); the next load decodes again",
                      stacklevel=3)


def _load_scanned(scan: _Scan, image_size: int | Sequence[int] | None, resize: int | None,
                  crop: int | Sequence[int] | None, mean: Sequence[float], std: Sequence[float], name: str,
                  cache: bool, workers: int | None) -> Dataset:
    if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int) or resize <= 0):
        raise ValueError(f"resize must be a positive integer (the shorter side in pixels), got {resize!r}")
    crop_hw, size_hw = _as_size(crop, "crop"), _as_size(image_size, "image_size")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    workers = _default_workers() if workers is None else workers
    key = _cache_key(scan, resize, crop_hw, size_hw)
    images = _read_cache(scan, key) if cache else None
    if images is None:
        images = _decode_all(scan, resize, crop_hw, size_hw, workers)
        if cache:
            _write_cache(scan, key, images)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return Dataset(tensor, torch.from_numpy(scan.labels), scan.classes, mean, std, name)


def load_image_folder(root: str | os.PathLike, image_size: int | Sequence[int] | None = None,
                      resize: int | None = None, crop: int | Sequence[int] | None = None, *,
                      mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                      name: str | None = None, cache: bool = True, workers: int | None = None) -> Dataset:
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
    return _load_scanned(scan, image_size=image_size, resize=resize, crop=crop, mean=mean, std=std,
                         name=name or root.name, cache=cache, workers=workers)


def _scan_pair(train_dir: Path, test_dir: Path) -> tuple[_Scan, _Scan]:
    """Scan both class-folder trees and require the same classes (before decoding anything)."""
    train, test = _scan(train_dir), _scan(test_dir)
    if train.classes != test.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_test = sorted(set(test.classes) - set(train.classes))
        raise ValueError(f"the classes of {train_dir} and {test_dir} differ: only in train {only_train}, "
                         f"only in test {only_test}")
    return train, test


def _check_same_shape(train: Dataset, test: Dataset, train_dir: Path, test_dir: Path) -> None:
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(f"images in {train_dir} are {list(train.images.shape[1:])} but images in {test_dir} are "
                         f"{list(test.images.shape[1:])} ([C, H, W])")


def load_imagenet_style(root: str | os.PathLike, val_size: int = 10000, seed: int = 0, resize: int | None = 256,
                        crop: int | Sequence[int] | None = 224, *, cache: bool = True,
                        workers: int | None = None) -> dict[str, Dataset]:
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
    load = functools.partial(_load_scanned, image_size=None, resize=resize, crop=crop, mean=IMAGENET_MEAN,
                             std=IMAGENET_STD, name=root.name, cache=cache, workers=workers)
    train, test = load(train_scan), load(test_scan)
    _check_same_shape(train, test, train_dir, test_dir)
    return _with_val(train, test, val_size, seed)


# ------------------------------------------------------------------ CIFAR-10


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
    raise ValueError(f"{root}: not a CIFAR-10 folder: expected the python batches (cifar-10-batches-py/ with "
                     f"{', '.join(_CIFAR_BATCH_FILES)}, batches.meta) or train/<class>/ and test/<class>/ "
                     "image folders")


def load_cifar10(root: str | os.PathLike, val_size: int = 5000, seed: int = 0, *,
                 extract_to: str | os.PathLike | None = None, cache: bool = True,
                 workers: int | None = None) -> dict[str, Dataset]:
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
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    if root.is_file():
        if not root.name.lower().endswith(_ARCHIVE_SUFFIXES):
            raise ValueError(f"{root}: not a folder or a {'/'.join(_ARCHIVE_SUFFIXES)} archive")
        root = extract_archive(root, extract_to)
    layout, folder = _find_cifar_layout(root)
    if layout == "batches":
        train, test = _load_python_batches(folder)
    else:
        train_dir, test_dir = folder / "train", folder / "test"
        train_scan, test_scan = _scan_pair(train_dir, test_dir)
        load = functools.partial(_load_scanned, image_size=None, resize=None, crop=None, mean=CIFAR10_MEAN,
                                 std=CIFAR10_STD, name="cifar10", cache=cache, workers=workers)
        train, test = load(train_scan), load(test_scan)
        _check_same_shape(train, test, train_dir, test_dir)
    return _with_val(train, test, val_size, seed)


# ------------------------------------------------------------------ augmentation and batching


def augment_cifar(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    """Random crop with ``padding`` pixels of zero padding, then a random horizontal flip (p = 0.5).

    x: float [B, C, H, W] (any device; usually already normalized, so the padding is the mean
    colour). Offsets and flips are drawn from ``generator`` on its own device. Returns a new
    tensor [B, C, H, W] of x's dtype and device; all samples are done at once (two gathers).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"augment_cifar: x must be a float tensor [B, C, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"augment_cifar: padding must be a non-negative integer, got {padding!r}")
    b, c, h, w = x.shape
    draw_device = generator.device if generator is not None else torch.device("cpu")
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=draw_device).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=draw_device).to(x.device)
    flip = torch.randint(0, 2, (b,), generator=generator, device=draw_device).to(x.device).bool()
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = oy[:, None] + torch.arange(h, device=x.device)  # [B, H]
    ar_w = torch.arange(w, device=x.device)
    cols = ox[:, None] + torch.where(flip[:, None], ar_w.flip(0), ar_w)  # [B, W]
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def batches(dataset: Dataset, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate over ``dataset`` in batches: (normalized float32 [b, C, H, W], int64 labels [b]).

    With ``shuffle`` the order is a permutation drawn from ``generator``; the last batch may be smaller.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(dataset)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)

    def it() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for lo in range(0, n, batch_size):
            idx = order[lo:lo + batch_size]
            yield dataset.normalized(idx), dataset.labels[idx]

    return it()
