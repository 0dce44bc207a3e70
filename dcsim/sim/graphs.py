"""Step loops replayed as CUDA graphs on a GPU: early exit on fixed-shape buffers (:class:`StaticExit`)
and one step of streaming's fixed slot buffers (:class:`StepGraph`).

At batch 1 a GPU time step is a few dozen tiny kernels; launching them one by one from Python,
and syncing with the host after each step to read the exit flag, costs far more than the math.
:class:`StaticExit` records the whole step (convs, fused neuron and output kernels, and the
bookkeeping of first exits) once per batch-size bucket as a CUDA graph, so a step is one graph
launch with no allocation. The host learns that everybody has stopped from a count copied to
pinned memory after each chunk and reads it one chunk late: the GPU already runs the next chunk
(speculatively: its results are discarded) instead of idling while the host looks.

Large batches instead wait for each chunk's count (``speculate=False``): a step takes long enough
that the host's look costs nothing, and a speculative chunk would.

Compaction: once the samples still running fit the next smaller bucket (n, n - n/8, ..., n/8,
then halving to 1), a captured gather moves them to the front of the buffers, in place, and the
smaller bucket's graph runs on those first rows (finished rows pad the rest); with
``buckets=False`` the batch stays whole (a masked fixed batch: finished rows keep computing, their
results already recorded). All graphs share one memory pool: only the state buffers outlive a
replay. On the CPU the same pieces run eagerly, so the logic is tested there.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Protocol

import torch

from .readout import Readout
from .state import BatchState, StepRecord


class SteppingEngine(Protocol):
    """What the runners need of an engine (:class:`dcsim.sim.engine.Engine` provides it)."""

    device: torch.device
    neurons: list[int]
    """Node indices of the hidden (spiking) layers."""
    count_ops: bool
    """Whether steps count synaptic operations (StepRecord.sops)."""

    def gpu_flags(self, autotune: bool | None = None) -> AbstractContextManager[None]:
        """Context in which the engine's convs and matmuls run."""
        ...

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor in the engine's memory layout."""
        ...

    def fresh(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> BatchState:
        """The state of samples x at t = 0 (no host sync)."""
        ...

    def advance(
        self,
        state: BatchState,
        k: int,
        max_steps: int,
        readout: Readout,
        threshold: float = ...,
        record_sums: bool = False,
        done: int | None = None,
    ) -> StepRecord:
        """k steps of every row of ``state``, in place; what each step produced."""
        ...

    def step(self, state: BatchState, max_steps: int, readout: Readout, threshold: float = ...) -> None:
        """One step of every row of ``state``, in place."""
        ...


SPECULATE_MAX_ROWS = 16
"""Batches up to this size speculate by default: a step is too short to idle while the host looks."""


def bucket_sizes(n: int, buckets: bool) -> list[int]:
    """Batch sizes of the compaction levels: n down in steps of ceil(n/8), then halving to 1 ([n] without buckets)."""
    if not buckets:
        return [n]
    step = math.ceil(n / 8)
    sizes = list(range(n, 0, -step))
    while sizes[-1] > 1:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


def capture_graphs(
    pieces: Mapping[object, Callable[[], object]],
    device: torch.device,
    flags: Callable[[bool], AbstractContextManager[None]],
    what: str,
) -> dict[object, torch.cuda.CUDAGraph]:
    """Each piece captured as a CUDA graph, all in one memory pool.

    Every piece first runs once on a side stream under ``flags(True)`` (cuDNN autotuning: library
    handles and algorithm choice), then is captured under ``flags(False)``: a conv finds the
    algorithm tuned in the warm-up in cuDNN's cache, and a cache miss takes the heuristic choice
    instead of timing (a sync, which would break the capture). The warm-up runs for real.
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), flags(True):
        for fn in pieces.values():
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    pool = torch.cuda.graph_pool_handle()
    graphs = {}
    with flags(False):
        for key, fn in pieces.items():
            graphs[key] = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graphs[key], pool=pool):
                    fn()
            except RuntimeError as err:
                raise RuntimeError(f"CUDA graph capture of piece {key} of {what} failed: {err}") from err
    return graphs


class StaticExit:
    """Early exit of batches of one shape [n, ...] with fixed T, readout, threshold and chunk.

    Build once (on CUDA this captures the graphs: a fraction of a second), then call :meth:`run`
    for each batch. Results equal :meth:`dcsim.sim.engine.Engine.early_exit`'s: the same steps, decided per step.
    """

    def __init__(
        self,
        engine: SteppingEngine,
        shape: tuple[int, ...],
        steps: int,
        readout: Readout,
        threshold: float,
        chunk: int = 1,
        buckets: bool = True,
        speculate: bool | None = None,
    ) -> None:
        self.engine = engine
        self.speculate = shape[0] <= SPECULATE_MAX_ROWS if speculate is None else speculate
        self.steps, self.readout, self.threshold, self.chunk = steps, readout, threshold, chunk
        self.sizes = bucket_sizes(shape[0], buckets)
        self.chunks = math.ceil(steps / chunk)
        dev = engine.device
        n = shape[0]
        self.x = engine.empty(shape, torch.float32)
        self.rows = torch.arange(n, device=dev)
        self.pred = torch.zeros(n, dtype=torch.int64, device=dev)
        self.exit_step = torch.zeros(n, dtype=torch.int64, device=dev)
        self.conf = torch.zeros(n, dtype=torch.float32, device=dev)
        self.spikes = torch.zeros((n, len(engine.neurons)), dtype=torch.int64, device=dev)
        self.sops = torch.zeros((n, len(engine.neurons)), dtype=torch.int64, device=dev) if engine.count_ops else None
        self.alive = torch.zeros((), dtype=torch.int64, device=dev)
        cuda = dev.type == "cuda"
        self.alive_host = torch.zeros(self.chunks, dtype=torch.int64, pin_memory=cuda)
        self.events = [torch.cuda.Event() for _ in range(self.chunks)] if cuda else []
        self.states: list[BatchState | None] = [None] * len(self.sizes)
        self.done: list[torch.Tensor | None] = [None] * len(self.sizes)
        pieces: dict[object, Callable[[], None]] = {"start": self._start}
        for level in range(len(self.sizes)):
            pieces[("step", level)] = functools.partial(self._step, level)
            if level + 1 < len(self.sizes):
                pieces[("compact", level)] = functools.partial(self._compact, level)
        self.graphs: dict[object, torch.cuda.CUDAGraph] = {}
        self._run: dict[object, Callable[[], None]] = pieces if not cuda else self._capture(pieces)

    def _capture(self, pieces: dict[object, Callable[[], None]]) -> dict[object, Callable[[], None]]:
        """Every piece captured (see :func:`capture_graphs`); their replays by key."""
        what = f"early exit (batch {self.sizes[0]}, chunk {self.chunk}, buckets {self.sizes})"
        self.x.zero_()
        self.graphs = capture_graphs(pieces, self.engine.device, self.engine.gpu_flags, what)
        return {key: g.replay for key, g in self.graphs.items()}

    # ------------------------------------------------------------- pieces

    def _start(self) -> None:
        """Fresh state in the level-0 buffers; every level's state is a view of their first rows."""
        base = self.engine.fresh(self.x, self.rows.clone())
        done = torch.zeros(self.sizes[0], dtype=torch.bool, device=self.engine.device)
        self.states = [base.replace_tensors([t[:b] for t in base.tensors()]) for b in self.sizes]
        self.done = [done[:b] for b in self.sizes]

    def _step(self, level: int) -> None:
        """One chunk for the rows of ``level``; record each row's first exit by its sample row."""
        state, done = self.states[level], self.done[level]
        assert state is not None and done is not None, "_start runs first"
        rec = self.engine.advance(state, self.chunk, self.steps, self.readout, self.threshold)
        first_exits = rec.exited.bool() & ~done  # [k, b]
        hit = first_exits.any(dim=0)
        t = first_exits.to(torch.int32).argmax(dim=0)  # the first exit step in the chunk
        cols = torch.arange(state.n, device=self.engine.device)
        ids = state.ids

        def put(dst: torch.Tensor, value: torch.Tensor) -> None:
            mask = hit.view(-1, *([1] * (value.dim() - 1)))
            dst.index_put_((ids,), torch.where(mask, value, dst.index_select(0, ids)))

        put(self.pred, rec.pred[t, cols])
        put(self.exit_step, rec.steps[t, cols].to(torch.int64))
        put(self.conf, rec.score[t, cols])
        put(self.spikes, rec.counts[:, t, cols].T)
        if self.sops is not None and rec.sops is not None:
            put(self.sops, rec.sops[:, t, cols].T)
        done |= hit
        self.alive.copy_((~done).sum())

    def _compact(self, level: int) -> None:
        """Move the rows still running (in order) to the front, in place; the next level runs on the first rows."""
        state, done = self.states[level], self.done[level]
        assert state is not None and done is not None, "_start runs first"
        order = torch.argsort(done.to(torch.uint8), stable=True)[: self.sizes[level + 1]]
        for t in [*state.tensors(), done]:
            t[: order.numel()] = t.index_select(0, order)

    # ------------------------------------------------------------- run

    def _alive_after(self, c: int) -> int:
        """Rows still running after chunk c (waits for chunk c only, not for later work)."""
        if self.events:
            self.events[c].synchronize()
        return int(self.alive_host[c])

    def run(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Early exit of x float32 [n, ...] (checked by the engine): (pred, exit_step, conf, spikes, sops) on the device.

        pred int64 [n], exit_step int64 [n] in 1..T, conf float32 [n], spikes int64 [n, L], sops int64 [n, L]
        (None if the engine does not count them).
        """
        self.x.copy_(x)
        self._run["start"]()
        level = 0
        lag = 1 if self.speculate else 0
        for c in range(self.chunks):
            self._run[("step", level)]()
            if c + 1 == self.chunks:
                break
            self.alive_host[c].copy_(self.alive, non_blocking=True)
            if self.events:
                self.events[c].record()
            if c < lag:
                continue
            alive = self._alive_after(c - lag)  # speculating: chunk c already runs meanwhile
            if alive == 0:
                break
            while level + 1 < len(self.sizes) and alive <= self.sizes[level + 1]:
                self._run[("compact", level)]()
                level += 1
        sops = None if self.sops is None else self.sops.clone()
        return self.pred.clone(), self.exit_step.clone(), self.conf.clone(), self.spikes.clone(), sops


class StepGraph:
    """One :meth:`dcsim.sim.engine.Engine.step` of a fixed state (same tensors every step), replayed as a CUDA graph.

    For loops that change the state's rows in place between steps (streaming refills slots
    with index_copy_), so the graph always sees the current values. On the CPU, the plain step.
    """

    def __init__(
        self, engine: SteppingEngine, state: BatchState, steps: int, readout: Readout, threshold: float
    ) -> None:
        def step() -> None:
            engine.step(state, steps, readout, threshold)

        if engine.device.type != "cuda":
            self.replay = step
            return
        saved = [t.clone() for t in state.tensors()]  # the warm-up step runs for real: undo it after
        self.graph = capture_graphs({"step": step}, engine.device, engine.gpu_flags, "a streaming step")["step"]
        for t, s in zip(state.tensors(), saved, strict=True):
            t.copy_(s)
        self.replay = self.graph.replay
