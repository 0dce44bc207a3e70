"""Kernel benchmarks: each native kernel against its PyTorch reference, side by side.

Run: pytest bench -o python_files='bench_*.py' --benchmark-only
Each test times the native kernel with pytest-benchmark and the reference in the same
process; the ratio reference/native is stored in extra_info["speedup_vs_reference"].
On a machine with a GPU both run there (each call timed to completion).
"""

import time

import pytest
import torch
import torch.nn.functional as F

from dcsim.sim import ops, reference, row_floor
from dcsim.sim.network import Conv
from dcsim.sim.ops import avg_pool_2x2

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZES = [(1, 4096), (1, 65536), (32, 65536), (256, 16384)] + ([(256, 262144)] if DEVICE.type == "cuda" else [])


def _synced(fn):
    """fn followed by a device sync, so that a GPU call is timed to its end."""

    def call(*args):
        out = fn(*args)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)
        return out

    return call


def _best(fn, repeats=20):
    fn = _synced(fn)
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _neuron_args(method, n, m):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, m, generator=g)
    u = torch.rand(n, m, generator=g)
    z = torch.randint(0, 3, (n, m), generator=g, dtype=torch.int32) if method == "qffs" else None
    args = x, u, z, torch.empty(n, m), torch.zeros(n, dtype=torch.int64)
    return tuple(None if t is None else t.to(DEVICE) for t in args)


@pytest.mark.parametrize("method", ["qcfs", "qffs"])
@pytest.mark.parametrize("n,m", SIZES)
def test_neuron_step(benchmark, method, n, m):
    x, u, z, out, counts = _neuron_args(method, n, m)
    benchmark.group = f"neuron_step {method}"
    native = benchmark(_synced(ops.neuron_step), method, x, u, z, out, counts, 1.0, 3)
    ref = _best(lambda: reference.neuron_step(method, x, u, z, out, counts, 1.0, 3))
    benchmark.extra_info["elements"] = n * m
    benchmark.extra_info["speedup_vs_reference"] = ref / benchmark.stats.stats.min
    assert native is None


