"""ANN -> SNN conversion (dcsim.convert) and the engine on converted models: structure of the
network, batch-norm folding, residual fusion, ANN/SNN agreement, native vs reference engine,
and the errors that name the offending layer or argument."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

import dcsim
from dcsim import models
from dcsim.conversion.convert import ConversionError
from dcsim.models.lsq import LSQActivation
from dcsim.sim.network import Conv, Linear, Neuron

FOLD_ATOL = 1e-5
"""Folded conv/linear vs conv/linear + eval batch norm: different float32 operation order."""

CONF_ATOL = 1e-5
"""Per-step confidence, native vs reference engine (see SCORE_ATOL in test_kernels.py)."""


def _prepare(model: nn.Module, shape: tuple, seed: int = 0) -> nn.Module:
    """Random BN affine parameters, one train-mode forward (initialises LSQ steps and, with a
    cumulative BN average, sets the running statistics to this batch's), then eval()."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.momentum = None
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.train()
        model(torch.randn(shape))
    return model.eval()


MODEL_CASES = [
    pytest.param("small_cnn", lambda: models.small_cnn(in_channels=1), (4, 1, 8, 8), id="small_cnn-1x8x8"),
    pytest.param("small_cnn", lambda: models.small_cnn(in_channels=3), (4, 3, 32, 32), id="small_cnn-3x32x32"),
    pytest.param("resnet18", lambda: models.resnet18(), (3, 3, 32, 32), id="resnet18-32x32"),
    pytest.param("vgg16", lambda: models.vgg16(hidden=64), (3, 3, 32, 32), id="vgg16-hidden64"),
    pytest.param("resnet50", lambda: models.resnet50(num_classes=10), (2, 3, 64, 64), id="resnet50-64x64"),
]


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["qcfs", "qffs"])
@pytest.mark.parametrize("arch,build,shape", MODEL_CASES)
def test_convert_model_zoo(arch, build, shape, method):
    model = _prepare(build(), shape)
    before = copy.deepcopy(model.state_dict())
    net = dcsim.convert(model, method=method)
    assert _state_equal(model.state_dict(), before), "convert modified the model"
    assert net.method == method and net.bits == 2

    lsq = OrderedDict((n, m) for n, m in model.named_modules() if isinstance(m, LSQActivation))
    neurons = [net.nodes[i] for i in net.neurons]
    assert len(neurons) == len(lsq), (len(neurons), len(lsq))
    assert [n.name for n in neurons] == list(lsq), "neurons must be the LSQ layers, in order"
    for node in neurons:
        act = lsq[node.name]
        th = float(torch.tensor(act.qp * act.step.item(), dtype=torch.float32))
        assert node.threshold == th, (node.name, node.threshold, th)
        assert node.threshold > 0
        assert node.u0 == float(torch.tensor(th / 2, dtype=torch.float32)), (node.name, node.u0, th)
        assert node.zmax == act.qp == 3
    assert isinstance(net.nodes[-1], Linear), "the output layer integrates: a full-precision linear"
    assert not any(isinstance(n, Neuron) for n in net.nodes[-1:])

    if arch in ("resnet18", "resnet50"):
        post_add = "act2" if arch == "resnet18" else "act3"
        for node in neurons:
            want = 2 if node.name.endswith(post_add) and node.name.startswith("layers.") else 1
            assert len(node.inputs) == want, f"{node.name}: inputs {node.inputs} (residual must be fused)"

    # One short simulation on the converted network.
    x = torch.randn(shape)
    sim = dcsim.Engine(net).simulate(x, steps=2)
    assert sim.pred.shape == (shape[0], 2) and sim.conf.shape == (shape[0], 2)
    assert sim.spikes.shape == (shape[0], len(lsq))
    assert bool((sim.pred >= 0).all() & (sim.pred < 10).all())
    assert sim.layers == list(lsq)


@pytest.mark.parametrize("u0_fraction", [0.0, 0.25, 1.0])
def test_u0_fraction_and_zmax(u0_fraction):
    model = _prepare(models.small_cnn(in_channels=1, bits=3), (4, 1, 8, 8))
    net = dcsim.convert(model, method="qffs", u0_fraction=u0_fraction, zmax=5)
    assert net.bits == 3
    for i in net.neurons:
        node = net.nodes[i]
        assert node.u0 == float(torch.tensor(u0_fraction * node.threshold, dtype=torch.float32))
        assert node.zmax == 5
    # the engine starts the membranes at u0
    engine = dcsim.Engine(net)
    state = engine.start(torch.randn(2, 1, 8, 8))
    for i in net.neurons:
        assert bool((state.u[i] == net.nodes[i].u0).all())


