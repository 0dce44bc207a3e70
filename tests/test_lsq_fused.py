"""The fused LSQ quantizer against its composed reference, on fresh random inputs and shapes."""

import pytest
import torch

from dcsim.models.lsq import lsq_quantize, lsq_quantize_ref


@pytest.mark.parametrize("seed", range(6))
def test_fused_lsq_matches_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(int(d) for d in torch.randint(1, 9, (4,), generator=gen))
    qp = int(torch.randint(1, 16, (1,), generator=gen))
    x = torch.randn(shape, generator=gen) * 3
    x.view(-1)[: x.numel() // 4] = torch.randint(-2, qp + 3, (x.numel() // 4,), generator=gen).float() * 0.5  # ties
    step = float(torch.rand(1, generator=gen)) + 0.25
    g = float(torch.rand(1, generator=gen))
    grad = torch.randn(shape, generator=gen)
    outs = []
    for fn in (lsq_quantize, lsq_quantize_ref):
        xi = x.clone().requires_grad_()
        si = torch.tensor(step, requires_grad=True)
        y = fn(xi, si, g, qp)
        y.backward(grad)
        outs.append((y.detach(), xi.grad, si.grad))
    (y, gx, gs), (y_ref, gx_ref, gs_ref) = outs
    assert torch.equal(y, y_ref)  # levels exactly, ties included
    assert torch.equal(gx, gx_ref)
    torch.testing.assert_close(gs, gs_ref, rtol=1e-5, atol=1e-5)
