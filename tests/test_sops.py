"""Synaptic operations, MACs and energy (dcsim.sim.sops, dcsim.analysis.energy): exact against brute-force counts.

The brute force runs every spike-fed layer on the |spike| indicator of each recorded step with all-ones
weights (pooling as sums) and sums its output: the accumulates those spikes trigger, counted forward, one
step at a time. The engine counts the same thing as |spike| x a fan-out map computed once (the transpose).
Integers, so equal exactly.
"""

import math
import types
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dcsim
from dcsim.analysis import energy
from dcsim.sim import ops, reference, sops
from dcsim.sim.network import AdaptiveAvgPool, Add, AvgPool, Conv, Flatten, Input, Linear, Neuron, Node, SpikingNetwork
from dyadic import resnet, small

BACKENDS = ["native", "reference"]


def _w(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.round(torch.randn(shape, generator=g) * 24) / 64


def mixed_net(method: str, seed: int) -> tuple[SpikingNetwork, tuple[int, int, int]]:
    """Every case the counter handles: a grouped strided conv, a 1x1 strided shortcut conv into a residual add,
    an identity shortcut into a neuron, overlapping average pooling (ceil mode, padding) before a dilated conv,
    adaptive pooling, flatten and a linear output. Random odd input sizes exercise the borders."""
    g = torch.Generator().manual_seed(seed)
    h, w = (int(v) for v in torch.randint(7, 12, (2,), generator=g))
    nodes: list[Node] = [
        Input("in", ()),
        Conv("c1", (0,), _w(g, 8, 3, 3, 3), _w(g, 8), padding=(1, 1)),
        Neuron("n1", (1,), 0.5, 0.25),
        Conv("c2", (2,), _w(g, 8, 4, 3, 3), _w(g, 8), stride=(2, 2), padding=(1, 1), groups=2),
        Neuron("n2", (3,), 0.25, 0.125),
        Conv("c3", (4,), _w(g, 8, 8, 3, 3), None, padding=(1, 1)),
        Conv("down", (2,), _w(g, 8, 8, 1, 1), None, stride=(2, 2)),
        Add("add", (5, 6)),
        Neuron("n3", (7,), 0.5, 0.25),
        Conv("c4", (8,), _w(g, 8, 8, 3, 3), _w(g, 8), padding=(1, 1)),
        Neuron("n4", (9, 8), 0.5, 0.25),  # identity shortcut: n3's spikes reach n4 directly
        AvgPool("pool", (10,), kernel=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True),
        Conv("c5", (11,), _w(g, 6, 8, 3, 3), _w(g, 6), padding=(2, 2), dilation=(2, 2)),
        Neuron("n5", (12,), 0.25, 0.125),
        AdaptiveAvgPool("gap", (13,), (2, 1)),
        Flatten("flat", (14,)),
        Linear("fc", (15,), _w(g, 5, 12), _w(g, 5)),
    ]
    return SpikingNetwork(nodes, method, 2), (3, h, w)


def _inputs(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.round(torch.randn((n, *shape), generator=g) * 16) / 16


NETWORKS = {
    "mixed": lambda method, seed: mixed_net(method, seed),
    "small": lambda method, seed: small(method, seed),
    "resnet": lambda method, seed: resnet(method, 3),
}


class Recorder:
    """A backend that records each neuron layer's spikes (sign of out) in call order; the rest as ``base``.
    Attached with :meth:`attach`."""

    def __init__(self, base: types.ModuleType) -> None:
        self.base = base
        self.spikes: list[torch.Tensor] = []

    @staticmethod
    def attach(engine: dcsim.Engine) -> "Recorder":
        """A recorder in place of engine's kernels, with the chunk programs off: they call the kernels past it
        (tests/test_program.py holds their results, SOPs included, to the path recorded here)."""
        rec = Recorder(engine.kernels)
        engine.kernels = rec
        engine._programmed = False
        return rec

    def neuron_step(self, *args, **kwargs) -> None:
        self.base.neuron_step(*args, **kwargs)
        self.spikes.append(torch.sign(args[4]).contiguous())

    def neuron_steps(self, *args, **kwargs) -> None:  # the engine's k steps of a layer in one call (CPU): out [k, ...]
        self.base.neuron_steps(*args, **kwargs)
        self.spikes.extend(torch.sign(out).contiguous() for out in args[4])

    def __getattr__(self, name: str):
        return getattr(self.base, name)


def _ones_forward(node: Node, *xs: torch.Tensor) -> torch.Tensor:
    """node with all-ones weights, no bias, pooling as window sums (the brute force's own definition)."""
    if isinstance(node, Conv):
        return F.conv2d(xs[0], torch.ones_like(node.weight, dtype=torch.float64), None, node.stride, node.padding,
                        node.dilation, node.groups)  # fmt: skip
    if isinstance(node, Linear):
        return xs[0] @ torch.ones_like(node.weight, dtype=torch.float64).T
    if isinstance(node, AvgPool):  # window sums: a depthwise all-ones conv on the zero-padded input, cut to size
        x = xs[0]
        (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
        oh, ow = F.avg_pool2d(x, node.kernel, node.stride, node.padding, node.ceil_mode).shape[-2:]
        padded = F.pad(x, (pw, pw + kw, ph, ph + kh))
        ones = torch.ones((x.shape[1], 1, kh, kw), dtype=x.dtype)
        return F.conv2d(padded, ones, None, (sh, sw), groups=x.shape[1])[..., :oh, :ow]
    if isinstance(node, AdaptiveAvgPool):  # window sums, window by window
        x = xs[0]
        h, w = x.shape[-2:]
        oh, ow = node.output_size
        out = x.new_zeros((*x.shape[:2], oh, ow))
        for i in range(oh):
            for j in range(ow):
                hs, he = (i * h) // oh, math.ceil((i + 1) * h / oh)
                ws, we = (j * w) // ow, math.ceil((j + 1) * w / ow)
                out[..., i, j] = x[..., hs:he, ws:we].sum(dim=(-2, -1))
        return out
    if isinstance(node, Flatten):
        return xs[0].flatten(1)
    if isinstance(node, Add):
        return sum(xs)
    raise AssertionError(type(node))


def brute_force_sops(net: SpikingNetwork, layer: int, spikes: torch.Tensor) -> torch.Tensor:
    """Accumulates the spikes [n, ...] of neuron node ``layer`` trigger, per sample (int64 [n])."""
    values = {layer: spikes.abs().double()}
    total = torch.zeros(spikes.shape[0], dtype=torch.float64)
    for j in range(layer + 1, len(net.nodes)):
        node = net.nodes[j]
        if not any(k in values for k in node.inputs):
            continue
        ref = next(values[k] for k in node.inputs if k in values)
        args = [values.get(k, torch.zeros_like(ref)) for k in node.inputs]
        if isinstance(node, Neuron):
            total += sum(a.flatten(1).sum(1) for a in args)
            continue
        out = _ones_forward(node, *args)
        if isinstance(node, (Conv, Linear)) or j == net.output:
            total += out.flatten(1).sum(1)
        else:
            values[j] = out
    return total.round().to(torch.int64)


def recorded_run(
    engine: dcsim.Engine, x: torch.Tensor, steps: int, readout: dcsim.Readout | None = None
) -> tuple[dcsim.Simulation, torch.Tensor]:
    """A full-length run and the brute-force SOPs per sample, step and layer, cumulative: int64 [N, T, L]."""
    rec = Recorder.attach(engine)
    try:
        sim = engine.simulate(x, steps, readout)
    finally:
        engine.kernels = rec.base
    layers = engine.neurons
    assert len(rec.spikes) == steps * len(layers)
    per_step = torch.stack(
        [
            torch.stack(
                [brute_force_sops(engine.net, i, rec.spikes[t * len(layers) + k]) for k, i in enumerate(layers)], 1
            )
            for t in range(steps)
        ],
        dim=1,
    )
    return sim, per_step.cumsum(dim=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_sops_equal_brute_force(backend, method, name):
    seed = 3  # fixed (deterministic suite); the dyadic ResNet-18 of seed 3 is built once per process
    net, shape = NETWORKS[name](method, seed)
    engine = dcsim.Engine(net, backend=backend, channels_last=name == "mixed", count_ops=True)
    x = _inputs(int(np.random.default_rng(seed).integers(3, 9)), shape, seed + 1)
    steps = 6 if method == "qffs" else 9
    sim, cum = recorded_run(engine, x, steps)
    assert sim.sops is not None and sim.sops.dtype == torch.int64
    assert torch.equal(sim.sops, cum[:, -1]), f"seed {seed}"
    assert int(sim.sops.sum()) > 0
    if method == "qffs":  # negative spikes happened and count as operations
        assert int((sim.spikes > 0).sum()) > 0
    assert sim.macs is not None and torch.equal(
        sim.macs, torch.full((len(x),), sum(sops.image_macs(net, shape).values()))
    )


@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_qffs_negative_spikes_count(method):
    """On a layer whose spikes include -1 (QFFS), the count is sum |s| x fan-out, not sum s x fan-out."""
    net, shape = mixed_net(method, 5)
    engine = dcsim.Engine(net, backend="reference", count_ops=True)
    rec = Recorder.attach(engine)
    engine.simulate(_inputs(6, shape, 6), 6, dcsim.Readout())
    negative = sum(int((s < 0).sum()) for s in rec.spikes)
    assert (negative > 0) == (method == "qffs")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_early_exit_counts_stop_at_exit_step(backend, method):
    seed = 11  # fixed: the suite is deterministic
    net, shape = mixed_net(method, seed)
    engine = dcsim.Engine(net, backend=backend, count_ops=True)
    x = _inputs(11, shape, seed + 2)
    steps = 6 if method == "qffs" else 9
    readout = dcsim.Readout.paper(method, 2, steps)
    sim, cum = recorded_run(engine, x, steps, readout)
    for c in np.quantile(sim.conf.numpy(), [0.2, 0.5, 0.8]).tolist():
        for kwargs in (
            {},
            dict(batch_size=3, chunk=2),
            dict(compact_fraction=1.0),
            dict(graphs=True, batch_size=4),
        ):
            res = engine.early_exit(x, steps, readout, c, **kwargs)
            want = cum[torch.arange(len(x)), res.exit_step - 1]
            assert res.sops is not None and torch.equal(res.sops, want), (c, kwargs, seed)
            assert torch.equal(res.macs, sim.macs)
        # a sample stops before T exactly when its confidence passes th_c (strictly) at an earlier step
        assert torch.equal(res.exit_step < steps, (sim.conf[:, :-1] > c).any(1))


def test_counting_off_changes_nothing_else():
    net, shape = mixed_net("qcfs", 7)
    x = _inputs(5, shape, 8)
    on, off = dcsim.Engine(net, count_ops=True), dcsim.Engine(net)
    a, b = on.simulate(x, 7), off.simulate(x, 7)
    assert b.sops is None and b.macs is None
    assert torch.equal(a.pred, b.pred) and torch.equal(a.spikes, b.spikes)
    r = off.early_exit(x, 7, dcsim.Readout(), 0.5)
    assert r.sops is None and r.macs is None


def test_fanout_of_a_conv_equals_a_loop_count():
    """The fan-out map of a layer feeding one conv, against the conv's taps counted one by one."""
    rng = np.random.default_rng(5)
    for _ in range(4):
        cin_g, groups, cout_g = (int(v) for v in rng.integers(1, 4, 3))
        kh, kw, sh, sw, dh, dw = (int(v) for v in rng.integers(1, 4, 6))
        ph, pw = int(rng.integers(0, kh + 1)), int(rng.integers(0, kw + 1))
        h, w = (int(v) for v in rng.integers(max(kh, kw) * max(dh, dw), 12, 2))
        cin, cout = cin_g * groups, cout_g * groups
        conv = Conv("c", (1,), torch.zeros(cout, cin_g, kh, kw), None, (sh, sw), (ph, pw), (dh, dw), groups)
        net = SpikingNetwork([Input("in", ()), Neuron("n", (0,)), conv, Flatten("f", (2,))], "qcfs", 2)
        oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        want = torch.zeros((cin, h, w), dtype=torch.int64)
        for oc in range(cout):
            grp = oc // cout_g
            for oy in range(oh):
                for ox in range(ow):
                    for ic in range(grp * cin_g, (grp + 1) * cin_g):
                        for ky in range(kh):
                            for kx in range(kw):
                                iy, ix = oy * sh - ph + ky * dh, ox * sw - pw + kx * dw
                                if 0 <= iy < h and 0 <= ix < w:
                                    want[ic, iy, ix] += 1
        assert torch.equal(sops.fanout_map(net, 1, (cin, h, w)), want)


@pytest.mark.parametrize("name", ["mixed", "small"])
def test_fanout_equals_one_hot_brute_force(name):
    """Every entry of every fan-out map: the brute force run on a one-hot spike map."""
    net, shape = NETWORKS[name]("qcfs", 9)
    shapes = net.shapes(shape)
    for i, fan in sops.fanout_maps(net, shape).items():
        m = math.prod(shapes[i])
        if m > 600:
            continue
        eye = torch.eye(m, dtype=torch.float64).reshape(m, *shapes[i])
        assert torch.equal(brute_force_sops(net, i, eye), fan.flatten()), net.nodes[i].name


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_kernel_sops_equal_reference(method, channels_last):
    """The native neuron step's synaptic-operation sums against the reference, on random shapes and fan-outs."""
    g = torch.Generator().manual_seed(17 + 2 * channels_last + (method == "qffs"))
    n, c, h, w = (int(v) for v in torch.randint(1, 9, (4,), generator=g))
    h *= 23  # some rows span several CPU blocks
    lay = (lambda t: t.contiguous(memory_format=torch.channels_last)) if channels_last else (lambda t: t)
    x = lay(torch.randn((n, c, h, w), generator=g))
    fan = lay(torch.randint(0, 5000, (1, c, h, w), generator=g, dtype=torch.int32))
    outs = []
    for backend in (ops, reference):
        u = lay(torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(1)))
        z = lay(torch.randint(0, 3, (n, c, h, w), generator=torch.Generator().manual_seed(2), dtype=torch.int32))
        out, counts, acc = (
            torch.empty_like(u),
            torch.zeros(n, dtype=torch.int64),
            torch.full((n,), 7, dtype=torch.int64),
        )
        backend.neuron_step(method, x, u, z, out, counts, 0.5, 3, fanout=fan, sops=acc)
        outs.append((out, counts, acc))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert torch.equal(outs[0][2], outs[1][2])
    want = 7 + ((outs[1][0] != 0).long() * fan.long()).flatten(1).sum(1)
    assert torch.equal(outs[0][2], want)


@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_kernel_sops_at_the_largest_fanout_do_not_overflow(method):
    """Every neuron spikes with the largest fan-out the kernels take: the sums (int32 per run of outputs inside the
    CPU kernel) stay exact across runs and blocks."""
    from dcsim.sim.sops import FANOUT_MAX

    n, m = 2, 40000  # several runs of 1024 outputs and several blocks of 2^14
    x, u = torch.full((n, m), 10.0), torch.zeros(n, m)
    z = torch.zeros(n, m, dtype=torch.int32) if method == "qffs" else None
    out, counts, acc = torch.empty(n, m), torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64)
    fan = torch.full((1, m), FANOUT_MAX, dtype=torch.int32)
    ops.neuron_step(method, x, u, z, out, counts, 0.5, 3, fanout=fan, sops=acc)
    assert torch.equal(counts, torch.full((n,), m)) and torch.equal(acc, torch.full((n,), m * FANOUT_MAX))


def test_kernel_checks_fanout_arguments():
    u = torch.zeros(2, 3, 4, 4)
    args = ("qcfs", u.clone(), u, None, torch.empty_like(u), torch.zeros(2, dtype=torch.int64), 1.0, 3)
    fan = torch.ones(1, 3, 4, 4, dtype=torch.int32)
    for backend in (ops, reference):
        with pytest.raises(ValueError, match="fanout and sops"):
            backend.neuron_step(*args, fanout=fan)
    with pytest.raises(TypeError, match="fanout"):
        ops.neuron_step(*args, fanout=fan.long(), sops=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="fanout"):
        ops.neuron_step(*args, fanout=torch.ones(2, 3, 4, 4, dtype=torch.int32), sops=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="layout"):
        cl = fan.contiguous(memory_format=torch.channels_last)
        ops.neuron_step(*args, fanout=cl, sops=torch.zeros(2, dtype=torch.int64))


def test_macs():
    net, shape = mixed_net("qcfs", 3)
    shapes = net.shapes(shape)
    macs = sops.layer_macs(net, shape)
    assert macs[3] == math.prod(shapes[3]) * 4 * 9  # grouped: Cin / groups = 4 per output
    assert macs[16] == 12 * 5
    assert sops.image_macs(net, shape) == {1: math.prod(shapes[1]) * 3 * 9}
    assert sops.ann_macs(net, shape) == sum(macs.values())


class Weird(Flatten):
    """A layer type the counter does not know (a subclass may compute anything)."""


def test_unknown_or_mixed_layers_are_errors():
    net, shape = mixed_net("qcfs", 1)
    nodes = list(net.nodes)
    nodes[15] = Weird("flat", (14,))
    bad = replace(net, nodes=nodes)
    with pytest.raises(ValueError, match="does not know layer 15 'flat' of type Weird"):
        dcsim.Engine(bad, count_ops=True)
    with pytest.raises(ValueError, match="Weird"):
        sops.layer_macs(bad, shape)
    dcsim.Engine(bad, count_ops=False)  # without counting it runs
    mixed = [
        *net.nodes[:2],
        Neuron("n1", (1,)),
        Add("mix", (1, 2)),
        Conv("c", (3,), torch.ones(2, 8, 1, 1)),
        Flatten("f", (4,)),
    ]
    with pytest.raises(ValueError, match=r"'c' .* both spikes and an image-fed value"):
        sops.check_counted(SpikingNetwork(mixed, "qcfs", 2))


def test_energy_presets_and_bad_constants():
    assert energy.energy_model("fp32") == energy.EnergyModel(4.6, 0.9, "fp32")
    assert energy.energy_model("int8").e_ac == 0.03 and energy.energy_model("fp16").e_mac == 1.5
    m = energy.energy_model("fp32", e_ac=0.5)
    assert (m.e_mac, m.e_ac) == (4.6, 0.5)
    assert energy.energy_model(None, 2.0, 0.1) == energy.EnergyModel(2.0, 0.1)
    with pytest.raises(ValueError, match="unknown energy preset 'fp64'"):
        energy.energy_model("fp64")
    for bad in (-1.0, math.inf, math.nan, True, "1"):
        with pytest.raises(ValueError, match="e_mac"):
            energy.energy_model("fp32", e_mac=bad)
        with pytest.raises(ValueError, match="e_ac"):
            energy.energy_model(None, 1.0, bad)
    with pytest.raises(ValueError, match="both energy constants"):
        energy.energy_model(None, e_mac=1.0)


@pytest.mark.parametrize("semantics", ["constant", "settle"])
def test_energy_report(semantics):
    net, shape = mixed_net("qffs", 4)
    if semantics == "settle":
        net = replace(net, drive_steps=3)
    engine = dcsim.Engine(net, count_ops=True)
    x = _inputs(9, shape, 5)
    steps = 6
    full = engine.simulate(x, steps)
    readout = dcsim.Readout.paper("qffs", 2, steps)
    dc = engine.early_exit(x, steps, readout, float(np.quantile(full.conf.numpy(), 0.5)))
    rep = energy.report(net, shape, {"no_dc": full, "dc": dc}, "fp32")
    image = sum(sops.image_macs(net, shape).values())
    ann = sops.ann_macs(net, shape)
    assert rep["ann"]["macs_per_inference"] == ann
    assert rep["ann"]["energy_uj"] == pytest.approx(4.6 * ann * 1e-6, rel=1e-12)
    for label, res in (("no_dc", full), ("dc", dc)):
        r = rep["runs"][label]
        sops_mean = float(res.sops.sum()) / len(x)
        assert r["sops_per_inference"] == sops_mean and r["macs_per_inference"] == image
        assert r["energy_uj"] == pytest.approx((0.9 * sops_mean + 4.6 * image) * 1e-6, rel=1e-12)
        assert r["energy_ratio_to_ann"] == pytest.approx(r["energy_uj"] / rep["ann"]["energy_uj"], rel=1e-12)
        assert sum(layer["sops_per_inference"] for layer in r["per_layer"]) == pytest.approx(sops_mean, rel=1e-12)
    assert rep["runs"]["dc"]["sops_per_inference"] <= rep["runs"]["no_dc"]["sops_per_inference"]
    assert rep["runs"]["no_dc"]["per_layer"][2]["feeds"] == ["c4", "n4"]  # n3: a conv and the identity shortcut
    per_step = energy.summary(net, shape, dc, energy.energy_model(), "per_step")
    driven = dc.exit_step if semantics == "constant" else dc.exit_step.clamp(max=3)
    assert per_step["macs_per_inference"] == float((driven * image).sum()) / len(x)
    with pytest.raises(ValueError, match="first_layer"):
        energy.summary(net, shape, dc, energy.energy_model(), "twice")
    off = dcsim.Engine(net, count_ops=False).simulate(x, steps)
    with pytest.raises(ValueError, match="count_ops=True"):
        energy.report(net, shape, {"x": off})


def test_spikingjelly_synop_counter_agrees():
    """SpikingJelly's SynOpCounter on the recorded QCFS {0, 1} spikes of the layers a conv or linear takes
    directly: the same counts. (Where a pooling sits between, SpikingJelly sees non-binary inputs and counts
    MACs instead: a convention, not compared.)"""
    op_counter = pytest.importorskip("spikingjelly.activation_based.op_counter")
    net, shape = mixed_net("qcfs", 12)
    engine = dcsim.Engine(net, backend="reference", count_ops=True)
    rec = Recorder.attach(engine)
    steps = 5
    sim = engine.simulate(_inputs(4, shape, 13), steps)
    layers = engine.neurons
    direct = {  # spiking layer -> the weighted layers taking its spikes with nothing in between
        i: [j for j, node in enumerate(net.nodes) if i in node.inputs and isinstance(node, (Conv, Linear))]
        for i in layers
    }
    only_direct = [k for k, i in enumerate(layers) if sops.consumers(net, i) == [net.nodes[j].name for j in direct[i]]]
    assert only_direct  # n1 (c2 and down) and n2 (c3)
    for k in only_direct:
        i = layers[k]
        counter = op_counter.SynOpCounter()
        with op_counter.DispatchCounterMode([counter]):
            for t in range(steps):
                s = rec.spikes[t * len(layers) + k]
                assert set(s.unique().tolist()) <= {0.0, 1.0}
                for j in direct[i]:  # each layer as torch's own op, which the counter knows
                    node = net.nodes[j]  # (Conv.apply calls oneDNN's conv directly on the CPU)
                    if isinstance(node, Conv):
                        F.conv2d(s, node.weight, node.bias, node.stride, node.padding, node.dilation, node.groups)
                    else:
                        F.linear(s, node.weight, node.bias)
        assert int(counter.get_total()) == int(sim.sops[:, k].sum()), net.nodes[i].name