def test_batch_norm_folded_conv():
    model = _prepare(models.small_cnn(in_channels=3), (4, 3, 32, 32))
    net = dcsim.convert(model)
    conv = net.nodes[1]
    assert isinstance(conv, Conv) and conv.name == "0" and conv.bias is not None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ann = model[1](model[0](x))
        snn = conv.apply(x)
    print(f"folded conv max |diff| = {float((ann - snn).abs().max()):.3g}")
    torch.testing.assert_close(snn, ann, atol=FOLD_ATOL, rtol=1e-5)
    # A later conv too, and every conv in the net carries the folded bias.
    idx = [i for i, n in enumerate(net.nodes) if isinstance(n, Conv)]
    conv3 = net.nodes[idx[2]]
    h = torch.randn(2, conv3.weight.shape[1], 16, 16)
    with torch.no_grad():
        ann = model[int(conv3.name) + 1](model[int(conv3.name)](h))
    torch.testing.assert_close(conv3.apply(h), ann, atol=FOLD_ATOL, rtol=1e-5)


def test_batch_norm_folded_resnet_shortcut():
    model = _prepare(models.resnet18(), (3, 3, 32, 32))
    net = dcsim.convert(model)
    sc = next(n for n in net.nodes if n.name == "layers.2.shortcut.0")
    x = torch.randn(2, 64, 16, 16)
    with torch.no_grad():
        ann = model.layers[2].shortcut(x)
    torch.testing.assert_close(sc.apply(x), ann, atol=FOLD_ATOL, rtol=1e-5)


def test_batch_norm_folded_linear():
    model = _prepare(
        nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), LSQActivation(2), nn.Linear(6, 3)),
        (16, 3, 2, 2),
    )
    net = dcsim.convert(model)
    lin = net.nodes[2]
    assert isinstance(lin, Linear) and lin.name == "1"
    h = torch.randn(5, 12)
    with torch.no_grad():
        torch.testing.assert_close(lin.apply(h), model[2](model[1](h)), atol=FOLD_ATOL, rtol=1e-5)


def test_converted_network_owns_its_tensors():
    model = _prepare(models.small_cnn(in_channels=1), (4, 1, 8, 8))
    net = dcsim.convert(model)
    w = net.nodes[-1].weight.clone()
    with torch.no_grad():
        model[-1].weight.add_(1.0)
    assert torch.equal(net.nodes[-1].weight, w), "the network must not alias the model's parameters"


# ----------------------------------------------------------------- functional equivalence


def test_single_hidden_layer_exact_at_T_equals_Qp():
    """Conv (no BN) -> LSQ (dyadic step) -> Linear: with QCFS, u0 = th/2 and T = Qp, every hidden
    neuron's spike count equals its ANN quantization level, and S_T / T matches the logits."""
    torch.manual_seed(1)
    bits, s = 2, 0.25
    qp = 2**bits - 1
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), LSQActivation(bits), nn.Flatten(), nn.Linear(6 * 8 * 8, 5)
    ).eval()
    with torch.no_grad():
        model[1].step.fill_(s)
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        hidden = model[1](model[0](x))
        logits = model(x)
    sim = dcsim.Engine(dcsim.convert(model, method="qcfs")).simulate(x, steps=qp, record_sums=True)
    levels = (hidden / s).reshape(7, -1).sum(1).to(torch.int64)
    assert torch.equal(sim.spikes[:, 0], levels), (sim.spikes[:, 0].tolist(), levels.tolist())
    torch.testing.assert_close(sim.sums[:, -1] / qp, logits, atol=1e-4, rtol=1e-5)


def test_snn_approaches_ann_as_T_grows():
    model = _prepare(models.small_cnn(in_channels=1), (64, 1, 8, 8))
    torch.manual_seed(2)
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        logits = model(x)
    assert float(logits.std(0).mean()) > 1e-2, "degenerate model: constant logits"
    sim = dcsim.Engine(dcsim.convert(model, method="qcfs", u0_fraction=0.5)).simulate(x, steps=64, record_sums=True)
    err = {t: float((sim.sums[:, t - 1] / t - logits).abs().mean()) for t in (4, 16, 64)}
    print("mean |S_T/T - logits|:", err)
    assert err[64] < err[4], err


