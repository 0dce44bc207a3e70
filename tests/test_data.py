"""Data sets (dcsim.data): digits splits, class folders, CIFAR-10 python batches (with the restricted
unpickler), archives (safe extraction), the decoded-image cache, error messages, augmentation and
batching. The real CIFAR-10 JPEG archive is used where present (full load opt-in: DCSIM_SLOW=1)."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dcsim import data
from dcsim.data import Dataset

REAL_ARCHIVE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TREE_CLASSES = ["cat", "ant", "bee"]  # written unsorted: loaders must sort them
"""Synthetic class-folder trees: class c (index in sorted order k) image i is a solid colour
(value(k, i), 0, 255 - value(k, i)), so every pixel tells which class and image it came from."""


def _value(k: int, i: int, split_offset: int = 0) -> int:
    return 10 + 60 * k + 10 * i + split_offset


def _write_image(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """size: (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _make_tree(
    root: Path, per_class: int = 4, splits: dict[str, int] | None = None, classes: list[str] = TREE_CLASSES
) -> Path:
    """root/<split>/<class>/<i>.png|jpg, 32x32; PNG (lossless) for even i, JPEG for odd i."""
    splits = splits or {"train": 0, "test": 5}
    for split, offset in splits.items():
        for cls in classes:
            k = sorted(classes).index(cls)
            for i in range(per_class):
                v = _value(k, i, offset)
                ext = "png" if i % 2 == 0 else "jpg"
                _write_image(root / split / cls / f"{i:02d}.{ext}", (32, 32), (v, 0, 255 - v))
    return root


def _red(ds: Dataset) -> np.ndarray:
    """The red value at the centre of every image (int [N])."""
    return ds.images[:, 0, 16, 16].numpy().astype(int)


# ------------------------------------------------------------------ Dataset


def _tiny(n: int = 6, dtype: torch.dtype = torch.uint8) -> Dataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8)
    if dtype == torch.float32:
        images = images.float() / 255
    return Dataset(images, torch.arange(n) % 3, ["a", "b", "c"], (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "tiny")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_normalized_scales_and_standardizes(dtype):
    ds = _tiny(dtype=dtype)
    x = ds.images.double() / (255 if dtype == torch.uint8 else 1)
    mean = torch.tensor(ds.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float64).view(1, 3, 1, 1)
    out = ds.normalized()
    assert out.dtype == torch.float32 and out.shape == ds.images.shape
    torch.testing.assert_close(out.double(), (x - mean) / std, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ds.normalized(torch.tensor([4, 1])), out[[4, 1]])
    torch.testing.assert_close(ds.normalized(slice(2, 4)), out[2:4])
    if dtype == torch.float32:  # normalizing must never modify the stored float images
        torch.testing.assert_close(ds.images.double(), x)


def test_subset_and_len():
    ds = _tiny()
    sub = ds.subset([5, 0, 2])
    assert len(sub) == 3 and len(ds) == 6
    assert torch.equal(sub.images, ds.images[[5, 0, 2]]) and sub.labels.tolist() == [2, 0, 2]
    assert sub.classes == ds.classes and sub.mean == ds.mean and sub.name == "tiny"
    assert torch.equal(ds.subset(np.array([1])).images, ds.images[1:2])


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(images=torch.zeros(4, 3, 4)), "4-D"),
        (dict(images=torch.zeros(4, 3, 4, 4, dtype=torch.float64)), "uint8 or float32"),
        (dict(labels=torch.zeros(3, dtype=torch.int64)), "4 images but 3 labels"),
        (dict(labels=torch.zeros(4, dtype=torch.int32)), "int64"),
        (dict(labels=torch.tensor([0, 1, 2, 3])), r"\[0, 3\)"),
        (dict(mean=(0.5,)), "one per channel"),
        (dict(std=(0.2, 0.0, 0.3)), "std must be > 0"),
    ],
)
def test_dataset_validates(change, match):
    args = dict(
        images=torch.zeros(4, 3, 4, 4, dtype=torch.uint8),
        labels=torch.zeros(4, dtype=torch.int64),
        classes=["a", "b", "c"],
        mean=(0.5,) * 3,
        std=(0.2,) * 3,
        name="bad",
    )
    with pytest.raises(ValueError, match=match):
        Dataset(**(args | change))


