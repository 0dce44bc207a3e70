"""A chunk of steps on the CPU as prebound kernel calls: :meth:`dcsim.sim.engine.Engine.advance` without its
per-call Python.

At batch 1 a call of a few steps spends a third of its time in Python between the kernels: the neuron kernels'
wrappers and checks, the conv path's decisions, the loop's lookups, closures and views (0.9 ms of a 3.0 ms
one-step call of the zoo ResNet-18 on a 2-core EPYC, docs/results/table2-cpu.md). A :class:`ChunkProgram` takes
those decisions once per call shape (steps k, rows n, the chunk's driven steps, fresh state or not, the exit's
scalars, the threads) and keeps one closure per layer that calls the same kernels on the tensors' pointers. Same
kernels in the same order on the same values: the same bits as the engine's general path
(tests/test_program.py).

Only small calls (at most MAX_ROWS rows, k * n) run as programs: above that the kernels' own time dwarfs the
Python, and a program per batch size left after compaction would be built for a call or two.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from . import ops, row_floor
from .network import Conv, Neuron, onednn_conv
from .readout import Readout
from .semantics import gated
from .state import BatchState, StepRecord

if TYPE_CHECKING:
    from .engine import Engine

MAX_ROWS = 64
"""Calls of at most this many rows (steps x samples) run as programs."""
KEPT = 256
"""Programs an engine keeps (a few KB each); past it the engine builds them afresh (a sweep of thresholds)."""

Op = Callable[[list[torch.Tensor | None], BatchState, StepRecord], None]
"""One layer of a program: reads its inputs' values from the list (by node), writes its own."""


