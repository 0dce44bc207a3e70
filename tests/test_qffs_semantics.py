"""QFFS semantics: "settle" (image and biases drive the first Qp steps, then the network settles)
against "constant" (image and biases at every step), on exact (dyadic) networks."""

import dataclasses

import pytest
import torch
from torch import nn

import dcsim
from dcsim.models.lsq import LSQActivation
from dcsim.sim.eager import EagerSimulator
from dcsim.sim.network import Conv, Input, Linear, Neuron
from dyadic import dyadic_inputs, resnet, small


def settled_levels(net: dcsim.SpikingNetwork, x: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Where a settle-semantics network must end, computed without simulating: each layer's total
    input over the drive window is D * (W a + b) with a = the quantized ANN activation, so each
    neuron settles at Z = clip(floor((u0 + total) / th), 0, Zmax), the quantized ANN's level
    (half-up rounding), and S_T = D * logits. Float64 (exact on dyadic networks).
    Returns ({neuron node: Z int32 [n, ...]}, S float64 [n, K])."""
    d = net.drive_steps
    vals: list[torch.Tensor] = []
    levels: dict[int, torch.Tensor] = {}
    for i, node in enumerate(net.nodes):
        if isinstance(node, Input):
            vals.append(x.double() * d)
        elif isinstance(node, Neuron):
            total = sum(vals[j] for j in node.inputs)
            z = torch.floor((total + node.u0) / node.threshold).clamp(0, node.zmax)
            levels[i] = z.to(torch.int32)
            vals.append(z * node.threshold)
        elif isinstance(node, (Conv, Linear)):
            unbiased = dataclasses.replace(node, weight=node.weight.double(), bias=None)
            v = unbiased.apply(*(vals[j] for j in node.inputs))
            if node.bias is not None:
                v = v + d * node.bias.double().reshape(1, -1, *([1] * (v.dim() - 2)))
            vals.append(v)
        else:
            vals.append(node.apply(*(vals[j] for j in node.inputs)))
    return levels, vals[-1]


@pytest.mark.parametrize(
    ("build", "seed"), [(small, 3), (small, 4), (resnet, 3)], ids=["small_cnn-3", "small_cnn-4", "resnet18-3"]
)
def test_settle_converges_to_the_quantized_ann_exactly(build, seed):
    net, shape = build("qffs", seed=seed)
    assert net.semantics == "settle" and net.drive_steps == 3
    x = dyadic_inputs(6, shape, seed)
    levels, logits_total = settled_levels(net, x)
    engine = dcsim.Engine(net)
    state = engine.start(x)
    bound = net.drive_steps + 3 * len(net.neurons) * 3  # each layer settles within Zmax steps of its last input
    readout = dcsim.Readout.paper("qffs", 2, bound)
    for t in range(1, bound + 1):
        before = sum(int(state.counts[i].sum()) for i in net.neurons)
        engine.step(state, bound, readout)
        for i in net.neurons:  # the invariant 0 <= Z <= Zmax at every step
            assert int(state.z[i].min()) >= 0 and int(state.z[i].max()) <= net.nodes[i].zmax
        if t > net.drive_steps and sum(int(state.counts[i].sum()) for i in net.neurons) == before:
            break  # a step without drive and without spikes: no current anywhere, a fixed point
    else:
        pytest.fail(f"not settled after {bound} steps")
    print(f"{build.__name__}: settled after {t} steps")
    for i in net.neurons:
        assert torch.equal(state.z[i].contiguous(), levels[i]), net.nodes[i].name
    assert torch.equal(state.sums.double(), logits_total)
    # once settled nothing moves: more steps change neither counts nor sums
    sums, counts = state.sums.clone(), {i: state.counts[i].clone() for i in net.neurons}
    for _ in range(4):
        engine.step(state, bound, readout)
    assert torch.equal(state.sums, sums)
    assert all(torch.equal(state.counts[i], counts[i]) for i in net.neurons)


def test_settle_and_constant_agree_up_to_T_equals_Qp_and_differ_after():
    net, shape = small("qffs", seed=5)
    constant = dataclasses.replace(net, drive_steps=None)
    x = dyadic_inputs(16, shape, 5)
    a = dcsim.Engine(net).simulate(x, 8, record_sums=True)
    b = dcsim.Engine(constant).simulate(x, 8, record_sums=True)
    assert torch.equal(a.sums[:, :3], b.sums[:, :3])
    assert not torch.equal(a.sums[:, 3:], b.sums[:, 3:])


def test_exact_at_T_equals_Qp_on_constant_input_under_both_semantics():
    """Conv -> LSQ -> Linear, u0 = th/2, T = Qp: spike counts are the ANN's levels and S_T / Qp its logits."""
    torch.manual_seed(1)
    s, qp = 0.25, 3
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), LSQActivation(2), nn.Flatten(), nn.Linear(6 * 8 * 8, 5)).eval()
    with torch.no_grad():
        model[1].step.fill_(s)
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        levels = (model[1](model[0](x)) / s).reshape(7, -1).sum(1).to(torch.int64)
        logits = model(x)
    for semantics in ("settle", "constant"):
        net = dcsim.convert(model, method="qffs", semantics=semantics)
        sim = dcsim.Engine(net).simulate(x, steps=qp, record_sums=True)
        assert torch.equal(sim.spikes[:, 0], levels), semantics
        torch.testing.assert_close(sim.sums[:, -1] / qp, logits, atol=1e-4, rtol=1e-5)
        # beyond Qp: settle keeps S_T / Qp at the logits, constant keeps adding the input
        longer = dcsim.Engine(net).simulate(x, steps=2 * qp, record_sums=True)
        if semantics == "settle":
            torch.testing.assert_close(longer.sums[:, -1] / qp, logits, atol=1e-4, rtol=1e-5)
        else:
            assert float((longer.sums[:, -1] / qp - logits).abs().max()) > 1e-2


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_engine_paths_agree_on_settle(backend, chunk):
    """simulate (uniform drive, host-known), early exit, graphs runner (per-row masks) and the
    official-style eager simulator give the same results across the drive boundary."""
    net, shape = resnet("qffs", seed=3)
    x = dyadic_inputs(5, shape, 6)
    steps = 7
    engine = dcsim.Engine(net, backend=backend)
    readout = dcsim.Readout.paper("qffs", 2, steps)
    ref = dcsim.Engine(net, backend="reference").simulate(x, steps, readout)
    sim = engine.simulate(x, steps, readout, chunk=chunk)
    assert torch.equal(sim.pred, ref.pred) and torch.equal(sim.spikes, ref.spikes)
    torch.testing.assert_close(sim.conf, ref.conf, rtol=0, atol=1e-5)
    values = torch.unique(sim.conf[:, 4])  # midway between two confidences: no sample sits on th_c, where
    k = len(values) // 2  # the eager baseline's rounding could decide differently
    threshold = float(values[max(k - 1, 0) : k + 1].mean())
    live = engine.early_exit(x, steps, readout, threshold, chunk=chunk)
    graphed = engine.early_exit(x, steps, readout, threshold, chunk=chunk, graphs=True)
    for r in (live, graphed):
        exit_step = r.exit_step - 1
        assert torch.equal(r.pred, sim.pred[torch.arange(len(x)), exit_step])
    assert torch.equal(live.exit_step, graphed.exit_step) and torch.equal(live.spikes, graphed.spikes)
    eager = EagerSimulator(net)
    for i in range(len(x)):
        assert eager.run(x[i : i + 1], steps, readout, threshold) == (int(live.pred[i]), int(live.exit_step[i]))