# -------------------------------------------------------------- native vs reference engine

ENGINE_CASES = [
    pytest.param(lambda: models.small_cnn(in_channels=1), (6, 1, 8, 8), 10, id="small_cnn"),
    pytest.param(lambda: models.resnet18(), (2, 3, 32, 32), 3, id="resnet18"),
]


@pytest.mark.parametrize("method", ["qcfs", "qffs"])
@pytest.mark.parametrize("build,shape,steps", ENGINE_CASES)
def test_engine_native_matches_reference(build, shape, steps, method):
    model = _prepare(build(), shape)
    net = dcsim.convert(model, method=method)
    torch.manual_seed(3)
    x = torch.randn(shape)
    readout = dcsim.Readout.paper(method, 2, steps)
    a = dcsim.Engine(net, backend="native").simulate(x, steps=steps, readout=readout, record_sums=True)
    b = dcsim.Engine(net, backend="reference").simulate(x, steps=steps, readout=readout, record_sums=True)
    assert bool((a.spikes > 0).any()), "no spikes at all: the comparison would be vacuous"
    for name in ("pred", "spikes", "sums"):
        ga, gb = getattr(a, name), getattr(b, name)
        print(f"{name}: max |diff| = {float((ga.double() - gb.double()).abs().max()):.3g}")
        assert torch.equal(ga, gb), f"{name} differs between native and reference engines ({method})"
    torch.testing.assert_close(a.conf, b.conf, atol=CONF_ATOL, rtol=0)
    assert a.neurons == b.neurons and a.layers == b.layers


@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_early_exit_native_matches_reference(method):
    model = _prepare(models.small_cnn(in_channels=1), (32, 1, 8, 8))
    net = dcsim.convert(model, method=method)
    torch.manual_seed(4)
    x = torch.randn(20, 1, 8, 8)
    readout = dcsim.Readout.paper(method, 2, 12)
    a = dcsim.Engine(net).early_exit(x, steps=12, readout=readout, threshold=0.3)
    b = dcsim.Engine(net, backend="reference").early_exit(x, steps=12, readout=readout, threshold=0.3)
    assert torch.equal(a.exit_step, b.exit_step) and torch.equal(a.pred, b.pred) and torch.equal(a.spikes, b.spikes)
    assert bool(((a.exit_step >= 1) & (a.exit_step <= 12)).all())


# ------------------------------------------------------------------------ conversion errors


def _small(tail: nn.Module | None = None, act: nn.Module | None = None) -> nn.Module:
    """conv -> bn -> <act> -> head(<tail>, flatten, fc); names: stem.{conv,bn,act}, head.*"""
    stem = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 4, 3, padding=1), bn=nn.BatchNorm2d(4), act=act if act is not None else LSQActivation(2)
        )
    )
    head = OrderedDict()
    if tail is not None:
        head["extra"] = tail
    head["pool"] = nn.AdaptiveAvgPool2d(1)
    head["flat"] = nn.Flatten()
    head["fc"] = nn.Linear(4, 3)
    return nn.Sequential(OrderedDict(stem=stem, head=nn.Sequential(head))).eval()


ERROR_CASES = [
    ("relu", lambda: _small(act=nn.ReLU()), ["stem.act", "ReLU", "LSQActivation"]),
    ("relu-after-lsq", lambda: _small(tail=nn.ReLU()), ["head.extra", "ReLU", "LSQActivation"]),
    ("maxpool", lambda: _small(tail=nn.MaxPool2d(2)), ["head.extra", "MaxPool2d"]),
    ("bn-after-lsq", lambda: _small(tail=nn.BatchNorm2d(4)), ["head.extra", "BatchNorm"]),
    ("no-lsq", lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 3)).eval(), ["LSQActivation"]),
    (
        "lsq-output",
        lambda: nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 4, 3), out=LSQActivation(2))).eval(),
        ["'out'", "quantized activation"],
    ),
    ("functional-relu", None, ["relu"]),
]


class _FunctionalRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = LSQActivation(2)
        self.fc = nn.Linear(4 * 36, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.act(self.conv(x))).flatten(1))


