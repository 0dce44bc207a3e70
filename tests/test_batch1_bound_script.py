"""bench/batch1_bound_cpu.py: the ratio its plan reaches from a cost curve, and the conv costs it times."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcsim.conversion.convert import convert
from dcsim.models import build_model
from dcsim.sim.engine import Engine

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bound(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import batch1_bound_cpu

    return batch1_bound_cpu


def test_the_ratio_is_one_for_proportional_costs_and_zero_for_fixed_ones(bound):
    exits = [3000, 2000, 0, 1000]  # mean 1.83 of 4 steps
    saving = 1 - (1 * 3000 + 2 * 2000 + 4 * 1000) / 6000 / 4
    assert bound.ratio(exits, [1.0, 2.0, 3.0, 4.0], saving)[2] == pytest.approx(1.0, abs=1e-3)  # the extra sample
    dc, no_dc, r = bound.ratio(exits, [1.0, 1.0, 1.0, 1.0], saving)  # a call costs the same whatever its steps
    assert dc == no_dc == 1.0 and r == 0.0


def test_conv_costs_time_every_chunk_size(bound):
    model = build_model("small_cnn", num_classes=10, width=4).eval()
    engine = Engine(convert(model, method="qcfs"))
    costs = bound.conv_costs(engine, (3, 8, 8), 3, rounds=1)
    assert len(costs) == 3 and all(c > 0 for c in costs)