def test_stream_with_staggered_starts_equals_isolated_runs_on_settle():
    """Streaming puts rows in the drive window and rows past it in one batch (per-row masks)."""
    from dcsim.sim.continuous import stream

    net, shape = small("qffs", seed=7)
    x = dyadic_inputs(23, shape, 7)
    steps = 6
    engine = dcsim.Engine(net)
    readout = dcsim.Readout.paper("qffs", 2, steps)
    sim = engine.simulate(x, steps, readout)
    threshold = float(sim.conf[:, 2].median())
    alone = engine.early_exit(x, steps, readout, threshold, batch_size=1)
    got = {r.id: r for r in stream(engine, iter(x), slots=4, steps=steps, readout=readout, threshold=threshold)}
    assert sorted(got) == list(range(len(x)))
    for i in range(len(x)):
        assert (got[i].pred, got[i].exit_step) == (int(alone.pred[i]), int(alone.exit_step[i])), i


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(method="qffs", semantics="bogus"), "semantics must be one of"),
        (dict(method="qcfs", semantics="settle"), "QFFS only"),
        (dict(method="qffs", semantics="constant", drive_steps=3), "drive_steps applies"),
    ],
)
def test_bad_semantics_are_clear_errors(kwargs, words):
    model = dcsim.models.small_cnn(in_channels=1, width=4)
    with pytest.raises(ValueError, match=words):
        dcsim.convert(model, **kwargs)


def test_network_rejects_settle_for_qcfs_and_bad_drive_steps():
    net, _ = small("qcfs")
    with pytest.raises(ValueError, match="QFFS only"):
        dataclasses.replace(net, drive_steps=3)
    qffs, _ = small("qffs")
    with pytest.raises(ValueError, match="drive_steps must be an integer"):
        dataclasses.replace(qffs, drive_steps=0)


def test_mixed_bit_widths_need_explicit_drive_steps():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        LSQActivation(2),
        nn.Conv2d(4, 4, 3),
        LSQActivation(3),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )
    with torch.no_grad():
        model(torch.rand(2, 1, 8, 8))  # the LSQ step sizes initialised from data
    with pytest.raises(dcsim.ConversionError, match="not one Qp; pass drive_steps"):
        dcsim.convert(model, method="qffs")
    assert dcsim.convert(model, method="qffs", drive_steps=7).drive_steps == 7
    assert dcsim.convert(model, method="qffs", semantics="constant").semantics == "constant"
