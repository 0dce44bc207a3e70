"""Importing the official code's ResNet-18 state dict (dcsim import official): a module tree with
the official names is built here, saved with torch.save and imported; every quantized activation
of dcsim's model equals the official one, the checkpoint works with trace and eval, and bad
files get errors naming the key or the file."""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import pytest
import torch

import dcsim
from dcsim.cli import main
from dcsim.conversion.official import (
    OFFICIAL_MEAN,
    OFFICIAL_STD,
    map_state_dict,
    official_name,
    read_state_dict,
)
from dcsim.io.checkpoint import load_checkpoint
from official_model import LsqActivation, OfficialResNet18, randomize


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(official model, its .pth, the imported checkpoint) with random weights, statistics and scales."""
    folder = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    model = randomize(OfficialResNet18(bits=2), seed=1)
    pth, out = folder / "RESNET18.pth", folder / "model.safetensors"
    torch.save(model.state_dict(), pth)
    assert main(["import", "official", str(pth), "--out", str(out)]) == 0
    return model, pth, out


def _activations(model, x, kind) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{official activation name: (input, output)} of every hidden quantized activation, plus "logits"."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, kind) and name != "activation2":
            key = name if kind is LsqActivation else official_name(name + ".step")[: -len(".scale")]
            hooks.append(m.register_forward_hook(lambda _m, i, y, k=key: out.__setitem__(k, (i[0], y))))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return out | {"logits": (x, logits)}


def test_imported_model_computes_the_official_network(official):
    """Bit for bit with the official network rounding half up; with its half-to-even rounding, each
    layer fed the official input differs exactly at even ties, by one level."""
    model, _, out = official
    imported, meta = load_checkpoint(out, dcsim.build_model)
    assert meta["arch_kwargs"] == {"num_classes": 10, "in_channels": 3, "bits": 2}
    assert meta["normalization"] == {"mean": list(OFFICIAL_MEAN), "std": list(OFFICIAL_STD)}
    assert meta["source"]["logit_step"] == float(model.activation2.scale.detach())
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32, 32)
    ours = _activations(imported, x, dcsim.LSQActivation)
    official_acts = _activations(model, x, LsqActivation)
    for m in model.modules():
        if isinstance(m, LsqActivation):
            m.half_up = True
    try:
        half_up = _activations(model, x, LsqActivation)
    finally:
        for m in model.modules():
            if isinstance(m, LsqActivation):
                m.half_up = False
    assert len(ours) == len(half_up) == 18, sorted(ours)
    layers = dict(imported.named_modules())
    ties = 0
    for name in half_up:
        if name == "logits":
            continue
        assert bool((half_up[name][1] > 0).any()) and torch.equal(ours[name][1], half_up[name][1]), name
        # the official (half to even) layer against dcsim's layer on the same input
        x_in, y_official = official_acts[name]
        dcsim_layer = layers[next(k for k in layers if k and official_name(k + ".step") == name + ".scale")]
        with torch.no_grad():
            y_dcsim = dcsim_layer(x_in)
        s = float(dcsim_layer.step.detach())
        v = (x_in / dcsim_layer.step).clamp(0, 3)
        even_tie = (v - torch.floor(v) == 0.5) & (torch.floor(v) % 2 == 0)
        ties += int(even_tie.sum())
        diff = y_dcsim - y_official
        assert torch.equal(diff[~even_tie], torch.zeros_like(diff[~even_tie])), name
        assert torch.allclose(diff[even_tie], torch.full_like(diff[even_tie], s), rtol=1e-6, atol=0), name
    print("exact even ties met in the official network's activations:", ties)
    # the official F.avg_pool2d(x, 4) and dcsim's global average pool sum the 16 values in another order
    torch.testing.assert_close(ours["logits"][1], half_up["logits"][1], rtol=0, atol=1e-6)
    # official ANN evaluation = the logit quantizer (step kept in the metadata) on the fc output
    logit_act = LsqActivation(2, meta["source"]["logit_step"])
    with torch.no_grad():
        assert torch.equal(logit_act(official_acts["logits"][1]), model.ann_eval(x))


def test_imported_checkpoint_converts(official):
    model, _, out = official
    imported, _ = load_checkpoint(out, dcsim.build_model)
    net = dcsim.convert(imported, method="qcfs")
    scales = OrderedDict(
        (n, float(m.scale.detach()))
        for n, m in model.named_modules()
        if isinstance(m, LsqActivation) and n != "activation2"
    )
    th = [net.nodes[i].threshold for i in net.neurons]
    assert th == [float(torch.tensor(3 * s, dtype=torch.float32)) for s in scales.values()]


def test_imported_checkpoint_with_trace_and_eval(official, tmp_path, make_cifar_folder):
    _, _, ckpt = official
    data = make_cifar_folder(tmp_path / "cifar", 1, 1)
    common = ["--dataset", "cifar10", "--data-root", str(data), "--val-size", "5", "--device", "cpu"]
    trace = tmp_path / "val.npz"
    assert (
        main(["trace", str(ckpt), *common, "--method", "qcfs", "--steps", "3", "--tau", "1", "--out", str(trace)]) == 0
    )
    assert (
        main(
            ["eval", str(ckpt), *common, "--method", "qcfs", "--trace", str(trace), "--json", str(tmp_path / "e.json")]
        )
        == 0
    )
    assert json.loads((tmp_path / "e.json").read_text())["samples"] == 10


def test_checkpoint_normalization_is_applied(checkpoint_meta):
    from dcsim.io.checkpoint import CheckpointMeta
    from dcsim.workflows.inputs import with_checkpoint_normalization

    splits = dcsim.data.load_digits_splits(seed=0)
    meta = CheckpointMeta.from_dict(checkpoint_meta | {"normalization": {"mean": [0.25], "std": [0.5]}})
    out = with_checkpoint_normalization(splits, meta)
    ds = splits["test"]
    expected = (ds.images.float() / (255 if ds.images.dtype == torch.uint8 else 1) - 0.25) / 0.5
    torch.testing.assert_close(out["test"].normalized(), expected)


# ------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def state(official):
    return official[0].state_dict()


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda s: s.pop("layer3.0.downsample.1.running_var"), ["missing", "layer3.0.downsample.1.running_var"]),
        (lambda s: s.pop("activation1.scale"), ["missing", "activation1.scale"]),
        (lambda s: s.__setitem__("layer5.0.conv1.weight", torch.zeros(1)), ["unexpected", "layer5.0.conv1.weight"]),
        (
            lambda s: s.__setitem__("fc.weight", torch.zeros(100, 512)),
            ["shape", "fc.weight", "[100, 512]", "[10, 512]"],
        ),
        (lambda s: s.__setitem__("layer2.1.activation2.scale", torch.ones(2)), ["shape", "layer2.1.activation2.scale"]),
        (lambda s: s.__setitem__("layer2.1.activation2.scale", -torch.ones(1)), ["layer2.1.activation2.scale", "> 0"]),
    ],
    ids=["missing-bn", "missing-scale", "extra", "misshapen-fc", "misshapen-scale", "negative-scale"],
)
def test_bad_state_dict_names_the_key(state, edit, words):
    bad = dict(state)
    edit(bad)
    with pytest.raises(ValueError) as info:
        map_state_dict(bad, where="RESNET18.pth")
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_bad_files_name_the_file_and_key(tmp_path, run_cli):
    out = tmp_path / "m.safetensors"

    def run(path) -> str:
        r = run_cli(["import", "official", path, "--out", out])
        assert r.code == 1
        return r.err

    (tmp_path / "nontensor.pth").write_bytes(b"")
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, tmp_path / "nontensor.pth")
    assert "'epoch'" in run(tmp_path / "nontensor.pth")
    torch.save(OrderedDict(model=torch.nn.Linear(2, 2)), tmp_path / "module.pth")  # a pickled module, not tensors
    err = run(tmp_path / "module.pth")
    assert "module.pth" in err and "never runs code" in err
    assert "weights_only=False" not in err and "arbitrary code" not in err
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    assert "list" in run(tmp_path / "list.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    assert "garbage.pth" in run(tmp_path / "garbage.pth")
    assert "no such file" in run(tmp_path / "absent.pth")
    assert not out.exists(), "nothing is written on error"


UNSAFE_ADVICE = ("weights_only=False", "weights_only` set to `False", "allow_pickle=True", "arbitrary code")


def test_messages_never_advise_loading_unsafely_and_name_the_file(tmp_path, capsys):
    """Issue 25: a text file, a pickled module, a damaged archive or a FIFO given to ``import
    official``: dcsim's own message naming the file, never torch's advice to load with
    weights_only=False."""
    out = tmp_path / "m.safetensors"
    cases = {
        "text.pth": lambda p: p.write_text("this is a text file, not weights\n"),
        "module.pth": lambda p: torch.save({"m": torch.nn.Linear(2, 2)}, p),
        "legacy.pth": lambda p: torch.save({"m": torch.nn.Linear(2, 2)}, p, _use_new_zipfile_serialization=False),
        "damaged.pth": lambda p: (torch.save({"w": torch.zeros(3)}, p), p.write_bytes(p.read_bytes()[:200])),
        "fifo.pth": lambda p: os.mkfifo(p),
    }
    for name, make in cases.items():
        path = tmp_path / name
        make(path)
        assert main(["import", "official", str(path), "--out", str(out)]) == 1, name
        err = capsys.readouterr().err
        assert name in err and "Traceback" not in err, (name, err)
        assert not any(a in err for a in UNSAFE_ADVICE), (name, err)
    with pytest.raises(ValueError, match=r"not a PyTorch \.pth file"):
        read_state_dict(tmp_path / "text.pth")
    assert not out.exists()


def test_trace_of_pickled_objects_does_not_advise_allow_pickle(tmp_path):
    import numpy as np

    from dcsim.analysis import load_trace

    obj = tmp_path / "obj.npz"
    np.savez(obj, labels=np.zeros(2, dtype=object), pred=np.zeros((2, 1)), conf=np.zeros((2, 1)), meta=np.array("{}"))
    pickled = tmp_path / "pickled.npz"
    with open(pickled, "wb") as f:  # a pickle under an .npz name
        np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for path in (obj, pickled):
        with pytest.raises(ValueError) as info:
            load_trace(path)
        msg = str(info.value)
        assert path.name in msg and "never loads" in msg and "allow_pickle" not in msg, msg
