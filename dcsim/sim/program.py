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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from . import ops, row_floor
from .network import Conv, Flatten, Linear, Neuron, Node, onednn_conv
from .readout import Readout
from .semantics import gated
from .state import BatchState, StepRecord

if TYPE_CHECKING:
    from .engine import Engine

MAX_LISTED_BYTES = 64 << 20
"""Most bytes of buffers a program's call lists may need (their values at once); a program that needs more runs its
ops (the engine's programs share the buffers, so this bounds their memory too)."""
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
        self._layers: list[_Layer] = []  # what each op computes, for the call list (see _listed)
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
                self._layers.append(_Layer("clear", -1, freed=tuple(free)))
        self._engine = engine
        self._runs = 0
        self._tried = False  # whether _Listed.build has run
        self._listed: _Listed | None = None  # built after the first run, where every neuron layer can be listed
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
        """The chunk's steps on state, in place, each step's results into rec (as :meth:`Engine.advance`): from the
        second run on as one native call list where :class:`_Listed` can list the chunk (the same calls)."""
        self._runs += 1
        lists = self._engine.call_lists
        if lists and self._runs >= 2 and not self._tried:  # the first run has bound each conv's kernel
            self._tried = True
            t0 = time.perf_counter()
            self._listed = _Listed.build(self)
            self._engine._building_seconds += time.perf_counter() - t0
        table = None if self._listed is None or not lists else self._listed.table(state, rec)
        if table is not None:
            assert self._listed is not None
            self._listed.run(self, table, state, rec)
        else:
            self._run_ops(state, rec)
        self._finish(state, rec)

    def can_step(self) -> bool:
        """Whether :meth:`step_until_exit` can run this program: one step of a lone row, listed as one call list
        (from its second run, where every layer can be listed)."""
        listed = self._listed
        return self.k == 1 and self.n == 1 and self._engine.call_lists and listed is not None and listed.single

    def may_step(self) -> bool:
        """Whether :meth:`can_step` holds or may once the program has run twice (its lists not tried yet)."""
        return self.k == 1 and self.n == 1 and self._engine.call_lists and (not self._tried or self.can_step())

    def step_until_exit(self, state: BatchState, rec: StepRecord, max_runs: int) -> int | None:
        """This 1-step program run on a lone row again and again in one native call (:func:`ops.run_until`), at most
        ``max_runs`` times, until the row exits; the runs made (rec then holds the last step's results, and state is
        where that many :meth:`run` calls leave it: the same calls, so the same bits), or None, nothing run, where
        the program cannot (:meth:`can_step`; a static value the list reads is not contiguous)."""
        if not self.can_step():
            return None
        assert self._listed is not None
        table = self._listed.table(state, rec)
        if table is None:
            return None
        runs = ops.run_until(self._listed.segments[0], table, max_runs, (_FIXED_SLOTS.index("rec.exited"), 0))
        self._runs += runs
        self._finish(state, rec)
        return runs

    def _finish(self, state: BatchState, rec: StepRecord) -> None:
        """The record's steps, and the state's prediction, score and exit flag of the chunk's last step."""
        torch.add(state.steps, self._back, out=rec.steps)
        last = self.k - 1
        state.pred.copy_(rec.pred[last])
        state.score.copy_(rec.score[last])
        state.exited.copy_(rec.exited[last])

    def _run_ops(self, state: BatchState, rec: StepRecord) -> None:
        """The chunk's layers op by op, then its output steps."""
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
        self._layers.append(
            _Layer(
                "neuron",
                i,
                neuron=call,
                sources=tuple(sources),
                layer=layer,
                counted=counted,
                qffs=qffs,
                shape=out_shape,
            )
        )

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
        self._layers.append(_Layer("conv", i, inputs=(j,), bound=bound, **self._listed_bias(bias, drive)))

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

    def _listed_bias(self, bias: torch.Tensor | None, drive: bool) -> dict[str, Any]:
        """A layer's bias [C] (or None) in a call list, as :class:`_Layer`'s fields: added by kernel 9 where the chunk is
        driven for every row (``bias``); where it is gated row by row (a partly driven chunk), the layer is not listed
        (``listable`` False: its op adds it)."""
        if bias is None or not drive:
            return {"listable": True, "bias": None}
        if self._mask is not None:
            return {"listable": False, "bias": None}
        return {"listable": True, "bias": bias.contiguous()}

    def _other(self, engine: Engine, i: int, drive: bool) -> Op:
        """Node i (a pool, flatten, linear, add) on its dynamic inputs, by the engine's :meth:`Engine._apply`; a
        bias the settle semantics gate added where the chunk is driven."""
        node = engine.net.nodes[i]
        inputs = node.inputs
        apply = engine._apply
        bias = engine._biases.get(i)
        if bias is not None:
            node = engine._unbiased[i]
        self._layers.append(_Layer("other", i, inputs=tuple(inputs), graph_node=node, **self._listed_bias(bias, drive)))
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


