"""The steps-per-call plan of a lone sample (dcsim.sim.chunking) and ``chunk=None`` ("auto") in the engine.

The plan is checked against brute force over every split of T into chunks, on fresh random exit counts and
call costs; the engine's results under the plan must equal those at chunk 1, whatever the plan picks."""

import itertools
import random

import pytest
import torch

from dcsim.conversion.convert import convert
from dcsim.models import build_model
from dcsim.sim import chunking
from dcsim.sim.chunking import PROBE_CALLS, STALE_CALLS, ChunkPlanner
from dcsim.sim.engine import Engine
from dcsim.sim.readout import Readout
from dcsim.workflows.benchmark import mid_threshold
from dcsim.workflows.dynamic_confidence import evaluate_live_runs
from dcsim.workflows.options import steps_per_call


def _compositions(total: int):
    """Every sequence of positive chunk sizes summing to ``total``."""
    for cuts in itertools.product([False, True], repeat=total - 1):
        sizes, size = [], 1
        for cut in cuts:
            if cut:
                sizes.append(size)
                size = 1
            else:
                size += 1
        yield [*sizes, size]


def _expected_cost(sizes: list[int], exits: list[int], cost: list[float]) -> float:
    """Expected wall time per sample of running chunks ``sizes`` (one extra sample counted at T, as the plan does)."""
    counts = list(exits)
    counts[-1] += 1
    total, t, out = sum(counts), 0, 0.0
    for k in sizes:
        alive = sum(counts[t:])  # samples that run past step t
        out += cost[k - 1] * alive / total
        t += k
    return out


def _planned(plan: list[int]) -> list[int]:
    sizes, t = [], 0
    while t < len(plan):
        sizes.append(plan[t])
        t += plan[t]
    return sizes


@pytest.mark.parametrize("steps", [1, 2, 4, 6, 8])
def test_the_plan_is_the_cheapest_split_of_t(steps, monkeypatch):
    monkeypatch.setattr(chunking, "SPLIT_MARGIN", 0.0)  # the plain DP (the margin: the next test)
    rng = random.Random()
    for _ in range(20):
        exits = [rng.choice([0, 0, 1, 5, 40]) for _ in range(steps)]
        fixed, per_step = rng.uniform(0, 5), rng.uniform(0.1, 2)
        cost = [fixed + per_step * k * rng.uniform(0.8, 1.2) for k in range(1, steps + 1)]
        plan = ChunkPlanner.plan(exits, cost)
        assert all(1 <= plan[t] <= steps - t for t in range(steps))
        best = min(_expected_cost(sizes, exits, cost) for sizes in _compositions(steps))
        assert _expected_cost(_planned(plan), exits, cost) == pytest.approx(best, rel=1e-12)
        value, chosen = ChunkPlanner.solve(exits, cost)
        assert chosen == plan and value[-1] == 0.0
        assert value[0] == pytest.approx(best, rel=1e-12)  # V(0): the expected time of the cheapest split


@pytest.mark.parametrize("steps", [2, 4, 8])
def test_a_split_must_beat_one_call_by_the_margin(steps):
    rng = random.Random()
    for _ in range(50):
        exits = [rng.choice([0, 0, 1, 5, 40]) for _ in range(steps)]
        fixed, per_step = rng.uniform(0, 5), rng.uniform(0.1, 2)
        cost = [fixed + per_step * k * rng.uniform(0.8, 1.2) for k in range(1, steps + 1)]
        value, plan = ChunkPlanner.solve(exits, cost)
        for t in range(steps):
            whole = cost[steps - t - 1]
            assert value[t] <= whole + 1e-12  # never worse than the steps left in one call
            if plan[t] != steps - t:  # a split only where it is expected SPLIT_MARGIN faster
                assert value[t] < (1 - chunking.SPLIT_MARGIN) * whole
    # a split 3% cheaper than one call is not taken (2 steps, then 2 for 3 of 33: 2.0 + 3/33 * 2.0 = 2.18 against
    # 2.25), one 34% cheaper is (3.0 + 0.1 * 3.0 = 3.3 against 5.0)
    assert ChunkPlanner.plan([0, 30, 0, 2], [1.9, 2.0, 2.1, 2.25])[0] == 4
    assert ChunkPlanner.plan([0, 9, 0, 0], [2.0, 3.0, 4.0, 5.0])[0] == 2


