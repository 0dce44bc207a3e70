"""A checkpoint's held-out validation images: where a split's images lie in their pool
(``Dataset.source``), :func:`dcsim.data.outside_held_out` against a brute-force count, and the
refusal of a validation split that reaches into a checkpoint's training images."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dcsim.data import Dataset, load_digits_splits, outside_held_out
from dcsim.data.dataset import _split_indices, _with_val
from dcsim.io.checkpoint import CheckpointMeta, load_checkpoint
from dcsim.models import build_model
from dcsim.workflows.inputs import check_held_out


def _numbered(n: int, classes: int, seed: int) -> Dataset:
    """n images whose first pixel is their index (so identity is visible), random labels."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 2, 2, dtype=torch.float32)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32) / n
    labels = torch.randint(0, classes, (n,), generator=gen)
    return Dataset(images, labels, [str(c) for c in range(classes)], (0.0,), (1.0,), "numbered")


def _ids(ds: Dataset) -> set[int]:
    return {round(float(v) * 10_000) for v in ds.images[:, 0, 0, 0]}


@pytest.mark.parametrize("seed", range(4))
def test_outside_held_out_counts_what_brute_force_counts(seed: int) -> None:
    gen = torch.Generator().manual_seed(100 + seed)
    n = int(torch.randint(40, 200, (1,), generator=gen))
    pool = _numbered(n, classes=int(torch.randint(2, 6, (1,), generator=gen)), seed=seed)
    test = _numbered(5, 2, seed)
    held, asked = (int(v) for v in torch.randint(4, n // 2, (2,), generator=gen))
    for draw_seed in (seed, seed + 1):
        splits = _with_val(pool, test, asked, draw_seed)
        assert splits["train"].source is not None and splits["val"].source is not None
        assert _ids(splits["train"]) | _ids(splits["val"]) == _ids(pool)  # the sources cover the pool
        held_ids = _ids(_with_val(pool, test, held, seed)["val"])
        expected = len(_ids(splits["val"]) - held_ids)
        assert outside_held_out(splits["train"], splits["val"], held, seed) == expected
    assert outside_held_out(splits["train"], splits["val"], asked, draw_seed) == 0


def test_subsets_keep_their_place_in_the_pool() -> None:
    splits = load_digits_splits(seed=0, val_size=300)
    sub = splits["val"].subset([5, 0, 7])
    assert sub.source is not None and splits["val"].source is not None
    assert sub.source.tolist() == splits["val"].source[[5, 0, 7]].tolist()
    assert outside_held_out(splits["train"], splits["val"], 300, 0) == 0
    bigger = load_digits_splits(seed=0, val_size=400)
    assert outside_held_out(bigger["train"], bigger["val"], 300, 0) >= 100  # 400 cannot fit in 300


def test_splits_read_from_disk_answer_from_their_file_indices() -> None:
    labels = np.arange(120) % 4
    _, held = _split_indices(labels, 30, 0, "val")
    _, asked = _split_indices(labels, 50, 3, "val")
    val = SimpleNamespace(scan=SimpleNamespace(labels=labels), indices=asked)
    assert outside_held_out(None, val, 30, 0) == int((~np.isin(asked, held)).sum()) > 0


def test_splits_without_sources_are_not_counted() -> None:
    pool = _numbered(50, 2, 0)
    assert outside_held_out(pool, pool, 10, 0) is None


def _meta(base: dict, **more: object) -> CheckpointMeta:
    return CheckpointMeta.from_dict(base | {"seed": 0} | more)


def test_check_refuses_a_split_reaching_into_the_training_images(checkpoint_meta: dict) -> None:
    ckpt = Path("model.safetensors")
    check_held_out(_meta(checkpoint_meta, val_size=300), load_digits_splits(seed=0, val_size=300), ckpt, 0)
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors: \d+ of the 400 validation images \(--val-size 400\) "
        r"lie outside the 300 .*pass --val-size 300 --seed 0",
    ):
        check_held_out(_meta(checkpoint_meta, val_size=300), load_digits_splits(seed=0, val_size=400), ckpt, 0)
    with pytest.raises(ValueError, match=r"trained with --seed 0.*pass --val-size 300 --seed 0"):
        check_held_out(_meta(checkpoint_meta, val_size=300), load_digits_splits(seed=1, val_size=300), ckpt, 1)


def test_older_checkpoints_are_checked_from_their_training_images(checkpoint_meta: dict) -> None:
    splits = load_digits_splits(seed=0, val_size=400)
    pool = len(splits["train"]) + len(splits["val"])
    old = _meta(checkpoint_meta, training={"train_images": pool - 300})  # held out 300, as val_size 300 does
    with pytest.raises(ValueError, match="lie outside the 300"):
        check_held_out(old, splits, Path("m"), 0)
    check_held_out(_meta(checkpoint_meta), splits, Path("m"), 0)  # records neither: not checked


def test_train_records_its_held_out_size_and_trace_refuses_more(
    run_cli, digits_checkpoint: Path, tmp_path: Path
) -> None:
    _, meta = load_checkpoint(digits_checkpoint, build_model)
    assert meta["val_size"] == 300 and meta["seed"] == 0
    out = tmp_path / "trace.npz"
    res = run_cli(["trace", digits_checkpoint, "--method", "qcfs", "--val-size", "500", "--steps", "4", "--out", out])
    assert res.code != 0
    assert "of the 500 validation images (--val-size 500) lie outside the 300" in res.err
    assert "pass --val-size 300 --seed 0" in res.err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert run_cli(["trace", digits_checkpoint, "--method", "qcfs", "--steps", "4", "--out", out]).code == 0