@dataclass
class _Layer:
    """What one op of a program computes, for :class:`_Listed`: kind "neuron", "conv", "other" (pools, flatten,
    linear, add) or "clear" (values dropped)."""

    kind: str
    node: int
    inputs: tuple[int, ...] = ()
    neuron: ops.BoundNeuronSteps | None = None
    sources: tuple[tuple[int, int, torch.Tensor | None, bool], ...] = ()  # a neuron's: (node, step, fixed, stepwise)
    layer: int = 0  # a neuron's hidden layer
    counted: bool = False
    qffs: bool = False
    shape: tuple[int, ...] = ()  # a neuron's output
    bound: list[Callable[[torch.Tensor], torch.Tensor] | None] | None = None  # a conv's kernel, once bound
    listable: bool = True  # no bias the settle semantics gate per row (a partly driven chunk's)
    bias: torch.Tensor | None = None  # a bias [C] added after the layer (a driven chunk's, under the settle semantics)
    graph_node: Node | None = None  # an "other" layer's node
    freed: tuple[int, ...] = ()


_FIXED_SLOTS = ("rec.counts", "rec.sops", "rec.pred", "rec.score", "rec.exited", "state.sums", "state.steps")
"""The first slots of a call list's table (see :meth:`_Listed.table`)."""


