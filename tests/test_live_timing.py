"""evaluate_live's ms per inference: a short in-memory split is timed over several warm passes, the median
reported; the results are those of one pass, and the repeated passes add no exits to the batch-1 plan."""

import types

import pytest
import torch

from dcsim.conversion.convert import convert
from dcsim.models import build_model
from dcsim.sim.engine import Engine
from dcsim.sim.readout import Readout
from dcsim.workflows import dynamic_confidence as dc


class _Clock:
    """A perf_counter that advances by the scripted seconds of each timed pass (start and end calls alternate)."""

    def __init__(self, passes: list[float]) -> None:
        self.passes, self.now, self.calls = list(passes), 0.0, 0

    def perf_counter(self) -> float:
        if self.calls % 2:  # the end of a pass
            self.now += self.passes.pop(0)
        self.calls += 1
        return self.now


def _engine() -> tuple[Engine, Readout]:
    model = build_model("small_cnn", num_classes=10, width=4).train()
    with torch.no_grad():
        model(torch.randn(32, 3, 16, 16))
    engine = Engine(convert(model.eval(), method="qffs"))
    return engine, Readout.paper("qffs", engine.net.bits, 4)


def _counting(engine: Engine) -> list[int]:
    """Count the engine's early_exit calls (warm-up and passes)."""
    calls: list[int] = []
    real = engine.early_exit

    def wrapped(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    engine.early_exit = wrapped  # type: ignore[method-assign]
    return calls


def test_short_split_reports_the_median_of_its_passes(monkeypatch):
    engine, readout = _engine()
    x, y = torch.randn(8, 3, 16, 16), torch.zeros(8, dtype=torch.int64)
    once = engine.early_exit(x, 4, readout, 0.5, batch_size=4)
    clock = _Clock([0.30, 0.05, 0.20])  # 0.55 s after three passes: TIMED_SECONDS (0.5) reached
    monkeypatch.setattr(dc, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    calls = _counting(engine)
    live = dc.evaluate_live(engine, x, y, 4, readout, 0.5, batch_size=4)
    assert len(calls) == 1 + 3 * 2  # the warm-up, then 3 passes of 2 batches
    assert live.ms_per_inference == pytest.approx(1000 * 0.20 / 8)  # the median pass
    for field in ("pred", "exit_step", "conf", "spikes"):
        assert torch.equal(getattr(live.result, field), getattr(once, field)), field


def test_passes_stop_at_the_cap_and_a_long_pass_is_timed_once(monkeypatch):
    engine, readout = _engine()
    x, y = torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.int64)
    clock = _Clock([0.01] * dc.MAX_TIMED_PASSES)
    monkeypatch.setattr(dc, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    calls = _counting(engine)
    dc.evaluate_live(engine, x, y, 4, readout, 0.5, batch_size=4)
    assert len(calls) == 1 + dc.MAX_TIMED_PASSES
    clock = _Clock([0.6])
    monkeypatch.setattr(dc, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    calls.clear()
    live = dc.evaluate_live(engine, x, y, 4, readout, 0.5, batch_size=4)
    assert len(calls) == 2 and live.ms_per_inference == pytest.approx(1000 * 0.6 / 4)


def test_repeated_passes_add_no_exits_to_the_batch_1_plan():
    engine, readout = _engine()
    x = torch.randn(5, 3, 16, 16)
    dc.evaluate_live(engine, x, torch.zeros(5, dtype=torch.int64), 4, readout, 0.5, batch_size=1)
    assert engine.chunk_planner.samples_seen((4, readout, 0.5)) == 5