def test_expected_seconds_is_v0_of_the_recorded_exits_and_calls():
    planner = ChunkPlanner()
    for k, seconds in ((1, 2.0), (1, 2.0), (1, 2.0), (2, 3.0), (2, 3.0), (2, 3.0)):  # first call of each k uncounted
        planner.observe_call(k, seconds)
    for step in (1, 1, 2, 4):
        planner.observe_exit("run", 4, step)
    cost = planner.costs(4)
    assert cost == [2.0, 3.0, 4.0, 5.0]  # extended past 2 steps by the last segment's slope
    best = min(_expected_cost(sizes, [2, 1, 0, 1], cost) for sizes in _compositions(4))
    assert planner.expected_seconds("run", 4) == pytest.approx(best, rel=1e-12)
    assert planner.expected_seconds("never seen", 4) == 5.0  # no exit recorded: the extra sample runs all 4 steps


def test_the_plan_in_the_plain_cases():
    cost = [1.0 + k for k in range(1, 5)]  # c(k) = 1 + k
    assert ChunkPlanner.plan([100, 0, 0, 0], cost)[0] == 1  # all stop at step 1: one step, then rarely more
    assert ChunkPlanner.plan([0, 0, 0, 0], cost) == [4, 3, 2, 1]  # none stops early: all steps in one call
    # all stop at step 2: two steps (3.0 + 0.1 * 3.0) beat one (2.0 + 2.3) and four (5.0)
    assert _planned(ChunkPlanner.plan([0, 9, 0, 0], cost)) == [2, 2]


def test_call_costs_are_interpolated_and_probed_first():
    planner = ChunkPlanner()
    key = ("run",)
    asked = []
    for _ in range((PROBE_CALLS + 1) * 3):  # T = 4: probe sizes 1, 2 and 4 (T itself), a first call each uncounted
        k = planner.next_chunk(key, 4, 0)
        asked.append(k)
        planner.observe_call(k, 100.0 if k not in asked[:-1] else 1.0 + k)  # a cold first call: not counted
    assert sorted(set(asked)) == [1, 2, 4] and all(asked.count(k) == PROBE_CALLS + 1 for k in (1, 2, 4))
    assert planner.call_seconds(3) == pytest.approx(4.0)  # between 2 (3 s) and 4 (5 s)
    assert planner.call_seconds(6) == pytest.approx(7.0)  # past 4, on the line through 1 (2 s) and 4 (5 s)
    assert planner.next_chunk(key, 4, 3) == 1  # never more than the steps left
    planner.observe_call(3, 0.5)  # noise: a 3-step call timed below a 2-step one (its first call not counted)
    planner.observe_call(3, 0.5)
    pooled = (2 * 3.0 + 0.5) / 3  # 2 (two calls) and 3 (one) break the order: pooled into their weighted mean
    assert [k for k, _ in planner.fitted()] == [1, 2, 3, 4]
    assert [c for _, c in planner.fitted()] == pytest.approx([2.0, pooled, pooled, 5.0])
    assert planner.costs(4) == pytest.approx([2.0, pooled, pooled, 2.0 + pooled])  # 4 steps: at most 1 + 3
    for _ in range(50):
        planner.observe_exit(key, 4, 1)
    assert planner.next_chunk(key, 4, 0) == 1


def test_the_plan_is_solved_again_once_a_new_chunk_size_is_timed():
    """A plan made while only 1- and 2-step calls were timed (c(k) = k: a first step pays, as half the samples stop
    there) must not outlive the timing of a cheap 4-step call (found in dcsim bench at batch 1, where such a plan
    held for 16 samples)."""
    planner = ChunkPlanner()
    key = ("no DC",)
    for k in (1, 2):
        for _ in range(PROBE_CALLS + 1):
            planner.observe_call(k, float(k))
    for step in (1, 1, 4):
        planner.observe_exit(key, 4, step)
    assert planner.next_chunk(key, 4, 3) == 1  # 4 does not fit in the step left: the plan is made without it
    assert planner.plan_for(key)[0] == 1  # 1 + 2/4 * 3 = 2.5 against one call's 4
    for _ in range(PROBE_CALLS + 1):
        planner.observe_call(4, 1.0)
    assert planner.next_chunk(key, 4, 0) == 4  # costs now 1, 2, 2, 2: 1 + 2/4 * 2 = 2 is no cheaper than one call


