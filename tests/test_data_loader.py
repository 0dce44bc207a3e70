"""Choosing and running the data path: command-line split sizes, the in-memory and streaming loaders."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from dcsim import cli, data
from dcsim.data import stream


def _args(**kw) -> argparse.Namespace:
    base = {"dataset": "digits", "data_root": None, "val_size": None, "seed": 0}
    return argparse.Namespace(**(base | kw))


def test_val_size_is_honoured_for_digits():
    default = cli.load_splits(_args())
    assert len(default["val"]) == 300
    splits = cli.load_splits(_args(val_size=301))
    assert len(splits["val"]) == 301 and len(splits["test"]) == 360
    assert len(splits["train"]) + 301 + 360 == 1797
    with pytest.raises(ValueError, match="val_size"):
        cli.load_splits(_args(val_size=0))


# ------------------------------------------------------------------ streamed image folders


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


def test_streamed_split_has_the_in_memory_pixels(tmp_path, monkeypatch):
    root = _folder(tmp_path / "f")
    mem = data.open_splits("imagefolder", root, loader="memory", val_size=4, seed=3)
    assert isinstance(mem["val"], data.Dataset)
    monkeypatch.setattr("dcsim.data.sources.STREAM_ABOVE_BYTES", 0)  # auto streams anything now
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
    tr = data.open_splits("imagefolder", root, loader="stream", val_size=4, seed=3)["train"]
    x0, y0 = tr[1]
    assert x0.shape == (3, 224, 224) and x0.dtype == torch.uint8 and y0 == int(tr.labels[1])
    assert torch.equal(tr[1][0], x0)  # the same draws for the same (seed, epoch, image)
    tr.epoch = 1
    assert not torch.equal(tr[1][0], x0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = (int(v) for v in rng.integers(1, 600, 2))
        left, top, cw, ch = stream.random_resized_crop_box(w, h, rng)
        assert left >= 0 and top >= 0 and cw >= 1 and ch >= 1 and left + cw <= w and top + ch <= h


def test_a_corrupt_image_is_named_and_nothing_hangs(tmp_path):
    root = _folder(tmp_path / "f")
    bad = root / "val" / "b" / "1.jpg"
    bad.write_bytes(b"not a jpeg")
    test = data.open_splits("imagefolder", root, loader="stream", val_size=4)["test"]
    for workers in (0, 2):
        with pytest.raises(ValueError, match=r"val/b/1\.jpg: cannot read the image"):
            list(data.split_batches(test, 2, workers=workers))


def test_trace_of_a_streamed_split_equals_the_in_memory_trace(tmp_path):
    from dcsim import Engine, Readout, convert
    from dcsim.distributed import Sharded
    from dcsim.models import small_cnn
    from dcsim.pipeline import record_trace

    root = _folder(tmp_path / "f", per_class=3, test_per_class=3)
    torch.manual_seed(0)
    model = small_cnn(num_classes=2, in_channels=3, width=4, bits=2).eval()
    engine = Engine(convert(model, method="qffs"))
    readout = Readout.paper("qffs", 2, 3)
    mem = data.open_splits("imagefolder", root, loader="memory", val_size=2)["test"]
    st = data.open_splits("imagefolder", root, loader="stream", val_size=2)["test"]
    a = record_trace(engine, mem.normalized(), mem.labels, 3, readout, {}, batch_size=4)
    b = record_trace(engine, Sharded(st, workers=1, progress=False), st.labels, 3, readout, {}, batch_size=4)
    assert np.array_equal(a.pred, b.pred) and np.array_equal(a.conf, b.conf) and np.array_equal(a.labels, b.labels)


def test_loader_choice_errors(tmp_path):
    with pytest.raises(ValueError, match="loader 'stream' reads image files"):
        data.open_splits("digits", loader="stream")
    with pytest.raises(ValueError, match="loader must be one of"):
        data.open_splits("digits", loader="disk")
    with pytest.raises(ValueError, match="batch_size"):
        list(data.split_batches(data.load_digits_splits()["val"], 0))
