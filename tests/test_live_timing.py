"""evaluate_live_runs' ms per inference: a short in-memory split is timed over several warm passes, the median
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
    live = dc.evaluate_live_runs(engine, x, y, 4, readout, {"dc": 0.5}, batch_size=4)["dc"]
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
    dc.evaluate_live_runs(engine, x, y, 4, readout, {"dc": 0.5}, batch_size=4)["dc"]
    assert len(calls) == 1 + dc.MAX_TIMED_PASSES
    clock = _Clock([0.6])
    monkeypatch.setattr(dc, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    calls.clear()
    live = dc.evaluate_live_runs(engine, x, y, 4, readout, {"dc": 0.5}, batch_size=4)["dc"]
    assert len(calls) == 2 and live.ms_per_inference == pytest.approx(1000 * 0.6 / 4)


def test_repeated_passes_add_no_exits_to_the_batch_1_plan():
    engine, readout = _engine()
    x = torch.randn(5, 3, 16, 16)
    dc.evaluate_live_runs(engine, x, torch.zeros(5, dtype=torch.int64), 4, readout, {"dc": 0.5}, batch_size=1)
    assert engine.chunk_planner.samples_seen((4, readout, 0.5)) == 5


def test_runs_are_timed_in_turn_each_reporting_its_median(monkeypatch):
    """Without and with DC on one split: the warm-ups, then one pass of each run per round, in turn, until every
    run's passes add up to TIMED_SECONDS; each run's ms is its own median pass, its results its own."""
    engine, readout = _engine()
    x, y = torch.randn(8, 3, 16, 16), torch.zeros(8, dtype=torch.int64)
    once = {th: engine.early_exit(x, 4, readout, th, batch_size=4) for th in (1.0, 0.5)}
    # no DC: 0.30, 0.05, 0.20 (0.55 s); DC: 0.10, 0.02, 0.40 (0.52 s): both past 0.5 s after the third round
    clock = _Clock([0.30, 0.10, 0.05, 0.02, 0.20, 0.40])
    monkeypatch.setattr(dc, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    seen: list[float] = []
    real = engine.early_exit

    def wrapped(x, steps, readout, threshold, **kwargs):
        seen.append(threshold)
        return real(x, steps, readout, threshold, **kwargs)

    engine.early_exit = wrapped  # type: ignore[method-assign]
    runs = dc.evaluate_live_runs(engine, x, y, 4, readout, {"no_dc": 1.0, "dc": 0.5}, batch_size=4)
    assert seen == [1.0, 0.5] + [1.0, 1.0, 0.5, 0.5] * 3  # the warm-ups, then 3 rounds of 2 batches a run
    assert runs["no_dc"].ms_per_inference == pytest.approx(1000 * 0.20 / 8)
    assert runs["dc"].ms_per_inference == pytest.approx(1000 * 0.10 / 8)
    for label, th in (("no_dc", 1.0), ("dc", 0.5)):
        assert runs[label].threshold == th
        for field in ("pred", "exit_step", "conf", "spikes"):
            assert torch.equal(getattr(runs[label].result, field), getattr(once[th], field)), (label, field)


def test_a_commands_in_memory_split_is_timed_over_rounds_too(monkeypatch):
    """The commands pass a Sharded split: in one process and in memory it is timed over rounds like a tensor;
    with several ranks (which could disagree on the count) over one pass."""
    import dcsim
    from dcsim.parallel.distributed import Sharded, World

    model = build_model("small_cnn", num_classes=10, in_channels=1, width=4).train()
    with torch.no_grad():
        model(torch.randn(32, 1, 8, 8))
    engine = Engine(convert(model.eval(), method="qffs"))
    readout = Readout.paper("qffs", engine.net.bits, 4)
    split = dcsim.data.load_digits_splits(seed=0)["test"].subset(range(8))
    for world, passes in ((World(), 3), (World(rank=0, size=2), 1)):
        clock = _Clock([0.30, 0.05, 0.20])
        monkeypatch.setattr(dc, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
        assert dc._repeatable(Sharded(split, world, progress=False)) == (passes > 1)
        if passes > 1:  # a 2-rank world needs torchrun to gather; its rule is the predicate above
            live = dc.evaluate_live_runs(
                engine, Sharded(split, world, progress=False), split.labels, 4, readout, {"dc": 0.5}, 4
            )["dc"]
            assert not clock.passes and live.ms_per_inference == pytest.approx(1000 * 0.20 / 8)
