"""Data-based normalization of float ReLU networks (dcsim.conversion.thresholds): thresholds against
torch.quantile / max, the clipped network against a hook-based reference (per tensor and per
channel), conversion, the errors, and the CLI route (float checkpoint, --threshold-percentile) end to end
on the digits: trace, th_c, live exit."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import dcsim
from dcsim.cli import build_parser, main
from dcsim.conversion.convert import ConversionError
from dcsim.conversion.thresholds import ClipReLU, activation_thresholds, clip_relus


def _float_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 16, 12),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(12, 5),
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


def _relu_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, y, n=n: out.__setitem__(n, y.detach().clone()))
        for n, m in model.named_modules()
        if isinstance(m, nn.ReLU)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def _clipped_reference(model: nn.Module, x: torch.Tensor, lam: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float network with each ReLU output clipped at its threshold(s), by forward hooks."""

    def clip(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.minimum(y, t.reshape(1, -1, *([1] * (y.dim() - 2))) if t.dim() else t)

    hooks = [
        m.register_forward_hook(lambda _m, _i, y, n=n: clip(y, lam[n]))
        for n, m in model.named_modules()
        if isinstance(m, nn.ReLU)
    ]
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    return y


@pytest.mark.parametrize("percentile", [99.9, 90.0, 100.0])
def test_thresholds_are_the_percentile_of_positive_activations(percentile):
    model = _float_model()
    x = torch.randn(37, 1, 8, 8)
    lam = activation_thresholds(model, x, percentile, batch_size=10)  # several batches
    lam_c = activation_thresholds(model, x, percentile, per_channel=True, batch_size=16)
    for name, y in _relu_outputs(model, x).items():
        pos = y[y > 0]
        ref = pos.max() if percentile == 100 else torch.quantile(pos.double(), percentile / 100).float()
        print(name, float(lam[name]), float(ref))
        torch.testing.assert_close(lam[name], ref, rtol=1e-5, atol=0)
        rows = y.transpose(0, 1).reshape(y.shape[1], -1)
        ref_c = torch.stack(
            [
                torch.quantile(r[r > 0].double(), percentile / 100).float()
                if bool((r > 0).any())
                else torch.tensor(0.0)
                for r in rows
            ]
        )
        torch.testing.assert_close(lam_c[name], ref_c, rtol=1e-5, atol=0)


@pytest.mark.parametrize("per_channel", [False, True])
def test_clip_relus_gives_the_clipped_network(per_channel):
    model = _float_model(1)
    before = copy.deepcopy(model.state_dict())
    calib, x = torch.randn(64, 1, 8, 8), torch.randn(16, 1, 8, 8)
    lam = activation_thresholds(model, calib, 99.0, per_channel=per_channel)
    if per_channel:
        lam = {n: v.where(v > 0, v.max()) for n, v in lam.items()}
    norm = clip_relus(model, calib, 99.0, per_channel=per_channel)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the model was modified"
    clips = [m for m in norm.modules() if isinstance(m, ClipReLU)]
    assert len(clips) == 3 and not any(isinstance(m, nn.ReLU) for m in norm.modules())
    with torch.no_grad():
        got = norm(x)
    ref = _clipped_reference(model, x, lam)
    assert float((ref - _clipped_reference(model, x, {n: torch.tensor(1e9) for n in lam})).abs().max()) > 1e-4, (
        "the clipping must matter for the comparison to mean something"
    )
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_the_clipped_network_converts_and_approaches_the_clipped_ann():
    model = _float_model(2)
    norm = clip_relus(model, torch.randn(64, 1, 8, 8), 99.9)
    net = dcsim.convert(norm, method="qcfs")
    clips = [m for m in norm.modules() if isinstance(m, ClipReLU)]
    assert [net.nodes[i].threshold for i in net.neurons] == [float(c.threshold) for c in clips]
    assert net.bits is None
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        ann = norm(x)
    sim = dcsim.Engine(net).simulate(x, steps=64, record_sums=True)
    err = {t: float((sim.sums[:, t - 1] / t - ann).abs().mean()) for t in (4, 16, 64)}
    print("mean |S_T/T - clipped ANN|:", err)
    assert err[64] < err[16] < err[4]
    with pytest.raises(ConversionError, match="QFFS"):
        dcsim.convert(norm, method="qffs")


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        ({"percentile": 0}, ValueError, "percentile"),
        ({"percentile": 100.5}, ValueError, "percentile"),
        ({"percentile": -3}, ValueError, "percentile"),
        ({"percentile": True}, ValueError, "percentile"),
        ({"calibration_images": torch.randn(4, 3, 8, 8)}, ValueError, "calibration_images"),
        ({"calibration_images": torch.randn(4, 1, 3)}, ValueError, "calibration_images"),
        ({"calibration_images": torch.randn(64)}, ValueError, "calibration_images"),
        ({"calibration_images": torch.zeros(0, 1, 8, 8)}, ValueError, "calibration_images"),
        ({"calibration_images": torch.ones(2, 1, 8, 8, dtype=torch.int64)}, ValueError, "calibration_images"),
        ({"calibration_images": torch.full((2, 1, 8, 8), float("nan"))}, ValueError, "calibration_images"),
        ({"calibration_images": [[1.0]]}, TypeError, "calibration_images"),
    ],
)
def test_bad_arguments(kwargs, error, words):
    args = {"calibration_images": torch.randn(4, 1, 8, 8), "percentile": 99.9} | kwargs
    with pytest.raises(error, match=words):
        clip_relus(_float_model(), **args)


