"""Quantizer adapters (dcsim.convert(quantizers=...)): exactness of the IF neuron against each
adapter's quantized activation at T = Qp with u0 = th/2 (half up exact; half to even one level
apart at even ties only), the registry forms, and the errors naming the layer or argument."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

import dcsim
from dcsim.conversion.adapters import Quantization, RoundingWarning, clip_floor_shift, official_lsq, quantize_reference
from dcsim.conversion.convert import ConversionError
from dcsim.models.lsq import LSQActivation
from official_model import LsqActivation


class QcfsIF(nn.Module):
    """QCFS-style activation (as in the QCFS code): thresh/L * clip(floor(x L / thresh + 0.5), 0, L)."""

    def __init__(self, L: int, thresh: float) -> None:
        super().__init__()
        self.L = L
        self.thresh = nn.Parameter(torch.tensor([thresh]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(x / self.thresh, 0, 1)
        return torch.floor(x * self.L + 0.5) / self.L * self.thresh


def _lsq(bits: int, s: float) -> LSQActivation:
    m = LSQActivation(bits)
    with torch.no_grad():
        m.step.fill_(s)
    return m


# (id, activation module, quantizers, step s, Qp, rounding); steps are powers of two so that
# x / s, Qp * s and the sums of spikes are exact in float32.
CASES = [
    ("dcsim-lsq-2bit", lambda: _lsq(2, 0.25), None, 0.25, 3, "half_up"),
    ("dcsim-lsq-3bit", lambda: _lsq(3, 0.125), None, 0.125, 7, "half_up"),
    ("official-2bit", lambda: LsqActivation(2, 0.5), {LsqActivation: official_lsq}, 0.5, 3, "half_even"),
    ("official-3bit", lambda: LsqActivation(3, 0.25), {LsqActivation: official_lsq}, 0.25, 7, "half_even"),
    ("qcfs-L8", lambda: QcfsIF(8, 2.0), {QcfsIF: clip_floor_shift()}, 0.25, 8, "half_up"),
    ("qcfs-L5", lambda: QcfsIF(5, 2.5), [(QcfsIF, clip_floor_shift("thresh", "L"))], 0.5, 5, "half_up"),
]


def _single_layer(act: nn.Module, width: int) -> nn.Module:
    """x -> 1x1 conv (weight 1) -> act -> flatten -> identity linear: the output current is the activation."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    fc = nn.Linear(width, width)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        fc.weight.copy_(torch.eye(width))
        fc.bias.zero_()
    return nn.Sequential(OrderedDict(conv=conv, act=act, flat=nn.Flatten(), fc=fc)).eval()


def _inputs(s: float, qp: int, seed: int) -> torch.Tensor:
    """Constant currents in units of s: every tie k + 0.5 (k = -1..Qp), both sides of each, and random quarter steps."""
    ties = torch.arange(-1, qp + 1, dtype=torch.float32) + 0.5
    g = torch.Generator().manual_seed(seed)
    rand = torch.randint(-8, 4 * (qp + 2), (40,), generator=g).float() / 4
    v = torch.cat([ties, ties - 0.125, ties + 0.125, rand])
    return (v * s).reshape(1, 1, 1, -1)


@pytest.mark.parametrize("case,build,quantizers,s,qp,rounding", CASES, ids=[c[0] for c in CASES])
def test_adapter_exact_at_T_equals_Qp(case, build, quantizers, s, qp, rounding):
    x = _inputs(s, qp, seed=qp)
    model = _single_layer(build(), x.shape[-1])
    q = Quantization(s, qp, rounding)
    with torch.no_grad():
        ann = model(x)
    # the adapter describes the module: its ANN output is the reference quantizer with that rounding
    assert torch.equal(ann, quantize_reference(x.flatten(1), q)), f"{case}: module output != adapter's description"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = dcsim.convert(model, method="qcfs", quantizers=quantizers)
    assert [w.category for w in caught] == ([RoundingWarning] if rounding == "half_even" else []), caught
    (neuron,) = [net.nodes[i] for i in net.neurons]
    assert neuron.threshold == qp * s and neuron.u0 == qp * s / 2
    assert net.bits == (q.bits if q.bits else None)

    sim = dcsim.Engine(net).simulate(x, steps=qp, record_sums=True)
    snn_mean_times_T = sim.sums[:, qp - 1]  # S_T = T * (mean output current); exact in float32 here
    half_up = quantize_reference(x.flatten(1), Quantization(s, qp, "half_up"))
    assert torch.equal(snn_mean_times_T, qp * half_up), f"{case}: SNN mean current != half-up quantized activation"
    if rounding == "half_up":
        assert torch.equal(snn_mean_times_T, qp * ann)
    else:
        v = x.flatten(1) / s
        even_tie = (v - 0.5 == torch.floor(v)) & (torch.floor(v) % 2 == 0) & (v > 0) & (v < qp)
        assert int(even_tie.sum()) >= 2, "the inputs must include even ties"
        diff = snn_mean_times_T / qp - ann
        assert torch.equal(diff[even_tie], torch.full_like(diff[even_tie], s)), "even ties: exactly one level more"
        assert torch.equal(diff[~even_tie], torch.zeros_like(diff[~even_tie])), "elsewhere: equal"


