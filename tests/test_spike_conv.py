"""Kernel 4 (event-driven convolution of spike maps) against a dense conv, and the engine with spike_convs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dcsim
from dcsim.sim import ops, reference
from dcsim.sim.continuous import stream
from dyadic import dyadic_inputs, resnet, small, trace_of

# (n, Cin, H, W, Cout, kh, kw, stride, padding)
SHAPES = [
    (1, 3, 5, 5, 4, 3, 3, (1, 1), (1, 1)),
    (2, 8, 7, 6, 5, 3, 3, (2, 2), (1, 1)),
    (3, 16, 9, 9, 32, 1, 1, (2, 2), (0, 0)),
    (1, 5, 6, 11, 3, 3, 5, (1, 2), (2, 1)),
    (4, 64, 8, 8, 64, 3, 3, (1, 1), (1, 1)),
    (1, 7, 4, 4, 9, 4, 4, (1, 1), (0, 0)),
    (2, 6, 5, 5, 70, 3, 3, (1, 1), (1, 1)),  # a full block of 64 output channels and a tail of 6
    (0, 4, 5, 5, 6, 3, 3, (1, 1), (1, 1)),
]
RATES = [0.0, 0.05, 0.4, 1.0]


def _case(shape, rate: float, seed: int, dyadic: bool):
    n, cin, h, w, cout, kh, kw, _, _ = shape
    g = torch.Generator().manual_seed(seed)
    fired = torch.rand((n, cin, h, w), generator=g) < rate
    if dyadic:  # every product and partial sum exact in float32
        x = fired * (torch.randint(-2, 3, (n, cin, h, w), generator=g) * 0.5)
        weight = torch.randint(-64, 65, (cout, cin, kh, kw), generator=g) / 64
        bias = torch.randint(-64, 65, (cout,), generator=g) / 64
    else:
        x = fired * torch.randn((n, cin, h, w), generator=g)
        weight = torch.randn((cout, cin, kh, kw), generator=g) * 0.2
        bias = torch.randn((cout,), generator=g)
    return x.float().contiguous(memory_format=torch.channels_last), weight.float(), bias.float()


@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: "x".join(map(str, s[:7])) + f"-s{s[7][0]}{s[7][1]}p{s[8][0]}{s[8][1]}"
)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("simd", [True, False], ids=["simd", "portable"])
def test_spike_conv_matches_dense_conv(shape, rate, with_bias, simd):
    stride, padding = shape[7], shape[8]
    for seed, dyadic in ((0, True), (1, False), (2, False)):
        x, weight, bias = _case(shape, rate, seed, dyadic)
        bias = bias if with_bias else None
        packed = ops.pack_spike_conv_weight(weight)
        got = ops.spike_conv2d(x, packed, bias, stride, padding, simd=simd)
        want = F.conv2d(x, weight, bias, stride, padding)
        assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(reference.spike_conv2d(x, packed, bias, stride, padding), want, rtol=0, atol=0)
        if dyadic:
            assert torch.equal(got, want), f"seed {seed}: exact sums differ"
        else:  # another summation order: within float32 rounding of the sum of |terms|
            bound = F.conv2d(x.abs(), weight.abs(), None if bias is None else bias.abs(), stride, padding)
            assert ((got - want).abs() <= 1e-5 * bound + 1e-30).all(), f"seed {seed}"


def test_spike_conv_rejects_bad_arguments():
    x, weight, bias = _case(SHAPES[1], 0.1, 0, False)
    packed = ops.pack_spike_conv_weight(weight)
    with pytest.raises(ValueError, match="channels_last"):
        ops.spike_conv2d(x.contiguous(), packed, bias, (1, 1), (1, 1))
    with pytest.raises(ValueError, match="packed"):
        ops.spike_conv2d(x, weight, bias, (1, 1), (1, 1))
    with pytest.raises(ValueError, match="bias"):
        ops.spike_conv2d(x, packed, bias[:-1], (1, 1), (1, 1))
    with pytest.raises(ValueError, match="stride"):
        ops.spike_conv2d(x, packed, bias, (0, 1), (1, 1))
    with pytest.raises(ValueError, match="does not fit"):
        ops.spike_conv2d(x[:, :, :2, :2].contiguous(memory_format=torch.channels_last), packed, bias, (1, 1), (0, 0))
    with pytest.raises(TypeError, match="float32"):
        ops.spike_conv2d(x.double(), packed, bias, (1, 1), (1, 1))


@pytest.mark.parametrize("net_fn", [small, resnet], ids=["small_cnn", "resnet18"])
@pytest.mark.parametrize("method,steps", [("qcfs", 10), ("qffs", 4)])
def test_engine_with_spike_convs_equals_dense_engine(net_fn, method, steps):
    """On dyadic networks every sum is exact, so event-driven and dense convs agree bit for bit."""
    net, shape = net_fn(method, seed=3)
    x = dyadic_inputs(13, shape, seed=4)
    readout = dcsim.Readout.paper(method, 2, steps)
    dense = dcsim.Engine(net)
    engine = dcsim.Engine(net, spike_convs=True)
    assert engine.channels_last and engine._spike_weights  # the event-driven path is in use
    a = dense.simulate(x, steps, readout, record_sums=True)
    b = engine.simulate(x, steps, readout, record_sums=True, chunk=3)
    assert torch.equal(a.sums, b.sums) and torch.equal(a.spikes, b.spikes) and torch.equal(a.pred, b.pred)
    trace = trace_of(dense, x, steps, readout)
    c = float(np.quantile(trace.conf, 0.5))
    live = engine.early_exit(x, steps, readout, c, batch_size=4)
    want = dense.early_exit(x, steps, readout, c, batch_size=4)
    for f in ("pred", "exit_step", "conf", "spikes"):
        assert torch.equal(getattr(live, f), getattr(want, f)), f
    streamed = {r.id: (r.pred, r.exit_step) for r in stream(engine, iter(x), 3, steps, readout, c)}
    assert streamed == {i: (int(want.pred[i]), int(want.exit_step[i])) for i in range(len(x))}


def test_spike_convs_need_cpu_float32():
    net, _ = small("qcfs")
    with pytest.raises(ValueError, match="spike_convs"):
        dcsim.Engine(net, spike_convs=True, precision="bf16")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="spike_convs"):
            dcsim.Engine(net, device="cuda", spike_convs=True)