@pytest.mark.parametrize("n,k", [(1, 10), (256, 10), (256, 1000)])
def test_output_step(benchmark, n, k):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, k, generator=g)
    sums = torch.zeros(n, k)
    steps = torch.zeros(n, dtype=torch.int32)
    pred, score, exited = torch.empty(n, dtype=torch.int64), torch.empty(n), torch.empty(n, dtype=torch.uint8)
    args = tuple(
        a.to(DEVICE) if isinstance(a, torch.Tensor) else a
        for a in (x, sums, steps, 1 << 30, 0, 0.1, 0.9, pred, score, exited)
    )
    benchmark.group = "output_step"
    benchmark(_synced(ops.output_step), *args)
    ref = _best(lambda: reference.output_step(*args))
    benchmark.extra_info["speedup_vs_reference"] = ref / benchmark.stats.stats.min


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the strided 2x2 pool is the CPU path")
@pytest.mark.parametrize("shape", [(32, 16, 32, 32), (32, 96, 32, 32), (256, 32, 16, 16), (2, 16, 32, 32)])
def test_avg_pool_2x2(benchmark, shape):
    """The engine's 2x2 average pool of spikes (kernel 5) against torch's F.avg_pool2d (NCHW)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(shape, generator=g) < 0.17).float()  # a trained network's firing rate
    benchmark.group = "avg_pool_2x2"
    out = benchmark(avg_pool_2x2, x)
    ref = _best(lambda: F.avg_pool2d(x, 2))
    benchmark.extra_info["speedup_vs_reference"] = ref / benchmark.stats.stats.min
    assert torch.equal(out, F.avg_pool2d(x, 2))


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the 1-row conv path is the CPU's")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("cin,cout,hw", [(16, 16, 32), (32, 32, 16), (96, 96, 32), (96, 384, 16), (384, 384, 8)])
def test_conv_one_row(benchmark, cin, cout, hw, channels_last):
    """A 1-row conv of spikes as the engine runs it (dcsim.sim.row_floor: unpadded where its bits allow) against
    the call padded to 2 rows (Conv.apply); the zoo networks' 3x3 shapes."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(cout, cin, 3, 3, generator=g) * 0.1
    x = (torch.rand(1, cin, hw, hw, generator=g) < 0.17).float()
    if channels_last:
        w, x = w.contiguous(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    node = Conv("c", (0,), w, torch.randn(cout, generator=g), (1, 1), (1, 1))
    convs = row_floor.RowFloors()
    out = convs(node, x)  # the check runs once, untimed
    benchmark.group = "conv_one_row"
    benchmark(convs, node, x)
    padded = _best(lambda: node.apply(x))
    benchmark.extra_info["speedup_vs_padded"] = padded / benchmark.stats.stats.min
    benchmark.extra_info["unpadded"] = set(convs.floors().values()) == {1}
    assert torch.equal(out, node.apply(x))


@pytest.mark.parametrize("n,tensors", [(256, 20), (32, 40)])
def test_compaction(benchmark, n, tensors):
    g = torch.Generator().manual_seed(0)
    state = [torch.randn(n, 64, 8, 8, generator=g).to(DEVICE) for _ in range(tensors)]
    keep = torch.nonzero(torch.rand(n, generator=g) > 0.3).squeeze(1).to(DEVICE)
    benchmark.group = "compaction"
    benchmark(_synced(ops.gather_rows), state, keep)
    ref = _best(lambda: reference.gather_rows(state, keep))
    benchmark.extra_info["speedup_vs_reference"] = ref / benchmark.stats.stats.min


@pytest.mark.skipif(DEVICE.type != "cpu", reason="in-place compaction is the CPU path")
@pytest.mark.parametrize("n,tensors", [(256, 20), (32, 40)])
def test_compaction_in_place(benchmark, n, tensors):
    """compact_rows_ (what early_exit runs on the CPU) against the gather into new tensors, 30% of rows done."""
    g = torch.Generator().manual_seed(0)
    state = [torch.randn(n, 64, 8, 8, generator=g) for _ in range(tensors)]
    alive = torch.rand(n, generator=g) > 0.3
    n_alive = int(alive.sum())
    keep = torch.arange(n_alive)
    keep[torch.nonzero(~alive[:n_alive]).squeeze(1)] = torch.nonzero(alive[n_alive:]).squeeze(1) + n_alive
    benchmark.group = "compaction"
    benchmark(ops.compact_rows_, state, keep)  # moves the same rows again each call: the same bytes
    gather = _best(lambda: ops.gather_rows(state, torch.nonzero(alive).squeeze(1)))
    benchmark.extra_info["speedup_vs_gather_rows"] = gather / benchmark.stats.stats.min


# ResNet-18 (CIFAR) conv shapes (Cin, H, Cout, stride) at batch 1 and 32, and spike rates per step
# around what converted networks show (a few %).
@pytest.mark.skipif(DEVICE.type != "cpu", reason="kernel 4 is CPU-only")
@pytest.mark.parametrize("cin,h,cout,stride", [(64, 32, 64, 1), (128, 16, 256, 2), (512, 4, 512, 1)])
@pytest.mark.parametrize("n", [1, 32])
@pytest.mark.parametrize("rate", [0.02, 0.1])
def test_spike_conv(benchmark, cin, h, cout, stride, n, rate):
    g = torch.Generator().manual_seed(0)
    x = ((torch.rand(n, cin, h, h, generator=g) < rate).float() * 0.5).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(cout, cin, 3, 3, generator=g) * 0.05, torch.randn(cout, generator=g)
    packed = ops.pack_spike_conv_weight(weight)
    benchmark.group = f"spike_conv {cin}x{h}x{h}->{cout} s{stride}"
    benchmark(ops.spike_conv2d, x, packed, bias, (stride, stride), (1, 1))
    dense = _best(lambda: F.conv2d(x, weight, bias, stride, 1))  # the reference: PyTorch's dense conv
    benchmark.extra_info["spike_rate"] = rate
    benchmark.extra_info["speedup_vs_reference"] = dense / benchmark.stats.stats.min
