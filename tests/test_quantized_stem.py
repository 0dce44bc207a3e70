"""The quantized stem (``dcsim.convert(..., stem="quantized")``, ``--qcfs-stem quantized``): the first layer of
activations computed once per sample as the ANN's quantizer, the rest spiking."""

import dataclasses
import json

import pytest
import torch

import dcsim
from dcsim.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE
from dcsim.conversion.thresholds import clip_relus
from dcsim.models import init_whitening, resnet18, small_cnn, whitened_cnn, whitened_cnn_analog
from dcsim.models.lsq import lsq_quantize, set_quantization
from dcsim.sim.eager import EagerSimulator
from dcsim.sim.network import STEMS, Neuron, Quantize
from dcsim.sim.sops import image_macs
from dyadic import dyadic_inputs, dyadic_network

BUILDS = {
    "whitened_cnn_analog": (lambda: whitened_cnn_analog(width=4), (3, 16, 16)),
    "whitened_cnn": (lambda: whitened_cnn(width=4), (3, 16, 16)),
    "small_cnn": (lambda: small_cnn(num_classes=10, in_channels=1, width=8, bits=2), (1, 8, 8)),
    "resnet18": (lambda: resnet18(num_classes=10, width=4, bits=2), (3, 16, 16)),
}


def _trained_like(name: str, seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model ``name`` with LSQ steps set by a train-mode forward on random images, and such images."""
    build, shape = BUILDS[name]
    torch.manual_seed(seed)
    model = build()
    x = torch.randn(16, *shape)
    if hasattr(model, "whiten"):
        init_whitening(model, x)
    model.train()
    model(x)
    return model.eval(), x


def _step_levels(seed: int, n: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, s): inputs around and on the quantizer's levels and ties (x / s = k + 0.5), below 0 and above Qp."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand((), generator=g) + 0.1
    k = torch.randint(-2, 6, (n,), generator=g).float()
    ties = (k + 0.5) * s
    return torch.cat([torch.randn(n, generator=g) * 3 * s, ties, k * s]), s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantize_computes_the_lsq_forward_bit_for_bit(seed):
    x, s = _step_levels(seed)
    node = Quantize("q", (0,), step=s, levels=3)
    assert torch.equal(node.apply(x), lsq_quantize(x, s, 1.0, 3))
    even = Quantize("q", (0,), step=s, levels=3, rounding="half_even")
    assert torch.equal(even.apply(x), torch.round(torch.clamp(x / s, 0, 3)) * s)
    assert not torch.equal(even.apply(x), node.apply(x))  # the ties tell the two roundings apart


def test_quantize_counts_what_the_spiking_neuron_counts_at_t_qp():
    """At T = Qp steps a neuron with u0 = th/2 fed a constant current counts the quantizer's level (ties
    included): the quantized stem computes at once what the spiking stem's first neurons count by T = Qp. On
    dyadic values every float operation is exact."""
    qp, s = 3, 0.25
    th = qp * s
    current = torch.arange(-16, 64, dtype=torch.float32) / 64  # -0.25 .. 0.98, ties at (k + 0.5) s included
    u, count = torch.full_like(current, th / 2), torch.zeros_like(current)
    for _ in range(qp):
        u = u + current
        spike = (u >= th).float()
        u, count = u - spike * th, count + spike
    level = Quantize("q", (0,), step=torch.tensor(s), levels=qp).apply(current) / s
    assert torch.equal(level, count)


@pytest.mark.parametrize("name", list(BUILDS))
def test_the_first_layer_of_activations_becomes_quantizers(name):
    """The Quantize layers are exactly the spiking stem's neurons fed by image-fed currents; every other
    activation stays a neuron; the convs after the quantizers become image-fed."""
    model, _ = _trained_like(name, 0)
    spiking = dcsim.convert(model, method="qcfs")
    quantized = dcsim.convert(model, method="qcfs", stem="quantized")
    static = spiking.static_nodes()
    first = {n.name for i, n in enumerate(spiking.nodes) if isinstance(n, Neuron) and set(n.inputs) <= static}
    assert first and {n.name for n in quantized.nodes if isinstance(n, Quantize)} == first
    neurons = {spiking.nodes[i].name for i in spiking.neurons}
    assert {quantized.nodes[i].name for i in quantized.neurons} == neurons - first
    assert (spiking.stem, quantized.stem) == ("spiking", "quantized")
    assert len(quantized.static_nodes()) > len(static)
    spiking_macs = image_macs(spiking, tuple(BUILDS[name][1]))
    quantized_macs = image_macs(quantized, tuple(BUILDS[name][1]))
    assert set(spiking_macs) < set(quantized_macs)  # the convs after the quantizers: MACs once per sample


@pytest.mark.parametrize("name", ["whitened_cnn_analog", "small_cnn", "resnet18"])
def test_the_engine_feeds_the_stem_quantizers_to_the_first_neurons(name):
    """The engine's image-fed values: each Quantize layer holds the LSQ quantizer of its input current, and
    the layers after it take that (checked against the nodes applied one by one)."""
    model, x = _trained_like(name, 1)
    net = dcsim.convert(model, method="qcfs", stem="quantized")
    engine = dcsim.Engine(net)
    state = engine.start(x)
    values: dict[int, torch.Tensor] = {}
    for i in sorted(net.static_nodes()):
        node = net.nodes[i]
        if i == 0:
            values[i] = x
        elif isinstance(node, Quantize):
            values[i] = lsq_quantize(values[node.inputs[0]], node.step, 1.0, node.levels)
        else:
            values[i] = engine._apply(node, *(values[j] for j in node.inputs))
    first = net.neurons[0]
    assert set(net.nodes[first].inputs) <= set(state.static)  # the first neurons take image-fed values
    assert all(torch.equal(state.static[i], values[i]) for i in state.static)


@pytest.mark.parametrize("seed", [3, 4])
def test_native_engine_equals_reference_with_the_quantized_stem(seed):
    torch.manual_seed(seed)
    model = whitened_cnn_analog(width=4)
    init_whitening(model, torch.randn(32, 3, 16, 16))
    with torch.no_grad():
        model.whiten.weight.copy_(torch.round(model.whiten.weight * 4) / 4)
    net = dyadic_network(model, "qcfs", (3, 16, 16), seed, stem="quantized")
    assert net.stem == "quantized"
    x = dyadic_inputs(6, (3, 16, 16), seed + 7)
    a = dcsim.Engine(net).simulate(x, 9, record_sums=True)
    b = dcsim.Engine(net, backend="reference").simulate(x, 9, record_sums=True)
    assert torch.equal(a.spikes, b.spikes) and torch.equal(a.pred, b.pred) and torch.equal(a.sums, b.sums)
    assert int(a.spikes.sum()) > 0
    early = dcsim.Engine(net).early_exit(x, 9, dcsim.Readout.paper("qcfs", 2, 9), threshold=0.5)
    full = dcsim.Engine(net, backend="reference").simulate(x, 9, dcsim.Readout.paper("qcfs", 2, 9))
    for row in range(len(x)):  # each exit is where the full run's score first passes th_c
        t = int(early.exit_step[row])
        assert int(early.pred[row]) == int(full.pred[row, t - 1])
    eager = EagerSimulator(net)  # the official-style reference `dcsim bench` times at batch 1
    for row in range(len(x)):
        assert eager.run(x[row : row + 1], 9, dcsim.Readout.paper("qcfs", 2, 9), 0.5) == (
            int(early.pred[row]),
            int(early.exit_step[row]),
        )


def test_operations_are_counted_with_the_quantized_stem():
    model, x = _trained_like("whitened_cnn_analog", 2)
    net = dcsim.convert(model, method="qcfs", stem="quantized")
    sim = dcsim.Engine(net, count_ops=True).simulate(x, 5)
    assert sim.sops is not None and int(sim.sops.sum()) > 0


def test_refusals_name_what_is_wrong():
    model, _ = _trained_like("whitened_cnn_analog", 0)
    with pytest.raises(ValueError, match="stem 'quantized' applies to method 'qcfs' only"):
        dcsim.convert(model, method="qffs", stem="quantized")
    with pytest.raises(ValueError, match="stem must be one of"):
        dcsim.convert(model, method="qcfs", stem="analog")
    net = dcsim.convert(model, method="qcfs", stem="quantized")
    neuron = net.neurons[0]
    nodes = list(net.nodes)  # a quantizer fed by spikes is not a stem
    nodes[neuron + 1] = Quantize(nodes[neuron + 1].name, (neuron,), step=torch.tensor(0.5), levels=3)
    with pytest.raises(ValueError, match=rf"layer {neuron + 1} .*\(Quantize\) takes spikes"):
        dataclasses.replace(net, nodes=nodes)
    with pytest.raises(ValueError, match="QCFS only"):
        dataclasses.replace(net, method="qffs")
    for bad, match in (
        ({"levels": 0}, "levels"),
        ({"rounding": "down"}, "rounding"),
        ({"step": torch.tensor(0.0)}, "the step"),
    ):
        with pytest.raises(ValueError, match=rf"layer 'q' \(Quantize\): {match}"):
            Quantize("q", (0,), **({"step": torch.tensor(0.5)} | bad))
    relu, x = _trained_like("small_cnn", 0)  # a float ReLU model's thresholds: unquantized clips
    set_quantization(relu, False)
    normalized = clip_relus(relu, x, percentile=99.9)
    with pytest.raises(dcsim.ConversionError, match="unquantized clip in the stem"):
        dcsim.convert(normalized, method="qcfs", stem="quantized")


def test_a_model_with_only_first_layer_activations_is_refused():
    from dcsim.models.lsq import LSQActivation

    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), LSQActivation(bits=2), torch.nn.Flatten(), torch.nn.Linear(144, 3)
    )
    model.train()
    model(torch.randn(4, 1, 8, 8))
    with pytest.raises(dcsim.ConversionError, match="no layer is left to spike"):
        dcsim.convert(model.eval(), method="qcfs", stem="quantized")


def test_qcfs_stem_option_end_to_end(digits_checkpoint, tmp_path, run_cli):
    """trace and eval with --qcfs-stem quantized; a trace of the other stem is refused, naming the flag."""
    trace = tmp_path / "quantized.npz"
    stem = ["--qcfs-stem", "quantized"]
    r = run_cli(["trace", digits_checkpoint, "--method", "qffs", "--steps", "4", *stem, "--out", trace])
    assert r.code == EXIT_USAGE and "--qcfs-stem applies to --method qcfs only" in r.err and not trace.exists()
    r = run_cli(["trace", digits_checkpoint, "--method", "qcfs", "--steps", "6", *stem, "--out", trace])
    assert r.code == EXIT_OK and dcsim.analysis.load_trace(trace).meta["stem"] == "quantized"
    r = run_cli(["eval", digits_checkpoint, "--method", "qcfs", "--trace", trace])
    assert r.code == EXIT_ERROR and "recorded with the 'quantized' QCFS stem" in r.err and "--qcfs-stem" in r.err
    out = tmp_path / "e.json"
    assert run_cli(["eval", digits_checkpoint, "--method", "qcfs", "--trace", trace, *stem, "--json", out]).code == 0
    result = json.loads(out.read_text())
    assert result["steps"] == 6 and 0 < result["accuracy"] <= 1
    spiking = tmp_path / "spiking.npz"
    assert run_cli(["trace", digits_checkpoint, "--method", "qcfs", "--steps", "6", "--out", spiking]).code == EXIT_OK
    assert dcsim.analysis.load_trace(spiking).meta["stem"] == "spiking"
    r = run_cli(["eval", digits_checkpoint, "--method", "qcfs", "--trace", spiking, *stem])
    assert r.code == EXIT_ERROR and "recorded with the 'spiking' QCFS stem" in r.err


def test_report_converts_qcfs_with_the_stem_asked_for():
    """The report's QCFS runs (dynamic_confidence) take the stem: the trace records it, and the runs' MACs per
    inference include the convs after the quantizers."""
    from dcsim.workflows.dynamic_confidence import dynamic_confidence
    from dcsim.workflows.options import ReportOptions

    with pytest.raises(ValueError, match="--qcfs-stem must be one of"):
        ReportOptions(qcfs_stem="analog")
    model, x = _trained_like("small_cnn", 3)
    y = torch.randint(0, 10, (len(x),))
    splits = {"val": (x, y), "test": (x, y)}
    runs = {stem: dynamic_confidence(model, "qcfs", splits, 8, 1.0, steps=4, stem=stem) for stem in STEMS}
    assert {stem: r["trace"].meta["stem"] for stem, r in runs.items()} == {s: s for s in STEMS}
    macs = {stem: r["energy"]["runs"]["no_dc"]["macs_per_inference"] for stem, r in runs.items()}
    assert macs["quantized"] > macs["spiking"] > 0
