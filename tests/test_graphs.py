"""StaticExit (CUDA-graph early exit) and the engine on a GPU, against the CPU engine.

Dyadic networks (see test_engine) make every float operation exact, so results must be equal
across devices, batch sizes, compaction buckets and chunking; the GPU runs in full float32.
"""

import numpy as np
import pytest
import torch

import dcsim
from dcsim.sim.continuous import stream
from dcsim.sim.engine import gpu_flags
from dcsim.sim.graphs import StaticExit, bucket_sizes
from dyadic import dyadic_inputs, resnet, small, trace_of

HAS_CUDA = torch.cuda.is_available() and "cuda" in dcsim.backends()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and dcsim built with CUDA")),
]
FIELDS = ("pred", "exit_step", "conf", "spikes", "sops")
SCORE_ATOL = 1e-5
"""CPU vs CUDA stopping scores (as in test_kernels)."""


def test_bucket_sizes():
    assert bucket_sizes(1, True) == [1]
    assert bucket_sizes(7, True) == [7, 6, 5, 4, 3, 2, 1]
    assert bucket_sizes(20, True) == [20, 17, 14, 11, 8, 5, 2, 1]
    assert bucket_sizes(256, True) == [256, 224, 192, 160, 128, 96, 64, 32, 16, 8, 4, 2, 1]
    assert bucket_sizes(256, False) == [256]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model,method,steps", [(small, "qcfs", 12), (small, "qffs", 5), (resnet, "qcfs", 6)])
def test_graph_early_exit_equals_cpu_engine(device, model, method, steps):
    net, shape = model(method, seed=3 if model is resnet else 21)  # the dyadic ResNet the other tests build
    cpu = dcsim.Engine(net, count_ops=True)
    engine = dcsim.Engine(net, device=device, count_ops=True)
    x = dyadic_inputs(13, shape, seed=22)
    readout = dcsim.Readout.paper(method, 2, steps, tau=0.7)
    trace = trace_of(cpu, x, steps, readout)
    for c in [*np.quantile(trace.conf, [0.15, 0.6]).tolist(), 1.0]:
        want = cpu.early_exit(x, steps, readout, c)
        for batch_size, chunk, buckets, speculate in [
            (None, 1, True, False),
            (None, 3, False, True),
            (1, 1, True, True),
            (1, 2, True, False),
            (5, 2, True, None),
        ]:
            parts = []
            for lo in range(0, len(x), batch_size or len(x)):
                xb = x[lo : lo + (batch_size or len(x))].to(device)
                runner = StaticExit(engine, tuple(xb.shape), steps, readout, c, chunk, buckets, speculate)
                parts.append([r.cpu() for r in runner.run(xb)])
            for f, *g in zip(FIELDS, *parts, strict=True):
                _assert_same(f, torch.cat(g), getattr(want, f), (c, batch_size, chunk, buckets, speculate))
        via_engine = engine.early_exit(x.to(device), steps, readout, c, batch_size=4, graphs=True)
        for f in FIELDS:
            _assert_same(f, getattr(via_engine, f), getattr(want, f), c)


def _assert_same(field: str, got: torch.Tensor, want: torch.Tensor, ctx: object) -> None:
    """Equal, except scores: CPU and CUDA exp() may differ in the last bits (the kernels' tolerance)."""
    if field == "conf":
        torch.testing.assert_close(got, want, atol=SCORE_ATOL, rtol=0, msg=lambda m: f"conf {ctx}: {m}")
    else:
        assert torch.equal(got, want), (field, ctx)


@pytest.mark.parametrize("device", DEVICES)
def test_static_exit_reuse_resets_state(device):
    """A runner called again on new inputs gives each batch its own results (buffers reset by the start graph)."""
    net, shape = small("qffs", seed=23)
    engine = dcsim.Engine(net, device=device, count_ops=True)
    readout = dcsim.Readout.paper("qffs", 2, 5)
    xs = [dyadic_inputs(6, shape, seed=s).to(device) for s in (24, 25, 24)]
    c = 0.6
    runner = StaticExit(engine, tuple(xs[0].shape), 5, readout, c, chunk=2)
    results = [[t.cpu() for t in runner.run(x)] for x in xs]
    for x, got in zip(xs, results, strict=True):
        want = dcsim.Engine(net, count_ops=True).early_exit(x.cpu(), 5, readout, c)
        for f, g in zip(FIELDS, got, strict=True):
            assert torch.equal(g, getattr(want, f)), f
    assert engine.static_exit(tuple(xs[0].shape), 5, readout, c) is engine.static_exit(
        tuple(xs[0].shape), 5, readout, c
    )


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and dcsim built with CUDA")
@pytest.mark.parametrize("method,steps", [("qcfs", 6), ("qffs", 4)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_simulation_equals_cpu(method, steps, channels_last):
    net, shape = resnet(method, seed=3)
    x = dyadic_inputs(9, shape, seed=27)
    readout = dcsim.Readout.paper(method, 2, steps)
    want = dcsim.Engine(net).simulate(x, steps, readout, record_sums=True)
    got = dcsim.Engine(net, device="cuda", channels_last=channels_last).simulate(
        x.cuda(), steps, readout, record_sums=True, chunk=2
    )
    for f in ("pred", "conf", "sums", "spikes"):
        _assert_same(f, getattr(got, f), getattr(want, f), channels_last)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and dcsim built with CUDA")
def test_cuda_stream_equals_cpu_alone():
    net, shape = small("qcfs", seed=28)
    x = dyadic_inputs(12, shape, seed=29)
    readout = dcsim.Readout.paper("qcfs", 2, 8)
    alone = dcsim.Engine(net).early_exit(x, 8, readout, 0.5, batch_size=1)
    for graphs in (False, True):
        results = list(stream(dcsim.Engine(net, device="cuda"), iter(x.cuda()), 4, 8, readout, 0.5, graphs=graphs))
        assert sorted(r.id for r in results) == list(range(len(x)))
        for r in results:
            assert (r.pred, r.exit_step) == (int(alone.pred[r.id]), int(alone.exit_step[r.id])), graphs
            assert r.spikes == tuple(alone.spikes[r.id].tolist())


def test_gpu_flags_restores_settings():
    conv = torch.backends.cudnn.conv
    before = getattr(conv, "fp32_precision", None), torch.backends.cudnn.benchmark
    for tf32, want in ((False, "ieee"), (True, "tf32")):
        with gpu_flags(tf32, autotune=True):
            assert torch.backends.cudnn.benchmark
            if before[0] is not None:
                assert conv.fp32_precision == want
    assert (getattr(conv, "fp32_precision", None), torch.backends.cudnn.benchmark) == before
