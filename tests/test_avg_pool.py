"""The pools of the CPU engine against their references, bit for bit: the 2x2 average pool (kernel 5,
dcsim.sim.ops.avg_pool_2x2) against torch's F.avg_pool2d (dcsim.sim.reference.avg_pool_2x2), and the global average
pool (kernel 7, dcsim.sim.ops.global_avg_pool) against torch's F.adaptive_avg_pool2d(x, 1).

Fresh random shapes (odd sizes included), magnitudes from 1e-30 to 1e30, spikes times per-channel thresholds,
and the special values (-0.0, infinities, NaN, subnormals): every output's bits must equal torch's (a NaN
must be a NaN; which NaN, of several in a window, sets the payload is left to the CPU's add)."""

import pytest
import torch
import torch.nn.functional as F

from dcsim.sim import ops, reference
from dcsim.sim.engine import POOL_KERNEL_MIN_ELEMENTS, Engine
from dcsim.sim.network import AdaptiveAvgPool, AvgPool, Input, SpikingNetwork


def _bits(t: torch.Tensor) -> torch.Tensor:
    """t's bit patterns, with every NaN as one pattern."""
    return torch.where(torch.isnan(t), float("nan"), t).contiguous().view(torch.int32)


def _fresh(g: torch.Generator) -> torch.Tensor:
    n, c = (int(v) for v in torch.randint(1, 9, (2,), generator=g))
    h, w = (int(v) for v in torch.randint(2, 40, (2,), generator=g))
    kind = int(torch.randint(0, 3, (1,), generator=g))
    if kind == 0:  # float currents of any size
        scale = 10.0 ** float(torch.randint(-30, 31, (1,), generator=g))
        return torch.randn(n, c, h, w, generator=g) * scale
    if kind == 1:  # spikes: 0 or the layer's per-channel threshold
        theta = torch.rand(1, c, 1, 1, generator=g) * 4
        return (torch.rand(n, c, h, w, generator=g) < 0.3).float() * theta
    x = torch.randn(n, c, h, w, generator=g)  # special values sprinkled in
    special = torch.tensor([-0.0, 0.0, float("inf"), -float("inf"), float("nan"), 1e-45, -1e-40, 3.4e38])
    pick = torch.rand(n, c, h, w, generator=g) < 0.3
    x[pick] = special[torch.randint(0, len(special), (int(pick.sum()),), generator=g)]
    return x


@pytest.mark.parametrize("threads", [1, 2])
def test_avg_pool_2x2_equals_torch_bit_for_bit(threads, torch_threads):
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))  # fresh inputs every run
    torch_threads(threads)
    for _ in range(300):
        x = _fresh(g)
        if int(torch.randint(0, 4, (1,), generator=g)) == 0:  # now and then a big one (threads split rows)
            x = torch.randn(64, 8, 32, 32, generator=g)
        ours, ref = ops.avg_pool_2x2(x), reference.avg_pool_2x2(x)
        assert ours.shape == ref.shape and ours.is_contiguous()
        assert torch.equal(_bits(ours), _bits(ref)), x.shape


def test_a_window_of_negative_zeros_pools_to_positive_zero():
    x = torch.full((2, 3, 4, 4), -0.0)
    assert torch.equal(_bits(ops.avg_pool_2x2(x)), _bits(F.avg_pool2d(x, 2)))
    assert not torch.signbit(ops.avg_pool_2x2(x)).any()


def test_bad_inputs_are_refused_naming_x():
    for bad, what in (
        (torch.zeros(2, 3, 4, 4, dtype=torch.float64), "dtype"),
        (torch.zeros(2, 3, 4), "shape"),
        (torch.zeros(2, 3, 4, 4).transpose(2, 3), "contiguous"),
    ):
        with pytest.raises((TypeError, ValueError), match="x must"):
            ops.avg_pool_2x2(bad)
        del what


def test_the_native_engine_pools_in_kernel_5_where_it_applies(monkeypatch):
    """The native engine sends a 2x2 pool of a large contiguous value to kernel 5 and every other pool to torch;
    the reference engine never calls the kernel; both give torch's bits."""
    calls = []
    kernel = ops.avg_pool_2x2
    monkeypatch.setattr(ops, "avg_pool_2x2", lambda x: calls.append(x.shape) or kernel(x))
    assert AvgPool("p", (0,), (2, 2), (2, 2)).is_2x2 and not AvgPool("p", (0,), (3, 3), (2, 2), (1, 1), True).is_2x2
    big = torch.randn(8, 16, 32, 32)
    assert big.numel() >= POOL_KERNEL_MIN_ELEMENTS
    for pool, x, native in (
        (AvgPool("p", (0,), (2, 2), (2, 2)), big, True),
        (AvgPool("p", (0,), (2, 2), (2, 2)), big.contiguous(memory_format=torch.channels_last), False),
        (AvgPool("p", (0,), (2, 2), (2, 2)), big[:, :, :4, :4].contiguous(), False),  # below the size
        (AvgPool("p", (0,), (3, 3), (2, 2), (1, 1), True), big, False),
    ):
        net = SpikingNetwork([Input("x", ()), pool], bits=2, method="qcfs")
        for backend, expect in (("native", native), ("reference", False)):
            calls.clear()
            out = Engine(net, backend=backend)._apply(pool, x)
            assert bool(calls) == expect, (backend, pool, x.shape)
            assert torch.equal(_bits(out), _bits(pool.apply(x)))


