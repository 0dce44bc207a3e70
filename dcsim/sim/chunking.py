"""How many steps a lone sample computes per call under early exit: a plan measured as it runs.

At batch 1 on the CPU a call of k steps costs far less than k calls of one step (the trained ResNet-18 w16,
1 thread: all 27 steps in one call take about half the time of 27 one-step calls), so several steps per
call are faster, but a sample that exits inside a chunk pays for the chunk's later steps. For a sample that has run t of T
steps the plan takes the k that minimises the expected wall time left,

    V(t) = min over k in 1..T-t of  c(k) + S(t + k) / S(t) * V(t + k),    V(T) = 0,

except that where that minimum is not SPLIT_MARGIN below c(T - t) the plan runs the T - t steps left in one call
(V(t) = c(T - t)): a split the noisy costs favour by a few % is no surer than the run without DC's one call.

c(k): the median wall time of the recent k-step calls (the first call of each k, which sets up the
conv library's kernels for that shape, is not counted), made non-decreasing in k by an isotonic fit weighted by
each size's timed calls (more steps never cost less; this absorbs timing noise, and a size timed twice weighs
less than one timed sixteen times), linear between the chunk sizes timed (PROBE_CHUNKS and any other size run),
extended past the largest on the line through the smallest and the largest, and made subadditive (a call never
costs more than two calls that split it, see :meth:`ChunkPlanner.costs`); S(t): the share of the samples
seen so far (for this T, readout and threshold) that run past step t, counting one extra sample that
runs to T, so that no step looks certain to end a sample. Until each probe size has been timed
PROBE_CALLS times the next untimed size that fits is run instead; larger sizes are timed when the plan
first runs them (on costs extended from the probes), so a run whose samples stop early never pays for a
long call it would not choose. A timed size that no call has run for STALE_CALLS calls is timed again,
PROBE_CALLS times, where it is no larger than the plan's next chunk (so that no step the plan would not run is
computed), and its old times are dropped: the sizes the plan stops using would otherwise keep the times of their
first calls while those it uses follow the machine (a 2-core CPU's call times drift by 1.5x within a process),
and the plan would compare stale costs with fresh ones. The plan changes the time only,
never the results: exits are decided per step whatever the chunk (see :meth:`Engine.advance`).
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
from collections import deque
from collections.abc import Hashable, Iterator

PROBE_CHUNKS = (1, 2, 4)
"""Chunk sizes timed before the plan is used (those up to T)."""
PROBE_CALLS = 2
"""Timed calls per probe size before the plan is used."""
RECENT_CALLS = 16
"""Calls per chunk size whose median is c(k)."""
STALE_CALLS = 64
"""Calls after which a timed chunk size that none of them ran is timed again: PROBE_CALLS calls of each size the plan
does not use (and that fits its chunk) every STALE_CALLS calls or so."""
SPLIT_MARGIN = 0.05
"""A sample that has steps left runs them in one call unless the plan's split of them is expected to take at least this
share less time: the costs are medians of a noisy machine's calls (a 2-core CPU's move by 10-40% between processes),
and a split that the costs favour by a few % is as likely slower as faster, while one call is what the run without
DC does."""
STEP = 0
"""The plan's entry for a call that steps the sample until its exit (one step a run of a native call list,
:meth:`dcsim.sim.program.ChunkProgram.step_until_exit`) instead of a chunk of k steps."""
REPLAN_EVERY = 16
"""Most samples between two solutions of V (solving costs O(T^2)): V is solved again once the samples seen
have doubled (at first) or grown by this many, and whenever a chunk size is timed for the first time or again."""


class ChunkPlanner:
    """The plan above for one engine: call times shared by every run, exit counts per (T, readout, threshold)."""

    def __init__(self) -> None:
        self._seconds: dict[int, deque[float]] = {}  # k -> recent counted call times (never empty)
        self._cold: set[int] = set()  # chunk sizes whose first (uncounted) call has run
        self._calls = 0  # calls observed
        self._last_call: dict[int, int] = {}  # k -> the call count at its latest call
        self._retime: dict[int, int] = {}  # k -> calls left to time again (its old times dropped at the first)
        self._timings = 0  # sizes first timed or timed again: the plans made before a change are re-solved
        self._exits: dict[Hashable, list[int]] = {}  # key -> samples that ended at step t (index t - 1)
        self._plans: dict[Hashable, tuple[int, tuple[int, int | None], list[int]]] = {}  # key -> (seen, when, plan)
        self._recording = True  # whether exits are recorded (see exits_unrecorded)
        self._step_seconds: deque[float] = deque(maxlen=RECENT_CALLS)  # seconds per step of recent stepping calls
        self._step_from: dict[Hashable, int | None] = {}  # key -> the latest step_from the engine gave

    def next_chunk(self, key: Hashable, steps: int, ran: int, step_from: int | None = None) -> int:
        """Steps for the next call of a lone sample that has run ``ran`` of ``steps`` (1 <= result <= steps - ran),
        or :data:`STEP` (step until the exit) where the engine can step the sample from ``step_from`` steps on."""
        left = steps - ran
        for k in PROBE_CHUNKS:
            if k <= left and len(self._seconds.get(k, ())) < PROBE_CALLS:
                return k
        self._step_from[key] = step_from
        stepping = step_from is not None and ran >= step_from
        if stepping and len(self._step_seconds) < PROBE_CALLS:
            return STEP
        exits = self._exits.setdefault(key, [0] * steps)
        seen = sum(exits)
        cached = self._plans.get(key)
        if (
            cached is None
            or (self._timings, step_from) != cached[1]
            or seen >= cached[0] + min(REPLAN_EVERY, max(cached[0], 1))
        ):
            step = self.step_seconds() if step_from is not None else None
            cached = (seen, (self._timings, step_from), self.plan(exits, self.costs(steps), step, step_from or 0))
            self._plans[key] = cached
        if cached[2][ran] == STEP:
            return STEP
        chunk = min(cached[2][ran], left)
        for k, at in self._last_call.items():
            if k in self._seconds and k not in self._retime and self._calls - at > STALE_CALLS:
                self._retime[k] = PROBE_CALLS
        stale = [k for k in self._retime if k <= chunk]  # no step the plan would not run: a call more at most
        return max(stale, default=chunk)

    def plan_for(self, key: Hashable) -> list[int] | None:
        """The latest plan of run ``key`` (the chunk for each number of steps run), None before there is one."""
        cached = self._plans.get(key)
        return None if cached is None else cached[2]

    def observe_call(self, k: int, seconds: float) -> None:
        """Record the wall time of a k-step call of one row (the first call of each k is not counted)."""
        self._calls += 1
        self._last_call[k] = self._calls
        if k not in self._cold:
            self._cold.add(k)
            return
        if k not in self._seconds:
            self._timings += 1
        left = self._retime.pop(k, None)
        if left == PROBE_CALLS:  # timed again after STALE_CALLS calls without it: its old times go
            self._seconds[k].clear()
        if left is not None and left > 1:
            self._retime[k] = left - 1
        elif left is not None:
            self._timings += 1
        self._seconds.setdefault(k, deque(maxlen=RECENT_CALLS)).append(seconds)

    def observe_stepping(self, steps: int, seconds: float) -> None:
        """Record the wall time of a call that stepped a sample ``steps`` steps (until its exit, or as far as it
        could)."""
        if steps < 1:
            return
        if len(self._step_seconds) < PROBE_CALLS:
            self._timings += 1
        self._step_seconds.append(seconds / steps)

    def step_seconds(self) -> float:
        """s: the seconds a step costs when stepping, the median over the recent stepping calls; before any, c(1)."""
        if self._step_seconds:
            return statistics.median(self._step_seconds)
        return self.call_seconds(1)

    def observe_exit(self, key: Hashable, steps: int, step: int) -> None:
        """Record that a sample of run ``key`` (T = ``steps``) ended at ``step`` (1..T); not within
        :meth:`exits_unrecorded`."""
        if self._recording:
            self._exits.setdefault(key, [0] * steps)[step - 1] += 1

    def samples_seen(self, key: Hashable) -> int:
        """How many samples of run ``key`` have had their exit recorded."""
        return sum(self._exits.get(key, ()))

    @contextlib.contextmanager
    def exits_unrecorded(self) -> Iterator[None]:
        """Within: exits are not recorded, call times are. For a warm-up on made-up inputs (zero images),
        whose exit steps say nothing about the data's."""
        recording, self._recording = self._recording, False
        try:
            yield
        finally:
            self._recording = recording

    def fitted(self) -> list[tuple[int, float]]:
        """The timed sizes and their costs in seconds, ascending in k: each size's median over its recent calls,
        made non-decreasing by a weighted isotonic fit (adjacent sizes that break the order pooled into their mean,
        each weighted by its timed calls), so that a size timed twice on a slow moment does not raise the cost of
        the sizes above it, which the plan's running maximum did (a no-DC run of the ResNet-18 was split in two)."""
        blocks: list[list] = []  # [sum of weight * cost, sum of weights, sizes]
        for k, times in sorted(self._seconds.items()):
            blocks.append([statistics.median(times) * len(times), len(times), [k]])
            while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
                total, weight, sizes = blocks.pop()
                blocks[-1][0] += total
                blocks[-1][1] += weight
                blocks[-1][2] += sizes
        return [(k, total / weight) for total, weight, sizes in blocks for k in sizes]

    def call_seconds(self, k: int) -> float:
        """c(k): the :meth:`fitted` costs, linear between the timed sizes, below the smallest on the first segment
        (at least 0), past the largest on the line from the smallest to the largest (the last segment's own slope
        rests on two noisy sizes)."""
        return _interpolated(self.fitted(), k)

    def costs(self, steps: int) -> list[float]:
        """c(1), ..., c(steps) as :meth:`call_seconds` gives them (non-decreasing), made subadditive: c(a + b) <=
        c(a) + c(b), since one call of a + b steps does the work of the two calls that split it with one call's
        overhead less. Times taken at moments the machine ran at different speeds say otherwise now and then, and
        the plan then split runs in which no sample stops early (the ResNet-18's run without DC, in 2-4 calls)."""
        timed = self.fitted()
        cost = [_interpolated(timed, k) for k in range(1, steps + 1)]
        for k in range(2, steps + 1):
            cost[k - 1] = min(cost[k - 1], min(cost[a - 1] + cost[k - a - 1] for a in range(1, k // 2 + 1)))
        return cost

    def expected_seconds(self, key: Hashable, steps: int, step_from: int | None = None) -> float:
        """V(0) of run ``key`` (T = ``steps``): a sample's expected wall time in calls under the plan, in seconds,
        from the call times and exit steps recorded so far (the extra sample that runs to T included); stepping
        from ``step_from`` steps on (default: as the engine last allowed it for the run)."""
        exits = self._exits.get(key, [0] * steps)
        step_from = self._step_from.get(key) if step_from is None else step_from
        step = self.step_seconds() if step_from is not None else None
        return self.solve(exits, self.costs(steps), step, step_from or 0)[0][0]

    @staticmethod
    def plan(exits: list[int], cost: list[float], step: float | None = None, step_from: int = 0) -> list[int]:
        """The k minimising V(t) for each t in 0..T-1, from exit counts [T] (index t - 1: ended at step t) and
        call costs [T] (index k - 1: a k-step call), with one extra sample counted as running to T; T - t (the steps
        left in one call) unless the best split is expected SPLIT_MARGIN faster. With ``step`` (seconds a step when
        stepping), from ``step_from`` steps on a call may step until the exit (:data:`STEP`): it costs ``step``
        times the steps the sample is expected to run, and computes no step past the exit."""
        return ChunkPlanner.solve(exits, cost, step, step_from)[1]

    @staticmethod
    def solve(
        exits: list[int], cost: list[float], step: float | None = None, step_from: int = 0
    ) -> tuple[list[float], list[int]]:
        """V(t) for t in 0..T (seconds; V(T) = 0) and the k (or :data:`STEP`) minimising it for t in 0..T-1, from
        exit counts, call costs and stepping as :meth:`plan` takes them."""
        steps = len(exits)
        counts = list(exits)
        counts[-1] += 1
        alive = [0] * (steps + 1)  # alive[t]: samples that run past step t
        for t in range(steps - 1, -1, -1):
            alive[t] = alive[t + 1] + counts[t]
        value = [0.0] * (steps + 1)
        best = [1] * steps
        stepped = 0.0  # the sum of alive[u] for u in t..T-1: alive[t] times the steps a sample alive at t runs
        for t in range(steps - 1, -1, -1):
            stepped += alive[t]
            options = [(cost[k - 1] + alive[t + k] / alive[t] * value[t + k], k) for k in range(1, steps - t + 1)]
            if step is not None and t >= step_from:
                options.append((step * stepped / alive[t], STEP))
            value[t], best[t] = min(options)
            whole = cost[steps - t - 1]  # the steps left in one call
            if best[t] != steps - t and value[t] > (1 - SPLIT_MARGIN) * whole:
                value[t], best[t] = whole, steps - t
        return value, best


def _interpolated(timed: list[tuple[int, float]], k: int) -> float:
    """c(k) from the fitted (size, seconds) points, as :meth:`ChunkPlanner.call_seconds` describes it."""
    if not timed:
        raise RuntimeError("ChunkPlanner.call_seconds: no call timed yet")
    if len(timed) == 1:
        return timed[0][1] * k / timed[0][0]
    (j0, c0), (j1, c1) = timed[0], timed[-1]
    if k > j1:
        return c1 + (c1 - c0) * (k - j1) / (j1 - j0)
    for (j0, c0), (j1, c1) in itertools.pairwise(timed):
        if k <= j1:
            return max(0.0, c0 + (c1 - c0) * (k - j0) / (j1 - j0))
    raise AssertionError("unreachable")
