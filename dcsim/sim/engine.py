"""Step-major simulation of a SpikingNetwork with the fused kernels.

The engine advances the whole network one time step at a time (step-major), so after every
step each sample's running output sums S_t, prediction and stopping score are known. With
``chunk=k`` it computes k steps at once, layer by layer within the chunk, and still decides
every exit at its own step (same results, fewer and larger conv calls). Per-sample state (membranes, spike counts, sums, static layer values) lives in
:class:`dcsim.sim.state.BatchState`, one row per active sample, so finished samples can be compacted out
(kernel 3) or their rows reset and refilled with new inputs (streaming).

Convs and linears run in PyTorch; neuron updates (kernel 1) and the output step (kernel 2)
run in dcsim's native kernels (``backend="native"``) or in the plain-PyTorch reference
(``backend="reference"``), which tests compare against each other.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import ModuleType
from typing import Any

import torch

from ..checks import check_int, check_threshold
from . import block_conv, ops, program, reference, row_floor, sops
from .chunking import STEP, ChunkPlanner
from .compaction import CompactionCost
from .graphs import StaticExit
from .network import (
    CPU_MIN_ROWS,
    AdaptiveAvgPool,
    AvgPool,
    Conv,
    Input,
    Linear,
    Neuron,
    Node,
    SpikingNetwork,
    onednn_conv_applies,
)
from .readout import Readout
from .semantics import gated
from .state import BatchState, ExitResult, Simulation, StepRecord

BACKENDS: dict[str, ModuleType] = {"native": ops, "reference": reference}
POOL_KERNEL_MIN_ELEMENTS = 1 << 12
"""Input elements from which a 2x2 average pool of a contiguous CPU value runs as kernel 5 (``kernels.avg_pool_2x2``:
torch's bits; torch's CPU kernel for the NCHW layout was about as fast at 4,096 elements and 5-20x slower from
32,768, PyTorch 2.13 on the 2-core Intel Xeon). The reference backend's twin is torch's ``avg_pool2d``."""
MAX_STATIC_EXITS = 8
"""Captured runners an engine keeps (one per batch shape, T, readout, threshold, chunk); oldest dropped."""
PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""Engine precisions and the dtype their convs and linears compute in (see :class:`Engine`)."""
NEVER = 2.0
"""A threshold no score exceeds (scores are in [0, 1]): samples run to T."""


@contextlib.contextmanager
def gpu_flags(tf32: bool, autotune: bool | None = None) -> Iterator[None]:
    """GPU convs and matmuls in full float32 (IEEE), or TensorFloat-32 if ``tf32``; cuDNN autotuning on or
    off per ``autotune`` (None: as it is).

    PyTorch lets cuDNN convolutions use TF32 by default, which changes spikes; dcsim computes in
    full float32 unless TF32 is asked for explicitly. cuDNN's benchmark mode (``autotune``) picks
    the fastest algorithm per conv shape on its first use: worth it for fixed shapes (CUDA graphs),
    costly where compaction makes a new batch size at every exit. The previous settings are
    restored on exit; no effect on the CPU.
    """
    cudnn = torch.backends.cudnn
    saved_benchmark = cudnn.benchmark
    cudnn.benchmark = saved_benchmark if autotune is None else autotune
    # getattr: older PyTorch (allow_tf32 only) has no cudnn.conv, and reading it there raises
    backends: list[Any] = [
        b for b in (getattr(cudnn, "conv", None), torch.backends.cuda.matmul) if hasattr(b, "fp32_precision")
    ]
    saved = [b.fp32_precision for b in backends]
    legacy = None if backends else (cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)  # older PyTorch
    try:
        for b in backends:
            b.fp32_precision = "tf32" if tf32 else "ieee"
        if legacy is not None:
            cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        yield
    finally:
        cudnn.benchmark = saved_benchmark
        for b, v in zip(backends, saved, strict=True):
            b.fp32_precision = v
        if legacy is not None:
            cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = legacy