@pytest.mark.parametrize("case,build,words", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_conversion_errors_name_the_layer(case, build, words):
    model = build() if build is not None else _FunctionalRelu().eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConversionError) as info:
        dcsim.convert(model)
    msg = str(info.value)
    print(msg)
    for w in words:
        assert w in msg, f"{case}: {w!r} not in {msg!r}"
    assert isinstance(info.value, ValueError)
    assert _state_equal(model.state_dict(), before), f"{case}: the model was modified"


@pytest.mark.parametrize(
    "kwargs,word",
    [
        ({"method": "foo"}, "method"),
        ({"method": "QCFS"}, "method"),
        ({"u0_fraction": 2}, "u0_fraction"),
        ({"u0_fraction": -0.1}, "u0_fraction"),
        ({"zmax": 0}, "zmax"),
    ],
)
def test_convert_bad_arguments(kwargs, word):
    model = _prepare(models.small_cnn(in_channels=1), (4, 1, 8, 8))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=word):
        dcsim.convert(model, **kwargs)
    assert _state_equal(model.state_dict(), before)


class _BnChainShared(nn.Module):
    """conv -> bn1 -> {bn2 -> act_a, act_b}: bn1's output is used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)
        self.act_a = LSQActivation(2)
        self.act_b = LSQActivation(2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.bn1(self.conv(x))
        a = self.act_a(self.bn2(h))
        b = self.act_b(h)
        return self.fc(torch.flatten(self.pool(a) + self.pool(b), 1))


def test_batch_norm_chain_with_shared_output_is_faithful_or_rejected():
    model = _BnChainShared()
    with torch.no_grad():
        model.bn2.weight.fill_(3.0)
        model.bn2.bias.fill_(1.0)
    model.eval()
    try:
        net = dcsim.convert(model)
    except ConversionError:
        return
    act_b = next(net.nodes[i] for i in net.neurons if net.nodes[i].name == "act_b")
    feeding = net.nodes[act_b.inputs[0]]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(feeding.apply(x), model.bn1(model.conv(x)), atol=FOLD_ATOL, rtol=1e-5)


# ----------------------------------------------------------------------- engine bad input


@pytest.fixture(scope="module")
def engine() -> dcsim.Engine:
    return dcsim.Engine(dcsim.convert(_prepare(models.small_cnn(in_channels=1), (4, 1, 8, 8))))


@pytest.mark.parametrize("steps", [0, -3, 1.5, 2.0, "4", True, None])
def test_engine_bad_steps(engine, steps):
    with pytest.raises(ValueError, match="steps"):
        engine.simulate(torch.randn(2, 1, 8, 8), steps=steps)
    with pytest.raises(ValueError, match="steps"):
        engine.early_exit(torch.randn(2, 1, 8, 8), steps=steps, readout=dcsim.Readout(), threshold=0.5)


def test_engine_bad_dtype(engine):
    with pytest.raises(TypeError, match="float32"):
        engine.simulate(torch.randn(2, 1, 8, 8, dtype=torch.float64), steps=2)


def test_engine_wrong_channel_count(engine):
    with pytest.raises(ValueError, match="does not fit"):
        engine.simulate(torch.randn(2, 3, 8, 8), steps=2)


def test_engine_nan_input(engine):
    x = torch.randn(2, 1, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        engine.simulate(x, steps=2)
    with pytest.raises(ValueError, match="NaN"):
        engine.early_exit(x, steps=2, readout=dcsim.Readout(), threshold=0.5)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), "0.5", True, False, None])
def test_engine_early_exit_bad_threshold(engine, threshold):
    with pytest.raises(ValueError, match="threshold"):
        engine.early_exit(torch.randn(2, 1, 8, 8), steps=2, readout=dcsim.Readout(), threshold=threshold)


@pytest.mark.parametrize("backend", ["cuda", "Native", "", "ref"])
def test_engine_unknown_backend(backend):
    net = dcsim.convert(_prepare(models.small_cnn(in_channels=1), (4, 1, 8, 8)))
    with pytest.raises(ValueError, match="backend"):
        dcsim.Engine(net, backend=backend)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5])
def test_engine_bad_batch_size(engine, batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        engine.simulate(torch.randn(2, 1, 8, 8), steps=2, batch_size=batch_size)


def test_engine_empty_batch(engine):
    x = torch.zeros(0, 1, 8, 8)
    assert engine.early_exit(x, steps=2, readout=dcsim.Readout(), threshold=0.5).pred.shape == (0,)
    sim = engine.simulate(x, steps=2)
    assert sim.pred.shape == (0, 2)
