"""Training schedule, budget planning, device batches and stopping (tiny models on digits)."""

import math
from itertools import pairwise

import pytest
import torch
from safetensors.torch import load_file

import dcsim
from dcsim import training
from dcsim.data.augment import random_crop_flip
from dcsim.training.device_batches import DeviceSplit


@pytest.fixture(scope="module")
def digits():
    s = dcsim.data.load_digits_splits(seed=0)
    return s["train"].subset(range(256)), s["val"].subset(range(100))


def _model():
    torch.manual_seed(0)
    return dcsim.models.small_cnn(num_classes=10, in_channels=1, width=4)


def _train(digits, cfg, **kw):
    """Train a fresh `_model()` on the normalized digits subsets: (model, history)."""
    tr, va = digits
    model = _model()
    h = training.train(model, tr.normalized(), tr.labels, va.normalized(), va.labels, cfg, progress=False, **kw)
    return model, h


def test_exponential_schedule_is_torchs_exponential_lr():
    cfg = training.TrainConfig(epochs=5, float_epochs=3, lr=0.05, lr_decay=0.9)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, cfg.lr_decay)
    for epoch in range(8):
        assert training.learning_rate(cfg, epoch, 0.7) == opt.param_groups[0]["lr"]
        opt.step()
        sched.step()


def test_cosine_schedule_per_stage():
    cfg = training.TrainConfig(epochs=4, float_epochs=6, lr=0.2, lsq_lr=0.01, schedule="cosine", warmup_epochs=1)
    lr = training.learning_rate
    assert lr(cfg, 0, 0.0) == pytest.approx(0.02)  # a tenth of the peak
    assert lr(cfg, 0, 0.5) == pytest.approx(0.02 + 0.9 * 0.2 * 0.5)
    assert lr(cfg, 1, 0.0) == pytest.approx(0.2)  # the peak after the warm-up
    assert lr(cfg, 3, 0.5) == pytest.approx(0.1)  # half way through the cosine
    assert lr(cfg, 5, 0.999) < 1e-5
    assert lr(cfg, 6, 0.0) == pytest.approx(0.001) and lr(cfg, 7, 0.0) == pytest.approx(0.01)
    assert lr(cfg, 8, 0.0) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi / 3)))
    assert training.learning_rate(training.TrainConfig(schedule="cosine", lr=0.3, epochs=2), 0, 0.0) == 0.03
    xs = [lr(cfg, e, p / 10) for e in range(1, 6) for p in range(10)]
    assert all(a >= b for a, b in pairwise(xs))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"schedule": "step"}, "schedule"),
        ({"lsq_lr": 0.0}, "lsq_lr"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"lsq_label_smoothing": -0.1}, "lsq_label_smoothing"),
        ({"nesterov": True, "momentum": 0.0}, "nesterov"),
        ({"warmup_epochs": -1}, "warmup"),
        ({"distill": 1.5, "float_epochs": 1}, "distill must lie"),
        ({"distill": 0.5, "float_epochs": 0}, "distill needs float_epochs"),
    ],
)
def test_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        training.TrainConfig(**bad)


def test_plan_epochs_fills_the_budget_and_refuses_too_small():
    assert training.plan_epochs({"float_s": 10.0, "lsq_s": 20.0}, 500, 0.4) == (30, 10)
    with pytest.raises(ValueError, match=r"too small.*at least"):
        training.plan_epochs({"float_s": 10.0, "lsq_s": 20.0}, 40, 0.4)


def test_budget_config_measures_and_restores_the_model(digits):
    tr, va = digits
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg, plan = training.budget_config(
        model,
        tr.images,
        tr.labels,
        len(va),
        training.TrainConfig(batch_size=32),
        budget_minutes=30,
        normalization=(tr.mean, tr.std),
    )
    assert cfg.float_epochs == plan["float_epochs"] >= 1 and cfg.epochs == plan["epochs"] >= 1
    assert plan["expected_minutes"] <= 30 and plan["seconds_per_epoch"]["lsq"] > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="too small"):
        training.budget_config(
            model,
            tr.images,
            tr.labels,
            len(va),
            training.TrainConfig(batch_size=32),
            budget_minutes=1e-5,
            normalization=(tr.mean, tr.std),
        )