class Engine:
    """Simulator for one SpikingNetwork on one device.

    backend: "native" (dcsim._core kernels, CPU or CUDA) or "reference" (plain PyTorch).
    device:  where to run; default: where the network's tensors are.
    channels_last: keep 4-D values in the channels_last layout (often faster convs). oneDNN sums a
             channels_last conv in another order, so on trained networks a few spikes differ from the
             default layout's (float rounding; equal on exactly representable networks, tests/test_engine.py).
    precision: how convs and linears compute the currents. "fp32" (default): full float32, also on
             GPUs (PyTorch's TF32 default is off). "tf32": GPU convs and matmuls in TensorFloat-32
             (on the CPU as fp32). "bf16" / "fp16": inputs and weights in bfloat16 / float16 and each
             current rounded to it (accumulation as the backend does it); membranes, spike counts
             and output sums stay float32. All but fp32 are reduced precision: spikes may differ.
    spike_convs: CPU only, float32 only. Convs whose input is a spike layer run event-driven
             (kernel 4, :func:`dcsim.sim.ops.spike_conv2d`): each output sums only the weight rows of
             the inputs that spiked. A few % of neurons spike per step, so this skips most of the
             work at small batches. Implies channels_last. The sums run in another order than a
             dense conv's: results agree with it within float32 rounding, as another conv algorithm would.
    count_ops: count synaptic operations per hidden layer and the image-fed layers' MACs per sample
             (:mod:`dcsim.sim.sops`; results' ``sops`` and ``macs``): one multiply-add per neuron and step
             in the fused neuron step, 0-2% of a step at batch 32 and 1-5% at batch 1 on this project's
             2-core CPU (docs/results/sops-energy.md), so off by default. False: those fields are None.
    """

    def __init__(
        self,
        net: SpikingNetwork,
        backend: str = "native",
        device: torch.device | str | None = None,
        channels_last: bool = False,
        precision: str = "fp32",
        spike_convs: bool = False,
        count_ops: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.device = _resolve_device(device if device is not None else net.device)
        if spike_convs and (self.device.type != "cpu" or PRECISIONS[precision] != torch.float32):
            raise ValueError(
                f"spike_convs runs on the CPU in float32, got device {self.device} and precision {precision!r}"
            )
        self.channels_last = bool(channels_last or spike_convs)
        self.spike_convs = bool(spike_convs)
        self.precision = precision
        self._dtype = PRECISIONS[precision]
        self.net = net.to(self.device)
        if count_ops:
            sops.check_counted(self.net)
        self.count_ops = bool(count_ops)
        self._fanouts: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}  # (neuron node, its shape) -> int32 map
        self._image_macs: dict[tuple[int, ...], int] = {}  # sample shape -> MACs of the image-fed layers
        if self.channels_last or self._dtype != torch.float32:
            self.net = replace(self.net, nodes=[self._prepared(n) for n in self.net.nodes])
        self.backend = backend
        self.kernels = BACKENDS[backend]
        nodes = self.net.nodes
        static = self.net.static_nodes()
        out = self.net.output
        self._dynamic = [i for i in range(len(nodes)) if i not in static]
        needed = {j for i in self._dynamic for j in nodes[i].inputs if j in static}
        if out in static:
            needed.add(out)
        self._needed_static = sorted(needed)
        self._static_order = sorted(static)
        last_use: dict[int, int] = {}
        for i in self._dynamic:
            for j in nodes[i].inputs:
                if j not in static:
                    last_use[j] = i
        self._free_after: dict[int, list[int]] = {}
        for j, i in last_use.items():
            if j != out and not isinstance(nodes[j], Neuron):
                self._free_after.setdefault(i, []).append(j)
        self.neurons = self.net.neurons
        self._layer_of = {i: layer for layer, i in enumerate(self.neurons)}  # neuron node -> hidden layer
        self.kernel_checks = False
        """Whether the native kernels check their tensors on every call (dtype, device, shape, layout; see
        :func:`dcsim.sim.ops.neuron_step`). Off: the engine's own tensors hold them by construction, and the checks
        cost as much as a neuron step at batch 1; tests turn them on (tests/test_engine_checks.py)."""
        self._spike_weights: dict[int, torch.Tensor] = {}  # event-driven convs: node -> weights packed for kernel 4
        for i in self._dynamic:
            node = nodes[i]
            if (
                self.spike_convs
                and isinstance(node, Conv)
                and node.groups == 1
                and node.dilation == (1, 1)
                and len(node.inputs) == 1
                and isinstance(nodes[node.inputs[0]], Neuron)
            ):
                self._spike_weights[i] = ops.pack_spike_conv_weight(node.weight)
        self._shapes: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        self._compaction = CompactionCost()  # when compacting pays (early_exit on the CPU), measured as it runs
        self.chunk_planner = ChunkPlanner()  # a lone sample's steps per call (early_exit, chunk=None)
        # small CPU convs: each row's large-batch bits, padded only where they need it
        self._row_floors = row_floor.RowFloors()
        self._conv_rows: dict[tuple[object, ...], int] = {}  # see _conv
        self._global_pools: dict[tuple[int, ...], bool] = {}  # input shape -> kernel 7 has torch's bits there
        self._linears: dict[tuple[int, int, int, bool], bool] = {}  # see linear_rows
        self._list_buffers: list[torch.Tensor] = []  # see list_buffers
        self._static_exits: dict[tuple[object, ...], StaticExit] = {}
        # small CPU calls as prebound kernel calls (dcsim.sim.program), one program per call shape
        self._programmed = (
            self.device.type == "cpu"
            and backend == "native"
            and self._dtype == torch.float32
            and not self.spike_convs
            and program.ChunkProgram.covers(self)
        )
        self._programs: dict[tuple[object, ...], program.ChunkProgram] = {}
        self.call_lists = True
        """Whether a program runs, from its second call, as native call lists (dcsim.sim.program): the same kernels
        and bits without the Python between them. False: its ops, one Python call per layer (for comparisons)."""
        # small CPU convs (the programs', a lone sample's image-fed ones) as block convs where those give oneDNN's bits
        # and are faster (dcsim.sim.block_conv; None: oneDNN for all)
        self._block_convs: block_conv.BlockConvs | None = None if self.channels_last else block_conv.BlockConvs()
        self._building_seconds = 0.0  # spent building programs: kept out of the batch-1 plan's call times
        # "settle" semantics: dynamic convs/linears run without their bias, which is added for the
        # rows still in their drive window (see _drive_mask), as the static (image-fed) values are.
        self._biases: dict[int, torch.Tensor] = {}
        self._unbiased: dict[int, Node] = {}
        for i in self._dynamic:
            node = nodes[i]
            if self.net.drive_steps is not None and isinstance(node, (Conv, Linear)) and node.bias is not None:
                self._biases[i] = node.bias.float()
                self._unbiased[i] = replace(node, bias=None)

    # ---------------------------------------------------------------- state

    def gpu_flags(self, autotune: bool | None = None) -> contextlib.AbstractContextManager[None]:
        """Context in which the engine's convs and matmuls run (see :func:`gpu_flags`); none on the CPU, where
        those flags change nothing (and setting them costs 20-30 us a call)."""
        if self.device.type == "cpu":
            return contextlib.nullcontext()
        return gpu_flags(self.precision == "tf32", autotune)

    def _prepared(self, node: Node) -> Node:
        """node with its weights in the engine's layout and compute dtype."""
        if not isinstance(node, (Conv, Linear)):
            return node
        bias = None if node.bias is None else node.bias.to(self._dtype)
        return replace(node, weight=self._layout(node.weight).to(self._dtype), bias=bias)

    def _apply(self, node: Node, *inputs: torch.Tensor) -> torch.Tensor:
        """node's float32 output for float32 inputs; convs and linears compute in the engine's dtype, 2x2 average
        pools of large contiguous CPU values in kernel 5 (torch's bits, see POOL_KERNEL_MIN_ELEMENTS), float32 CPU
        convs of few rows by oneDNN on as many rows as their geometry needs for each row's large-batch bits (one
        where those allow; :mod:`dcsim.sim.row_floor`)."""
        if isinstance(node, Conv) and self._dtype == torch.float32 and row_floor.applies(inputs[0]):
            return self._row_floors(node, inputs[0])
        kernel = self.pool_kernel(node, inputs[0])
        if kernel is not None:
            pooled: torch.Tensor = getattr(self.kernels, kernel)(inputs[0])
            return pooled
        if self._dtype == torch.float32 or not isinstance(node, (Conv, Linear)):
            return node.apply(*inputs)
        return node.apply(*(v.to(self._dtype) for v in inputs)).float()

    def list_buffers(self, sizes: dict[int, int] | None = None) -> list[torch.Tensor]:
        """The flat float32 buffers where call lists (dcsim.sim.program) keep the values they compute, one set for
        all of the engine's programs (they run one at a time and keep no value past a run); with ``sizes`` (buffer ->
        floats) first grown to hold them (a grown buffer is a new tensor: lists look buffers up at each run)."""
        for index, floats in (sizes or {}).items():
            while len(self._list_buffers) <= index:
                self._list_buffers.append(torch.empty(0, dtype=torch.float32, device=self.device))
            if self._list_buffers[index].numel() < floats:
                self._list_buffers[index] = torch.empty(floats, dtype=torch.float32, device=self.device)
        return self._list_buffers

    def pool_kernel(self, node: Node, x: torch.Tensor) -> str | None:
        """The kernel :meth:`_apply` pools x by at node, "avg_pool_2x2" (kernel 5) or "global_avg_pool" (kernel 7),
        or None where it takes torch's (any other node too)."""
        cpu = x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous()
        if isinstance(node, AvgPool) and node.is_2x2 and cpu and x.numel() >= POOL_KERNEL_MIN_ELEMENTS:
            return "avg_pool_2x2"
        if isinstance(node, AdaptiveAvgPool) and tuple(node.output_size) == (1, 1) and self._global_pool(x):
            return "global_avg_pool"
        return None

    def _global_pool(self, x: torch.Tensor) -> bool:
        """Whether global average pooling of x runs as kernel 7 (``kernels.global_avg_pool``): x float32, contiguous
        [N, C, H, W] on the CPU with N * C >= 2 (torch splits a lone plane's sum between threads), of a shape on
        which the kernel gave torch's bits for a random probe (checked once per shape: the kernel follows the
        summation order of torch's 8-float vectors, which another CPU's torch may not use). Torch's pool costs
        5-10 us a call alone and 30-60 within a network's step (PyTorch 2.13, 1 thread, 2-core AMD EPYC); kernel 7
        about 1.3 us alone (a sample's 128 planes of 16)."""
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or not x.is_contiguous():
            return False
        shape = tuple(x.shape)
        if shape[0] * shape[1] < 2:
            return False
        ok = self._global_pools.get(shape)
        if ok is None:
            probe = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 100
            ours, torchs = self.kernels.global_avg_pool(probe), reference.global_avg_pool(probe)
            ok = self._global_pools[shape] = torch.equal(ours.view(torch.int32), torchs.view(torch.int32))
        return ok

    def linear_rows(self, node: Node, rows: int) -> int:
        """The rows kernel 8 (``ops.linear``) computes node's linear of ``rows`` input rows on, in a call list where
        it gives node's bits (:meth:`_apply`'s: torch's linear on as many rows as :func:`network.Linear.apply` pads
        to, the rows past ``rows`` any values: a gemm's rows do not mix); 0 where it does not, or node is not a float32
        linear on the CPU. Checked once per shape on random and spike-like probes: which gemm torch calls, and so its
        bits, depends on its build (MKL's sgemm in the PyPI build, which kernel 8 then calls)."""
        if not isinstance(node, Linear) or self.device.type != "cpu" or self._dtype != torch.float32:
            return 0
        weight, bias = node.weight, node.bias
        if not weight.is_contiguous() or (bias is not None and not bias.is_contiguous()):
            return 0
        padded = max(rows, CPU_MIN_ROWS["linear"])
        key = (padded, weight.shape[1], weight.shape[0], bias is not None)
        ok = self._linears.get(key)
        if ok is None:
            ok = ops.sgemm_address() is not None
            gen = torch.Generator().manual_seed(0)
            size = (padded, weight.shape[1])
            currents = torch.randn(size, generator=gen) * 10
            spikes = (torch.rand(size, generator=gen) < 0.2).float() * 0.75  # 0 or a threshold
            for x in (currents, spikes) if ok else ():
                x[rows:] = float("nan")  # rows past the input's: whatever a shared buffer holds
                ours = ops.linear(x, weight, bias)[:rows]
                torchs = node.apply(x[:rows].contiguous())
                ok = ok and torch.equal(ours.view(torch.int32), torchs.view(torch.int32))
            self._linears[key] = ok
        return padded if ok else 0

    def _conv(self, i: int, node: Conv, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_apply` of conv node i (``node``: it or its unbiased twin, the same for every call of i) to x
        float32 [n, C, H, W] on the CPU, with the decisions of that path (oneDNN, the row floor, the layout's strides)
        taken once per x's shape and strides and the threads: at one row they cost 10-15 us a conv, as much as a
        quarter of the conv. Same calls, same bits."""
        key = (i, x.shape, x.stride(), torch.get_num_threads())
        rows = self._conv_rows.get(key)
        if rows is None:
            rows = self._conv_rows[key] = self._conv_floor(node, x)
        return row_floor.padded_conv(node, x, rows) if rows else self._apply(node, x)

    def _conv_floor(self, node: Conv, x: torch.Tensor) -> int:
        """The rows :meth:`_apply` pads node's conv of x up to before oneDNN computes it (the geometry's floor for a
        call of few rows, ``Conv.apply``'s CPU_MIN_ROWS for others), or 0 where it takes another way (a copy to
        canonical strides, another dtype or kernel)."""
        if self._dtype != torch.float32 or not onednn_conv_applies(x):
            return 0
        if row_floor.applies(x):
            return self._row_floors.floor_of(node, x) if row_floor.canonical(x) is x else 0
        return CPU_MIN_ROWS["conv"]

    def steps_at_once(self, chunk: int, n: int) -> int:
        """The steps :meth:`advance` computes at once for ``chunk`` asked and n rows: ``chunk``, but on the CPU at
        least 2 when n = 1, so that each conv call holds 2 rows: a 2-row call costs less than two 1-row calls (1.3-1.8x
        one on the zoo networks, 1 thread), or as much as one where a 1-row call is padded (see :mod:`dcsim.sim.row_floor`).
        Exits are decided per step, so results are the same. The batch-1 plan (``early_exit(chunk=None)``) takes 1-step
        calls where they pay."""
        if self.device.type == "cpu" and n * chunk < CPU_MIN_ROWS["conv"]:
            return -(-CPU_MIN_ROWS["conv"] // n)
        return chunk

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor in the engine's memory layout (see :meth:`_layout`)."""
        if self.channels_last and len(shape) == 4:
            n, c, h, w = shape
            return torch.empty((n, h, w, c), dtype=dtype, device=self.device).permute(0, 3, 1, 2)
        return torch.empty(shape, dtype=dtype, device=self.device)

    def _layout(self, t: torch.Tensor) -> torch.Tensor:
        """t in the engine's memory layout: channels_last for 4-D tensors when enabled, else contiguous."""
        if self.channels_last and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t.contiguous()

    def shapes(self, sample_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Per-sample shapes of all node values for inputs of per-sample shape ``sample_shape``."""
        if sample_shape not in self._shapes:
            try:
                shapes = self.net.shapes(sample_shape)
            except RuntimeError as err:
                raise ValueError(f"input of per-sample shape {sample_shape} does not fit the network: {err}") from err
            if len(shapes[-1]) != 1:
                raise ValueError(
                    f"the output layer {self.net.nodes[-1].name!r} gives per-sample shape {shapes[-1]}; expected [K] logits"
                )
            self._shapes[sample_shape] = shapes
        return self._shapes[sample_shape]

    def fanout(self, i: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Fan-out map of neuron node i of per-sample shape ``shape``: int32 [1, *shape] in the engine's layout
        on its device (computed once, see :func:`dcsim.sim.sops.fanout_map`)."""
        key = (i, shape)
        if key not in self._fanouts:
            fan = sops.fanout_map(self.net, i, shape).to(torch.int32)
            self._fanouts[key] = self._layout(fan[None].to(self.device))
        return self._fanouts[key]

    def image_macs(self, sample_shape: tuple[int, ...]) -> int:
        """MACs per sample of the image-fed layers for inputs of per-sample shape ``sample_shape`` (computed once)."""
        if sample_shape not in self._image_macs:
            self._image_macs[sample_shape] = sum(sops.image_macs(self.net, sample_shape).values())
        return self._image_macs[sample_shape]

    def neurons_per_layer(self, sample_shape: tuple[int, ...]) -> list[int]:
        """Neurons per sample in each hidden (spiking) layer."""
        shapes = self.shapes(sample_shape)
        return [math.prod(shapes[i]) for i in self.neurons]

    def check_input(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Validate a batch of inputs float32 [N, C, H, W] (or [N, features]) for this network."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != torch.float32:
            raise TypeError(f"{name} must have dtype torch.float32, got {x.dtype}")
        if x.device != self.device:
            raise ValueError(f"{name} is on {x.device} but the engine runs on {self.device}")
        if x.dim() < 2:
            raise ValueError(f"{name} must have a leading batch dimension, got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        self.shapes(tuple(x.shape[1:]))
        return self._layout(x)

    def start(self, x: torch.Tensor, ids: torch.Tensor | None = None, blank: bool = False) -> BatchState:
        """Fresh state for the inputs x float32 [n, ...]: membranes u0, counts and sums zero.

        blank: leave the membranes (and QFFS's spike counts) unfilled: the first step takes u0 and 0 in
        their place (BatchState.blank). For runs that step the state before anything else reads it.
        """
        return self.fresh(self.check_input(x), ids, blank)

    def fresh(self, x: torch.Tensor, ids: torch.Tensor | None = None, blank: bool = False) -> BatchState:
        """:meth:`start` for an input already checked by :meth:`check_input` (no host sync: CUDA-graph safe)."""
        n = x.shape[0]
        shapes = self.shapes(tuple(x.shape[1:]))
        nodes = self.net.nodes
        dev = self.device
        static = self._static_values(x)
        u, z, counts, ops_ = {}, {}, {}, {}
        for i in self.neurons:
            neuron = nodes[i]
            assert isinstance(neuron, Neuron)
            u[i] = self.empty((n, *shapes[i]), torch.float32)
            if not blank:
                u[i].fill_(neuron.u0)
            if self.net.method == "qffs":
                z[i] = self.empty((n, *shapes[i]), torch.int32)
                if not blank:
                    z[i].zero_()
            counts[i] = torch.zeros(n, dtype=torch.int64, device=dev)
            if self.count_ops:
                ops_[i] = torch.zeros(n, dtype=torch.int64, device=dev)
        k = shapes[-1][0]
        return BatchState(
            ids=torch.arange(n, device=dev) if ids is None else ids.to(dev, torch.int64),
            static=static,
            u=u,
            z=z,
            counts=counts,
            sops=ops_,
            sums=torch.zeros((n, k), dtype=torch.float32, device=dev),
            steps=torch.zeros(n, dtype=torch.int32, device=dev),
            pred=torch.zeros(n, dtype=torch.int64, device=dev),
            score=torch.zeros(n, dtype=torch.float32, device=dev),
            exited=torch.zeros(n, dtype=torch.uint8, device=dev),
            admitted=torch.full((n,), time.perf_counter(), dtype=torch.float64, device=dev),
            blank=blank,
        )

    def _static_values(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Values of the input-only layers that later layers read, for the (checked) inputs x [n, ...]."""
        nodes = self.net.nodes
        values: dict[int, torch.Tensor] = {}
        with torch.no_grad(), self.gpu_flags():
            for i in self._static_order:
                node = nodes[i]
                if isinstance(node, Input):
                    values[i] = x
                elif isinstance(node, Conv) and (block := self._block_conv(node, values[node.inputs[0]], spikes=False)):
                    values[i] = block(values[node.inputs[0]])
                else:
                    values[i] = self._apply(node, *(values[j] for j in node.inputs))
        return {i: self._layout(values[i]) for i in self._needed_static}

    def _block_conv(self, node: Conv, x: torch.Tensor, spikes: bool) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The block conv of conv node's x where it gives oneDNN's bits and time (:mod:`dcsim.sim.block_conv`), for the
        engines that run chunk programs; else None. spikes: whether x is a spike map (else an image's value: the
        sparse loop is not offered). Decided on a shape's first call; the time spent here (a new shape's check and
        timing, a known one's look-up of a few us) counts as building, not as the call's."""
        if self._block_convs is None or not self._programmed:
            return None
        if x.dim() != 4 or x.dtype != torch.float32 or not x.is_contiguous():
            return None
        t0 = time.perf_counter()
        block = self._block_convs.call(node, tuple(x.shape), spikes=spikes)
        self._building_seconds += time.perf_counter() - t0
        return block

    def compact(self, state: BatchState, keep: torch.Tensor) -> BatchState:
        """The state of the rows ``keep`` (int64 [n_keep], increasing), gathered in one pass."""
        return state.replace_tensors(self.kernels.gather_rows(state.tensors(), keep))

    def refill(self, state: BatchState, rows: torch.Tensor, x: torch.Tensor, ids: torch.Tensor) -> None:
        """Load the inputs x float32 [k, ...] (ids int64 [k]) into the rows ``rows`` (int64 [k]) of ``state``, in place.

        The rows become what :meth:`start` gives for x: membranes u0, counts, sums and steps zero,
        admission time now. Nothing is allocated but the input-only layers' values for x.
        """
        x = self.check_input(x)
        for i, v in self._static_values(x).items():
            state.static[i].index_copy_(0, rows, v)
        for i in self.neurons:
            neuron = self.net.nodes[i]
            assert isinstance(neuron, Neuron)
            state.u[i].index_fill_(0, rows, neuron.u0)
            if i in state.z:
                state.z[i].index_fill_(0, rows, 0)
            state.counts[i].index_fill_(0, rows, 0)
            if i in state.sops:
                state.sops[i].index_fill_(0, rows, 0)
        for t in (state.sums, state.steps, state.pred, state.score, state.exited):
            t.index_fill_(0, rows, 0)
        state.ids.index_copy_(0, rows, ids.to(self.device, torch.int64))
        state.admitted.index_fill_(0, rows, time.perf_counter())

    # ---------------------------------------------------------------- step

    def step(self, state: BatchState, max_steps: int, readout: Readout, threshold: float = NEVER) -> None:
        """Advance every active sample by one time step, in place.

        Afterwards state.pred / score / exited hold the step's prediction, score and exit flag
        (score > threshold, or the sample's steps reached max_steps).
        """
        self.advance(state, 1, max_steps, readout, threshold)

    def _drive_mask(self, state: BatchState, k: int, done: int | None) -> torch.Tensor | bool:
        """Which rows the image and biases drive at each step of the next chunk of k steps.

        "constant" semantics: True (every step). "settle": step s of a row (1-based) is driven while
        s <= drive_steps. ``done``: the steps every row has run, when the caller knows they are
        equal (then a bool per chunk if uniform, with no device work), else None: a float32 [k, n]
        mask of 0/1 computed on the device from state.steps (no host sync: CUDA-graph safe).
        """
        drive = self.net.drive_steps
        if drive is None:
            return True
        if done is not None and (done + k <= drive or done >= drive):
            return done + k <= drive
        first = torch.arange(1, k + 1, device=self.device, dtype=torch.int32)[:, None]
        return ((state.steps[None, :] + first) <= drive).to(torch.float32)

    def advance(
        self,
        state: BatchState,
        k: int,
        max_steps: int,
        readout: Readout,
        threshold: float = NEVER,
        record_sums: bool = False,
        done: int | None = None,
    ) -> StepRecord:
        """Advance every active sample by k time steps, in place, and return what each step produced.

        Within the chunk the network runs layer by layer: each conv/linear takes the k steps as one
        batch of k*n rows (far faster than k batches of n at small n), and each neuron layer then
        runs its k steps in order. No layer feeds back to an earlier one, so the results are those
        of k single steps; early exit decides per step from the record. k = 1 is plain step-major.
        done: the number of steps every row has already run, if the caller knows it is the same for
        all rows (a cheaper path under the "settle" semantics; the results are the same without it).
        On the CPU a call of at most :data:`dcsim.sim.program.MAX_ROWS` rows (k * n) whose drive is known on the
        host runs as a :class:`dcsim.sim.program.ChunkProgram`: the same kernels and bits without this loop's Python.
        """
        n = state.n
        drive = self._drive_mask(state, k, done)  # True/False for all rows, or float32 [k, n]
        small = k * n <= program.MAX_ROWS and not record_sums and not self.kernel_checks  # checks: the general path
        if self._programmed and small and (type(drive) is bool or done is not None):
            # the steps of the chunk the image drives: all, none, or (rows at the same step) up to drive_steps
            driven = k if drive is True else 0 if drive is False else self.net.drive_steps - done  # type: ignore[operator]
            return self._run_program(state, k, driven, max_steps, readout, threshold)
        nodes = self.net.nodes
        method = self.net.method
        vals: dict[int, torch.Tensor] = {}  # dynamic node -> [k, n, ...]

        flat = drive if isinstance(drive, bool) else drive.reshape(k * n)  # the drive of the k * n rows

        def rows(j: int) -> torch.Tensor:  # input j as [k * n, ...]
            if j in vals:
                return vals[j].reshape(k * n, *vals[j].shape[2:])
            s = state.static[j]
            return gated(s.unsqueeze(0).expand(k, *s.shape).reshape(k * n, *s.shape[1:]), flat)

        def at(j: int, t: int) -> torch.Tensor:  # input j at step t of the chunk, [n, ...]
            if j in vals:
                return vals[j][t]
            return gated(state.static[j], drive if isinstance(drive, bool) else drive[t])

        def steps_of(j: int) -> torch.Tensor:  # input j at each step: [k, n, ...], or [n, ...] if the same
            if j in vals:
                return self._layout(vals[j].reshape(k * n, *vals[j].shape[2:])).view(vals[j].shape)
            if drive is True:
                return self._layout(state.static[j])
            return self._layout(rows(j)).view(k, *state.static[j].shape)

        classes = state.sums.shape[1] if record_sums else None
        rec = StepRecord.empty(k, n, len(self.neurons), classes, self.device, sops=self.count_ops)
        layer_of = self._layer_of
        cpu = self.device.type == "cpu"
        with torch.no_grad(), self.gpu_flags():
            for i in self._dynamic:
                node = nodes[i]
                if isinstance(node, Neuron):
                    shape = state.u[i].shape
                    out = self.empty((k * n, *shape[1:]), torch.float32).view(k, *shape)
                    fanout = self.fanout(i, tuple(shape[1:])) if self.count_ops else None
                    if cpu:  # the k steps in one call, the counts after each written into the record
                        self.kernels.neuron_steps(
                            method,
                            steps_of(node.inputs[0]),
                            state.u[i],
                            state.z.get(i),
                            out,
                            state.counts[i],
                            node.threshold,
                            node.zmax,
                            x2=steps_of(node.inputs[1]) if len(node.inputs) > 1 else None,
                            fanout=fanout,
                            sops=state.sops.get(i),
                            u0=node.u0 if state.blank else None,
                            counts_out=rec.counts[layer_of[i]],
                            sops_out=None if rec.sops is None else rec.sops[layer_of[i]],
                            checked=self.kernel_checks,
                        )
                    else:  # a launch per step
                        for t in range(k):
                            self.kernels.neuron_step(
                                method,
                                self._layout(at(node.inputs[0], t)),
                                state.u[i],
                                state.z.get(i),
                                out[t],
                                state.counts[i],
                                node.threshold,
                                node.zmax,
                                x2=self._layout(at(node.inputs[1], t)) if len(node.inputs) > 1 else None,
                                fanout=fanout,
                                sops=state.sops.get(i),
                                u0=node.u0 if state.blank and t == 0 else None,
                                checked=self.kernel_checks,
                            )
                            if k > 1:  # k = 1: stored for all layers at once after the loop
                                rec.counts[layer_of[i], t] = state.counts[i]
                                if rec.sops is not None:
                                    rec.sops[layer_of[i], t] = state.sops[i]
                    vals[i] = out
                else:
                    bias = self._biases.get(i)
                    if bias is not None:
                        node = self._unbiased[i]
                    if i in self._spike_weights:
                        assert isinstance(node, Conv)
                        r = self.kernels.spike_conv2d(
                            rows(node.inputs[0]), self._spike_weights[i], node.bias, node.stride, node.padding
                        )
                    elif cpu and isinstance(node, Conv):
                        x = rows(node.inputs[0])
                        block = self._block_conv(node, x, spikes=node.inputs[0] in vals)
                        r = block(x) if block is not None else self._conv(i, node, x)
                    else:
                        r = self._apply(node, *(rows(j) for j in node.inputs))
                    if bias is not None and drive is not False:
                        b = bias.reshape(1, -1, *([1] * (r.dim() - 2)))
                        r.add_(gated(b if drive is True else b.expand(k * n, *b.shape[1:]), flat))  # r: a new tensor
                    vals[i] = r.reshape(k, n, *r.shape[1:])
                for j in self._free_after.get(i, ()):
                    del vals[j]
            state.blank = False
            if k == 1 and not cpu:  # one stack per record instead of a copy per layer (the Python cost of a step)
                torch.stack([state.counts[i] for i in self.neurons], out=rec.counts[:, 0])
                if rec.sops is not None:
                    torch.stack([state.sops[i] for i in self.neurons], out=rec.sops[:, 0])
            output = self.net.output
            for t in range(k):
                self.kernels.output_step(
                    at(output, t).contiguous(),
                    state.sums,
                    state.steps,
                    max_steps,
                    readout.code,
                    readout.scale,
                    threshold,
                    state.pred,
                    state.score,
                    state.exited,
                    checked=self.kernel_checks,
                )
                rec.store(t, state)
        return rec

    def _run_program(
        self, state: BatchState, k: int, driven: int, max_steps: int, readout: Readout, threshold: float
    ) -> StepRecord:
        """:meth:`advance` of a small CPU call as its :class:`dcsim.sim.program.ChunkProgram` (built on the first
        call of its shape): the same kernels and bits without the general path's Python."""
        key = (
            k,
            state.u[self.neurons[0]].shape,
            driven,
            state.blank,
            max_steps,
            readout,
            threshold,
            torch.get_num_threads(),
        )
        prog = self._programs.get(key)
        if prog is None:
            if len(self._programs) >= program.KEPT:  # a sweep of thresholds or batch sizes: start afresh
                self._programs.clear()
            t0 = time.perf_counter()
            prog = self._programs[key] = program.ChunkProgram(self, state, k, driven, max_steps, readout, threshold)
            self._building_seconds += time.perf_counter() - t0
        rec = StepRecord.empty(k, state.n, len(self.neurons), None, self.device, sops=self.count_ops)
        prog.run(state, rec)
        state.blank = False
        return rec

    # ---------------------------------------------------------------- runs

    def _layers(self, x: torch.Tensor) -> tuple[list[int], list[str]]:
        return self.neurons_per_layer(tuple(x.shape[1:])), [self.net.nodes[i].name for i in self.neurons]

    def simulate(
        self,
        x: torch.Tensor,
        steps: int,
        readout: Readout | None = None,
        record_sums: bool = False,
        batch_size: int | None = None,
        chunk: int = 1,
    ) -> Simulation:
        """Run all samples for ``steps`` steps; record prediction and score per step.

        x: float32 [N, ...]; readout: the stopping score recorded in ``conf`` (default max
        softmax with alpha = tau = 1); batch_size: samples simulated together (default all);
        chunk: steps computed layer-major at a time (see :meth:`advance`; results are the same).
        """
        steps = check_int(steps, "steps")
        chunk = check_int(chunk, "chunk")
        readout = readout or Readout()
        x = self.check_input(x)
        n_all = x.shape[0]
        bs = _batch_size(batch_size, n_all)
        k_out = self.shapes(tuple(x.shape[1:]))[-1][0]
        preds = [torch.empty((0, steps), dtype=torch.int64, device=self.device)]
        confs = [torch.empty((0, steps), dtype=torch.float32, device=self.device)]
        sums_all = [torch.empty((0, steps, k_out), dtype=torch.float32, device=self.device)]
        spikes = [torch.empty((0, len(self.neurons)), dtype=torch.int64, device=self.device)]
        ops_ = [torch.empty((0, len(self.neurons)), dtype=torch.int64, device=self.device)]
        for lo in range(0, n_all, bs):
            state = self.fresh(x[lo : lo + bs], blank=True)  # x checked above
            k = self.steps_at_once(chunk, state.n)
            records = [
                self.advance(state, min(k, steps - done), steps, readout, record_sums=record_sums, done=done)
                for done in range(0, steps, k)
            ]
            preds.append(torch.cat([r.pred for r in records]).T)
            confs.append(torch.cat([r.score for r in records]).T)
            if record_sums:  # then every record has its sums
                sums_all.append(torch.cat([r.sums for r in records if r.sums is not None]).transpose(0, 1))
            spikes.append(torch.stack([state.counts[i] for i in self.neurons], dim=1))
            if self.count_ops:
                ops_.append(torch.stack([state.sops[i] for i in self.neurons], dim=1))
        neurons, layers = self._layers(x)
        return Simulation(
            sums=torch.cat(sums_all).cpu() if record_sums else None,
            pred=torch.cat(preds).cpu(),
            conf=torch.cat(confs).cpu(),
            spikes=torch.cat(spikes).cpu(),
            neurons=neurons,
            layers=layers,
            sops=torch.cat(ops_).cpu() if self.count_ops else None,
            macs=self._macs(x),
        )

    def _macs(self, x: torch.Tensor) -> torch.Tensor | None:
        """The image-fed layers' MACs of each sample of x, int64 [N] (once per sample), or None if not counted."""
        if not self.count_ops:
            return None
        return torch.full((x.shape[0],), self.image_macs(tuple(x.shape[1:])), dtype=torch.int64)

    def early_exit(
        self,
        x: torch.Tensor,
        steps: int,
        readout: Readout,
        threshold: float,
        batch_size: int | None = None,
        chunk: int | None = None,
        compact_fraction: float | None = None,
        graphs: bool = False,
    ) -> ExitResult:
        """Live Dynamic Confidence: each sample stops at the first step whose score is > threshold, or at T.

        Finished samples are compacted out of the batch, so later steps compute only on survivors.
        compact_fraction: None (default): on the CPU, compact in place (:class:`dcsim.sim.ops.InPlaceCompaction`) whenever the
        measured cost model of :mod:`dcsim.sim.compaction` says it pays before T; elsewhere at every exit.
        A number: compact (by a gather, :meth:`compact`) once at least this fraction of the rows has
        finished (0: at every exit; 1: never, a masked fixed batch). Finished rows left in the batch
        keep computing but their results are already recorded, so the choice changes the time, never
        the results.
        chunk: steps computed layer-major at a time (see :meth:`advance`): a sample that stops
        inside a chunk gets the results of its exit step, exactly as with chunk = 1; the steps
        computed after its exit are wasted work, the price of batching the steps of small batches.
        On the CPU a single running row computes at least 2 steps at a time (:meth:`steps_at_once`).
        None ("auto"): a batch of one sample takes its steps per call from the plan of
        :mod:`dcsim.sim.chunking` (the expected wall time per sample, minimised from the call times and exit
        steps this engine has measured); a larger batch computes 1 step at a time. Same results.
        graphs: run on fixed-shape buffers with the step loop replayed as CUDA graphs (see
        :class:`dcsim.sim.graphs.StaticExit`; on the CPU the same code runs eagerly); compaction then
        goes to halving batch-size buckets, or nowhere if compact_fraction = 1. Same results.
        """
        steps = check_int(steps, "steps")
        chunk = None if chunk is None else check_int(chunk, "chunk")
        threshold = check_threshold(threshold)
        if compact_fraction is not None and not (
            isinstance(compact_fraction, (int, float)) and 0.0 <= compact_fraction <= 1.0
        ):
            raise ValueError(f"compact_fraction must be None or in [0, 1], got {compact_fraction!r}")
        cost_model = compact_fraction is None and self.device.type == "cpu"
        fraction = 0.0 if compact_fraction is None else compact_fraction
        x = self.check_input(x)
        n_all = x.shape[0]
        bs = _batch_size(batch_size, n_all)
        pred = torch.empty(n_all, dtype=torch.int64, device=self.device)
        exit_step = torch.empty(n_all, dtype=torch.int64, device=self.device)
        conf = torch.empty(n_all, dtype=torch.float32, device=self.device)
        spikes = torch.empty((n_all, len(self.neurons)), dtype=torch.int64, device=self.device)
        ops_ = torch.zeros((n_all, len(self.neurons)), dtype=torch.int64, device=self.device)
        for lo in range(0, n_all, bs):
            if graphs:
                runner = self.static_exit(
                    tuple(x[lo : lo + bs].shape), steps, readout, threshold, chunk or 1, buckets=fraction < 1
                )
                (pred[lo : lo + bs], exit_step[lo : lo + bs], conf[lo : lo + bs], spikes[lo : lo + bs], sops_run) = (
                    runner.run(x[lo : lo + bs])
                )
                if sops_run is not None:
                    ops_[lo : lo + bs] = sops_run
                continue
            state = self.fresh(  # x checked above
                x[lo : lo + bs], ids=torch.arange(lo, min(lo + bs, n_all), device=self.device), blank=True
            )
            if chunk is None and state.n == 1:  # steps per call from the plan (dcsim.sim.chunking)
                self._exit_lone(state, lo, steps, readout, threshold, (pred, exit_step, conf, spikes, ops_))
                continue
            if cost_model and state.n > 1:  # a lone row is never compacted: the run ends when it does
                state.static = _owned(state.static, x)
                compaction = self.kernels.InPlaceCompaction(state.tensors())
            alive = [True] * state.n  # per row of the state: still running (plain lists: the rows are few)
            ran = 0
            while state.n:
                k = min(self.steps_at_once(chunk or 1, state.n), steps - ran)
                t0 = time.perf_counter()
                rec = self.advance(state, k, steps, readout, threshold, done=ran)
                ran += k
                flags = rec.exited.tolist()  # [k][n]: a host sync
                rows, first = [], []  # the rows still running that exit in the chunk, and the step of the first exit
                for r in range(state.n):
                    if alive[r]:
                        t = next((t for t in range(k) if flags[t][r]), None)
                        if t is not None:
                            rows.append(r)
                            first.append(t)
                if rows:
                    at = torch.tensor(rows, device=self.device)
                    step = torch.tensor(first, device=self.device)
                    ids = state.ids[at]
                    pred[ids] = rec.pred[step, at]
                    exit_step[ids] = rec.steps[step, at].to(torch.int64)
                    conf[ids] = rec.score[step, at]
                    spikes[ids] = rec.counts[:, step, at].T
                    if rec.sops is not None:
                        ops_[ids] = rec.sops[:, step, at].T
                    for r in rows:
                        alive[r] = False
                n_alive = alive.count(True)
                step_seconds = (time.perf_counter() - t0) / k
                finished = state.n - n_alive
                if finished == state.n:
                    break
                if cost_model and finished:
                    keep, moved = _fill_holes(alive, n_alive)
                    if self._compaction.pays(
                        finished, state.n, steps - ran, step_seconds, moved * compaction.row_bytes
                    ):
                        t0 = time.perf_counter()
                        state = state.replace_tensors(compaction(keep))
                        self._compaction.observe(moved * compaction.row_bytes, time.perf_counter() - t0)
                        alive = [True] * n_alive
                elif finished and finished >= fraction * state.n:
                    running = [r for r in range(state.n) if alive[r]]
                    state = self.compact(state, torch.tensor(running, device=self.device))
                    alive = [True] * n_alive
        neurons, layers = self._layers(x)
        return ExitResult(
            pred.cpu(),
            exit_step.cpu(),
            conf.cpu(),
            spikes.cpu(),
            neurons,
            layers,
            sops=ops_.cpu() if self.count_ops else None,
            macs=self._macs(x),
        )

    def _exit_lone(
        self,
        state: BatchState,
        row: int,
        steps: int,
        readout: Readout,
        threshold: float,
        out: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> None:
        """:meth:`early_exit` of one sample (``state`` of 1 row) in the calls the plan of :mod:`dcsim.sim.chunking`
        sizes; its results go to row ``row`` of out = (pred, exit_step, conf, spikes, sops). One host sync per call
        (the chunk's exit flags) and plain indexing: at batch 1 the bookkeeping of a batch (masks, nonzero, gathers)
        costs as much as a small network's step."""
        planner = self.chunk_planner
        key = (steps, readout, threshold)
        pred, exit_step, conf, spikes, ops_ = out
        ran = 0
        while ran < steps:
            k = planner.next_chunk(key, steps, ran, self._step_from(state, steps, readout, threshold))
            t0, built = time.perf_counter(), self._building_seconds
            stepped = False
            if k == STEP:
                rec, k, stepped = self._step_lone(state, steps, ran, readout, threshold)
            else:
                rec = self.advance(state, k, steps, readout, threshold, done=ran)
            flags = rec.exited[:, 0].tolist()  # a host sync
            # without the exit's bookkeeping (paid once a sample) and the building of a program (once a shape)
            seconds = time.perf_counter() - t0 - (self._building_seconds - built)
            unrecorded = k - len(flags)  # steps before the record's (a stepping call records its last step)
            flags = [False] * unrecorded + flags
            if stepped:
                planner.observe_stepping(k, seconds)
            elif not unrecorded:  # one call of k steps (not a blank step and a plain one in place of stepping)
                planner.observe_call(k, seconds)
            ran += k
            if any(flags):
                t = next(i for i, f in enumerate(flags) if f) - unrecorded  # the first exit step, in the record
                pred[row] = rec.pred[t, 0]
                exit_step[row] = rec.steps[t, 0]
                conf[row] = rec.score[t, 0]
                spikes[row] = rec.counts[:, t, 0]
                if rec.sops is not None:
                    ops_[row] = rec.sops[:, t, 0]
                planner.observe_exit(key, steps, int(exit_step[row]))
                return
        raise AssertionError(f"a sample ran {steps} steps without its exit (the output step ends every sample at T)")

    def _lone_program(
        self, state: BatchState, steps: int, readout: Readout, threshold: float, driven: int
    ) -> program.ChunkProgram | None:
        """The 1-step program of a lone sample's running state (driven or not), where one has been built."""
        key = (1, state.u[self.neurons[0]].shape, driven, False, steps, readout, threshold, torch.get_num_threads())
        return self._programs.get(key)

    def _step_from(self, state: BatchState, steps: int, readout: Readout, threshold: float) -> int | None:
        """The steps run after which a lone sample can be stepped until its exit (every 1-step program it would run
        from there on can step, :meth:`program.ChunkProgram.can_step`, or may: one not built or not listed yet is
        run as a plain step by :meth:`_step_lone` until it is), or None."""
        if state.n != 1 or not self._programmed or not self.call_lists or self.kernel_checks:
            return None

        def can(driven: int) -> bool:
            prog = self._lone_program(state, steps, readout, threshold, driven)
            return prog is None or prog.may_step()

        drive = self.net.drive_steps
        if drive is None or drive >= steps:  # every step driven
            return 0 if can(1) else None
        if not can(0):
            return None
        return 0 if can(1) else drive

    def _step_lone(
        self, state: BatchState, steps: int, ran: int, readout: Readout, threshold: float
    ) -> tuple[StepRecord, int, bool]:
        """A lone sample that has run ``ran`` steps stepped until its exit, or as far as its 1-step program runs (to
        the end of the drive, under the settle semantics), in one native call (a blank state's first step before it,
        as a call of its own): (the record of the last step, the steps run, True). Where that program cannot step
        yet (not built, or not listed: it is from its second run), one plain step instead (False)."""
        drive = self.net.drive_steps
        first = None
        if state.blank:  # the first step takes u0: a program of its own
            first = self.advance(state, 1, steps, readout, threshold, done=ran)
            ran += 1
            if bool(first.exited[0, 0]) or ran == steps:
                return first, 1, False
        driven = 1 if drive is None or ran < drive else 0
        limit = steps if drive is None or ran >= drive else min(drive, steps)
        prog = self._lone_program(state, steps, readout, threshold, driven)
        rec = StepRecord.empty(1, 1, len(self.neurons), None, self.device, sops=self.count_ops)
        runs = None if prog is None else prog.step_until_exit(state, rec, limit - ran)
        if runs is None:  # cannot step (yet; or a static value not contiguous): one plain step
            return self.advance(state, 1, steps, readout, threshold, done=ran), 1 + (first is not None), False
        return rec, runs + (first is not None), True

    def static_exit(
        self,
        shape: tuple[int, ...],
        steps: int,
        readout: Readout,
        threshold: float,
        chunk: int = 1,
        buckets: bool = True,
    ) -> StaticExit:
        """The :class:`StaticExit` runner for batches of ``shape`` (built once, then reused)."""
        key = (shape, steps, readout, threshold, chunk, buckets)
        if key not in self._static_exits:
            if len(self._static_exits) >= MAX_STATIC_EXITS:
                del self._static_exits[next(iter(self._static_exits))]  # the oldest
            self._static_exits[key] = StaticExit(self, shape, steps, readout, threshold, chunk, buckets)
        return self._static_exits[key]


def _owned(values: dict[int, torch.Tensor], x: torch.Tensor) -> dict[int, torch.Tensor]:
    """values (the static layers' [n, ...]) with a copy of each one that shares memory with the inputs x or
    with an earlier value, so that compacting each in place (:class:`dcsim.sim.ops.InPlaceCompaction`) moves its rows
    once."""
    seen = {x.untyped_storage().data_ptr()}
    out = {}
    for i, v in values.items():
        out[i] = v.clone() if v.untyped_storage().data_ptr() in seen else v
        seen.add(out[i].untyped_storage().data_ptr())
    return out


def _fill_holes(alive: list[bool], n_alive: int) -> tuple[list[int], int]:
    """The in-place compaction index of the running rows (alive: one bool a row) and how many rows it moves.

    Returns keep, n_alive rows: keep[r] = r where row r < n_alive runs; each finished row among the first n_alive
    is filled by a running row past n_alive, in increasing order (see :class:`dcsim.sim.ops.InPlaceCompaction`).
    """
    keep = list(range(n_alive))
    holes = [r for r in range(n_alive) if not alive[r]]
    for hole, row in zip(holes, (r for r in range(n_alive, len(alive)) if alive[r]), strict=False):
        keep[hole] = row
    return keep, len(holes)


def _resolve_device(device: torch.device | str) -> torch.device:
    """The device with its index: "cuda" means the current CUDA device (tensors report cuda:N)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _batch_size(batch_size: int | None, n: int) -> int:
    if batch_size is None:
        return max(n, 1)
    return check_int(batch_size, "batch_size")
