"""Choosing and running the data path: command-line split sizes, the in-memory loader and the one reading from disk."""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dcsim import cli, data
from dcsim.data import disk
from dcsim.workflows.inputs import load_splits
from dcsim.workflows.options import DataOptions


def _args(**kw) -> DataOptions:
    return DataOptions(**kw)


def test_val_size_is_honoured_for_digits():
    default = load_splits(_args())
    assert len(default["val"]) == 300
    splits = load_splits(_args(val_size=301))
    assert len(splits["val"]) == 301 and len(splits["test"]) == 360
    assert len(splits["train"]) + 301 + 360 == 1797
    with pytest.raises(ValueError, match="val_size"):
        load_splits(_args(val_size=0))


# ------------------------------------------------------------------ image folders read from disk


def _folder(root, per_class: int = 5, test_per_class: int = 2):
    """root/{train,val}/{a,b}/*.jpg: noise images of a few sizes (some taller, some wider than 256)."""
    rng = np.random.default_rng(1)
    sizes = [(300, 260), (260, 330), (256, 256), (410, 270)]  # (width, height)
    for split, n in (("train", per_class), ("val", test_per_class)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                w, h = sizes[(i + len(cls)) % len(sizes)]
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.jpg")
    return root


def test_a_split_read_from_disk_has_the_in_memory_pixels(tmp_path, monkeypatch):
    root = _folder(tmp_path / "f")
    mem = data.open_splits("imagefolder", root, loader="memory", val_size=4, seed=3)
    assert isinstance(mem["val"], data.Dataset)
    monkeypatch.setattr("dcsim.data.sources.DISK_ABOVE_BYTES", 0)  # auto reads anything from disk now
    st = data.open_splits("imagefolder", root, loader="auto", val_size=4, seed=3)
    assert all(isinstance(s, data.FolderSplit) for s in st.values())
    for name in ("val", "test"):
        assert torch.equal(st[name].labels, mem[name].labels)
        for workers in (0, 2):
            got = list(data.split_batches(st[name], 3, workers=workers))
            assert [b for b, _, _ in got] == list(range(len(got)))
            x = torch.cat([x for _, x, _ in got])
            assert x.shape == (len(mem[name]), 3, 224, 224)
            assert torch.equal(x, mem[name].normalized())
    assert torch.equal(st["train"].labels, mem["train"].labels)
    assert st["train"].image_shape == (3, 224, 224)


def test_train_transform_is_seeded_per_image_and_epoch(tmp_path):
    root = _folder(tmp_path / "f")
    tr = data.open_splits("imagefolder", root, loader="disk", val_size=4, seed=3)["train"]
    x0, y0 = tr[1]
    assert x0.shape == (3, 224, 224) and x0.dtype == torch.uint8 and y0 == int(tr.labels[1])
    assert torch.equal(tr[1][0], x0)  # the same draws for the same (seed, epoch, image)
    tr.epoch = 1
    assert not torch.equal(tr[1][0], x0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = (int(v) for v in rng.integers(1, 600, 2))
        left, top, cw, ch = disk.random_resized_crop_box(w, h, rng)
        assert left >= 0 and top >= 0 and cw >= 1 and ch >= 1 and left + cw <= w and top + ch <= h


def test_a_corrupt_image_is_named_and_nothing_hangs(tmp_path):
    root = _folder(tmp_path / "f")
    bad = root / "val" / "b" / "1.jpg"
    bad.write_bytes(b"not a jpeg")
    test = data.open_splits("imagefolder", root, loader="disk", val_size=4)["test"]
    for workers in (0, 2):
        with pytest.raises(ValueError, match=r"val/b/1\.jpg: cannot read the image"):
            list(data.split_batches(test, 2, workers=workers))


def test_trace_of_a_split_read_from_disk_equals_the_in_memory_trace(tmp_path):
    from dcsim import Engine, Readout
    from dcsim.conversion.convert import convert
    from dcsim.models import small_cnn
    from dcsim.parallel.distributed import Sharded
    from dcsim.workflows.dynamic_confidence import record_trace

    root = _folder(tmp_path / "f", per_class=3, test_per_class=3)
    torch.manual_seed(0)
    mem = data.open_splits("imagefolder", root, loader="memory", val_size=2)["test"]
    st = data.open_splits("imagefolder", root, loader="disk", val_size=2)["test"]
    model = small_cnn(num_classes=2, in_channels=3, width=4, bits=2).train()
    with torch.no_grad():
        model(mem.normalized())  # the LSQ step sizes initialised from data
    engine = Engine(convert(model.eval(), method="qffs"))
    readout = Readout.paper("qffs", 2, 3)
    a = record_trace(engine, mem.normalized(), mem.labels, 3, readout, {}, batch_size=4)
    b = record_trace(engine, Sharded(st, workers=1, progress=False), st.labels, 3, readout, {}, batch_size=4)
    assert np.array_equal(a.pred, b.pred) and np.array_equal(a.conf, b.conf) and np.array_equal(a.labels, b.labels)


def test_loader_choice_errors(tmp_path):
    with pytest.raises(ValueError, match="loader 'disk' reads image files"):
        data.open_splits("digits", loader="disk")
    with pytest.raises(ValueError, match="loader must be one of"):
        data.open_splits("digits", loader="tape")
    with pytest.raises(ValueError, match="batch_size"):
        list(data.split_batches(data.load_digits_splits()["val"], 0))


_HEAP_PROBE = r"""
import ctypes, sys
from pathlib import Path
import dcsim.data

def rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

print("set", dcsim.data.return_large_buffers() if sys.argv[1] == "on" else None)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size = 16 << 20

def touched():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    return p

libc.free(touched())  # a mapping of its own; under the dynamic threshold its free raises the threshold past it
base, pins = rss_mib(), []
for _ in range(8):  # batch-sized buffer, then a small live allocation above it, then the buffer freed
    p = touched()
    pins.append(libc.malloc(1000))
    libc.free(p)
print("growth", rss_mib() - base)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)
def test_return_large_buffers_gives_freed_batch_buffers_back(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def probe(mode: str) -> tuple[str, float]:
        out = subprocess.run(
            [sys.executable, "-c", _HEAP_PROBE, mode], env=env, capture_output=True, text=True, check=True
        ).stdout.split("\n")
        return out[0].split()[1], float(out[1].split()[1])

    # The default heap keeps a freed 16 MiB buffer resident; with the fixed threshold it goes back.
    assert probe("off")[1] > 12
    setting, growth = probe("on")
    assert setting == "True" and growth < 2


def test_return_large_buffers_respects_the_environment_and_checks_its_argument(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert data.return_large_buffers() is False  # the user's own setting wins
    for bad in (0, -1, 1.5, True, 1 << 31):
        with pytest.raises(ValueError, match="threshold"):
            data.return_large_buffers(bad)


def test_the_cli_bounds_the_heap_for_splits_read_from_disk_only(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(data, "return_large_buffers", lambda: calls.append(1) or True)
    root = _folder(tmp_path / "f")
    load_splits(_args(dataset="imagefolder", data_root=root, val_size=4, loader="memory"))
    load_splits(_args())
    assert calls == []
    load_splits(_args(dataset="imagefolder", data_root=root, val_size=4, loader="disk"))
    assert calls == [1]


# ------------------------------------------------------------------ training from disk


def _train_folder(root):
    """root/{train,val}/{a,b}/*.jpg: two noisy flat colours, 260x240 (resized to 256, cropped to 224)."""
    rng = np.random.default_rng(5)
    for split, n in (("train", 10), ("val", 3)):
        for k, cls in enumerate(("a", "b")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                base = np.full((240, 260, 3), 60 + 120 * k, np.float32)
                img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / cls / f"{i}.jpg")
    return root


def train_argv(root, loader: str) -> list[str]:
    """``dcsim train`` of a width-2 small CNN for one float and one LSQ epoch on the folder ``root``."""
    return ["train", "--dataset", "imagefolder", "--data-root", str(root), "--loader", loader, "--val-size", "4",
            "--epochs", "1", "--float-epochs", "1", "--width", "2", "--train-batch-size", "4", "--device", "cpu",
            "--quiet"]  # fmt: skip


def _train(root, out, loader: str, *extra: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    argv = [*train_argv(root, loader), "--out", str(out), *extra]
    assert cli.main(argv) == cli.EXIT_OK
    return load_file(str(out))


def test_training_from_disk_equals_in_memory_training(tmp_path):
    """Without augmentation the batches read from disk are the in-memory batches: the weights are identical."""
    root = _train_folder(tmp_path / "f")
    memory = _train(root, tmp_path / "m.safetensors", "memory")
    from_disk = _train(root, tmp_path / "s.safetensors", "disk", "--loader-workers", "0")
    assert memory.keys() == from_disk.keys()
    for k in memory:
        assert torch.equal(memory[k], from_disk[k]), k


def test_augmented_training_from_disk_does_not_depend_on_the_workers(tmp_path):
    root = _train_folder(tmp_path / "f")
    runs = [
        _train(root, tmp_path / f"w{w}.safetensors", "disk", "--augment", "--loader-workers", str(w)) for w in (0, 2)
    ]
    plain = _train(root, tmp_path / "plain.safetensors", "disk", "--loader-workers", "0")
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
    assert any(not torch.equal(runs[0][k], plain[k]) for k in plain)  # the augmentation did change the batches


def test_training_from_disk_errors(tmp_path, run_cli):
    root = _train_folder(tmp_path / "f")
    argv = [
        "train",
        "--dataset",
        "imagefolder",
        "--data-root",
        str(root),
        "--loader",
        "disk",
        "--val-size",
        "4",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(tmp_path / "x.safetensors"),
    ]
    r = run_cli([*argv, "--budget-minutes", "1"])
    assert r.code == cli.EXIT_ERROR and "--budget-minutes" in r.err
    bad = next((root / "train" / "a").iterdir())
    bad.write_bytes(b"not a jpeg")
    r = run_cli([*argv, "--epochs", "1", "--loader-workers", "1"])
    assert r.code == cli.EXIT_ERROR and str(bad) in r.err
    assert not (tmp_path / "x.safetensors").exists()


def test_epoch_batches_from_disk_are_the_in_memory_rows_of_each_rank(tmp_path):
    """Each rank's rows of every global batch, as DeviceSplit gives them; a rank without rows of a batch
    (more ranks than rows) gets an empty batch."""
    from dcsim.training.device_batches import DeviceSplit, DiskSplit

    root = _train_folder(tmp_path / "f")
    mem = data.open_splits("imagefolder", root, loader="memory", val_size=4, seed=0)["train"]
    st = data.open_splits("imagefolder", root, loader="disk", val_size=4, seed=0)["train"]
    st = dataclasses.replace(st, transform="eval")
    device_split = DeviceSplit(mem.images, mem.labels, mem.mean, mem.std, "cpu")
    perm = torch.randperm(len(mem), generator=torch.Generator().manual_seed(3))
    for ranks in (1, 3, 8):
        for rank in range(ranks):

            def local(t, rank=rank, ranks=ranks):
                return t[rank::ranks]

            want = list(device_split.epoch_batches(perm, 5, 3, epoch=0, local=local))
            got = list(DiskSplit(st, "cpu", workers=0).epoch_batches(perm, 5, 3, epoch=0, local=local))
            assert len(got) == len(want) == 3
            for (xa, ya, na), (xb, yb, nb) in zip(got, want, strict=True):
                assert na == nb == 5 and xa.shape == xb.shape and torch.equal(xa, xb) and torch.equal(ya, yb)
            if ranks == 8 and rank >= 5:
                assert all(len(y) == 0 for _, y, _ in got)


def test_the_old_name_of_the_disk_loader_still_works_for_one_release(tmp_path):
    root = _folder(tmp_path / "f", 4)
    with pytest.warns(FutureWarning, match='loader "stream" is now "disk"'):
        old = data.open_splits("imagefolder", root, loader="stream", val_size=2)["test"]
    assert isinstance(old, data.FolderSplit)
    with pytest.warns(FutureWarning, match="now"):
        args = cli.build_parser().parse_args(
            ["trace", "m", "--method", "qffs", "--steps", "4", "--loader", "stream", "--out", "t.npz"]
        )
    assert args.loader == "disk"
    sys.modules.pop("dcsim.data.stream", None)  # imported afresh, so it warns
    with pytest.warns(DeprecationWarning, match="dcsim.data.stream moved to dcsim.data.disk"):
        from dcsim.data.stream import FolderSplit  # noqa: F401  (the old module path)
