"""Temperature scaling, ECE and readout settings."""

import math

import pytest
import torch

import dcsim
from dcsim.analysis.calibration import calibration_report, expected_calibration_error, fit_temperature


def _synthetic(n: int, k: int, true_tau: float, seed: int):
    """Labels drawn from softmax(z / true_tau): the NLL-optimal temperature is near true_tau."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 4
    y = torch.multinomial(torch.softmax(z / true_tau, dim=1), 1, generator=g).squeeze(1)
    return z.float(), y


@pytest.mark.parametrize("true_tau", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_generating_temperature(true_tau):
    z, y = _synthetic(20000, 10, true_tau, seed=1)
    tau = fit_temperature(z, y)
    assert abs(tau - true_tau) / true_tau < 0.08, tau
    # and it is a minimum of the NLL
    nll = lambda t: float(torch.nn.functional.cross_entropy(z.double() / t, y))  # noqa: E731
    assert nll(tau) <= min(nll(tau * 0.9), nll(tau * 1.1))


def test_calibration_report_lowers_nll_and_ece_of_an_overconfident_model():
    z, y = _synthetic(20000, 10, 3.0, seed=2)  # logits 3x too sharp
    r = calibration_report(z, y)
    assert r["nll_after"] < r["nll_before"]
    assert r["ece_after"] < r["ece_before"]


def _ece_brute(conf, correct, bins):
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = [(c, k) for c, k in zip(conf, correct, strict=True) if (lo < c <= hi) or (b == 0 and c == 0.0)]
        if sel:
            acc = sum(k for _, k in sel) / len(sel)
            avg = sum(c for c, _ in sel) / len(sel)
            total += len(sel) / len(conf) * abs(acc - avg)
    return total


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("bins", [1, 3, 15])
def test_ece_matches_brute_force(seed, bins):
    g = torch.Generator().manual_seed(seed)
    conf = torch.rand(300, generator=g, dtype=torch.float64)
    conf[:20] = torch.tensor([b / bins for b in range(bins)] * (20 // bins + 1), dtype=torch.float64)[:20]  # bin edges
    correct = torch.rand(300, generator=g) < conf
    got = expected_calibration_error(conf, correct, bins)
    want = _ece_brute(conf.tolist(), correct.tolist(), bins)
    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)


def test_calibration_bad_input():
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(torch.randn(4), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(torch.randn(4, 3), torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="bins"):
        expected_calibration_error(torch.rand(3), torch.ones(3, dtype=torch.bool), bins=0)


def test_readout_settings():
    r = dcsim.Readout.paper("qffs", bits=2, steps=6, tau=1.5)
    assert r.alpha == 3 and r.tau == 1.5 and math.isclose(r.scale, 1 / 4.5)
    assert dcsim.Readout.paper("qcfs", bits=2, steps=27).alpha == 27
    official = dcsim.Readout("max_softmax", alpha=dcsim.sim.readout.OFFICIAL_DEMO_ALPHA, tau=1.0)
    assert math.isclose(official.scale, 1 / 30)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            dcsim.Readout(alpha=bad)
        with pytest.raises(ValueError, match="tau"):
            dcsim.Readout(tau=bad)
    with pytest.raises(ValueError, match="kind"):
        dcsim.Readout(kind="softmin")
    with pytest.raises(ValueError, match="method"):
        dcsim.Readout.paper("lif", 2, 4)