def test_sizes_the_plan_stops_using_are_timed_again():
    """A size no call has run for STALE_CALLS calls is timed again (where it is no larger than the plan's chunk)
    and its old times dropped, so that the plan does not weigh the first calls' times of unused sizes against fresh
    ones (the machine's speed drifts)."""
    planner = ChunkPlanner()
    key = ("run",)
    for k, seconds in ((1, 1.0), (2, 4.0), (4, 5.0)):
        for _ in range(PROBE_CALLS + 1):
            planner.observe_call(k, seconds)
    for _ in range(40):  # samples that stop after one step: the plan's first call is a 1-step call
        planner.observe_exit(key, 4, 1)
    assert planner.next_chunk(key, 4, 0) == 1 and planner.plan_for(key)[0] == 1
    for _ in range(STALE_CALLS + 1):  # the plan's 1-step calls
        planner.observe_call(1, 1.0)
    assert planner.next_chunk(key, 4, 0) == 1  # 2 and 4 are stale, but larger than the plan's chunk: not run
    later = ("later run",)  # a run whose samples go on to step 4 (its plan's chunk: 4)
    asked = []
    for _ in range(STALE_CALLS // 2):  # then the machine (or the net) runs 1-step calls slower, the others faster
        k = planner.next_chunk(later, 4, 0)
        asked.append(k)
        planner.observe_call(k, {1: 3.0, 2: 2.0, 4: 2.5}[k])
        planner.observe_exit(later, 4, 4)  # a sample (the plan is solved again as they add up)
    assert asked.count(2) == PROBE_CALLS  # timed again once the plan's chunk holds it
    assert list(planner._seconds[2]) == [2.0] * PROBE_CALLS  # the old times of 2 and 4 dropped
    assert list(planner._seconds[4])[:PROBE_CALLS] == [2.5] * PROBE_CALLS
    assert planner.next_chunk(later, 4, 0) == 4 and asked[-1] == 4  # the plan: all 4 steps in one call
    assert planner.next_chunk(key, 4, 3) == 1


def test_steps_per_call_parses_auto():
    assert steps_per_call("auto") is None and steps_per_call("3") == 3
    with pytest.raises(ValueError):
        steps_per_call("fast")


@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_auto_chunk_gives_the_results_of_chunk_1(method):
    """Whatever the plan picks (it changes as calls are timed and exits counted), each sample's results stay."""
    model = build_model("small_cnn", num_classes=10, width=8).train()
    with torch.no_grad():
        model(torch.randn(64, 3, 32, 32))  # batch-norm statistics and LSQ steps
    steps = 12 if method == "qcfs" else 4
    x = torch.randn(16, 3, 32, 32)
    engine = Engine(convert(model.eval(), method=method), count_ops=method == "qffs")  # sops: the lone path's too
    readout = Readout.paper(method, engine.net.bits, steps)
    th = mid_threshold(engine, x, steps, readout)
    ref = engine.early_exit(x, steps, readout, th, batch_size=1, chunk=1)
    assert 1 < float(ref.exit_step.float().mean()) < steps
    for batch_size in (1, 1, 1, 5):
        run = engine.early_exit(x, steps, readout, th, batch_size=batch_size, chunk=None)
        for f in ("pred", "exit_step", "conf", "spikes", "sops"):
            assert (getattr(run, f) is None) == (f == "sops" and method == "qcfs"), f
            if getattr(run, f) is not None:
                assert torch.equal(getattr(run, f), getattr(ref, f)), (batch_size, f)
    assert len(engine.chunk_planner._seconds) >= 2  # batch 1 ran under the plan, probing chunk sizes


def test_exits_unrecorded_skips_exits_not_call_times():
    planner, key = ChunkPlanner(), (4, "readout", 0.5)
    planner.observe_exit(key, 4, 2)
    with planner.exits_unrecorded():
        planner.observe_exit(key, 4, 3)
        for _ in range(2):
            planner.observe_call(1, 1.0)
    planner.observe_exit(key, 4, 4)
    assert planner.samples_seen(key) == 2 and planner.samples_seen("other") == 0
    assert len(planner._seconds[1]) == 1  # the first call sets up; the second counts, inside or not


def test_live_eval_counts_the_data_exits_only():
    """evaluate_live_runs' warm-up on a zero image at batch 1 leaves no exit in the plan's counts."""
    model = build_model("small_cnn", num_classes=10, width=8).train()
    with torch.no_grad():
        model(torch.randn(64, 3, 32, 32))
    engine = Engine(convert(model.eval(), method="qffs"))
    readout = Readout.paper("qffs", engine.net.bits, 4)
    x = torch.randn(6, 3, 32, 32)
    evaluate_live_runs(engine, x, torch.zeros(6, dtype=torch.int64), 4, readout, {"dc": 0.5}, batch_size=1)
    assert engine.chunk_planner.samples_seen((4, readout, 0.5)) == 6


def test_a_size_timed_on_a_slow_moment_weighs_by_its_calls():
    """Sizes timed many times outweigh one timed twice on a slow moment: its cost no longer lifts the sizes above it
    (the running maximum did, and a run without exits was split: 25 steps timed at 19 and 27 ms lifted c(27) from
    its sixteen calls' 18.6 ms to 23 ms, above c(4) + c(23)); a run in which nothing stops early runs in one call."""
    planner = ChunkPlanner()
    for k, ms, calls in ((1, 1.1, 16), (2, 2.0, 16), (4, 3.4, 2), (23, 16.2, 16), (25, 23.0, 2), (27, 18.6, 16)):
        for _ in range(calls + 1):
            planner.observe_call(k, ms / 1e3)
    costs = planner.costs(27)
    assert costs == sorted(costs)
    assert costs[26] == pytest.approx((23.0 * 2 + 18.6 * 16) / 18 / 1e3)  # 25 and 27 pooled
    assert costs[26] < costs[3] + costs[22]
    key = ("no exits",)
    for _ in range(40):
        planner.observe_exit(key, 27, 27)
    assert planner.plan_for(key) is None and planner.next_chunk(key, 27, 0) == 27


def _expected_stepping(t: int, exits: list[int], step: float) -> float:
    """Expected wall time of a sample alive after t steps, stepped until its exit at ``step`` seconds a step (one
    extra sample counted at T)."""
    counts = list(exits)
    counts[-1] += 1
    alive = sum(counts[t:])
    return step * sum((s - t) * c for s, c in enumerate(counts, start=1) if s > t) / alive


@pytest.mark.parametrize("steps", [2, 4, 6])
def test_stepping_is_planned_where_it_is_cheapest(steps, monkeypatch):
    """With stepping (STEP: a call that runs until the exit, ``step`` seconds a step), V(t) is the least of the best
    chunked plan and stepping from t on, on fresh random exits and costs, never before ``step_from``."""
    monkeypatch.setattr(chunking, "SPLIT_MARGIN", 0.0)
    rng = random.Random()
    for _ in range(20):
        exits = [rng.randint(0, 5) for _ in range(steps)]
        cost = sorted(rng.uniform(0.5, 3.0) * k for k in range(1, steps + 1))
        step = rng.uniform(0.3, 3.0)
        step_from = rng.randint(0, steps - 1)
        value, plan = ChunkPlanner.solve(exits, cost, step, step_from)
        plain, _ = ChunkPlanner.solve(exits, cost)
        assert all(plan[t] != chunking.STEP for t in range(step_from))
        for t in range(steps):
            if plan[t] == chunking.STEP:
                assert value[t] == pytest.approx(_expected_stepping(t, exits, step), rel=1e-9)
            assert value[t] <= plain[t] + 1e-12  # stepping is one option more
        assert value[0] <= _expected_stepping(0, exits, step) + 1e-12 or step_from > 0
    # samples that stop at every step: stepping at the cost of a step in a long call is the plan
    assert ChunkPlanner.plan([1, 1, 1, 1], [1.5, 2.5, 3.5, 4.5], 1.0) == [chunking.STEP] * 4


def test_stepping_is_probed_and_timed_per_step():
    """Where the engine can step a sample, the planner asks for STEP PROBE_CALLS times once the sizes are probed;
    a stepping call's time counts per step (its median is s); before any, s is c(1)."""
    planner = ChunkPlanner()
    key = ("run",)
    for _ in range((PROBE_CALLS + 1) * 3):
        k = planner.next_chunk(key, 4, 0, step_from=0)
        assert k != chunking.STEP  # sizes first
        planner.observe_call(k, 1.0 + k)
    assert planner.step_seconds() == pytest.approx(planner.call_seconds(1))
    assert planner.next_chunk(key, 4, 0, step_from=1) != chunking.STEP  # not before step_from
    for seconds in (3.0, 4.5):
        assert planner.next_chunk(key, 4, 1, step_from=1) == chunking.STEP
        planner.observe_stepping(3, seconds)
    assert planner.step_seconds() == pytest.approx((1.0 + 1.5) / 2)
    for _ in range(40):
        planner.observe_exit(key, 4, 4)  # every sample runs to T: one call beats stepping (1.25 s a step)
    assert planner.next_chunk(key, 4, 0, step_from=0) == 4
    assert planner.expected_seconds(key, 4, step_from=0) == pytest.approx(5.0)


def test_the_engine_steps_lone_samples_to_the_same_results():
    """On a network whose 1-step programs are one call list, early exit at batch 1 steps samples (the planner times
    stepping calls) and gives chunk 1's results."""
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, width=8).train()
    with torch.no_grad():
        model(torch.randn(64, 3, 32, 32))  # batch-norm statistics and LSQ steps
    net = convert(model.eval(), method="qcfs")
    x = torch.randn(12, 3, 32, 32)
    engine, single = Engine(net), Engine(net)
    readout = Readout.paper("qcfs", 2, 8)
    threshold = mid_threshold(engine, x, 8, readout)
    for _ in range(3):
        auto = engine.early_exit(x, 8, readout, threshold, batch_size=1)
    ones = single.early_exit(x, 8, readout, threshold, batch_size=1, chunk=1)
    for f in ("pred", "exit_step", "conf", "spikes"):
        assert torch.equal(getattr(auto, f), getattr(ones, f)), f
    assert engine.chunk_planner._step_seconds
