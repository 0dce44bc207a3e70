"""Streaming engine: continuous batching with early exit.

A fixed number of slots is fed from an iterator of inputs. Every step advances all occupied
slots; a sample that exits (score > th_c, or T steps) frees its slot, which is reset and
refilled with the next input before the next step. Slots are independent: a sample's
prediction and exit step do not depend on its neighbours or on the order of arrival
(up to the batch-size dependence of PyTorch's conv/linear rounding, see README).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from ..checks import check_int, check_threshold
from .engine import Engine
from .graphs import StepGraph
from .latency import LatencyHistogram
from .readout import Readout


@dataclass(frozen=True)
class StreamResult:
    """One finished sample: ``id`` given at arrival; ``exit_step`` in 1..T (= its latency in steps);
    ``spikes``: spikes per hidden layer over the steps it ran; ``latency_ms``: wall time from
    admission to exit."""

    id: int
    pred: int
    exit_step: int
    conf: float
    spikes: tuple[int, ...]
    latency_ms: float


@dataclass
class StreamStats:
    """Running statistics of a stream: occupancy = mean fraction of slots busy per step; latencies (ms,
    admission to exit) in a bounded histogram, so a stream of any length keeps the same memory."""

    slots: int
    steps_run: int = 0
    busy_slot_steps: int = 0
    completed: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    def summary(self) -> dict:
        """{"samples", "seconds", "throughput" (samples/s), "latency_ms": {mean, p50, p99, max},
        "latency_histogram" (:meth:`LatencyHistogram.to_dict`, to merge ranks), "occupancy"}."""
        seconds = (self.finished or time.perf_counter()) - self.started
        return {
            "samples": self.completed,
            "seconds": seconds,
            "throughput": self.completed / seconds if seconds > 0 else 0.0,
            "latency_ms": self.latency.summary(),
            "latency_histogram": self.latency.to_dict(),
            "occupancy": self.busy_slot_steps / (self.slots * self.steps_run) if self.steps_run else 0.0,
            "slots": self.slots,
            "engine_steps": self.steps_run,
        }


def _next_inputs(
    source: Iterator, k: int, counter: list[int]
) -> tuple[list[int], list[torch.Tensor], BaseException | None]:
    """Up to k (id, input) pairs; items are tensors [C, H, W] (ids count arrivals) or (id, tensor)."""
    ids: list[int] = []
    xs: list[torch.Tensor] = []
    try:
        while len(xs) < k:
            item = next(source)
            if isinstance(item, tuple):
                i, x = item
            else:
                i, x = counter[0], item
            counter[0] += 1
            ids.append(int(i))
            xs.append(x)
    except StopIteration:
        return ids, xs, None
    except Exception as err:  # surfaced after the samples in flight finish
        return ids, xs, err
    return ids, xs, None


def stream(
    engine: Engine,
    inputs: Iterable,
    slots: int,
    steps: int,
    readout: Readout,
    threshold: float,
    stats: StreamStats | None = None,
    graphs: bool = False,
) -> Iterator[StreamResult]:
    """Run ``inputs`` through ``slots`` slots with early exit; yield results in completion order.

    inputs: iterable of per-sample tensors float32 [C, H, W] (ids 0, 1, ... by arrival) or of
    (id, tensor) pairs. If the iterable raises, no more samples are admitted, the samples in
    flight finish and are yielded, then the error is raised. ``stats`` is updated as it runs.
    graphs: the step replayed as a CUDA graph (see :class:`dcsim.sim.graphs.StepGraph`); slots left
    empty when the inputs run out then stay in the batch, idle, instead of being compacted out.
    """
    slots = check_int(slots, "slots")
    steps = check_int(steps, "steps")
    threshold = check_threshold(threshold)
    stats = stats if stats is not None else StreamStats(slots)
    source = iter(inputs)
    counter = [0]
    dev = engine.device

    def admit(k: int) -> tuple[torch.Tensor | None, torch.Tensor | None, BaseException | None]:
        """Up to k next inputs as (x [k', ...], ids int64 [k']) (None, None when the source is exhausted), and the
        source's error."""
        ids, xs, err = _next_inputs(source, k, counter)
        if not xs:
            return None, None, err
        try:
            x = torch.stack([t.to(dev) for t in xs])
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"stream inputs with ids {ids} cannot be batched: {e}") from e
        return x, torch.tensor(ids, dtype=torch.int64), err

    x, ids, pending_error = admit(slots)
    state = engine.start(x, ids=ids) if x is not None else None
    neurons = engine.neurons
    graph: StepGraph | None = None
    idle: torch.Tensor | None = None  # the empty slots, with a graph
    if graphs and state is not None:
        graph = StepGraph(engine, state, steps, readout, threshold)
        idle = torch.zeros(state.n, dtype=torch.bool, device=dev)
    n_idle = 0
    while state is not None and state.n > n_idle:
        if graph is not None:
            graph.replay()
        else:
            engine.step(state, steps, readout, threshold)
        stats.steps_run += 1
        stats.busy_slot_steps += state.n - n_idle
        done = state.exited.bool() if idle is None else state.exited.bool() & ~idle
        if not bool(done.any()):
            continue
        now = time.perf_counter()
        rows = torch.nonzero(done).squeeze(1)
        done_ids = state.ids[rows].tolist()
        preds = state.pred[rows].tolist()
        exit_steps = state.steps[rows].tolist()
        confs = state.score[rows].tolist()
        spikes = (
            torch.stack([state.counts[i][rows] for i in neurons], dim=1).tolist() if neurons else [[]] * len(done_ids)
        )
        admitted = state.admitted[rows].tolist()
        filled = 0
        if pending_error is None:
            x, new_ids, pending_error = admit(len(done_ids))
            if x is not None and new_ids is not None:
                filled = len(x)
                engine.refill(state, rows[:filled], x, new_ids)
        if filled < len(done_ids) and idle is not None:  # the graph's buffers keep their rows
            idle[rows[filled:]] = True
            n_idle += len(done_ids) - filled
        elif filled < len(done_ids):
            keep = torch.ones(state.n, dtype=torch.bool, device=dev)
            keep[rows[filled:]] = False
            state = engine.compact(state, torch.nonzero(keep).squeeze(1))
        for j in range(len(done_ids)):
            latency = 1000.0 * (now - admitted[j])
            stats.completed += 1
            stats.latency.add(latency)
            yield StreamResult(done_ids[j], preds[j], exit_steps[j], confs[j], tuple(spikes[j]), latency)
    stats.finished = time.perf_counter()
    if pending_error is not None:
        raise pending_error
