"""Kernel 8 (dcsim.sim.ops.linear): a fully connected layer through the BLAS sgemm torch's CPU linear calls, bit for
bit torch's on fresh random shapes, with and without a bias, on currents and spike-like inputs, 1 and 2 threads; the
engine lists it only where its per-shape check finds torch's bits."""

import pytest
import torch
import torch.nn.functional as F

import dcsim
from dcsim.sim import ops
from dcsim.sim.network import Linear
from dyadic import small

pytestmark = pytest.mark.skipif(ops.sgemm_address() is None, reason="torch's CPU library exports no sgemm_")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("threads", [1, 2])
def test_linear_equals_torch_bit_for_bit(threads, torch_threads):
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    torch_threads(threads)
    for trial in range(60):
        rows, size, features = (int(v) for v in torch.randint(1, 300, (3,), generator=g))
        if trial % 3 == 0:  # spike-like: zeros and a threshold's multiples
            x = (torch.rand(rows, size, generator=g) < 0.2).float() * 0.75
        else:
            x = torch.randn(rows, size, generator=g) * 10
        weight = torch.randn(features, size, generator=g)
        bias = torch.randn(features, generator=g) if trial % 2 else None
        assert torch.equal(_bits(ops.linear(x, weight, bias)), _bits(F.linear(x, weight, bias))), (
            rows,
            size,
            features,
            bias is not None,
        )


@pytest.mark.parametrize(
    "x,weight,bias,match",
    [
        (torch.zeros(2, 3, dtype=torch.float64), torch.zeros(4, 3), None, "x"),
        (torch.zeros(2, 3), torch.zeros(4, 5), None, r"x must be \[rows, in\]"),
        (torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(5), r"bias must be \[4\]"),
        (torch.zeros(3, 2).T, torch.zeros(4, 3), None, "x must be contiguous"),
        (torch.zeros(0, 3), torch.zeros(4, 3), None, "sizes >= 1"),
    ],
)
def test_linear_refuses_bad_inputs_naming_the_argument(x, weight, bias, match):
    with pytest.raises((TypeError, ValueError), match=match):
        ops.linear(x, weight, bias)


def test_the_engine_lists_kernel_8_on_the_rows_torch_computes_where_its_bits_hold(monkeypatch):
    """Linear.apply pads fewer than 16 rows to 16: the engine's kernel 8 computes as many (the rows past the input's
    any values); a gemm whose bits differ from torch's (here a kernel made 1 ulp off) is refused for that shape."""
    g = torch.Generator().manual_seed(3)
    node = Linear("fc", (0,), weight=torch.randn(10, 64, generator=g), bias=torch.randn(10, generator=g))
    net, _ = small("qcfs", seed=1)
    engine = dcsim.Engine(net)
    assert engine.linear_rows(node, 1) == 16 and engine.linear_rows(node, 27) == 27
    assert engine.linear_rows(net.nodes[0], 1) == 0  # not a linear
    exact = ops.linear

    def off(x, weight, bias=None):
        return torch.nextafter(exact(x, weight, bias), torch.tensor(float("inf")))

    monkeypatch.setattr(ops, "linear", off)
    fresh = dcsim.Engine(net)
    assert fresh.linear_rows(node, 1) == 0
    assert engine.linear_rows(node, 1) == 16  # checked once per shape and engine
