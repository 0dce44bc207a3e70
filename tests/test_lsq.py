"""LSQ activation quantization (dcsim.models.lsq): forward values, gradients (paper eq. 10-11 with
QN = 0), the gradient scale modes, data-driven initialisation and argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dcsim.models.lsq import GRAD_SCALES, LSQActivation, set_quantization

GRAD_RTOL = 1e-5
"""Gradients against the float64 hand computation: float32 accumulation of the step gradient
over a few hundred elements."""

DYADIC_STEPS = [0.125, 0.25, 0.5, 1.0, 2.0]
"""Powers of two: x / s and level * s are exact in float32, so forward values compare exactly."""


def _expected(x: torch.Tensor, s: float, qp: int) -> torch.Tensor:
    st = torch.tensor(s, dtype=torch.float32)
    return st * torch.floor(torch.clamp(x / st, 0, qp) + 0.5)


def _act(bits: int, s: float, grad_scale: str = "features", train: bool = False) -> LSQActivation:
    act = LSQActivation(bits, grad_scale)
    with torch.no_grad():
        act.step.fill_(s)
        act.initialized.fill_(True)
    return act.train(train)


# -------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("grad_scale", GRAD_SCALES)
@pytest.mark.parametrize("s", DYADIC_STEPS)
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_forward_values_and_levels(bits, s, grad_scale, train):
    qp = 2**bits - 1
    g = torch.Generator().manual_seed(bits * 100 + int(s * 8))
    x = torch.randn(6, 3, 5, 5, generator=g) * qp * s  # covers below 0, inside and above Qp * s
    # plus exact half-step ties, integers and the boundaries
    ties = torch.arange(-2 * qp, 2 * qp + 3, dtype=torch.float32) * 0.5 * s
    x.view(-1)[: ties.numel()] = ties
    act = _act(bits, s, grad_scale, train)
    with torch.no_grad():
        y = act(x)
    want = _expected(x, s, qp)
    print(f"max |y - expected| = {float((y - want).abs().max()):.3g}")
    assert torch.equal(y, want), f"forward differs from s*floor(clip(x/s,0,Qp)+0.5) (bits={bits}, s={s})"
    levels = torch.unique(y / s)
    assert set(levels.tolist()) == {float(v) for v in range(qp + 1)}, levels.tolist()
    # Ties round half up: (k + 0.5) s -> (k + 1) s inside the range.
    k = torch.arange(0, qp, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(act((k + 0.5) * s), (k + 1) * s)
    assert act.step.item() == s, "forward must not change an initialised step"


def test_forward_exact_for_non_dyadic_step():
    act = _act(2, 0.1, "batch")
    x = torch.tensor([[0.25], [0.05], [0.31]])  # batch 3, Qp 3 -> g = 1/3
    y = act(x)
    st = act.step.detach()
    levels = torch.floor(torch.clamp(x / st, 0, 3) + 0.5)
    assert torch.equal(y, st * levels), (y.tolist(), (st * levels).tolist())


def test_forward_quantize_off_is_relu():
    model = nn.Sequential(nn.Linear(4, 4), LSQActivation(2), nn.Linear(4, 4), LSQActivation(3))
    x = torch.randn(5, 4)
    assert set_quantization(model, False) == 2
    h = model[1](x)
    assert torch.equal(h, torch.relu(x))
    assert set_quantization(model, True) == 2
    assert not torch.equal(model[1].eval()(x * 10), torch.relu(x * 10))


@pytest.mark.parametrize("bits", [0, -1, 16, 2.0, 1.5, "2", True, None])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        LSQActivation(bits)


@pytest.mark.parametrize("bits", [1, 15])
def test_bits_limits_accepted(bits):
    act = LSQActivation(bits)
    assert act.qp == 2**bits - 1


@pytest.mark.parametrize("grad_scale", ["feature", "", None, "Batch"])
def test_bad_grad_scale(grad_scale):
    with pytest.raises(ValueError, match="grad_scale"):
        LSQActivation(2, grad_scale)


# ------------------------------------------------------------------------------ gradients


def _away_from_boundaries(shape, qp: int, g: torch.Generator) -> torch.Tensor:
    """v = k + f with integer k in [-2, Qp + 2) and f in [0.05, 0.45] or [0.55, 0.95]:
    never within 0.05 of an integer (so not near 0 or Qp) nor of a half step."""
    k = torch.randint(-2, qp + 2, shape, generator=g).double()
    f = torch.rand(shape, generator=g, dtype=torch.float64) * 0.4 + 0.05
    f = torch.where(torch.rand(shape, generator=g) < 0.5, f, f + 0.5)
    v = k + f
    v.view(-1)[:3] = torch.tensor([-0.7, 0.3, qp + 0.3], dtype=torch.float64)  # one of each region
    return v


def _g(grad_scale: str, x: torch.Tensor, qp: int) -> float:
    if grad_scale == "features":
        return 1.0 / math.sqrt(x[0].numel() * qp)
    if grad_scale == "batch":
        return 1.0 / math.sqrt(x.shape[0] * qp)
    return 1.0


@pytest.mark.parametrize("shape", [(8, 3, 4, 4), (5, 7), (1, 2, 3, 3)])
@pytest.mark.parametrize("grad_scale", GRAD_SCALES)
@pytest.mark.parametrize("s", [0.25, 0.7, 1.0])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_gradients_match_eq_10_11(bits, s, grad_scale, shape):
    qp = 2**bits - 1
    g = torch.Generator().manual_seed(bits * 1000 + len(shape) * 10 + int(s * 100))
    v = _away_from_boundaries(shape, qp, g)  # x / s, float64
    x = (v * s).float().requires_grad_(True)
    upstream = torch.randn(shape, generator=g)
    act = _act(bits, s, grad_scale, train=True)
    y = act(x)
    y.backward(upstream)

    v32 = x.detach().double() / s
    inside = (v32 > 0) & (v32 < qp)
    above = v32 >= qp
    assert bool(inside.any()) and bool(above.any()) and bool((~inside & ~above).any()), "need all three regions"
    # eq. 10-11 (QN = 0): dy/dx = 1 inside, 0 outside; dy/ds = round(v) - v inside, Qp above, 0 below; times g.
    dx = inside.double()
    ds = torch.where(
        inside, torch.floor(v32 + 0.5) - v32, torch.where(above, torch.full_like(v32, qp), torch.zeros_like(v32))
    )
    gs = _g(grad_scale, x, qp)
    want_x = upstream.double() * dx
    want_s = float((upstream.double() * ds).sum()) * gs
    print(
        f"x.grad max |diff| = {float((x.grad.double() - want_x).abs().max()):.3g}; "
        f"step.grad {float(act.step.grad):.8g} vs {want_s:.8g} (g = {gs:.6g})"
    )
    torch.testing.assert_close(x.grad.double(), want_x, rtol=GRAD_RTOL, atol=1e-6)
    torch.testing.assert_close(
        act.step.grad.double(),
        torch.tensor(want_s, dtype=torch.float64),
        rtol=GRAD_RTOL,
        atol=1e-6 * max(1.0, abs(want_s)),
    )


@pytest.mark.parametrize("grad_scale", GRAD_SCALES)
def test_grad_scale_modes_differ_as_documented(grad_scale):
    """Same data, same step: the step gradient of each mode is the unscaled one times its g."""
    g = torch.Generator().manual_seed(3)
    x0 = (_away_from_boundaries((4, 2, 3, 3), 3, g) * 0.5).float()
    grads = {}
    for mode in GRAD_SCALES:
        act = _act(2, 0.5, mode, train=True)
        act(x0.clone().requires_grad_(True)).sum().backward()
        grads[mode] = float(act.step.grad)
    assert grads["none"] != 0.0
    ratio = grads[grad_scale] / grads["none"]
    assert math.isclose(ratio, _g(grad_scale, x0, 3), rel_tol=1e-5), (ratio, _g(grad_scale, x0, 3))


# ------------------------------------------------------------------------- initialisation


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_first_train_forward_initialises_step(bits):
    qp = 2**bits - 1
    act = LSQActivation(bits).train()
    assert not bool(act.initialized)
    x = torch.randn(16, 4, 5, 5) * 3 + 0.5
    act(x)
    want = 2 * x.abs().mean() / math.sqrt(qp)
    print(f"step {act.step.item():.8g} vs {want.item():.8g}")
    torch.testing.assert_close(act.step.detach(), want, rtol=1e-6, atol=0)
    assert bool(act.initialized)
    first = act.step.detach().clone()
    act(torch.randn(16, 4, 5, 5) * 100)  # later forwards do not re-initialise
    assert torch.equal(act.step.detach(), first)
    act.eval()(torch.randn(3, 4, 5, 5) * 100)
    assert torch.equal(act.step.detach(), first)


def test_eval_forward_does_not_initialise():
    act = LSQActivation(2).eval()
    act(torch.randn(8, 10) * 50)
    assert not bool(act.initialized)
    assert act.step.item() == 1.0
    # ... and the first *training* forward afterwards still does.
    x = torch.randn(8, 10)
    act.train()(x)
    assert bool(act.initialized)
    torch.testing.assert_close(act.step.detach(), 2 * x.abs().mean() / math.sqrt(3), rtol=1e-6, atol=0)


def test_the_initialised_flag_is_read_from_the_device_only_until_seen(monkeypatch):
    """After the step is initialised, training forwards answer from the host: no bool() of a tensor (on a
    GPU, a sync per layer per batch; under torch.compile, a graph break)."""
    act = LSQActivation(2).train()
    act(torch.randn(8, 10))
    reads = []
    real = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(1) or real(t))
    for _ in range(5):
        act(torch.randn(8, 10))
    assert reads == []
    monkeypatch.undo()
    # a flag set from outside (a loader, the torchrun hook) is honoured: no re-initialisation
    other = LSQActivation(2).train()
    other.step.data.fill_(0.75)
    other.initialized.fill_(True)
    other(torch.randn(8, 10) * 9)
    assert other.step.item() == 0.75
    # loading an uninitialised state makes the next training forward initialise again
    fresh = LSQActivation(2).state_dict()
    act.load_state_dict(fresh)
    x = torch.randn(8, 10)
    act(x)
    torch.testing.assert_close(act.step.detach(), 2 * x.abs().mean() / math.sqrt(3), rtol=1e-6, atol=0)


def test_initialisation_of_all_zero_input_keeps_step_positive():
    act = LSQActivation(2).train()
    act(torch.zeros(4, 3))
    assert act.step.item() > 0
    assert torch.isfinite(act(torch.ones(4, 3))).all()


def test_initialized_flag_is_saved_in_state_dict():
    act = LSQActivation(2).train()
    act(torch.randn(4, 3) + 2)
    fresh = LSQActivation(2)
    fresh.load_state_dict(act.state_dict())
    assert bool(fresh.initialized) and fresh.step.item() == act.step.item()
    fresh.train()(torch.randn(4, 3) * 100)
    assert fresh.step.item() == act.step.item(), "a loaded, initialised step must not be re-initialised"