def test_lsq_label_smoothing_applies_to_the_lsq_stage_only(digits):
    base = {"lr": 0.05, "batch_size": 64, "schedule": "cosine"}

    def weights(**kw):
        model, _ = _train(digits, training.TrainConfig(**base | kw))
        return [v.clone() for v in model.state_dict().values()]

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    split = {"label_smoothing": 0.3, "lsq_label_smoothing": 0.0}
    assert training.stage_label_smoothing(training.TrainConfig(float_epochs=1, epochs=1, **split), 0) == 0.3
    assert training.stage_label_smoothing(training.TrainConfig(float_epochs=1, epochs=1, **split), 1) == 0.0
    assert training.stage_label_smoothing(training.TrainConfig(float_epochs=1, label_smoothing=0.3), 1) == 0.3
    # the float stage smooths, the LSQ stage does not
    assert same(weights(float_epochs=1, epochs=0, **split), weights(float_epochs=1, epochs=0, label_smoothing=0.3))
    assert same(weights(float_epochs=0, epochs=1, **split), weights(float_epochs=0, epochs=1))
    assert not same(weights(float_epochs=0, epochs=1, **split), weights(float_epochs=0, epochs=1, label_smoothing=0.3))


def test_raw_images_with_normalization_train_like_normalized_floats(digits):
    tr, va = digits
    cfg = training.TrainConfig(
        epochs=1,
        float_epochs=1,
        lr=0.05,
        batch_size=64,
        schedule="cosine",
        warmup_epochs=0.5,
        nesterov=True,
        label_smoothing=0.1,
    )
    a, ha = _train(digits, cfg)
    b = _model()
    hb = training.train(
        b, tr.images, tr.labels, va.images, va.labels, cfg, progress=False, normalization=(tr.mean, tr.std)
    )
    assert [e["val_acc"] for e in ha["epochs"]] == [e["val_acc"] for e in hb["epochs"]]
    assert ha["completed"] and ha["planned_epochs"] == 2
    assert all(e["seconds"] > 0 and math.isfinite(e["loss"]) for e in ha["epochs"])
    assert ha["epochs"][1]["elapsed_s"] >= ha["epochs"][0]["elapsed_s"]
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    c = _model()  # augmented: black padding of the raw images, then the same normalization
    hc = training.train(
        c,
        tr.images,
        tr.labels,
        va.images,
        va.labels,
        cfg,
        augment=random_crop_flip,
        progress=False,
        normalization=(tr.mean, tr.std),
    )
    assert hc["completed"] and not torch.equal(c.state_dict()["0.weight"], a.state_dict()["0.weight"])


def test_time_limit_stops_and_marks_the_run_incomplete(digits):
    _, h = _train(digits, training.TrainConfig(epochs=2, float_epochs=1, batch_size=64), time_limit_s=0.0)
    assert not h["completed"] and len(h["epochs"]) == 1 and "time limit" in h["stopped"]


def test_bf16_autocast_on_request_keeps_float32_weights(digits):
    model, h = _train(
        digits,
        training.TrainConfig(epochs=1, float_epochs=1, batch_size=64),
        runtime=training.TrainRuntime(precision="bf16", channels_last=True),
    )
    assert h["completed"] and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())


def test_milestones():
    h = {
        "epochs": [
            {"epoch": 1, "phase": "float", "val_acc": 0.6, "elapsed_s": 60},
            {"epoch": 2, "phase": "float", "val_acc": 0.85, "elapsed_s": 120},
            {"epoch": 3, "phase": "lsq", "val_acc": 0.82, "elapsed_s": 200},
        ]
    }
    rows = {(r["phase"], r["level"]): (r["epoch"], r["minutes"]) for r in training.milestones(h, (0.5, 0.8, 0.9))}
    assert rows[("float", 0.8)] == (2, 2.0) and rows[("lsq", 0.8)] == (3, 200 / 60)
    assert rows[("float", 0.9)] == (None, None) and rows[("lsq", 0.5)] == (3, 200 / 60)


def test_resume_accepts_files_from_before_the_new_options(digits, tmp_path):
    cfg = training.TrainConfig(epochs=1, float_epochs=1, batch_size=64)
    _train(digits, cfg, workdir=tmp_path)
    assert training.loop._same_config({k: v for k, v in cfg.__dict__.items() if k not in ("schedule", "nesterov")}, cfg)
    assert not training.loop._same_config(cfg.__dict__ | {"schedule": "cosine"}, cfg)
    with pytest.raises(ValueError, match="different training configuration"):
        _train(digits, training.TrainConfig(epochs=1, float_epochs=1, batch_size=64, nesterov=True), workdir=tmp_path)