class ChunkProgram:
    """The calls of one :meth:`Engine.advance` shape on the CPU (native kernels, float32, no event-driven convs).

    k: steps; n: rows; driven: how many of the chunk's first steps the image and the biases drive (0 .. k; the
    engine's drive mask, known on the host and the same for every row); the state: its shapes, and whether it is
    blank (its first step then takes u0); max_steps, readout, threshold: the output step's. For networks
    :meth:`covers` (the engine checks it once).
    """

    def __init__(
        self,
        engine: Engine,
        state: BatchState,
        k: int,
        driven: int,
        max_steps: int,
        readout: Readout,
        threshold: float,
    ) -> None:
        self.k, self.n = k, state.n
        # a chunk driven for some of its steps gates its drive terms by a 0/1 mask per row, as the general path does
        self._mask = None if driven in (0, k) else (torch.arange(k * state.n) < driven * state.n).to(torch.float32)
        drive = driven > 0
        nodes = engine.net.nodes
        self._static = [j for j in engine._needed_static if j in state.static]
        self._ops: list[Op] = []
        for i in engine._dynamic:
            node = nodes[i]
            if isinstance(node, Neuron):
                self._ops.append(self._neuron(engine, state, i, drive))
            elif isinstance(node, Conv):
                self._ops.append(self._conv(engine, state, i, drive))
            else:
                self._ops.append(self._other(engine, i, drive))
            free = engine._free_after.get(i)
            if free:
                self._ops.append(_clear(free))
        self._size = len(nodes)
        self._output = engine.net.output
        classes = state.sums.shape[1]
        self._output_step = ops.bound_output_step(self.n, classes, max_steps, readout.code, readout.scale, threshold)
        self._out_row = self.n * classes * 4  # bytes of one step's output values
        # the record's steps at step t: the steps after the chunk minus k - 1 - t
        self._back = torch.arange(1 - k, 1, dtype=torch.int32)[:, None]

    @staticmethod
    def covers(engine: Engine) -> bool:
        """Whether a program can run engine's network: every dynamic layer but neurons and convs reads only
        dynamic values (an image-fed input would be gated per step), and the output is dynamic."""
        nodes = engine.net.nodes
        dynamic = set(engine._dynamic)
        if engine.net.output not in dynamic:
            return False
        return all(
            isinstance(nodes[i], (Neuron, Conv)) or all(j in dynamic for j in nodes[i].inputs) for i in engine._dynamic
        )

    def run(self, state: BatchState, rec: StepRecord) -> None:
        """The chunk's steps on state, in place, each step's results into rec (as :meth:`Engine.advance`)."""
        vals: list[torch.Tensor | None] = [None] * self._size
        for j in self._static:
            vals[j] = state.static[j]
        with torch.no_grad():
            for op in self._ops:
                op(vals, state, rec)
        out = vals[self._output]
        assert out is not None
        out = out.contiguous()  # held while the output steps read it
        x = out.data_ptr()
        sums, steps = state.sums.data_ptr(), state.steps.data_ptr()
        pred, score, exited = rec.pred.data_ptr(), rec.score.data_ptr(), rec.exited.data_ptr()
        n, row = self.n, self._out_row
        for t in range(self.k):
            self._output_step(x + t * row, sums, steps, pred + 8 * n * t, score + 4 * n * t, exited + n * t)
        torch.add(state.steps, self._back, out=rec.steps)
        last = self.k - 1
        state.pred.copy_(rec.pred[last])
        state.score.copy_(rec.score[last])
        state.exited.copy_(rec.exited[last])

    def _neuron(self, engine: Engine, state: BatchState, i: int, drive: bool) -> Op:
        """Kernel 1 over the chunk's k steps of neuron node i, its counts (and SOPs) after each step into the record."""
        node = engine.net.nodes[i]
        assert isinstance(node, Neuron)
        k, n = self.k, state.n
        shape = tuple(state.u[i].shape)
        m = state.u[i].numel() // n
        fanout = engine.fanout(i, shape[1:]) if engine.count_ops else None
        call = ops.bound_neuron_steps(
            engine.net.method, k, n, m, node.threshold, node.zmax, fanout=fanout, u0=node.u0 if state.blank else None
        )
        layer = engine._layer_of[i]
        counted = engine.count_ops
        qffs = engine.net.method == "qffs"
        layout = engine._layout
        out_shape = (k * n, *shape[1:])
        empty = engine.empty
        mask = self._mask
        # each input: (node, elements between steps, a fixed tensor (no image: zeros) or None, gated step by step)
        sources: list[tuple[int, int, torch.Tensor | None, bool]] = []
        for j in node.inputs:
            if j not in state.static:
                sources.append((j, n * m, None, False))
            elif mask is not None:  # the image-fed value at each step, zero past the drive
                sources.append((j, n * m, None, True))
            else:
                sources.append((j, 0, None if drive else torch.zeros_like(state.static[j]), False))
        (j1, step1, fixed1, stepwise1) = sources[0]
        (j2, step2, fixed2, stepwise2) = sources[1] if len(sources) > 1 else (-1, 0, None, False)

        def value(j: int, fixed: torch.Tensor | None, stepwise: bool, vals: list[torch.Tensor | None]) -> torch.Tensor:
            if fixed is not None:
                return fixed
            v = vals[j]
            assert v is not None
            if stepwise:  # as the general path gates it: the value repeated over the steps, times the 0/1 mask
                assert mask is not None
                v = gated(v.unsqueeze(0).expand(k, *v.shape).reshape(k * n, *v.shape[1:]), mask)
            return layout(v)

        def op(vals: list[torch.Tensor | None], state: BatchState, rec: StepRecord) -> None:
            # the inputs in u's layout, held while the kernel reads them (a value in another layout is copied)
            x = value(j1, fixed1, stepwise1, vals)
            x2 = None if j2 < 0 else value(j2, fixed2, stepwise2, vals)
            out = empty(out_shape, torch.float32)
            record = rec.counts.data_ptr() + 8 * k * n * layer
            sops = sops_out = 0
            if counted:
                sops, sops_out = state.sops[i].data_ptr(), rec.sops.data_ptr() + 8 * k * n * layer  # type: ignore[union-attr]
            call(
                x.data_ptr(),
                step1,
                0 if x2 is None else x2.data_ptr(),
                step2,
                state.u[i].data_ptr(),
                state.z[i].data_ptr() if qffs else 0,
                out.data_ptr(),
                state.counts[i].data_ptr(),
                record,
                sops,
                sops_out,
            )
            vals[i] = out

        return op

    def _conv(self, engine: Engine, state: BatchState, i: int, drive: bool) -> Op:
        """Conv node i on its input's k * n rows: the block conv where it gives oneDNN's bits on the layer and the
        chunk computes the input (dcsim.sim.block_conv); else oneDNN called directly where the engine's conv path does
        so unpadded (:meth:`Engine._conv`), else that path; the bias added where the settle semantics gate it."""
        bias = engine._biases.get(i)
        c = engine._unbiased[i] if bias is not None else engine.net.nodes[i]
        assert isinstance(c, Conv)
        j = c.inputs[0]
        k, n = self.k, state.n
        rows = 0  # the rows oneDNN computes a call on, when the engine's conv path calls it unpadded or padded
        if isinstance(engine.net.nodes[j], Neuron):  # the input: a fresh tensor of engine.empty, [k * n, ...]
            rows = engine._conv_floor(c, engine.empty((k * n, *state.u[j].shape[1:]), torch.float32))

        conv: Callable[[torch.Tensor], torch.Tensor]
        if rows and rows <= k * n:
            conv = functools.partial(onednn_conv, c)
        elif rows:
            conv = functools.partial(row_floor.padded_conv, c, rows=rows)
        else:
            conv = functools.partial(engine._conv, i, c)
        # the block conv where it gives oneDNN's bits on this layer and is faster on this call (dcsim.sim.block_conv),
        # for a value the chunk computes (an image-fed one keeps its path); decided on the first call, which gives the
        # input's shape
        bound: list[Callable[[torch.Tensor], torch.Tensor] | None] = []

        b = None if bias is None or not drive else bias.reshape(1, -1, 1, 1)
        if b is not None and self._mask is not None:  # the general path's gated bias, a constant of the program
            b = gated(b.expand(k * n, *b.shape[1:]), self._mask)

        def op(vals: list[torch.Tensor | None], state: BatchState, rec: StepRecord) -> None:
            x = vals[j]
            assert x is not None  # the input ran before, by the program's order
            if not bound:
                bound.append(None if j in state.static else engine._block_conv(c, x, spikes=True))
            block = bound[0]
            r = block(x) if block is not None and x.is_contiguous() else conv(x)
            if b is not None:
                r.add_(b)
            vals[i] = r

        return op

    def _other(self, engine: Engine, i: int, drive: bool) -> Op:
        """Node i (a pool, flatten, linear, add) on its dynamic inputs, by the engine's :meth:`Engine._apply`; a
        bias the settle semantics gate added where the chunk is driven."""
        node = engine.net.nodes[i]
        inputs = node.inputs
        apply = engine._apply
        bias = engine._biases.get(i)
        if bias is not None:
            node = engine._unbiased[i]
        if bias is None or not drive:

            def op(vals: list[torch.Tensor | None], state: BatchState, rec: StepRecord) -> None:
                vals[i] = apply(node, *(vals[j] for j in inputs))  # type: ignore[arg-type]

            return op
        b, mask = bias, self._mask

        def biased(vals: list[torch.Tensor | None], state: BatchState, rec: StepRecord) -> None:
            r = apply(node, *(vals[j] for j in inputs))  # type: ignore[arg-type]
            term = b.reshape(1, -1, *([1] * (r.dim() - 2)))
            if mask is not None:  # gated per row, as the general path does
                term = gated(term.expand(r.shape[0], *term.shape[1:]), mask)
            r.add_(term)
            vals[i] = r

        return biased


def _clear(nodes: list[int]) -> Op:
    """An op that drops the values of ``nodes`` (their last reader has run), so their memory is reused."""

    def op(vals: list[torch.Tensor | None], state: BatchState, rec: StepRecord) -> None:
        for j in nodes:
            vals[j] = None

    return op