def _plane(g: torch.Generator) -> tuple[int, int]:
    """A plane size (h, w) from each of the global pool's regimes: under 8 floats (single floats), 8-511 (whole
    8-float vectors, no cascade step), 512-8191 (one cascade level), 8192 and more (two levels)."""
    regime = int(torch.randint(0, 4, (1,), generator=g))
    low, high = ((1, 8), (8, 512), (512, 8192), (8192, 40000))[regime]
    size = int(torch.randint(low, high, (1,), generator=g))
    w = int(torch.randint(1, min(size, 300) + 1, (1,), generator=g))
    return max(1, size // w), w


@pytest.mark.parametrize("threads", [1, 2])
def test_global_avg_pool_equals_torch_bit_for_bit(threads, torch_threads):
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))  # fresh inputs every run
    torch_threads(threads)
    for _ in range(200):
        x = _fresh(g)
        h, w = _plane(g)
        n, c = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(2, 6, (1,), generator=g))
        x = x.flatten()[torch.randint(0, x.numel(), (n * c * h * w,), generator=g)].reshape(n, c, h, w)
        ours, ref = ops.global_avg_pool(x), reference.global_avg_pool(x)
        assert ours.shape == ref.shape == (n, c, 1, 1) and ours.is_contiguous()
        assert torch.equal(_bits(ours), _bits(ref)), x.shape
    x = torch.randn(64, 128, 4, 4, generator=g)  # planes split between the threads
    assert torch.equal(_bits(ops.global_avg_pool(x)), _bits(F.adaptive_avg_pool2d(x, 1)))
    if threads == 1:  # a lone plane (on several threads torch splits its sum; the engine keeps torch's there)
        lone = torch.randn(1, 1, 100, 100, generator=g)
        assert torch.equal(_bits(ops.global_avg_pool(lone)), _bits(F.adaptive_avg_pool2d(lone, 1)))


def test_global_pool_of_negative_zeros_is_positive_zero():
    for size in (1, 5, 16, 600):
        x = torch.full((2, 3, 1, size), -0.0)
        assert torch.equal(_bits(ops.global_avg_pool(x)), _bits(F.adaptive_avg_pool2d(x, 1)))
        assert not torch.signbit(ops.global_avg_pool(x)).any()


def test_global_pool_refuses_bad_inputs_naming_x():
    for bad in (
        torch.zeros(2, 3, 4, 4, dtype=torch.float64),
        torch.zeros(2, 3, 4),
        torch.zeros(2, 3, 4, 4).transpose(2, 3),
        torch.zeros(2, 3, 0, 4),
    ):
        with pytest.raises((TypeError, ValueError), match="x must"):
            ops.global_avg_pool(bad)


def test_the_native_engine_pools_globally_in_kernel_7_where_its_bits_hold(monkeypatch):
    """The native engine sends a global pool of a contiguous float32 value to kernel 7, and every other pool (another
    output size, another layout) to torch; a kernel that does not give torch's bits on a shape is never used on it
    (checked once per shape); the reference engine's twin is torch's; every result has torch's bits."""
    calls = []
    kernel = ops.global_avg_pool
    monkeypatch.setattr(ops, "global_avg_pool", lambda x: calls.append(x.shape) or kernel(x))
    x = torch.randn(3, 16, 4, 4) * torch.rand(3, 16, 1, 1)
    pool, half = AdaptiveAvgPool("p", (0,), (1, 1)), AdaptiveAvgPool("p", (0,), (2, 2))
    for node, value, native in (
        (pool, x, True),
        (pool, x.contiguous(memory_format=torch.channels_last), False),
        (half, x, False),
        (pool, x[:1, :1].contiguous(), False),  # a lone plane
    ):
        net = SpikingNetwork([Input("x", ()), node], bits=2, method="qcfs")
        for backend, expect in (("native", native), ("reference", False)):
            engine = Engine(net, backend=backend)
            calls.clear()
            out = engine._apply(node, value)
            assert bool(calls) == expect, (backend, node, value.stride())
            assert torch.equal(_bits(out), _bits(node.apply(value)))
    # a kernel whose bits differ on a shape (another CPU's torch summing in another order): torch's pool there
    monkeypatch.setattr(ops, "global_avg_pool", lambda x: calls.append(x.shape) or kernel(x) + 1e-3)
    engine = Engine(SpikingNetwork([Input("x", ()), pool], bits=2, method="qcfs"))
    for _ in range(2):
        calls.clear()
        out = engine._apply(pool, x)
        assert torch.equal(_bits(out), _bits(pool.apply(x)))
    assert calls == []  # the second call does not check again
