"""bench/profile_early_exit.py's instrumented engine runs every kernel the engine calls (it broke when kernel 5,
the 2x2 pool, was added) and gives the results of the plain engine."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dcsim.conversion.convert import convert
from dcsim.models import build_model
from dcsim.sim.engine import Engine
from dcsim.sim.network import AvgPool
from dcsim.sim.readout import Readout

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def profiler(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import profile_early_exit

    return profile_early_exit


@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_profile_runs_a_network_with_2x2_pools(profiler, method):
    model = build_model("small_cnn", num_classes=10, width=8).train()
    with torch.no_grad():
        model(torch.randn(64, 3, 32, 32))
    engine = Engine(convert(model.eval(), method=method))
    assert any(isinstance(n, AvgPool) and n.is_2x2 for n in engine.net.nodes)
    steps = 4
    case = SimpleNamespace(x=torch.randn(8, 3, 32, 32), steps=steps, readout=Readout.paper(method, 2, steps))
    plain = engine.early_exit(case.x, steps, case.readout, 0.5, batch_size=4)
    parts = profiler.profile(engine, case, batch=4, n=8, threshold=0.5)
    assert parts["steps"] == float(plain.exit_step.sum())
    assert set(profiler.PARTS) - {"masks", "compact"} <= set(parts)
    assert parts["convs"] > 0 and parts["neuron"] > 0 and parts["total"] >= parts["convs"]
    again = engine.early_exit(case.x, steps, case.readout, 0.5, batch_size=4)  # the instrumentation is removed
    assert torch.equal(again.exit_step, plain.exit_step) and torch.equal(again.spikes, plain.spikes)