def test_model_without_relu_and_dead_layer():
    with pytest.raises(ValueError, match="no ReLU"):
        clip_relus(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 2)), torch.randn(2, 1, 8, 8))
    dead = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 2))
    with torch.no_grad():
        dead[0].weight.zero_()
        dead[0].bias.fill_(-1.0)
    with pytest.raises(ValueError, match=r"layer '1'.*never"):
        clip_relus(dead, torch.randn(2, 1, 8, 8))


# ------------------------------------------------------------------ CLI, digits, end to end


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("float") / "float.safetensors"
    rc = main(
        [
            "train",
            "--epochs",
            "0",
            "--float-epochs",
            "2",
            "--lr",
            "0.1",
            "--width",
            "8",
            "--quiet",
            "--train-batch-size",
            "64",
            "--out",
            str(path),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    return path


def test_float_checkpoint_end_to_end(float_ckpt, tmp_path):
    meta = dcsim.io.checkpoint.read_metadata(float_ckpt)
    assert meta["activations"] == "float_relu" and meta["accuracy"]["test"] > 0.5, meta["accuracy"]
    common = ["--device", "cpu", "--method", "qcfs", "--tau", "1"]
    trace, out = tmp_path / "val.npz", tmp_path / "eval.json"
    assert (
        main(
            ["trace", str(float_ckpt), *common, "--threshold-percentile", "99.9", "--steps", "24", "--out", str(trace)]
        )
        == 0
    )
    report = dcsim.analysis.analyze(dcsim.analysis.load_trace(trace))
    selected = report["selected"]
    print("float route, digits val, T=24:", report["baseline"], selected)
    assert report["baseline"]["accuracy"] > meta["accuracy"]["val"] - 0.15
    # live exit on the same (val) split at the selected th_c reproduces the trace's numbers
    assert (
        main(
            [
                "eval",
                str(float_ckpt),
                *common[:4],
                "--threshold-percentile",
                "99.9",
                "--trace",
                str(trace),
                "--split",
                "val",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    live = json.loads(out.read_text())
    assert live["accuracy"] == pytest.approx(selected["accuracy"], abs=1e-6)
    assert live["mean_steps"] == pytest.approx(selected["mean_steps"], abs=1e-6)


def test_float_checkpoint_cli_errors(float_ckpt, tmp_path, capsys):
    args = [
        "trace",
        str(float_ckpt),
        "--device",
        "cpu",
        "--method",
        "qcfs",
        "--steps",
        "4",
        "--tau",
        "1",
        "--out",
        str(tmp_path / "t.npz"),
    ]
    assert main(args) == 1
    assert "--threshold-percentile" in capsys.readouterr().err
    assert main([*args, "--threshold-percentile", "99.9", "--method", "qffs"]) == 1
    assert "qcfs" in capsys.readouterr().err
    assert main([*args, "--threshold-percentile", "0"]) == 2  # a bad flag value: bad usage, checked before any work
    assert "--threshold-percentile" in (err := capsys.readouterr().err) and "(0, 100]" in err
    with pytest.raises(SystemExit) as info:  # not a number: argparse's own error
        main([*args, "--threshold-percentile", "most"])
    assert info.value.code == 2
    assert "--threshold-percentile" in (err := capsys.readouterr().err) and "(0, 100]" in err
    assert not (tmp_path / "t.npz").exists()


def test_the_old_names_still_work_for_one_release(float_ckpt, tmp_path):
    from dcsim.conversion.thresholds import normalize

    model, x = _float_model(), torch.randn(16, 1, 8, 8)
    with pytest.warns(DeprecationWarning, match="now clip_relus"):
        old = normalize(model, x, 99.0)
    new = clip_relus(model, x, 99.0)
    assert [float(m.threshold) for m in old.modules() if isinstance(m, ClipReLU)] == [
        float(m.threshold) for m in new.modules() if isinstance(m, ClipReLU)
    ]
    args = ["trace", str(float_ckpt), "--method", "qcfs", "--steps", "4", "--out", str(tmp_path / "t.npz")]
    assert build_parser().parse_args([*args, "--normalize", "max"]).threshold_percentile == 100.0