# ------------------------------------------------------------------ digits


def _rows(ds: Dataset) -> set[bytes]:
    return {r.numpy().tobytes() for r in ds.images}


def test_digits_splits():
    splits = data.load_digits_splits(seed=0)
    tr, va, te = splits["train"], splits["val"], splits["test"]
    assert (len(tr), len(va), len(te)) == (1797 - 660, 300, 360)
    for ds in splits.values():
        assert ds.images.dtype == torch.float32 and ds.images.shape[1:] == (1, 8, 8)
        assert ds.labels.dtype == torch.int64 and set(ds.labels.tolist()) == set(range(10))
        assert float(ds.images.min()) >= 0 and float(ds.images.max()) <= 1
        assert ds.classes == [str(i) for i in range(10)] and ds.name == "digits"
        assert ds.mean == tr.mean and ds.std == tr.std
    # the 1797 digit images are all distinct: disjoint splits share no image and together hold all
    assert len(_rows(tr) | _rows(va) | _rows(te)) == 1797
    assert tr.mean[0] == pytest.approx(float(tr.images.double().mean()), rel=1e-6)
    assert tr.std[0] == pytest.approx(float(tr.images.double().std()), rel=1e-6)
    x = tr.normalized()
    assert abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1.0, abs=1e-3)
    # stratified: each class's share of the test split is close to its share overall
    counts = torch.bincount(te.labels, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37


def test_digits_seeded():
    a, b, c = (data.load_digits_splits(seed=s) for s in (0, 0, 1))
    for k in ("train", "val", "test"):
        assert torch.equal(a[k].images, b[k].images) and torch.equal(a[k].labels, b[k].labels)
    assert not torch.equal(a["test"].images, c["test"].images)
    with pytest.raises(ValueError, match="val_size"):
        data.load_digits_splits(val_size=1437)


# ------------------------------------------------------------------ class folders


def test_cifar_class_folders(tmp_path):
    root = _make_tree(tmp_path / "cifar")
    splits = data.load_cifar10(root, val_size=3, seed=0)
    tr, va, te = splits["train"], splits["val"], splits["test"]
    assert (len(tr), len(va), len(te)) == (9, 3, 12)
    for ds in splits.values():
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (3, 32, 32)
        assert ds.classes == ["ant", "bee", "cat"] and ds.name == "cifar10"
        assert ds.mean == data.CIFAR10_MEAN and ds.std == data.CIFAR10_STD
    # every image's colour identifies (class, image): labels follow the folders, splits are disjoint
    for ds, offset in ((tr, 0), (va, 0), (te, 5)):
        for red, label in zip(_red(ds), ds.labels.tolist(), strict=True):
            k, rem = divmod(red - 10 - offset + 2, 60)  # +-2: JPEG of a solid colour is nearly exact
            assert k == label and 0 <= rem <= 34
    assert not set(_red(tr)) & set(_red(va))
    assert sorted(va.labels.tolist()) == [0, 1, 2]  # stratified: one validation image per class
    # seeded
    again = data.load_cifar10(root, val_size=3, seed=0)
    assert torch.equal(again["val"].images, va.images)
    other = [data.load_cifar10(root, val_size=3, seed=s)["val"].images for s in range(1, 6)]
    assert any(not torch.equal(o, va.images) for o in other)
    with pytest.raises(ValueError, match="val_size"):
        data.load_cifar10(root, val_size=12)
    with pytest.raises(ValueError, match="val_size"):
        data.load_cifar10(root, val_size=0)


def test_png_pixels_exact(tmp_path):
    root = _make_tree(tmp_path / "t", splits={"train": 0})
    ds = data.load_image_folder(root / "train", cache=False)
    first = ds.images[0].numpy()  # ant/00.png: exact colour
    assert (first[0] == _value(0, 0)).all() and (first[1] == 0).all() and (first[2] == 255 - _value(0, 0)).all()
    assert ds.name == "train" and ds.mean == data.IMAGENET_MEAN and ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_resize_and_center_crop(tmp_path):
    root = tmp_path / "imagenet"
    # left half red, right half blue, 40 wide x 20 high: shorter side 10 -> 20x10, centre crop 10x10
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            img.save(root / split / cls / "wide.png")
            _write_image(root / split / cls / "tall.png", (30, 50), (0, 255, 0))
            _write_image(root / split / cls / "square.jpg", (64, 64), (90, 90, 90))
    ds = data.load_image_folder(root / "train", resize=10, crop=10, cache=False)
    assert ds.images.shape == (6, 3, 10, 10) and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    wide = ds.images[2].int()  # files in name order: square.jpg, tall.png, wide.png
    assert (wide[0, :, :4] > 240).all() and (wide[2, :, :4] < 15).all()  # columns 5..9 of the resized image: red
    assert (wide[2, :, 6:] > 240).all() and (wide[0, :, 6:] < 15).all()  # columns 10..14: blue
    assert (ds.images[1, 1] == 255).all()
    assert data.load_image_folder(root / "train", resize=12, crop=(8, 10), cache=False).images.shape == (6, 3, 8, 10)
    with pytest.raises(ValueError, match=r"tall\.png.*30x50"):
        data.load_image_folder(root / "train", cache=False)
    with pytest.raises(ValueError, match=r"square\.jpg.*64x64 but 32x32"):
        data.load_image_folder(root / "train", image_size=32, cache=False)
    with pytest.raises(ValueError, match=r"smaller than the crop"):
        data.load_image_folder(root / "train", resize=10, crop=12, cache=False)
    with pytest.raises(ValueError, match="crop"):
        data.load_image_folder(root / "train", crop=(1, 2, 3))
    splits = data.load_imagenet_style(root, val_size=2, seed=0, resize=10, crop=8, cache=False)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [4, 2, 6]
    assert splits["test"].images.shape[1:] == (3, 8, 8) and splits["val"].classes == ["a", "b"]
    assert splits["train"].name == "imagenet" and splits["train"].std == data.IMAGENET_STD


def test_decoded_image_cache(tmp_path):
    root = _make_tree(tmp_path / "t", splits={"train": 0})
    folder = root / "train"
    first = data.load_image_folder(folder)
    cache = folder / data.CACHE_DIR
    assert (cache / "images.npy").is_file() and (cache / "cache.json").is_file()
    second = data.load_image_folder(folder)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert data.load_image_folder(folder, resize=16, crop=16).images.shape[2:] == (16, 16)  # other settings: new key
    # a changed file (size / modification time) invalidates the cache
    _write_image(folder / "ant" / "00.png", (32, 32), (200, 200, 200))
    os.utime(folder / "ant" / "00.png", ns=(1, 1))
    third = data.load_image_folder(folder)
    assert int(third.images[0, 1, 0, 0]) == 200 and torch.equal(third.images[1:], first.images[1:])
    # cache=False neither reads nor writes it
    fresh = _make_tree(tmp_path / "u", splits={"train": 0})
    data.load_image_folder(fresh / "train", cache=False)
    assert not (fresh / "train" / data.CACHE_DIR).exists()


def test_read_only_folder_is_not_cached(tmp_path):
    root = _make_tree(tmp_path / "t", splits={"train": 0})
    folder = root / "train"
    folder.chmod(0o555)
    try:
        ds = data.load_image_folder(folder)
    finally:
        folder.chmod(0o755)
    assert len(ds) == 12 and not (folder / data.CACHE_DIR).exists()


def test_worker_processes_give_the_same_result(tmp_path, monkeypatch):
    root = _make_tree(tmp_path / "t", per_class=6)
    serial = data.load_cifar10(root, val_size=3, cache=False, workers=1)
    monkeypatch.setattr(data, "_POOL_MIN_FILES", 1)  # use the pool even for this tiny tree
    monkeypatch.setattr(data, "_POOL_CHUNK", 4)
    pooled = data.load_cifar10(root, val_size=3, cache=False, workers=2)
    for k in serial:
        assert torch.equal(serial[k].images, pooled[k].images) and torch.equal(serial[k].labels, pooled[k].labels)
    (root / "train" / "cat" / "03.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cat/03\.jpg: cannot read the image"):
        data.load_cifar10(root, val_size=3, cache=False, workers=2)
    with pytest.raises(ValueError, match="workers"):
        data.load_cifar10(root, val_size=3, workers=0)


# ------------------------------------------------------------------ errors


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_cifar10(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_image_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_imagenet_style(tmp_path / "nowhere", val_size=1)
    _make_tree(tmp_path / "only_train", splits={"train": 0})
    with pytest.raises(ValueError, match="not a CIFAR-10 folder"):
        data.load_cifar10(tmp_path / "only_train")
    with pytest.raises(FileNotFoundError, match="val"):
        data.load_imagenet_style(tmp_path / "only_train", val_size=1)


def test_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        data.load_image_folder(tmp_path / "empty")
    root = _make_tree(tmp_path / "t")
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"train/dog: class folder holds no images"):
        data.load_image_folder(root / "train")


@pytest.mark.parametrize("content", [b"this is not a JPEG", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"])
def test_corrupt_image_is_named(tmp_path, content):
    root = _make_tree(tmp_path / "t")
    (root / "train" / "bee" / "broken.jpg").write_bytes(content)
    with pytest.raises(ValueError, match=r"bee/broken\.jpg: cannot read the image"):
        data.load_cifar10(root, val_size=3)


def test_truncated_jpeg_is_named(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    root = _make_tree(tmp_path / "t")
    (root / "test" / "ant" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"ant/cut\.jpg"):
        data.load_cifar10(root, val_size=3)


def test_mismatched_classes(tmp_path):
    root = _make_tree(tmp_path / "t")
    (root / "test" / "bee").rename(root / "test" / "wasp")
    with pytest.raises(ValueError, match=r"only in train \['bee'\], only in test \['wasp'\]"):
        data.load_cifar10(root, val_size=3)
    imagenet = _make_tree(tmp_path / "i", splits={"train": 0, "val": 0})
    (imagenet / "val" / "cat").rename(imagenet / "val" / "dog")
    with pytest.raises(ValueError, match=r"only in train \['cat'\], only in test \['dog'\]"):
        data.load_imagenet_style(imagenet, val_size=3)


def test_train_and_test_sizes_must_match(tmp_path):
    root = _make_tree(tmp_path / "t", splits={"train": 0})
    for cls in TREE_CLASSES:
        _write_image(root / "test" / cls / "0.png", (16, 16), (1, 2, 3))
    with pytest.raises(ValueError, match=r"\[3, 32, 32\].*\[3, 16, 16\]"):
        data.load_cifar10(root, val_size=3)


# ------------------------------------------------------------------ CIFAR-10 python batches


def _write_batches(folder: Path, per_batch: int = 4, test: int = 6, protocol: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A tiny cifar-10-batches-py: 5 train batches and a test batch; image j is filled with the value j.
    Returns (train labels, test labels)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels_all = []
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    start = 0
    for name in names:
        n = test if name == "test_batch" else per_batch
        values = np.arange(start, start + n, dtype=np.uint8)
        images = np.repeat(values[:, None], 3072, axis=1)
        labels = rng.integers(0, 3, n).tolist()
        labels_all.append(np.asarray(labels))
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": images,
            b"filenames": [f"{j}.png".encode() for j in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        start += n
    meta = {b"label_names": [b"cat", b"dog", b"frog"], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return np.concatenate(labels_all[:5]), labels_all[5]


@pytest.mark.parametrize("protocol", [2, 4])
def test_python_batches(tmp_path, protocol):
    train_labels, test_labels = _write_batches(tmp_path / "cifar-10-batches-py", protocol=protocol)
    for root in (tmp_path / "cifar-10-batches-py", tmp_path):  # the folder itself or its parent
        splits = data.load_cifar10(root, val_size=5, seed=0)
        tr, va, te = splits["train"], splits["val"], splits["test"]
        assert (len(tr), len(va), len(te)) == (15, 5, 6)
        assert tr.images.dtype == torch.uint8 and tr.images.shape[1:] == (3, 32, 32)
        assert tr.classes == ["cat", "dog", "frog"] and tr.mean == data.CIFAR10_MEAN
        assert te.images[:, 0, 0, 0].tolist() == list(range(20, 26)) and te.labels.tolist() == test_labels.tolist()
        ids = tr.images[:, 0, 0, 0].tolist() + va.images[:, 0, 0, 0].tolist()
        assert sorted(ids) == list(range(20))  # disjoint, and together all training images
        for ds in (tr, va):  # each image keeps its own label
            assert ds.labels.tolist() == train_labels[ds.images[:, 0, 0, 0].long().numpy()].tolist()


def test_python_batches_old_numpy_module_names(tmp_path):
    """The official files were pickled by numpy 1.x: the globals are numpy.core.multiarray."""
    _write_batches(tmp_path / "b")
    for f in (tmp_path / "b").iterdir():
        f.write_bytes(f.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in (tmp_path / "b" / "test_batch").read_bytes()
    assert len(data.load_cifar10(tmp_path / "b", val_size=5)["test"]) == 6


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalEvil:
    def __reduce__(self):
        return eval, ("__import__('os').system('false')",)


@pytest.mark.parametrize("payload", ["system", "eval", "codecs"])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    marker = tmp_path / "pwned"
    evil = {"system": _Evil(marker), "eval": _EvalEvil(), "codecs": None}[payload]
    if payload == "codecs":  # _codecs.encode is allowed for latin-1 bytes only
        blob = pickle.dumps({b"label_names": [b"a"]}, protocol=2).replace(b"latin1", b"rot_13")
    else:
        blob = pickle.dumps({b"label_names": [b"cat", b"dog", b"frog"], b"x": evil}, protocol=2)
    (folder / "batches.meta").write_bytes(blob)
    with pytest.raises(ValueError, match=r"batches\.meta") as err:
        data.load_cifar10(folder, val_size=5)
    assert payload == "codecs" or "refusing to load the global" in str(err.value)
    assert not marker.exists()


def test_python_batches_errors(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batches(folder)
    blob = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="data_batch_3: not a CIFAR-10 batch file"):
        data.load_cifar10(folder, val_size=5)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"data_batch_3: 'data' must be a uint8 array \[n, 3072\]"):
        data.load_cifar10(folder, val_size=5)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 7]}))
    with pytest.raises(ValueError, match=r"data_batch_3: labels must lie in \[0, 3\)"):
        data.load_cifar10(folder, val_size=5)
    # found by the fuzz run: labels that are not plain integers (a float was truncated, 2**70 overflowed)
    for labels in ([0.5, 1.0], [[0], [1]], [2**70, 0], [True, False], np.zeros(2, np.float32), "ab"):
        (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}))
        with pytest.raises(ValueError, match="data_batch_3: 'labels' must be a list of integers"):
            data.load_cifar10(folder, val_size=5)
    meta = folder / "batches.meta"
    good_meta = meta.read_bytes()
    for names in ([b"\xff\xfe", b"b", b"c"], [b"a", b"a", b"c"]):
        meta.write_bytes(pickle.dumps({b"label_names": names}))
        with pytest.raises(ValueError, match=r"batches\.meta: 'label_names' must be"):
            data.load_cifar10(folder, val_size=5)
    meta.write_bytes(good_meta)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.load_cifar10(folder, val_size=5)


# ------------------------------------------------------------------ archives


def _tar(path: Path, entries: dict[str, Path | bytes | tuple[str, str]]) -> Path:
    """Write a .tar.gz: name -> a file or folder to add, bytes (a file), or ("symlink", target)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, src in entries.items():
            if isinstance(src, Path):
                tar.add(src, arcname=name)
            elif isinstance(src, bytes):
                info = tarfile.TarInfo(name)
                info.size = len(src)
                tar.addfile(info, io.BytesIO(src))
            else:
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, src[1]
                tar.addfile(info)
    return path


def test_archive_extraction(tmp_path):
    tree = _make_tree(tmp_path / "tree")
    archive = _tar(tmp_path / "tiny-cifar.tar.gz", {"train": tree / "train", "test": tree / "test"})
    splits = data.load_cifar10(archive, val_size=3, extract_to=tmp_path / "x")
    assert [len(splits[k]) for k in ("train", "val", "test")] == [9, 3, 12]
    marker = tmp_path / "x" / data.EXTRACTED_MARKER
    assert marker.is_file() and (tmp_path / "x" / "train" / "ant" / "00.png").is_file()
    # the second call finds the marker and extracts nothing
    (tmp_path / "x" / "train" / "ant" / "extra.png").write_bytes((tree / "train" / "ant" / "00.png").read_bytes())
    assert len(data.load_cifar10(archive, val_size=3, extract_to=tmp_path / "x")["train"]) == 10
    # default destination: beside the archive, named after it
    assert data.extract_archive(archive) == tmp_path / "tiny-cifar"
    # an archive with one top folder holding the layout
    nested = _tar(tmp_path / "nested.tgz", {"cifar/train": tree / "train", "cifar/test": tree / "test"})
    assert len(data.load_cifar10(nested, val_size=3)["test"]) == 12


def test_archive_beside_read_only_folder_goes_to_user_cache(tmp_path, monkeypatch):
    tree = _make_tree(tmp_path / "tree")
    ro = tmp_path / "ro"
    ro.mkdir()
    archive = _tar(ro / "c.tar.gz", {"train": tree / "train", "test": tree / "test"})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    ro.chmod(0o555)
    try:
        dest = data.extract_archive(archive)
    finally:
        ro.chmod(0o755)
    assert dest.parent == tmp_path / "xdg" / "dcsim" and dest.name.startswith("c-")
    assert (dest / "train" / "bee" / "01.jpg").is_file() and not (ro / "c").exists()


@pytest.mark.parametrize(
    "name, entry, match",
    [
        ("../evil.txt", b"x", r"'\.\./evil\.txt'.*absolute path or '\.\.'"),
        ("train/../../evil.txt", b"x", r"absolute path or '\.\.'"),
        ("/tmp/dcsim-evil.txt", b"x", "absolute path"),
        ("train/link", ("symlink", "/etc/passwd"), "only regular files and folders"),
    ],
)
def test_archive_path_traversal_is_refused(tmp_path, name, entry, match):
    (tmp_path / "a").mkdir()
    archive = _tar(tmp_path / "a" / "evil.tar.gz", {"train/ok.txt": b"fine", name: entry})
    with pytest.raises(ValueError, match=rf"evil\.tar\.gz: refusing to extract member .*{match}"):
        data.load_cifar10(archive, extract_to=tmp_path / "a" / "out")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "a" / "evil.txt").exists()
    assert not (tmp_path / "a" / "out" / "train" / "ok.txt").exists()  # checked before anything is written


def test_bad_archives(tmp_path):
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match=r"junk\.tar\.gz: cannot read the archive"):
        data.load_cifar10(tmp_path / "junk.tar.gz")
    (tmp_path / "data.csv").write_text("1,2,3")
    with pytest.raises(ValueError, match=r"data\.csv: not a folder or a"):
        data.load_cifar10(tmp_path / "data.csv")


# ------------------------------------------------------------------ augmentation and batching


def test_augment_cifar_is_a_padded_crop_and_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=g)
    out = data.augment_cifar(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, data.augment_cifar(x, torch.Generator().manual_seed(1)))  # seeded
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    found = set()
    for b in range(len(x)):
        matches = [
            (oy, ox, flip)
            for oy in range(9)
            for ox in range(9)
            for flip in (False, True)
            if torch.equal(out[b], (lambda c: c.flip(-1) if flip else c)(padded[b, :, oy : oy + 8, ox : ox + 8]))
        ]
        assert matches, f"sample {b} is not a crop of the padded input"
        found.add(matches[0][2])
    assert found == {False, True}  # both flipped and unflipped samples occur
    no_pad = data.augment_cifar(x, torch.Generator().manual_seed(3), padding=0)
    assert all(torch.equal(o, xb) or torch.equal(o, xb.flip(-1)) for o, xb in zip(no_pad, x, strict=True))
    with pytest.raises(ValueError, match="float tensor"):
        data.augment_cifar(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), g)


def test_batches():
    ds = _tiny(n=10)
    got = list(data.batches(ds, 4))
    assert [len(y) for _, y in got] == [4, 4, 2]
    torch.testing.assert_close(torch.cat([x for x, _ in got]), ds.normalized())
    shuffled = list(data.batches(ds, 3, shuffle=True, generator=torch.Generator().manual_seed(0)))
    xs, ys = torch.cat([x for x, _ in shuffled]), torch.cat([y for _, y in shuffled])
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(xs, ds.normalized(order))
    assert ys.tolist() == ds.labels[order].tolist()
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(ds, 0)


# ------------------------------------------------------------------ the real CIFAR-10 copy

needs_archive = pytest.mark.skipif(
    not REAL_ARCHIVE.is_file(), reason=f"the CIFAR-10 JPEG archive is absent ({REAL_ARCHIVE.resolve()})"
)


@needs_archive
def test_real_archive_sample(tmp_path):
    """Fast check on the real archive: its index, and a few real JPEGs per class through the loader."""
    with tarfile.open(REAL_ARCHIVE) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        counts = {split: sum(m.name.startswith(f"{split}/") for m in members) for split in ("train", "test")}
        assert counts == {"train": 50000, "test": 10000}
        assert sorted({m.name.split("/")[1] for m in members}) == CIFAR_CLASSES
        picked = [m for m in members if m.name.rsplit("/", 1)[1] in ("0000.jpg", "0001.jpg")]
        tar.extractall(tmp_path, members=picked, filter="data")
    splits = data.load_cifar10(tmp_path, val_size=10, seed=0)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [10, 10, 20]
    assert splits["train"].classes == CIFAR_CLASSES and splits["test"].images.shape[1:] == (3, 32, 32)
    assert float(splits["test"].images.float().std()) > 20  # real pictures, not blank


@pytest.fixture(scope="session")
def real_cifar(tmp_path_factory):
    extract_to = tmp_path_factory.mktemp("cifar10-jpeg")
    t0 = time.perf_counter()
    splits = data.load_cifar10(REAL_ARCHIVE, val_size=5000, seed=0, extract_to=extract_to)
    return splits, time.perf_counter() - t0, extract_to


@needs_archive
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("DCSIM_SLOW") != "1",
    reason="full CIFAR-10 extraction and load (20-45 s on 2 cores): set DCSIM_SLOW=1",
)
def test_real_cifar10_full(real_cifar):
    splits, seconds, extract_to = real_cifar
    print(f"\nCIFAR-10 JPEG archive: extracted and decoded in {seconds:.1f} s")
    tr, va, te = splits["train"], splits["val"], splits["test"]
    assert (len(tr), len(va), len(te)) == (45000, 5000, 10000)
    assert tr.classes == CIFAR_CLASSES and te.images.shape == (10000, 3, 32, 32) and tr.images.dtype == torch.uint8
    assert torch.bincount(va.labels).tolist() == [500] * 10 and torch.bincount(te.labels).tolist() == [1000] * 10
    t0 = time.perf_counter()
    again = data.load_cifar10(REAL_ARCHIVE, val_size=5000, seed=0, extract_to=extract_to)
    print(f"second load (extraction marker + decoded-image cache): {time.perf_counter() - t0:.1f} s")
    assert torch.equal(again["val"].images, va.images)
