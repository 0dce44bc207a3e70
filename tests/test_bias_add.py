"""Kernel 9 (dcsim.sim.ops.bias_add): a per-channel bias added in place, bit for bit torch's broadcast add_, on fresh
random shapes (a conv's [N, C, H, W], a linear's [N, C]), special values and 1 and 2 threads."""

import pytest
import torch

from dcsim.sim import ops


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("threads", [1, 2])
def test_bias_add_equals_torch_bit_for_bit(threads, torch_threads):
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    torch_threads(threads)
    for trial in range(40):
        n, c, h, w = (int(v) for v in torch.randint(1, 40, (4,), generator=g))
        shape = (n, c) if trial % 4 == 0 else (n, c, h, w)
        x = torch.randn(shape, generator=g) * 1e3
        bias = torch.randn(c, generator=g) * 10
        if trial % 5 == 0:  # special values, in both operands
            x.view(-1)[:4] = torch.tensor([float("inf"), -0.0, float("nan"), 1e-45])
            bias[0] = -0.0
        expected = x + bias.reshape(1, -1, *([1] * (len(shape) - 2)))
        out = ops.bias_add(x, bias)
        assert out is x
        assert torch.equal(_bits(out), _bits(expected)), shape


@pytest.mark.parametrize(
    "x,bias,match",
    [
        (torch.zeros(2, 3, dtype=torch.float64), torch.zeros(3), "x"),
        (torch.zeros(2, 3, 4), torch.zeros(4), r"bias a contiguous \[C\]"),
        (torch.zeros(2, 3), torch.zeros(3, dtype=torch.int32), "bias"),
        (torch.zeros(3, 2).T, torch.zeros(3), "x must be contiguous"),
        (torch.zeros(4), torch.zeros(4), r"x must be \[N, C, \.\.\.\]"),
    ],
)
def test_bias_add_refuses_bad_inputs_naming_the_argument(x, bias, match):
    with pytest.raises((TypeError, ValueError), match=match):
        ops.bias_add(x, bias)
