"""The spiking network IR: an explicit, ordered graph of current-carrying nodes.

Every node maps the values of its input nodes (float32 [n, ...], one row per sample) to its
own value for one time step. ``Input`` is the analog image fed at every step; ``Neuron`` is the
only stateful node (membrane, spike count) and emits spike * th; the network's last node is the
output layer, whose current is integrated into the running sums S_t by the engine.
Nodes whose inputs are all constant over time (the input and the layers fed only by it)
are "static": the engine evaluates them once per sample, not once per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..checks import check_int
from .semantics import Semantics

CPU_MIN_ROWS = {"conv": 2, "linear": 16}
"""Rows (samples x steps) below which a CPU conv / linear is computed on zero-padded rows. A conv of 1 row and
MKL's matmul at 1-15 rows take other code paths than at more rows and round differently (float32, about
1e-7 relative); on a trained network that flips spikes, and with them exit steps, by batch size, chunk and
compaction. Padding gives every row the result it gets in a large batch on most geometries (checked over the
architectures' shapes and fuzzed ones in tests/test_row_invariance.py). The engine instead pads each conv of
few rows to what a per-geometry check finds its bits need (:mod:`dcsim.sim.row_floor`): one row on most
geometries, up to 6 on a few."""


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout a fresh tensor holding x gets: channels_last for a 4-D x that is channels_last and not
    contiguous, else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _at_least(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x with zero rows appended up to ``rows`` (on the CPU, in x's memory layout); x itself if it has enough."""
    n = x.shape[0]
    if n >= rows or x.device.type != "cpu":
        return x
    padded = x.new_zeros((rows, *x.shape[1:])).contiguous(memory_format=memory_format(x))
    padded[:n] = x
    return padded


@dataclass(frozen=True)
class Node:
    """Base node: ``name`` is the source layer's qualified name, ``inputs`` the indices of its inputs."""

    name: str
    inputs: tuple[int, ...]

    def apply(self, *xs: torch.Tensor) -> torch.Tensor:
        """The node's value from its inputs' values (one per entry of ``inputs``)."""
        raise NotImplementedError(f"{type(self).__name__} has no stateless apply")

    def _one(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The single input of a one-input node's :meth:`apply`."""
        if len(xs) != 1:
            raise TypeError(f"{type(self).__name__}.apply takes one input, got {len(xs)}")
        return xs[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def to(self, device: torch.device | str) -> Node:
        moved: dict[str, Any] = {k: v.to(device) for k, v in self.tensors().items()}
        return replace(self, **moved)


@dataclass(frozen=True)
class Input(Node):
    """The input image [n, C, H, W], presented as an analog current at every step."""


@dataclass(frozen=True)
class Conv(Node):
    """2-D convolution (batch norm folded in): weight [Cout, Cin/groups, kh, kw], bias [Cout]."""

    weight: torch.Tensor = field(repr=False)
    bias: torch.Tensor | None = field(repr=False, default=None)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def apply(self, *xs: torch.Tensor) -> torch.Tensor:
        """The conv of x [n, Cin, H, W]. A float32 CPU call goes to oneDNN directly, on at least CPU_MIN_ROWS rows:
        PyTorch itself sends some small calls (1 row; a 1x1, stride-1 kernel under 16 rows on one thread) to
        another kernel that rounds differently, so a row's result would depend on the call's rows."""
        x = self._one(xs)
        padded = _at_least(x, CPU_MIN_ROWS["conv"])
        if onednn_conv_applies(padded):
            out = onednn_conv(self, padded)
        else:
            out = F.conv2d(padded, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return out if padded is x else out[: x.shape[0]]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight} | ({"bias": self.bias} if self.bias is not None else {})


def onednn_conv_applies(x: torch.Tensor) -> bool:
    """Whether a conv of x (float32 [n, C, H, W] on the CPU, oneDNN present) goes to :func:`onednn_conv`."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
        return False
    return bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]  # torch leaves it unannotated


def onednn_conv(node: Conv, x: torch.Tensor) -> torch.Tensor:
    """node's conv of x by oneDNN, whatever the rows: PyTorch's own choice of kernel is bypassed."""
    return torch.mkldnn_convolution(x, node.weight, node.bias, node.padding, node.stride, node.dilation, node.groups)


@dataclass(frozen=True)
class Linear(Node):
    """Fully connected layer (batch norm folded in): weight [out, in], bias [out]."""

    weight: torch.Tensor = field(repr=False)
    bias: torch.Tensor | None = field(repr=False, default=None)

    def apply(self, *xs: torch.Tensor) -> torch.Tensor:
        x = self._one(xs)
        padded = _at_least(x, CPU_MIN_ROWS["linear"])
        out = F.linear(padded, self.weight, self.bias)
        return out if padded is x else out[: x.shape[0]]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight} | ({"bias": self.bias} if self.bias is not None else {})


@dataclass(frozen=True)
class AvgPool(Node):
    """Average pooling over [kernel] windows (count_include_pad as in torch's default)."""

    kernel: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = True

    @property
    def is_2x2(self) -> bool:
        """A 2x2 kernel at stride 2 without padding, in floor mode: the pool :func:`dcsim.sim.ops.avg_pool_2x2` computes."""
        return (
            tuple(self.kernel) == (2, 2)
            and tuple(self.stride) == (2, 2)
            and tuple(self.padding) == (0, 0)
            and not self.ceil_mode
        )

    def apply(self, *xs: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(
            self._one(xs), self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad
        )


@dataclass(frozen=True)
class AdaptiveAvgPool(Node):
    """Adaptive average pooling to ``output_size`` (global pooling for (1, 1))."""

    output_size: tuple[int | None, int | None] = (1, 1)  # None: the input's size

    def apply(self, *xs: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self._one(xs), self.output_size)


@dataclass(frozen=True)
class Flatten(Node):
    """Flatten all dimensions after the sample dimension."""

    def apply(self, *xs: torch.Tensor) -> torch.Tensor:
        return self._one(xs).flatten(1)


@dataclass(frozen=True)
class Add(Node):
    """Sum of currents (residual connection)."""

    def apply(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


@dataclass(frozen=True)
class Neuron(Node):
    """Integrate-and-fire neurons with soft reset (QCFS, or QFFS with the cap ``zmax``).

    threshold: th = Qp * s (float32-representable, > 0); a spike carries th.
    u0: initial membrane potential (same unit as th; th / 2 by default at conversion).
    zmax: spike-count cap for QFFS (Qp). ``inputs`` are summed (one or two currents).
    """

    threshold: float = 1.0
    u0: float = 0.5
    zmax: int = 3


@dataclass(frozen=True)
class Quantize(Node):
    """The ANN's quantizer, s * round(clamp(x / s, 0, Qp)), as a stateless layer: an activation of the first
    layer, whose input current is the same at every step, computed once per sample instead of spiking
    (``stem="quantized"`` in :func:`dcsim.convert`). Valid only where its input is image-fed (see
    :class:`SpikingNetwork`).

    step: s, float32 0-d tensor (> 0); levels: Qp >= 1; rounding: "half_up" (floor(v + 0.5), LSQ's) or
    "half_even" (torch.round), the source quantizer's.
    """

    step: torch.Tensor = field(repr=False)
    levels: int = 3
    rounding: str = "half_up"

    def __post_init__(self) -> None:
        check_int(self.levels, f"layer {self.name!r} (Quantize): levels")
        if self.rounding not in ("half_up", "half_even"):
            raise ValueError(
                f"layer {self.name!r} (Quantize): rounding must be 'half_up' or 'half_even', got {self.rounding!r}"
            )
        positive = self.step.is_meta or bool(self.step.detach().float().cpu().gt(0).all())  # meta: shapes only
        if self.step.numel() != 1 or not positive:
            raise ValueError(f"layer {self.name!r} (Quantize): the step must be one number > 0, got {self.step!r}")

    def apply(self, *xs: torch.Tensor) -> torch.Tensor:
        """s * round(clamp(x / s, 0, Qp)) of x float32 [n, ...], computed as dcsim's LSQ forward computes it."""
        v = torch.clamp(self._one(xs) / self.step, 0, self.levels)
        q = torch.floor(v + 0.5) if self.rounding == "half_up" else torch.round(v)
        return q * self.step

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"step": self.step}


STEMS = ("spiking", "quantized")
"""How a QCFS network's first layer of activations (fed by the image's current) runs: as neurons, or as
:class:`Quantize` layers computed once per sample (see :func:`dcsim.convert`)."""


SEMANTICS = tuple(s.value for s in Semantics)
"""How the input image and the biases drive the network over time (see :class:`SpikingNetwork`)."""


@dataclass
class SpikingNetwork:
    """Converted network: ``nodes`` in topological order; the last node is the output layer.

    method: "qcfs" or "qffs"; bits: activation bits of the source model (None if mixed).
    drive_steps: None for the "constant" semantics: the image and every bias drive the network at
        every step. An integer D >= 1 for the "settle" semantics (QFFS only): the image and the
        biases drive the first D steps only (D = Qp); afterwards only spikes move currents, so each
        neuron settles, negative spikes correcting what it sent too early, and the spike counts
        stop at the quantized ANN's levels instead of growing with T (README, "QFFS beyond T = Qp").
    """

    nodes: list[Node]
    method: str
    bits: int | None
    drive_steps: int | None = None

    def __post_init__(self) -> None:
        if self.drive_steps is not None:
            if self.method != "qffs":
                raise ValueError(f"the 'settle' semantics (drive_steps) applies to QFFS only, not {self.method!r}")
            check_int(self.drive_steps, "drive_steps")
        quantizers = [i for i, n in enumerate(self.nodes) if isinstance(n, Quantize)]
        if quantizers:
            if self.method != "qcfs":
                raise ValueError(f"Quantize layers (the quantized stem) apply to QCFS only, not {self.method!r}")
            static = self.static_nodes()
            for i in quantizers:
                if i not in static:
                    raise ValueError(
                        f"layer {i} {self.nodes[i].name!r} (Quantize) takes spikes: a quantizer computed once per "
                        "sample must be fed by the image only"
                    )

    @property
    def stem(self) -> str:
        """ "quantized" when the first layer of activations is :class:`Quantize` layers (computed once per sample),
        else "spiking" (every activation a neuron)."""
        return STEMS[1] if any(isinstance(n, Quantize) for n in self.nodes) else STEMS[0]

    @property
    def semantics(self) -> Semantics:
        """ "settle" (image and biases over the first ``drive_steps`` steps) or "constant" (at every step)."""
        return Semantics.CONSTANT if self.drive_steps is None else Semantics.SETTLE

    @property
    def output(self) -> int:
        return len(self.nodes) - 1

    @property
    def neurons(self) -> list[int]:
        """Indices of the Neuron nodes (the hidden spiking layers), in order."""
        return [i for i, n in enumerate(self.nodes) if isinstance(n, Neuron)]

    def static_nodes(self) -> set[int]:
        """Nodes whose value is the same at every step (depend on the input only, not on spikes)."""
        static: set[int] = set()
        for i, node in enumerate(self.nodes):
            if isinstance(node, Input) or (
                not isinstance(node, Neuron) and node.inputs and all(j in static for j in node.inputs)
            ):
                static.add(i)
        return static

    def to(self, device: torch.device | str) -> SpikingNetwork:
        return replace(self, nodes=[n.to(device) for n in self.nodes])

    @property
    def device(self) -> torch.device:
        for node in self.nodes:
            for t in node.tensors().values():
                return t.device
        return torch.device("cpu")

    def shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Per-sample value shape of every node for an input of per-sample shape ``input_shape``."""
        values: list[torch.Tensor] = []
        for node in self.nodes:
            if isinstance(node, Input):
                values.append(torch.empty((1, *input_shape), device="meta"))
            elif isinstance(node, Neuron):
                values.append(values[node.inputs[0]])
            else:
                on_meta: dict[str, Any] = {k: v.to("meta", torch.float32) for k, v in node.tensors().items()}
                meta = replace(node, **on_meta)
                values.append(meta.apply(*(values[j] for j in node.inputs)))
        return [tuple(v.shape[1:]) for v in values]

    def __repr__(self) -> str:
        drive = "" if self.drive_steps is None else f", drive_steps={self.drive_steps}"
        lines = [
            f"SpikingNetwork(method={self.method!r}, semantics={self.semantics!r}{drive}, bits={self.bits}, "
            f"nodes={len(self.nodes)})"
        ]
        for i, n in enumerate(self.nodes):
            extra = f" th={n.threshold:.4g} u0={n.u0:.4g}" if isinstance(n, Neuron) else ""
            if isinstance(n, Quantize):
                extra = f" s={float(n.step):.4g} Qp={n.levels}"
            lines.append(f"  [{i}] {type(n).__name__}({n.name!r}) <- {list(n.inputs)}{extra}")
        return "\n".join(lines)