def test_predicate_form_and_user_entries_first():
    model = _single_layer(LsqActivation(2, 0.5), 8)
    with pytest.warns(RoundingWarning):
        net = dcsim.convert(model, quantizers=[(lambda m: type(m).__name__ == "LsqActivation", official_lsq)])
    assert [net.nodes[i].threshold for i in net.neurons] == [1.5]
    # a user entry for dcsim's own class takes precedence over the built-in adapter
    lsq = _single_layer(_lsq(2, 0.25), 8)
    net = dcsim.convert(lsq, quantizers={LSQActivation: lambda m: Quantization(0.5, 1)})
    assert [net.nodes[i].threshold for i in net.neurons] == [0.5]


def test_qffs_with_adapter_uses_levels_as_cap():
    net = dcsim.convert(_single_layer(QcfsIF(5, 2.5), 8), method="qffs", quantizers={QcfsIF: clip_floor_shift()})
    assert [net.nodes[i].zmax for i in net.neurons] == [5] and net.bits is None


def test_unknown_activation_names_the_registry():
    model = _single_layer(LsqActivation(2, 0.5), 8)
    with pytest.raises(ConversionError) as info:
        dcsim.convert(model)
    msg = str(info.value)
    assert "'act'" in msg and "LsqActivation" in msg and "quantizers=" in msg, msg


@pytest.mark.parametrize(
    "adapter,words",
    [
        (lambda m: Quantization(-1.0, 3), ["'act'", "step", "> 0"]),
        (lambda m: Quantization(0.5, 0), ["'act'", "levels", ">= 1"]),
        (lambda m: Quantization(0.5, 3, "nearest"), ["'act'", "rounding"]),
        (lambda m: (0.5, 3), ["'act'", "tuple", "Quantization"]),
        (clip_floor_shift("theta", "levels"), ["'act'", "'theta'"]),
        (official_lsq, ["'act'", "'scale'"]),
    ],
    ids=["negative-step", "zero-levels", "bad-rounding", "not-a-Quantization", "missing-attribute", "wrong-adapter"],
)
def test_bad_adapter_output_names_the_layer(adapter, words):
    model = _single_layer(QcfsIF(4, 1.0), 8)
    with pytest.raises(ConversionError) as info:
        dcsim.convert(model, quantizers={QcfsIF: adapter})
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize(
    "quantizers", [42, "LsqActivation", [LsqActivation], [(LsqActivation, 3)], [(3, official_lsq)]]
)
def test_bad_quantizers_argument(quantizers):
    with pytest.raises(TypeError, match="quantizers"):
        dcsim.convert(_single_layer(LsqActivation(2, 0.5), 8), quantizers=quantizers)


def test_nonpositive_official_scale_names_the_layer():
    act = LsqActivation(2, 0.5)
    with torch.no_grad():
        act.scale.fill_(0.0)
    with pytest.raises(ConversionError, match=r"'act'.*step"):
        dcsim.convert(_single_layer(act, 8), quantizers={LsqActivation: official_lsq})


def test_float_mode_lsq_points_to_the_thresholds():
    act = _lsq(2, 0.25)
    act.quantize = False
    with pytest.raises(ConversionError, match=r"'act'.*float.*dcsim.conversion.thresholds.clip_relus"):
        dcsim.convert(_single_layer(act, 8))