class _Listed:
    """A program's layers as native call lists (:func:`dcsim.sim.ops.call_list`): the neuron layers, the block convs,
    the pools the engine runs in kernels 5 and 7, and the output steps, with the layers that stay in Python (a linear,
    a flatten, a conv by oneDNN, a gated bias) between two lists. The same kernels on the same values as the
    program's ops: the same bits (tests/test_program.py). The values the lists compute live in the engine's list
    buffers (:meth:`Engine.list_buffers`), a value's buffer reused once its last reader has run; the buffers are
    shared by the engine's programs, which run one at a time, and grow to the largest program's needs. Whatever can
    change between runs (the state's tensors, the record's, the buffers, the values of the Python layers) is looked
    up in a table built for each run."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.segments: list[Any] = []  # a call list, or the index of a Python op
        self.keys: list[tuple[str, int]] = []  # slots after _FIXED_SLOTS: (state field, "buffer" or "value", node)
        self.published: dict[int, tuple[int, int]] = {}  # Python op index -> (its node, the slot of its value)
        self.read: list[tuple[int, int, tuple[int, ...]]] = []  # buffers the Python ops read: (node, buffer, shape)
        self.held: list[torch.Tensor] = []  # tensors whose addresses the lists hold
        self.sizes: dict[int, int] = {}  # buffer -> floats the lists need in it

    @property
    def single(self) -> bool:
        """Whether the program is one call list (no layer in Python)."""
        return len(self.segments) == 1 and not isinstance(self.segments[0], int)

    def slot(self, key: tuple[str, int]) -> int:
        if key not in self.keys:
            self.keys.append(key)
        return len(_FIXED_SLOTS) + self.keys.index(key)

    @staticmethod
    def build(prog: ChunkProgram) -> _Listed | None:
        """prog's call lists, or None where a neuron layer cannot be listed (a step-gated input), the engine keeps
        channels-last values, or the buffers would pass MAX_LISTED_BYTES."""
        engine = prog._engine
        if engine.channels_last:
            return None
        listed = _Listed(engine)
        k, n = prog.k, prog.n
        calls = ops.call_list()
        where: dict[int, ops.Ref] = {}  # node -> its value's pointer
        buffer_of: dict[int, int] = {}  # node -> its buffer
        shape_of: dict[int, tuple[int, ...]] = {}
        sizes: dict[int, int] = {}  # buffer -> floats
        free: list[int] = []  # buffers whose values' last readers have run
        pinned: set[int] = set()  # nodes whose buffers Python ops read (a view of one may outlive the node)

        def buffer(i: int, shape: tuple[int, ...]) -> ops.Ref:
            index = free.pop() if free else len(sizes)
            sizes[index] = max(sizes.get(index, 0), math.prod(shape))
            buffer_of[i], shape_of[i] = index, shape
            where[i] = (listed.slot(("buffer", index)), 0)
            return where[i]

        def ref(j: int) -> ops.Ref:
            if j in where:
                return where[j]
            assert j in prog._static, j  # the program's order computes every other input first
            return (listed.slot(("static", j)), 0)

        def python(op: int, layer: _Layer) -> None:
            nonlocal calls
            if len(calls):
                listed.segments.append(calls)
                calls = ops.call_list()
            for j in layer.inputs:
                if j in buffer_of and j not in pinned:
                    pinned.add(j)
                    listed.read.append((j, buffer_of[j], shape_of[j]))
            listed.segments.append(op)
            listed.published[op] = (layer.node, listed.slot(("value", layer.node)))
            where[layer.node] = (listed.published[op][1], 0)

        at = {name: i for i, name in enumerate(_FIXED_SLOTS)}
        record = 8 * k * n  # bytes of one layer's [k, n] int64 record
        for op, layer in enumerate(prog._layers):
            if layer.kind == "clear":
                for j in layer.freed:
                    if j in buffer_of and j not in pinned:
                        index = buffer_of.pop(j)
                        if index not in buffer_of.values():  # no flatten of it still live
                            free.append(index)
            elif layer.kind == "neuron":
                assert layer.neuron is not None
                inputs: list[ops.Ref] = []
                for j, _, fixed, stepwise in layer.sources:
                    if stepwise:
                        return None
                    if fixed is not None:
                        listed.held.append(fixed)
                    inputs.append((-1, fixed.data_ptr()) if fixed is not None else ref(j))
                steps = [step for _, step, _, _ in layer.sources]
                x2, step2 = (inputs[1], steps[1]) if len(inputs) > 1 else ((-1, 0), 0)
                i = layer.node
                offset = record * layer.layer
                layer.neuron.list_into(
                    calls,
                    inputs[0],
                    steps[0],
                    x2,
                    step2,
                    (listed.slot(("u", i)), 0),
                    (listed.slot(("z", i)), 0) if layer.qffs else (-1, 0),
                    buffer(i, layer.shape),
                    (listed.slot(("counts", i)), 0),
                    (at["rec.counts"], offset),
                    (listed.slot(("sops", i)), 0) if layer.counted else (-1, 0),
                    (at["rec.sops"], offset) if layer.counted else (-1, 0),
                )
            elif layer.kind == "conv":
                assert layer.bound is not None
                block = layer.bound[0] if layer.bound else None
                (j,) = layer.inputs
                if layer.listable and isinstance(block, ops.BoundBlockConv) and j in where:
                    out_ref = buffer(layer.node, block.out_shape)
                    block.list_into(calls, where[j], out_ref)
                    if layer.bias is not None:
                        listed.held.append(layer.bias)
                        ops.list_bias_add(calls, block.out_shape, out_ref, layer.bias)
                else:
                    python(op, layer)
            else:
                (j, *rest) = layer.inputs
                node = layer.graph_node
                assert node is not None
                kernel = None
                alone = layer.listable and not rest and j in buffer_of  # one input, in a list buffer
                plain = alone and layer.bias is None
                if plain and isinstance(node, Flatten) and len(shape_of[j]) >= 2:  # the same floats, [N, features]
                    buffer_of[layer.node], where[layer.node] = buffer_of[j], where[j]
                    shape_of[layer.node] = (shape_of[j][0], math.prod(shape_of[j][1:]))
                    continue
                rows = engine.linear_rows(node, shape_of[j][0]) if alone and len(shape_of[j]) == 2 else 0
                if rows:  # kernel 8 on the input's buffer grown to the rows the gemm computes, the rows past any values
                    assert isinstance(node, Linear)
                    features = node.weight.shape[0]
                    sizes[buffer_of[j]] = max(sizes[buffer_of[j]], rows * shape_of[j][1])
                    listed.held += [node.weight] + ([node.bias] if node.bias is not None else [])
                    out_ref = buffer(layer.node, (rows, features))
                    shape_of[layer.node] = (shape_of[j][0], features)
                    ops.list_linear(calls, rows, node.weight, node.bias, where[j], out_ref)
                    if layer.bias is not None:  # on the input's rows, as the Python op adds it
                        listed.held.append(layer.bias)
                        ops.list_bias_add(calls, shape_of[layer.node], out_ref, layer.bias)
                    continue
                if plain:
                    kernel = engine.pool_kernel(node, torch.empty(shape_of[j]))  # a value of the input's kind
                if kernel is not None:
                    nn, c, h, w = shape_of[j]
                    out = (nn, c, h // 2, w // 2) if kernel == "avg_pool_2x2" else (nn, c, 1, 1)
                    listing = ops.list_avg_pool_2x2 if kernel == "avg_pool_2x2" else ops.list_global_avg_pool
                    listing(calls, (nn, c, h, w), where[j], buffer(layer.node, out))
                else:
                    python(op, layer)
        x = ref(prog._output)
        for t in range(k):
            prog._output_step.list_into(
                calls,
                (x[0], x[1] + t * prog._out_row),
                (at["state.sums"], 0),
                (at["state.steps"], 0),
                (at["rec.pred"], 8 * n * t),
                (at["rec.score"], 4 * n * t),
                (at["rec.exited"], n * t),
            )
        listed.segments.append(calls)
        if 4 * sum(sizes.values()) > MAX_LISTED_BYTES:
            return None
        listed.sizes = sizes
        engine.list_buffers(sizes)
        return listed

    def table(self, state: BatchState, rec: StepRecord) -> list[int] | None:
        """The addresses of the slots for a run on state into rec (the Python layers' values: 0 until they run), or
        None where an image-fed value the lists read is not contiguous (the ops then run)."""
        table = [
            rec.counts.data_ptr(),
            0 if rec.sops is None else rec.sops.data_ptr(),
            rec.pred.data_ptr(),
            rec.score.data_ptr(),
            rec.exited.data_ptr(),
            state.sums.data_ptr(),
            state.steps.data_ptr(),
        ]
        buffers = self.engine.list_buffers()
        for field, i in self.keys:
            if field == "value":
                table.append(0)
            elif field == "buffer":
                table.append(buffers[i].data_ptr())
            else:
                v = getattr(state, field)[i]
                if field == "static" and not v.is_contiguous():
                    return None
                table.append(v.data_ptr())
        return table

    def run(self, prog: ChunkProgram, table: list[int], state: BatchState, rec: StepRecord) -> None:
        """The lists and the Python ops between them, output steps included."""
        vals: list[torch.Tensor | None] = [None] * prog._size
        for j in prog._static:
            vals[j] = state.static[j]
        buffers = self.engine.list_buffers()
        for j, index, shape in self.read:
            vals[j] = buffers[index][: math.prod(shape)].view(shape)
        with torch.no_grad():
            for segment in self.segments:
                if not isinstance(segment, int):
                    ops.run_calls(segment, table)
                    continue
                prog._ops[segment](vals, state, rec)
                i, slot = self.published[segment]
                v = vals[i]
                assert v is not None
                v = vals[i] = v.contiguous()
                table[slot] = v.data_ptr()


def _clear(nodes: list[int]) -> Op:
    """An op that drops the values of ``nodes`` (their last reader has run), so their memory is reused."""

    def op(vals: list[torch.Tensor | None], state: BatchState, rec: StepRecord) -> None:
        for j in nodes:
            vals[j] = None

    return op
