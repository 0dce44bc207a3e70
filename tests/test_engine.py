"""Engine: live early exit vs trace analysis, compaction, streaming.

PyTorch's conv/linear may round differently at different batch sizes, so these tests use
"dyadic" networks (weights, thresholds and inputs on power-of-two grids) where every float
operation is exact: equality then tests the engine's logic, not the BLAS library's.
"""

import numpy as np
import pytest
import torch

import dcsim
from dcsim import analysis
from dcsim.sim.continuous import StreamStats, stream
from dcsim.sim.engine import NEVER
from dyadic import dyadic_inputs, resnet, small, trace_of

BACKENDS = ["native", "reference"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method,steps", [("qcfs", 12), ("qffs", 5)])
@pytest.mark.parametrize("batch_size", [1, 7, None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_live_early_exit_equals_trace_analysis(backend, method, steps, batch_size, channels_last):
    net, shape = small(method, seed=1)
    engine = dcsim.Engine(net, backend=backend, channels_last=channels_last)
    x = dyadic_inputs(23, shape, seed=2)
    readout = dcsim.Readout.paper(method, 2, steps, tau=0.7)
    trace = trace_of(engine, x, steps, readout)
    # thresholds spread over the observed scores, plus the ends of [0, 1]
    qs = np.quantile(trace.conf, [0.1, 0.4, 0.7, 0.95]).tolist()
    for c in [0.0, *qs, 1.0]:
        live = engine.early_exit(x, steps, readout, c, batch_size=batch_size)
        expected_steps = analysis.exit_steps(trace.conf, c)
        expected_pred = trace.pred[np.arange(len(x)), expected_steps - 1]
        assert np.array_equal(live.exit_step.numpy(), expected_steps), f"threshold {c}"
        assert np.array_equal(live.pred.numpy(), expected_pred), f"threshold {c}"
        assert np.array_equal(live.conf.numpy(), trace.conf[np.arange(len(x)), expected_steps - 1])
    assert (expected_steps == steps).all()  # c = 1.0: nobody passes a strict threshold of 1


@pytest.mark.parametrize("method,steps", [("qcfs", 12), ("qffs", 5)])
@pytest.mark.parametrize("chunk", [2, 5, 16])
def test_chunked_runs_equal_step_major_runs(method, steps, chunk):
    net, shape = small(method, seed=15)
    engine = dcsim.Engine(net)
    x = dyadic_inputs(17, shape, seed=16)
    readout = dcsim.Readout.paper(method, 2, steps)
    ref = engine.simulate(x, steps, readout, record_sums=True)
    got = engine.simulate(x, steps, readout, record_sums=True, chunk=chunk)
    assert torch.equal(got.pred, ref.pred) and torch.equal(got.conf, ref.conf)
    assert torch.equal(got.sums, ref.sums) and torch.equal(got.spikes, ref.spikes)
    trace = trace_of(engine, x, steps, readout)
    for c in np.quantile(trace.conf, [0.2, 0.6, 0.9]).tolist():
        a = engine.early_exit(x, steps, readout, c)
        b = engine.early_exit(x, steps, readout, c, batch_size=1, chunk=chunk)
        for f in ("pred", "exit_step", "conf", "spikes"):
            assert torch.equal(getattr(a, f), getattr(b, f)), (f, c)
    with pytest.raises(ValueError, match="chunk"):
        engine.early_exit(x, steps, readout, 0.5, chunk=0)


@pytest.mark.parametrize("method,steps", [("qcfs", 12), ("qffs", 5)])
@pytest.mark.parametrize("compact_fraction", [0.0, 0.3, 1.0])
def test_compaction_policy_changes_nothing_but_time(method, steps, compact_fraction):
    net, shape = small(method, seed=17)
    engine = dcsim.Engine(net)
    x = dyadic_inputs(19, shape, seed=18)
    readout = dcsim.Readout.paper(method, 2, steps)
    trace = trace_of(engine, x, steps, readout)
    for c in np.quantile(trace.conf, [0.2, 0.6, 0.9]).tolist():
        a = engine.early_exit(x, steps, readout, c, batch_size=8, chunk=2, compact_fraction=compact_fraction)
        e = analysis.exit_steps(trace.conf, c)
        assert np.array_equal(a.exit_step.numpy(), e)
        assert np.array_equal(a.pred.numpy(), trace.pred[np.arange(len(x)), e - 1])
    with pytest.raises(ValueError, match="compact_fraction"):
        engine.early_exit(x, steps, readout, 0.5, compact_fraction=1.5)


@pytest.mark.parametrize("method", ["qcfs", "qffs"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_early_exit_on_resnet_with_residuals_equals_trace(method, channels_last):
    net, shape = resnet(method, seed=3)
    engine = dcsim.Engine(net, channels_last=channels_last)
    x = dyadic_inputs(9, shape, seed=4)
    steps = 8 if method == "qcfs" else 4
    readout = dcsim.Readout.paper(method, 2, steps)
    trace = trace_of(engine, x, steps, readout)
    c = float(np.median(trace.conf))
    live = engine.early_exit(x, steps, readout, c)
    e = analysis.exit_steps(trace.conf, c)
    assert np.array_equal(live.exit_step.numpy(), e)
    assert np.array_equal(live.pred.numpy(), trace.pred[np.arange(len(x)), e - 1])


@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_spikes_without_exit_equal_full_simulation(method):
    net, shape = small(method, seed=5)
    engine = dcsim.Engine(net)
    x = dyadic_inputs(11, shape, seed=6)
    steps = 6
    sim = engine.simulate(x, steps)
    live = engine.early_exit(x, steps, dcsim.Readout(), 1.0, batch_size=4)
    assert torch.equal(live.spikes, sim.spikes)
    assert sim.spikes.shape == (11, len(net.neurons))
    assert int(sim.spikes.sum()) > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_compaction_keeps_survivor_state_bit_identical(backend, method):
    net, shape = small(method, seed=7)
    engine = dcsim.Engine(net, backend=backend)
    x = dyadic_inputs(13, shape, seed=8)
    readout = dcsim.Readout()
    full = engine.start(x)
    part = engine.start(x)
    for _ in range(3):
        engine.step(full, 10, readout, NEVER)
        engine.step(part, 10, readout, NEVER)
    keep = torch.tensor([0, 2, 3, 7, 12])
    part = engine.compact(part, keep)
    # every per-sample tensor but the admission times (the two states started at different instants)
    for a, b in zip(part.tensors()[:-1], full.tensors()[:-1], strict=True):
        assert torch.equal(a, b[keep])
    for _ in range(4):  # and they stay identical while both keep running
        engine.step(full, 10, readout, NEVER)
        engine.step(part, 10, readout, NEVER)
    for a, b in zip(part.tensors()[:-1], full.tensors()[:-1], strict=True):
        assert torch.equal(a, b[keep])


def _alone(engine, x, steps, readout, c):
    """Each sample run by itself (batch size 1)."""
    return engine.early_exit(x, steps, readout, c, batch_size=1)


@pytest.mark.parametrize("method,steps", [("qcfs", 10), ("qffs", 5)])
@pytest.mark.parametrize("slots", [1, 3, 8, 40])
@pytest.mark.parametrize("graphs", [False, True])
def test_stream_equals_each_sample_alone(method, steps, slots, graphs):
    net, shape = small(method, seed=9)
    engine = dcsim.Engine(net, channels_last=slots == 8)
    x = dyadic_inputs(25, shape, seed=10)
    readout = dcsim.Readout.paper(method, 2, steps)
    c = float(np.median(trace_of(engine, x, steps, readout).conf))
    alone = _alone(engine, x, steps, readout, c)
    rng = np.random.default_rng(slots)
    order = rng.permutation(len(x))
    stats = StreamStats(slots)
    results = list(stream(engine, ((int(i), x[i]) for i in order), slots, steps, readout, c, stats, graphs=graphs))
    ids = [r.id for r in results]
    assert sorted(ids) == list(range(len(x)))  # none lost, none duplicated
    for r in results:
        assert r.pred == int(alone.pred[r.id]) and r.exit_step == int(alone.exit_step[r.id]), r
        assert r.spikes == tuple(alone.spikes[r.id].tolist())
    summary = stats.summary()
    assert summary["samples"] == len(x) and 0 < summary["occupancy"] <= 1
    assert stats.busy_slot_steps == sum(r.exit_step for r in results)


def test_stream_input_error_surfaces_after_in_flight_samples_finish():
    net, shape = small("qcfs", seed=11)
    engine = dcsim.Engine(net)
    x = dyadic_inputs(10, shape, seed=12)

    def source():
        for i in range(6):
            yield x[i]
        raise RuntimeError("camera unplugged")

    for graphs in (False, True):
        got = []
        with pytest.raises(RuntimeError, match="camera unplugged"):
            for r in stream(engine, source(), 4, 6, dcsim.Readout(), 0.5, graphs=graphs):
                got.append(r)  # noqa: PERF402 -- keeps the results yielded before the source fails
        assert sorted(r.id for r in got) == list(range(6))


def test_stream_handles_short_and_empty_inputs():
    net, shape = small("qffs", seed=13)
    engine = dcsim.Engine(net)
    x = dyadic_inputs(2, shape, seed=14)
    for graphs in (False, True):
        assert sorted(r.id for r in stream(engine, iter([x[0], x[1]]), 16, 4, dcsim.Readout(), 0.9, graphs=graphs)) == [
            0,
            1,
        ]
        assert list(stream(engine, iter([]), 4, 4, dcsim.Readout(), 0.9, graphs=graphs)) == []
    with pytest.raises(ValueError, match="slots"):
        list(stream(engine, iter([x[0]]), 0, 4, dcsim.Readout(), 0.9))
    with pytest.raises(ValueError, match="threshold"):
        list(stream(engine, iter([x[0]]), 2, 4, dcsim.Readout(), 1.5))
    with pytest.raises(ValueError, match="threshold"):  # a bool is no threshold
        list(stream(engine, iter([x[0]]), 2, 4, dcsim.Readout(), True))


@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_channels_last_engine_equals_default_layout_in_exact_arithmetic(method):
    """Dyadic weights and inputs make every sum exact, so the layout's other summation order cannot show: this
    checks the layout handling. On trained networks channels_last changes a few spikes (float rounding)."""
    net, shape = resnet(method, seed=3)
    x = dyadic_inputs(6, shape, seed=20)
    readout = dcsim.Readout.paper(method, 2, 4)
    a = dcsim.Engine(net).simulate(x, 4, readout, record_sums=True, chunk=2)
    b = dcsim.Engine(net, channels_last=True).simulate(x, 4, readout, record_sums=True, chunk=2)
    for f in ("pred", "conf", "sums", "spikes"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


@pytest.mark.parametrize("method", ["qcfs", "qffs"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_refill_resets_rows_to_a_fresh_start(method, channels_last):
    net, shape = resnet(method, seed=3)
    engine = dcsim.Engine(net, channels_last=channels_last)
    x, y = dyadic_inputs(6, shape, seed=22), dyadic_inputs(2, shape, seed=23)
    state = engine.start(x)
    for _ in range(3):
        engine.step(state, 10, dcsim.Readout(), NEVER)
    before = [t.clone() for t in state.tensors()]
    rows = torch.tensor([4, 1])
    engine.refill(state, rows, y, torch.tensor([40, 10]))
    fresh = engine.start(y, ids=torch.tensor([40, 10]))
    other = torch.tensor([0, 2, 3, 5])
    for name, after, old, new in zip(range(len(before) - 1), state.tensors(), before, fresh.tensors(), strict=False):
        # every per-sample tensor but the last, the admission times
        assert torch.equal(after[rows], new), name
        assert torch.equal(after[other], old[other]), name
    assert bool((state.admitted[rows] >= before[-1][rows]).all())
    with pytest.raises(ValueError, match="NaN"):
        engine.refill(state, rows, torch.full_like(y, float("nan")), torch.tensor([1, 2]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
@pytest.mark.parametrize("chunk", [1, 3])
def test_a_blank_start_steps_as_a_filled_one(backend, method, chunk):
    """start(blank=True) leaves the membranes and spike counts unfilled and the first step takes u0 and 0 in
    their place: with NaN membranes and nonzero counts planted, every step equals a filled start's, bit for bit;
    the state is blank until that step only, and compaction keeps the flag."""
    net, shape = resnet(method, seed=3)  # the shared network (building one takes seconds)
    engine = dcsim.Engine(net, backend=backend)
    x = dyadic_inputs(5, shape, seed=31)
    filled, blank = engine.start(x), engine.start(x, blank=True)
    assert not filled.blank and blank.blank
    for u in blank.u.values():
        u.fill_(float("nan"))
    for z in blank.z.values():
        z.fill_(3)
    assert engine.compact(blank, torch.tensor([0, 1, 2, 3, 4])).blank
    for done in range(0, 6, chunk):
        a = engine.advance(filled, chunk, 6, dcsim.Readout(), done=done)
        b = engine.advance(blank, chunk, 6, dcsim.Readout(), done=done)
        assert not blank.blank
        assert torch.equal(a.pred, b.pred) and torch.equal(a.score, b.score) and torch.equal(a.counts, b.counts)
    for p, q in zip(filled.tensors()[:-1], blank.tensors()[:-1], strict=True):  # all but the admission times
        assert torch.equal(p, q)
