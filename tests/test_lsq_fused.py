"""The fused LSQ quantizer against its composed reference, on fresh random inputs and shapes."""

import pytest
import torch

from dcsim.models.lsq import lsq_quantize, lsq_quantize_ref


@pytest.mark.parametrize("clip", [False, True], ids=["quantized", "clip-mix"])
@pytest.mark.parametrize("seed", range(6))
def test_fused_lsq_matches_reference(seed: int, clip: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(int(d) for d in torch.randint(1, 9, (4,), generator=gen))
    qp = int(torch.randint(1, 16, (1,), generator=gen))
    x = torch.randn(shape, generator=gen) * 3
    x.view(-1)[: x.numel() // 4] = torch.randint(-2, qp + 3, (x.numel() // 4,), generator=gen).float() * 0.5  # ties
    step = float(torch.rand(1, generator=gen)) + 0.25
    g = float(torch.rand(1, generator=gen))
    grad = torch.randn(shape, generator=gen)
    clip_rows = torch.rand((shape[0], 1, 1, 1), generator=gen) < 0.5 if clip else None
    outs = []
    for fn in (lsq_quantize, lsq_quantize_ref):
        xi = x.clone().requires_grad_()
        si = torch.tensor(step, requires_grad=True)
        y = fn(xi, si, g, qp, clip_rows)
        y.backward(grad)
        outs.append((y.detach(), xi.grad, si.grad))
    (y, gx, gs), (y_ref, gx_ref, gs_ref) = outs
    assert torch.equal(y, y_ref)  # levels exactly, ties included
    assert torch.equal(gx, gx_ref)
    torch.testing.assert_close(gs, gs_ref, rtol=1e-5, atol=1e-5)


def test_clip_rows_pass_unrounded_and_leave_the_step_gradient_outside_only() -> None:
    """By hand: a clipped row is s * clamp(x / s, 0, Qp), and inside [0, Qp] it gives the step no
    gradient (y = x there); the other rows are quantized as before."""
    x = torch.tensor([[0.3, 1.7, 5.0, -1.0], [0.3, 1.7, 5.0, -1.0]], requires_grad=True)
    step = torch.tensor(0.5, requires_grad=True)
    clip_rows = torch.tensor([[True], [False]])
    y = lsq_quantize(x, step, 1.0, 3, clip_rows)
    torch.testing.assert_close(y, torch.tensor([[0.3, 1.5, 1.5, 0.0], [0.5, 1.5, 1.5, 0.0]]))
    y.sum().backward()
    assert x.grad.tolist() == [[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]  # x / s = 3.4 lies above Qp
    # clipped row: 0 (inside) + 3 + 3 (Qp, above) + 0 (below); quantized row: (1 - 0.6) + 3 + 3 + 0
    torch.testing.assert_close(step.grad, torch.tensor(6.0 + (1 - 0.6) + 6.0))