def test_distillation_loss_is_the_kl_divergence():
    torch.manual_seed(1)
    s, t = torch.randn(5, 7, requires_grad=True), torch.randn(5, 7)
    p = t.softmax(1)
    expected = (p * (p.log() - s.log_softmax(1))).sum()
    assert torch.allclose(training.distillation_loss(s, t), expected, atol=1e-6)
    assert float(training.distillation_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    training.distillation_loss(s, t).backward()
    assert torch.allclose(s.grad, s.softmax(1) - p, atol=1e-6)  # d KL / d student logits


def test_distill_trains_the_lsq_stage_towards_the_float_network(digits):
    base = {"lr": 0.05, "batch_size": 64, "schedule": "cosine", "float_epochs": 1, "epochs": 1}
    plain, h0 = _train(digits, training.TrainConfig(**base))
    distilled, h1 = _train(digits, training.TrainConfig(**base | {"distill": 1.0}))
    # the float stage is the same; the LSQ stage's loss is the KL to the float network, not the cross-entropy
    assert h0["epochs"][0]["loss"] == h1["epochs"][0]["loss"]
    assert h0["epochs"][1]["loss"] != h1["epochs"][1]["loss"]
    assert not all(
        torch.equal(a, b) for a, b in zip(plain.state_dict().values(), distilled.state_dict().values(), strict=True)
    )
    teacher = training.make_teacher(distilled)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_distill_resumes_with_the_same_teacher(digits, tmp_path):
    cfg = training.TrainConfig(lr=0.05, batch_size=64, schedule="cosine", float_epochs=1, epochs=2, distill=0.5)
    whole, _ = _train(digits, cfg)
    _, cut = _train(digits, cfg, workdir=tmp_path, time_limit_s=0.0)  # stops after the float epoch
    _, cut = _train(digits, cfg, workdir=tmp_path, time_limit_s=0.0)  # and after the first LSQ epoch: teacher saved
    assert len(cut["epochs"]) == 2 and not cut["completed"]
    resumed, h = _train(digits, cfg, workdir=tmp_path)
    assert h["completed"] and h["resumed_at_epochs"] == [1, 2]
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_ema_run_keeps_the_average_and_trains_as_without_it(digits):
    """The trained network's path is the run's without the average (it draws no random numbers): its
    validation accuracy per epoch is the plain run's; the kept network is the average, whose accuracy is
    the recorded one, and differs from the plain run's weights."""
    base = {"lr": 0.05, "batch_size": 64, "schedule": "cosine", "float_epochs": 1, "epochs": 2}
    plain, h_plain = _train(digits, training.TrainConfig(**base))
    averaged, h = _train(digits, training.TrainConfig(**base, ema=0.9))
    lsq = [e for e in h["epochs"] if e["phase"] == "lsq"]
    lsq_plain = [e for e in h_plain["epochs"] if e["phase"] == "lsq"]
    assert [e["trained_val_acc"] for e in lsq] == [e["val_acc"] for e in lsq_plain]
    assert all("trained_val_acc" not in e for e in h["epochs"] if e["phase"] == "float")
    assert h["best_val_acc"] == max(e["val_acc"] for e in lsq)
    va = digits[1]
    val = DeviceSplit(va.normalized(), va.labels, [0.0], [1.0], "cpu")
    assert training.split_accuracy(averaged, val) == h["best_val_acc"]
    assert not all(
        torch.equal(a, b) for a, b in zip(plain.state_dict().values(), averaged.state_dict().values(), strict=True)
    )


def test_ema_resumes_to_the_same_average(digits, tmp_path):
    cfg = training.TrainConfig(lr=0.05, batch_size=64, schedule="cosine", float_epochs=1, epochs=2, ema=0.9)
    whole, h_whole = _train(digits, cfg, workdir=tmp_path / "whole")
    cut_dir = tmp_path / "cut"
    _, cut = _train(digits, cfg, workdir=cut_dir, time_limit_s=0.0)  # the float epoch
    _, cut = _train(digits, cfg, workdir=cut_dir, time_limit_s=0.0)  # and the first LSQ epoch: the average saved
    assert len(cut["epochs"]) == 2 and not cut["completed"]
    resumed, h = _train(digits, cfg, workdir=cut_dir)
    assert h["completed"] and h["resumed_at_epochs"] == [1, 2]
    assert [e["val_acc"] for e in h["epochs"]] == [e["val_acc"] for e in h_whole["epochs"]]
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # the average itself, as each run's last state holds it after the last epoch
    ema = [
        {k: v for k, v in load_file(str(d / "last.safetensors")).items() if k.startswith("ema.")}
        for d in (tmp_path / "whole", cut_dir)
    ]
    assert ema[0] and ema[0].keys() == ema[1].keys()
    for k, v in ema[0].items():
        assert torch.equal(v, ema[1][k]), k
