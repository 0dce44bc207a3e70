"""A stored float stage (training.FloatStage, --float-stage): LSQ-stage variants started from it train exactly as
whole runs do, and a file from another float stage is refused, naming what differs."""

import json

import pytest
import torch
from safetensors.torch import load_file

import dcsim
from dcsim import training
from dcsim.io.checkpoint import read_metadata
from dcsim.training import FloatStage


@pytest.fixture(scope="module")
def digits():
    s = dcsim.data.load_digits_splits(seed=0)
    return s["train"].subset(range(256)), s["val"].subset(range(100))


def _train(digits, cfg, **kw):
    tr, va = digits
    torch.manual_seed(0)
    model = dcsim.models.small_cnn(num_classes=10, in_channels=1, width=4)
    h = training.train(model, tr.normalized(), tr.labels, va.normalized(), va.labels, cfg, progress=False, **kw)
    return model, h


def _assert_same_weights(a, b):
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


BASE = {"lr": 0.05, "batch_size": 64, "schedule": "cosine", "float_epochs": 2, "epochs": 2}


@pytest.mark.parametrize(
    "lsq",
    [
        {},
        {"lsq_lr": 0.02, "epochs": 3},
        {"lsq_label_smoothing": 0.1, "distill": 0.5},
        {"clip_mix": 0.5},
        {"lsq_seed": 7},
    ],
    ids=["same", "lr-and-epochs", "smoothing-and-distill", "clip-mix", "lsq-seed"],
)
def test_lsq_stage_from_a_stored_float_stage_equals_the_whole_run(digits, tmp_path, lsq):
    path = tmp_path / "float.safetensors"
    stage = FloatStage(path, {"arch": "small_cnn", "width": 4})
    _, first = _train(digits, training.TrainConfig(**BASE), float_stage=stage)
    assert path.exists() and first["float_stage"] == {"path": str(path), "read": False}
    stored = load_file(str(path))
    cfg = training.TrainConfig(**BASE | lsq)
    whole, h_whole = _train(digits, cfg)
    branched, h = _train(digits, cfg, float_stage=stage)
    _assert_same_weights(whole, branched)
    assert h["float_stage"] == {"path": str(path), "read": True} and h["resumed_at_epochs"] == [2]
    assert [e["phase"] for e in h["epochs"]] == [e["phase"] for e in h_whole["epochs"]]
    assert [e["val_acc"] for e in h["epochs"]] == [e["val_acc"] for e in h_whole["epochs"]]
    assert h["epochs"][:2] == first["epochs"][:2]  # the float epochs are the stored run's, times included
    after = load_file(str(path))  # read, never rewritten
    assert stored.keys() == after.keys() and all(torch.equal(stored[k], after[k]) for k in stored)


def test_working_folder_state_comes_before_the_float_stage_file(digits, tmp_path):
    stage = FloatStage(tmp_path / "float.safetensors")
    cfg = training.TrainConfig(**BASE)
    whole, _ = _train(digits, cfg)
    _train(digits, cfg, workdir=tmp_path / "work", float_stage=stage, time_limit_s=0.0)  # stops after epoch 1
    assert not stage.path.exists()  # the float stage has not ended yet
    resumed, h = _train(digits, cfg, workdir=tmp_path / "work", float_stage=stage)
    _assert_same_weights(whole, resumed)
    assert stage.path.exists() and h["float_stage"]["read"] is False and h["resumed_at_epochs"] == [1]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"config": {"lr": 0.04}}, "lr: 0.05 -> 0.04"),
        ({"config": {"float_epochs": 1}}, "epochs: holds 2"),
        ({"config": {"label_smoothing": 0.1}}, "label_smoothing: 0.0 -> 0.1"),
        ({"setup": {"width": 8}}, "width: 4 -> 8"),
        ({"setup": {"cutout": 8}}, "cutout: None -> 8"),
    ],
)
def test_a_float_stage_trained_otherwise_is_refused(digits, tmp_path, change, named):
    path = tmp_path / "float.safetensors"
    _train(digits, training.TrainConfig(**BASE), float_stage=FloatStage(path, {"width": 4}))
    cfg = training.TrainConfig(**BASE | change.get("config", {}))
    with pytest.raises(ValueError, match=f"float stage file {path}: trained with other float-stage settings") as err:
        _train(digits, cfg, float_stage=FloatStage(path, {"width": 4} | change.get("setup", {})))
    assert named in str(err.value)


def test_a_working_folder_past_the_float_stage_is_not_a_float_stage(digits, tmp_path):
    cfg = training.TrainConfig(**BASE)
    _train(digits, cfg, workdir=tmp_path, time_limit_s=0.0)
    _train(digits, cfg, workdir=tmp_path, time_limit_s=0.0)
    _train(digits, cfg, workdir=tmp_path, time_limit_s=0.0)  # 3 epochs: 2 float, 1 LSQ
    with pytest.raises(ValueError, match=r"epochs: holds 3 .*not the 2 float epochs"):
        _train(digits, cfg, float_stage=FloatStage(tmp_path / "last.safetensors"))


def test_a_float_stage_needs_float_epochs(digits, tmp_path):
    with pytest.raises(ValueError, match="needs float_epochs >= 1"):
        _train(digits, training.TrainConfig(epochs=1, batch_size=64), float_stage=FloatStage(tmp_path / "f"))


def _epoch_numbers(history, phase):
    return [(e["val_acc"], e["loss"]) for e in history["epochs"] if e["phase"] == phase]


@pytest.mark.parametrize("clip_mix", [0.0, 0.5])
def test_lsq_seed_seeds_the_lsq_stage_only(digits, tmp_path, clip_mix):
    """lsq_seed: the float stage is the run's own (equal epoch for epoch); the LSQ stage is seeded afresh (its
    batch order and, with the clip mix, its clip draws), so two runs with one lsq_seed are equal bit for bit,
    and other seeds (or none) train another LSQ stage."""
    cfg = {**BASE, "clip_mix": clip_mix}
    runs = {k: _train(digits, training.TrainConfig(**cfg, lsq_seed=k)) for k in (None, 7, 8)}
    again, h_again = _train(digits, training.TrainConfig(**cfg, lsq_seed=7))
    _assert_same_weights(runs[7][0], again)
    assert _epoch_numbers(runs[7][1], "lsq") == _epoch_numbers(h_again, "lsq")
    floats = {k: _epoch_numbers(h, "float") for k, (_, h) in runs.items()}
    assert len(floats[None]) == 2 and floats[None] == floats[7] == floats[8]
    for a, b in ((None, 7), (7, 8)):
        pairs = zip(runs[a][0].state_dict().values(), runs[b][0].state_dict().values(), strict=True)
        assert not all(torch.equal(x, y) for x, y in pairs), (a, b)
    work = tmp_path / "work"  # resumed after the first LSQ epoch: the whole run's weights
    seeded = training.TrainConfig(**cfg, lsq_seed=7)
    for _ in range(3):
        _train(digits, seeded, workdir=work, time_limit_s=0.0)
    resumed, h = _train(digits, seeded, workdir=work)
    assert h["resumed_at_epochs"] == [1, 2, 3]
    _assert_same_weights(runs[7][0], resumed)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lsq_seed": -1}, "lsq_seed"),
        ({"lsq_seed": 1.5}, "lsq_seed"),
        ({"lsq_seed": 3, "epochs": 0}, "lsq_seed needs epochs"),
    ],
)
def test_bad_lsq_seeds_are_refused(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        training.TrainConfig(**BASE | kw)


def test_cli_float_stage_branches_an_lsq_variant(tmp_path, run_cli):
    common = ["train", "--float-epochs", "1", "--epochs", "1", "--lr", "0.05", "--train-batch-size", "64",
              "--width", "4", "--train-subset", "300", "--schedule", "cosine", "--quiet"]  # fmt: skip
    stage = tmp_path / "float.safetensors"
    first = run_cli([*common, "--float-stage", stage, "--out", tmp_path / "a.safetensors", "--json", "-"])
    assert first.code == 0, first.err
    whole = run_cli([*common, "--lsq-lr", "0.02", "--out", tmp_path / "whole.safetensors"])
    assert whole.code == 0, whole.err
    branch = run_cli(
        [*common, "--lsq-lr", "0.02", "--float-stage", stage, "--out", tmp_path / "b.safetensors", "--json", "-"]
    )
    assert branch.code == 0, branch.err
    assert json.loads(first.out)["history"][0] == json.loads(branch.out)["history"][0]
    a, b = load_file(str(tmp_path / "whole.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = read_metadata(tmp_path / "b.safetensors")
    assert meta["training"]["float_stage"] == {"path": str(stage), "read": True}
    other = run_cli([*common, "--lr", "0.04", "--float-stage", stage, "--out", tmp_path / "c.safetensors"])
    assert other.code == 1 and "lr: 0.05 -> 0.04" in other.err
    assert not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize(
    "flags",
    [["--float-epochs", "0", "--epochs", "1"], ["--float-epochs", "1", "--epochs", "1", "--budget-minutes", "1"]],
    ids=["no-float-stage", "budget"],
)
def test_cli_float_stage_needs_fixed_float_epochs(tmp_path, flags, run_cli):
    r = run_cli(["train", *flags, "--float-stage", tmp_path / "f.safetensors", "--out", tmp_path / "m.safetensors"])
    assert r.code == 2 and "--float-stage" in r.err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_negative_lsq_seed(tmp_path, run_cli):
    r = run_cli(["train", "--epochs", "1", "--lsq-seed", "-1", "--out", tmp_path / "m.safetensors"])
    assert r.code == 2 and "--lsq-seed" in r.err
    assert not any(tmp_path.iterdir())
