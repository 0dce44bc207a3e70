"""Native fused kernels from ``dcsim._core``, behind Python wrappers that check arguments.

The extension never sees torch: these wrappers check dtype, device, shape and contiguity,
then pass data pointers, sizes and (on CUDA) torch's current stream. A missing native build
fails here, at call time, with a clear message; importing dcsim never needs it or a GPU.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from .readout import READOUT_KINDS

Ref = tuple[int, int]
"""A pointer of a call in a :func:`call_list`: (slot, byte offset), the address table[slot] + offset of the table
each run is given; (-1, address) for an address fixed when the call is listed (0: none)."""

METHODS: dict[str, int] = {"qcfs": 0, "qffs": 1}
"""Neuron models and their codes in the native kernels (csrc/dcsim_math.h)."""

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
READOUT_CODES = frozenset(READOUT_KINDS.values())

PARALLEL_MIN_ELEMENTS = 1 << 15
"""Below this many elements per call the CPU kernels run on one thread (threads cost more)."""


@functools.cache
def _core() -> ModuleType:
    try:
        from .. import _core as core
    except ImportError as err:
        raise ImportError(
            "dcsim._core (the native kernels) is not built; install dcsim with "
            "`pip install .` from a source checkout, or use backend='reference'"
        ) from err
    return core


def backends() -> list[str]:
    """Backends the native extension was built with: ``[]``, ``["cpu"]`` or ``["cpu", "cuda"]``."""
    try:
        core = _core()
    except ImportError:
        return []
    return ["cpu", "cuda"] if core.has_cuda else ["cpu"]


def _tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def dense_rows(t: torch.Tensor) -> bool:
    """True if every sample row of t is one dense block: contiguous, or channels_last [n, C, H, W]."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _check(
    name: str,
    t: torch.Tensor,
    dtype: torch.dtype,
    device: torch.device,
    shape: tuple[int, ...] | None = None,
    like: torch.Tensor | None = None,
) -> None:
    """Check dtype, device, shape, and layout: dense rows, with the strides of ``like`` when given."""
    _tensor(name, t)
    if t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other tensors are on {device}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if not dense_rows(t):
        raise ValueError(f"{name} must be contiguous (or channels_last)")
    if like is not None and t.numel() and t.stride() != like.stride() and _strides(t) != _strides(like):
        raise ValueError(f"{name} must have the memory layout of u (strides {like.stride()}), got {t.stride()}")


def _strides(t: torch.Tensor) -> tuple[int | None, ...]:
    """Strides of the dimensions that matter (a dimension of size 1 may have any stride)."""
    return tuple(st if size > 1 else None for size, st in zip(t.shape, t.stride(), strict=True))


def _launch(device: torch.device, numel: int) -> tuple[bool, int, int]:
    """(is_cuda, stream handle, CPU threads) for a kernel call on ``device``."""
    if device.type == "cuda":
        return True, torch.cuda.current_stream(device).cuda_stream, 1
    if device.type != "cpu":
        raise ValueError(f"dcsim kernels run on cpu or cuda tensors, got device {device}")
    threads = torch.get_num_threads() if numel >= PARALLEL_MIN_ELEMENTS else 1
    return False, 0, threads


def neuron_step(
    method: str,
    x: torch.Tensor,
    u: torch.Tensor,
    z: torch.Tensor | None,
    out: torch.Tensor,
    counts: torch.Tensor,
    th: float,
    zmax: int,
    x2: torch.Tensor | None = None,
    fanout: torch.Tensor | None = None,
    sops: torch.Tensor | None = None,
    u0: float | None = None,
    *,
    checked: bool = True,
) -> None:
    """Fused integrate-and-fire step of one layer (kernel 1), in place. See dcsim.sim.reference.neuron_step.

    x, x2 (optional), u, out: float32 [n, ...] (same shape); z: int32 [n, ...] for QFFS, None
    for QCFS; counts: int64 [n]; th: threshold (> 0); zmax: spike-count cap (QFFS).
    fanout: int32 [1, ...] synaptic operations per spike of each neuron (each in [0, sops.FANOUT_MAX]: the CPU
    kernel sums runs of them in int32; dcsim.sim.sops.fanout_map checks it), in u's memory layout, and
    sops: int64 [n], accumulated with sum(|spike| * fanout) per sample: both or neither.
    u0: the first step of fresh state: u and z are not read (they may be uninitialised, as from torch.empty) but
    count as u0 (a finite float32) and 0; None (the default): u and z hold the state.
    checked: False skips the tensors' checks (dtype, device, shape, layout; 15-20 us a call on a 2-core CPU,
    as much as the kernel itself at batch 1), for a caller whose tensors hold them by construction:
    :class:`dcsim.sim.engine.Engine` (tests/test_engine_checks.py runs it with the checks on). The scalars
    are checked either way.
    """
    if checked:
        _check_neuron_tensors(method, x, u, z, out, counts, x2, fanout, sops)
    code = _neuron_scalars(method, z, fanout, sops, th, u0)
    n = u.shape[0]
    numel = u.numel()
    cuda, stream, threads = _launch(u.device, numel)
    _core().neuron_step(
        code,
        n,
        numel // n if n else 0,
        x.data_ptr(),
        0 if x2 is None else x2.data_ptr(),
        u.data_ptr(),
        0 if z is None or code != METHODS["qffs"] else z.data_ptr(),
        out.data_ptr(),
        counts.data_ptr(),
        float(th),
        int(zmax),
        0 if fanout is None else fanout.data_ptr(),
        0 if sops is None else sops.data_ptr(),
        u0 is not None,
        0.0 if u0 is None else float(u0),
        cuda,
        stream,
        threads,
    )


def neuron_steps(
    method: str,
    x: torch.Tensor,
    u: torch.Tensor,
    z: torch.Tensor | None,
    out: torch.Tensor,
    counts: torch.Tensor,
    th: float,
    zmax: int,
    x2: torch.Tensor | None = None,
    fanout: torch.Tensor | None = None,
    sops: torch.Tensor | None = None,
    u0: float | None = None,
    *,
    counts_out: torch.Tensor | None = None,
    sops_out: torch.Tensor | None = None,
    checked: bool = True,
) -> None:
    """Kernel 1 over the k steps of one layer in one call (CPU), in place: for t = 0 .. k - 1 the step of
    :func:`neuron_step` with x[t] (and x2[t]) into out[t], u0 at t = 0 only, then counts_out[t] = counts and
    sops_out[t] = sops. One call instead of k saves the Python and launch cost of k - 1 steps and of k copies
    of the counts (at batch 1, as much as the step itself). See dcsim.sim.reference.neuron_steps.

    u, z, counts, fanout, sops: as :func:`neuron_step` ([n, ...], carried from step to step).
    out: float32 [k, n, ...] (k >= 1); x, x2: float32 [k, n, ...], a current per step, or [n, ...], the same
    current at every step. Each step's slice has u's memory layout and a tensor's steps lie n * m elements apart
    (m: neurons per sample). counts_out, sops_out: int64 [k, n] contiguous, or None; sops_out needs sops.
    checked: False skips the tensors' checks (as :func:`neuron_step`'s); the device and scalars are checked
    either way.
    """
    if u.device.type != "cpu":
        raise ValueError(f"neuron_steps runs on the CPU, got u on {u.device}")
    per_step = u.dim() + 1  # the dimensions of a tensor with a value per step
    if checked:
        if out.dim() != per_step or out.shape[0] < 1:
            raise ValueError(
                f"out must have shape [k, *u.shape] with k >= 1, got {tuple(out.shape)} (u: {tuple(u.shape)})"
            )
        k = out.shape[0]
        steps = {"out": out} | {name: t for name, t in (("x", x), ("x2", x2)) if t is not None and t.dim() == per_step}
        for name, t in steps.items():
            if t.shape[0] != k or (k > 1 and u.numel() and t.stride(0) != u.numel()):
                raise ValueError(
                    f"{name} must hold k = {k} steps {u.numel()} elements apart, got shape "
                    f"{tuple(t.shape)}, strides {t.stride()}"
                )
        x0 = x[0] if "x" in steps else x
        x2_0 = None if x2 is None else x2[0] if "x2" in steps else x2
        _check_neuron_tensors(method, x0, u, z, out[0], counts, x2_0, fanout, sops)
        for name, record in (("counts_out", counts_out), ("sops_out", sops_out)):
            if record is not None:
                _check(name, record, torch.int64, u.device, (k, u.shape[0]))
                if not record.is_contiguous():
                    raise ValueError(f"{name} must be contiguous")
    if sops_out is not None and sops is None:
        raise ValueError("sops_out needs sops (and fanout)")
    code = _neuron_scalars(method, z, fanout, sops, th, u0)
    k, n = out.shape[0], u.shape[0]
    numel = u.numel()
    _core().neuron_steps(
        code,
        k,
        n,
        numel // n if n else 0,
        x.data_ptr(),
        numel if x.dim() == per_step else 0,
        0 if x2 is None else x2.data_ptr(),
        numel if x2 is not None and x2.dim() == per_step else 0,
        u.data_ptr(),
        0 if z is None or code != METHODS["qffs"] else z.data_ptr(),
        out.data_ptr(),
        counts.data_ptr(),
        0 if counts_out is None else counts_out.data_ptr(),
        float(th),
        int(zmax),
        0 if fanout is None else fanout.data_ptr(),
        0 if sops is None else sops.data_ptr(),
        0 if sops_out is None else sops_out.data_ptr(),
        u0 is not None,
        0.0 if u0 is None else float(u0),
        _launch(u.device, numel)[2],
    )


def bound_neuron_steps(
    method: str,
    k: int,
    n: int,
    m: int,
    th: float,
    zmax: int,
    *,
    fanout: torch.Tensor | None = None,
    u0: float | None = None,
) -> BoundNeuronSteps:
    """:func:`neuron_steps` of a layer of m neurons per sample over k steps of n rows (CPU), with its scalars checked
    and bound once: the returned call takes the data pointers only, as ``call(x, x_step, x2, x2_step, u, z, out,
    counts, counts_out, sops, sops_out)`` (0 for an absent tensor; x_step, x2_step: elements between steps, 0 for
    a current shared by the steps). Nothing is checked per call: the caller's tensors must hold what
    :func:`neuron_steps` checks (dtype, shape, layout, device). fanout: as :func:`neuron_steps`' (bound; each call
    then passes sops); u0: the first step of fresh state, as there. For :class:`dcsim.sim.program.ChunkProgram`."""
    present = torch.empty(0)  # z and sops come per call: stand-ins where the method or the fan-out needs them
    code = _neuron_scalars(method, present, fanout, None if fanout is None else present, th, u0)
    if min(k, n, m) < 1:
        raise ValueError(f"k, n and m must be >= 1, got {k}, {n}, {m}")
    return BoundNeuronSteps(code, k, n, m, float(th), int(zmax), fanout, u0, _launch(torch.device("cpu"), n * m)[2])


class BoundNeuronSteps:
    """A :func:`bound_neuron_steps` call: its kernel's arguments but the per-call pointers, fixed."""

    __slots__ = ("_fanout", "_head", "_native", "_tail")

    def __init__(
        self, code: int, k: int, n: int, m: int, th: float, zmax: int, fanout: torch.Tensor | None, u0: float | None,
        threads: int,
    ) -> None:  # fmt: skip
        self._native = _core().neuron_steps
        self._fanout = fanout  # kept alive: the kernel reads it by its address
        self._head = (code, k, n, m)
        fan = 0 if fanout is None else fanout.data_ptr()
        self._tail = (float(th), int(zmax), fan, u0 is not None, 0.0 if u0 is None else float(u0), threads)

    def __call__(
        self, x: int, x_step: int, x2: int, x2_step: int, u: int, z: int, out: int, counts: int, counts_out: int,
        sops: int, sops_out: int,
    ) -> None:  # fmt: skip
        th, zmax, fan, fresh, start, threads = self._tail
        self._native(
            *self._head, x, x_step, x2, x2_step, u, z, out, counts, counts_out, th, zmax, fan, sops, sops_out, fresh,
            start, threads,
        )  # fmt: skip

    def list_into(
        self, calls: Any, x: Ref, x_step: int, x2: Ref, x2_step: int, u: Ref, z: Ref, out: Ref, counts: Ref,
        counts_out: Ref, sops: Ref, sops_out: Ref,
    ) -> None:  # fmt: skip
        """Append this call to a :func:`call_list`, its pointers as references (see :data:`Ref`)."""
        th, zmax, fan, fresh, start, threads = self._tail
        calls.neuron_steps(
            *self._head, x, x_step, x2, x2_step, u, z, out, counts, counts_out, th, zmax, (-1, fan), sops, sops_out,
            fresh, start, threads,
        )  # fmt: skip


def bound_output_step(
    n: int, classes: int, max_steps: int, readout: int, scale: float, threshold: float
) -> BoundOutputStep:
    """:func:`output_step` of n rows of ``classes`` outputs on the CPU with its scalars checked and bound once: the
    returned call takes the data pointers ``call(x, sums, steps, pred, score, exited)`` and checks nothing (the
    caller's tensors must hold what :func:`output_step` checks). For :class:`dcsim.sim.program.ChunkProgram`."""
    _output_scalars(readout, max_steps)
    threads = _launch(torch.device("cpu"), n * classes * 8)[2]
    return BoundOutputStep(n, classes, int(max_steps), int(readout), float(scale), float(threshold), threads)


class BoundOutputStep:
    """A :func:`bound_output_step` call: its kernel's arguments but the pointers, fixed."""

    __slots__ = ("_head", "_native", "_scalars", "_threads")

    def __init__(
        self, n: int, classes: int, max_steps: int, readout: int, scale: float, threshold: float, threads: int
    ) -> None:
        self._native = _core().output_step
        self._head = (n, classes)
        self._scalars = (max_steps, readout, scale, threshold)
        self._threads = threads

    def __call__(self, x: int, sums: int, steps: int, pred: int, score: int, exited: int) -> None:
        self._native(*self._head, x, sums, steps, *self._scalars, pred, score, exited, False, 0, self._threads)

    def list_into(self, calls: Any, x: Ref, sums: Ref, steps: Ref, pred: Ref, score: Ref, exited: Ref) -> None:
        """Append this call to a :func:`call_list`, its pointers as references (see :data:`Ref`)."""
        calls.output_step(*self._head, x, sums, steps, *self._scalars, pred, score, exited, self._threads)


def _neuron_scalars(
    method: str,
    z: torch.Tensor | None,
    fanout: torch.Tensor | None,
    sops: torch.Tensor | None,
    th: float,
    u0: float | None,
) -> int:
    """The method's code, after the checks of the neuron kernels' scalars and optional arguments."""
    code = METHODS.get(method)
    if code is None:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if code == METHODS["qffs"] and z is None:
        raise ValueError("z (the spike count) is required for method 'qffs'")
    if (fanout is None) != (sops is None):
        raise ValueError("fanout and sops go together: give both or neither")
    if not (isinstance(th, (int, float)) and 0 < th <= FLOAT32_MAX):
        raise ValueError(f"th must be a finite float32 number > 0, got {th!r}")
    if u0 is not None and not (isinstance(u0, (int, float)) and abs(u0) <= FLOAT32_MAX):
        raise ValueError(f"u0 must be a finite float32 number or None, got {u0!r}")
    return code


def _check_neuron_tensors(
    method: str,
    x: torch.Tensor,
    u: torch.Tensor,
    z: torch.Tensor | None,
    out: torch.Tensor,
    counts: torch.Tensor,
    x2: torch.Tensor | None,
    fanout: torch.Tensor | None,
    sops: torch.Tensor | None,
) -> None:
    """The tensors' checks of :func:`neuron_step` (dtype, device, shape, layout), each error naming its tensor."""
    device = _tensor("u", u).device
    shape = tuple(u.shape)
    if len(shape) < 1:
        raise ValueError("u must have a leading sample dimension")
    _check("u", u, torch.float32, device)
    _check("x", x, torch.float32, device, shape, like=u)
    _check("out", out, torch.float32, device, shape, like=u)
    if x2 is not None:
        _check("x2", x2, torch.float32, device, shape, like=u)
    if method == "qffs" and z is not None:
        _check("z", z, torch.int32, device, shape, like=u)
    _check("counts", counts, torch.int64, device, (shape[0],))
    _check_fanout(fanout, sops, u)


def _check_fanout(fanout: torch.Tensor | None, sops: torch.Tensor | None, u: torch.Tensor) -> None:
    """Check neuron_step's fan-out map int32 [1, ...] (u's per-sample layout) and sops int64 [n], if present."""
    if fanout is None and sops is None:
        return
    if fanout is None or sops is None:
        raise ValueError("fanout and sops go together: give both or neither")
    shape = (1, *u.shape[1:])
    _check("fanout", fanout, torch.int32, u.device, shape)
    both_contiguous = fanout.is_contiguous() and u.is_contiguous()  # the common case: no stride tuples to build
    if not both_contiguous and fanout.numel() > 1 and _strides(fanout)[1:] != _strides(u)[1:]:
        raise ValueError(
            f"fanout must have the per-sample memory layout of u (strides {u.stride()}), got {fanout.stride()}"
        )
    _check("sops", sops, torch.int64, u.device, (u.shape[0],))


def output_step(
    x: torch.Tensor,
    sums: torch.Tensor,
    steps: torch.Tensor,
    max_steps: int,
    readout: int,
    scale: float,
    threshold: float,
    pred: torch.Tensor,
    score: torch.Tensor,
    exited: torch.Tensor,
    *,
    checked: bool = True,
) -> None:
    """Fused output step (kernel 2), in place. See dcsim.sim.reference.output_step.

    x, sums: float32 [n, K]; steps: int32 [n]; pred: int64 [n]; score: float32 [n]; exited: uint8 [n].
    checked: False skips the tensors' checks, as :func:`neuron_step`'s ``checked``; the scalars are checked either way.
    """
    _output_scalars(readout, max_steps)
    if checked:
        device = _tensor("sums", sums).device
        if sums.dim() != 2 or sums.shape[1] < 1:
            raise ValueError(f"sums must have shape [n, K] with K >= 1, got {tuple(sums.shape)}")
        n, k = sums.shape
        _check("sums", sums, torch.float32, device)
        _check("x", x, torch.float32, device, (n, k))
        _check("steps", steps, torch.int32, device, (n,))
        _check("pred", pred, torch.int64, device, (n,))
        _check("score", score, torch.float32, device, (n,))
        _check("exited", exited, torch.uint8, device, (n,))
    n, k = sums.shape
    cuda, stream, threads = _launch(sums.device, n * k * 8)
    _core().output_step(
        n,
        k,
        x.data_ptr(),
        sums.data_ptr(),
        steps.data_ptr(),
        int(max_steps),
        int(readout),
        float(scale),
        float(threshold),
        pred.data_ptr(),
        score.data_ptr(),
        exited.data_ptr(),
        cuda,
        stream,
        threads,
    )


def _output_scalars(readout: int, max_steps: int) -> None:
    """The output kernel's scalar checks: a readout code and T in [1, 2^31)."""
    if readout not in READOUT_CODES:
        raise ValueError(f"readout must be one of the codes {sorted(READOUT_CODES)}, got {readout!r}")
    if not 1 <= max_steps < 2**31:
        raise ValueError(f"max_steps must be in [1, 2^31), got {max_steps!r}")


def gather_rows(tensors: list[torch.Tensor], index: torch.Tensor) -> list[torch.Tensor]:
    """Compaction (kernel 3): new tensors whose row r is row index[r] of each input, in one pass.

    tensors: tensors [n_in, ...] on one device (any dtype), contiguous or channels_last (the
    outputs keep the layout); index: int64 [n_out] with values in [0, n_in) (checked).
    """
    if not tensors:
        return []
    device = _tensor("tensors[0]", tensors[0]).device
    _check("index", index, torch.int64, device)
    if index.dim() != 1:
        raise ValueError(f"index must be 1-D, got shape {tuple(index.shape)}")
    n_in = tensors[0].shape[0]
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n_in):
        raise IndexError(f"index values must be in [0, {n_in})")
    outs, entries = [], []
    for i, t in enumerate(tensors):
        _check(f"tensors[{i}]", t, t.dtype, device)
        if t.dim() < 1 or t.shape[0] != n_in:
            raise ValueError(f"tensors[{i}] must have {n_in} rows, got shape {tuple(t.shape)}")
        if t.is_contiguous():
            o = torch.empty((index.numel(), *t.shape[1:]), dtype=t.dtype, device=device)
        else:  # channels_last: the same layout, so rows copy as blocks
            c, h, w = t.shape[1:]
            o = torch.empty((index.numel(), h, w, c), dtype=t.dtype, device=device).permute(0, 3, 1, 2)
        row_bytes = t.element_size() * (t.numel() // n_in if n_in else 0)
        entries.append((t.data_ptr(), o.data_ptr(), row_bytes))
        outs.append(o)
    cuda, stream, threads = _launch(device, sum(e[2] for e in entries) * index.numel() // 4)
    _core().gather_rows(entries, index.data_ptr(), index.numel(), cuda, stream, threads)
    return outs


def compact_rows_(tensors: list[torch.Tensor], index: torch.Tensor) -> list[torch.Tensor]:
    """In-place compaction (kernel 3 on the CPU): row r of each tensor becomes its row index[r], for r < n_out.

    tensors: CPU tensors [n_in, ...] (any dtype), contiguous or channels_last; index: int64 [n_out]
    with index[r] == r (the row stays) or index[r] >= n_out (a row from past the end fills row r;
    those sources strictly increasing), values < n_in (all checked). Returns views of the first
    n_out rows (same memory and layout). Nothing is allocated and only the rows that move are
    copied: compacting f dropped rows costs at most f rows, not n. One call of :class:`InPlaceCompaction`.
    """
    if not tensors:
        return []
    compaction = InPlaceCompaction(tensors)
    _check("index", index, torch.int64, compaction.device)
    if index.dim() != 1:
        raise ValueError(f"index must be 1-D, got shape {tuple(index.shape)}")
    return compaction(index.tolist())


class InPlaceCompaction:
    """The in-place compactions of one set of CPU tensors over a run (kernel 3, see :func:`compact_rows_`), the
    tensors checked and their rows' addresses taken once: an early exit compacts its state again and again, and
    the checks of each tensor cost more than a few rows' move (about 5 us a tensor against the ResNet-18's 59).

    tensors: CPU tensors [n, ...] (any dtype), contiguous or channels_last, none sharing memory with another.
    Each call compacts the rows left by the last one (n at first) and returns views of the first len(keep).
    ``row_bytes``: the bytes of one row of all the tensors (what a moved row costs).
    """

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        if not tensors:
            raise ValueError("InPlaceCompaction needs at least one tensor")
        self.device = _tensor("tensors[0]", tensors[0]).device
        if self.device.type != "cpu":
            raise ValueError(f"in-place compaction runs on the CPU, got tensors on {self.device}")
        self.rows = tensors[0].shape[0] if tensors[0].dim() else 0
        for i, t in enumerate(tensors):
            _check(f"tensors[{i}]", t, _tensor(f"tensors[{i}]", t).dtype, self.device)
            if t.dim() < 1 or t.shape[0] != self.rows:
                raise ValueError(f"tensors[{i}] must have {self.rows} rows, got shape {tuple(t.shape)}")
        self._tensors = list(tensors)
        self._entries = [
            (t.data_ptr(), t.data_ptr(), t.element_size() * (t.numel() // self.rows if self.rows else 0))
            for t in tensors
        ]
        self.row_bytes = sum(e[2] for e in self._entries)

    def __call__(self, keep: list[int]) -> list[torch.Tensor]:
        """Row r of every tensor becomes its row keep[r] (r itself, or a row in [len(keep), rows) that fills it, those
        strictly increasing: checked), in place; views of the first len(keep) rows."""
        n_out = len(keep)
        moved = [s for r, s in enumerate(keep) if s != r]
        if n_out > self.rows or (
            moved and (moved[0] < n_out or moved[-1] >= self.rows or any(b <= a for a, b in itertools.pairwise(moved)))
        ):
            raise ValueError(
                f"index must keep row r (index[r] == r) or fill it from a row in [{n_out}, {self.rows}), those "
                "increasing"
            )
        if moved:
            index = torch.tensor(keep, dtype=torch.int64)
            _, _, threads = _launch(self.device, self.row_bytes * len(moved) // 4)
            _core().gather_rows(self._entries, index.data_ptr(), n_out, False, 0, threads)
        self.rows = n_out
        return [t[:n_out] for t in self._tensors]


def _conv_output(
    size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[int, int]:
    """(OH, OW) of a conv of a kernel [kh, kw] over an input [H, W] (``size``) with ``stride`` and zero ``padding``;
    ValueError where the stride or padding is out of range or the kernel does not fit."""
    (h, w), (kh, kw), (sh, sw), (ph, pw) = size, kernel, stride, padding
    if min(sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"stride must be >= 1 and padding >= 0, got {stride} and {padding}")
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"a {kh}x{kw} kernel does not fit a {h}x{w} input with padding {padding}")
    return oh, ow


def _check_conv_weight(weight: torch.Tensor) -> None:
    """Check that a conv's weight is a float32 [Cout, Cin, kh, kw] tensor (before it is repacked for a kernel)."""
    _check("weight", weight, torch.float32, _tensor("weight", weight).device)
    if weight.dim() != 4:
        raise ValueError(f"weight must have shape [Cout, Cin, kh, kw], got {tuple(weight.shape)}")


def pack_spike_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """Conv weights float32 [Cout, Cin, kh, kw] repacked for :func:`spike_conv2d`: float32 [kh, kw, Cin, Cout]."""
    _check_conv_weight(weight)
    return weight.permute(2, 3, 1, 0).contiguous()


def spike_conv2d(
    x: torch.Tensor,
    packed: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    simd: bool = True,
) -> torch.Tensor:
    """Event-driven convolution (kernel 4, CPU): ``F.conv2d(x, weight, bias, stride, padding)`` that sums, at each
    output position, only the nonzero inputs of its window. See dcsim.sim.reference.spike_conv2d.

    x: float32 [n, Cin, H, W] channels_last (spike maps: mostly exact zeros); packed: float32 [kh, kw, Cin, Cout]
    from :func:`pack_spike_conv_weight`; bias: float32 [Cout] or None. Returns float32 [n, Cout, OH, OW],
    channels_last. The sums run in another order than a dense conv's, so results agree with it within
    float32 rounding, not bit for bit. simd: the AVX-512 loop (fused multiply-adds) where the CPU has
    it; False runs the portable loop (tests compare both).
    """
    device = _tensor("x", x).device
    if device.type != "cpu":
        raise ValueError(f"spike_conv2d runs on the CPU, got x on {device}")
    if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(
            f"x must be a channels_last [n, Cin, H, W] tensor, got shape {tuple(x.shape)}, strides {x.stride()}"
        )
    n, cin, h, w = x.shape
    _check("x", x, torch.float32, device)
    _check("packed", packed, torch.float32, device)
    if packed.dim() != 4 or packed.shape[2] != cin or not packed.is_contiguous():
        raise ValueError(f"packed must be a contiguous [kh, kw, {cin}, Cout] tensor, got shape {tuple(packed.shape)}")
    kh, kw, _, cout = packed.shape
    if bias is not None:
        _check("bias", bias, torch.float32, device, (cout,))
        bias = bias.contiguous()
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = _conv_output((h, w), (kh, kw), stride, padding)
    out = torch.empty((n, oh, ow, cout), dtype=torch.float32).permute(0, 3, 1, 2)
    _, _, threads = _launch(device, n * oh * ow * cout)
    _core().spike_conv(
        n,
        h,
        w,
        cin,
        oh,
        ow,
        cout,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        x.data_ptr(),
        packed.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        out.data_ptr(),
        threads,
        bool(simd),
    )
    return out


def _cpu_planes(kernel: str, x: torch.Tensor, empty_planes: bool = True) -> tuple[int, int, int, int]:
    """The shape of a pool kernel's input x, checked: float32, a contiguous [N, C, H, W] tensor on the CPU (with
    H * W >= 1 unless empty_planes)."""
    device = _tensor("x", x).device
    if device.type != "cpu":
        raise ValueError(f"{kernel} runs on the CPU, got x on {device}")
    _check("x", x, torch.float32, device)
    if x.dim() != 4 or not x.is_contiguous() or (not empty_planes and x.shape[2] * x.shape[3] == 0):
        planes = "" if empty_planes else " with H, W >= 1"
        raise ValueError(
            f"x must be a contiguous [N, C, H, W] tensor{planes}, got shape {tuple(x.shape)}, strides {x.stride()}"
        )
    n, c, h, w = x.shape
    return n, c, h, w


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """2x2, stride-2 average pooling (kernel 5, CPU): ``F.avg_pool2d(x, 2)`` bit for bit (each window summed from
    +0 in torch's order, then divided by 4; of a window holding several NaNs, which payload the result carries
    may differ), reading each input once. See dcsim.sim.reference.avg_pool_2x2.

    x: float32 [N, C, H, W], contiguous, on the CPU (a trailing odd row or column is dropped). Returns a new
    contiguous float32 [N, C, H // 2, W // 2].
    """
    n, c, h, w = _cpu_planes("avg_pool_2x2", x)
    out = torch.empty((n, c, h // 2, w // 2), dtype=torch.float32)
    if out.numel():
        _, _, threads = _launch(x.device, x.numel())
        _core().avg_pool_2x2(n * c, h, w, x.data_ptr(), out.data_ptr(), threads)
    return out


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling (kernel 7, CPU): ``F.adaptive_avg_pool2d(x, 1)`` of a contiguous x bit for bit on CPUs
    whose torch sums floats in 8-float vectors (AVX2 and AVX-512: each plane summed in ATen's cascade order, then
    divided by its size; of a plane holding several NaNs, which payload the result carries may differ), except for a
    lone plane of 32,768 floats or more on several threads, whose sum torch splits between them. The engine checks the
    bits against torch's on each shape before it uses it. See dcsim.sim.reference.global_avg_pool.

    x: float32 [N, C, H, W], contiguous, on the CPU, H * W >= 1. Returns a new contiguous float32 [N, C, 1, 1].
    """
    n, c, h, w = _cpu_planes("global_avg_pool", x, empty_planes=False)
    out = torch.empty((n, c, 1, 1), dtype=torch.float32)
    if out.numel():
        _, _, threads = _launch(x.device, x.numel())
        _core().global_avg_pool(n * c, h * w, x.data_ptr(), out.data_ptr(), threads)
    return out


@functools.cache
def sgemm_address() -> int | None:
    """The address of the BLAS ``sgemm_`` that torch's CPU library exports (MKL's in the PyPI build: the gemm its CPU
    linear calls), or None where it exports none. Kernel 8 (:func:`linear`) calls it."""
    paths = sorted((Path(torch.__file__).parent / "lib").glob("*torch_cpu.*"))
    if not paths:
        return None
    try:
        return ctypes.cast(ctypes.CDLL(str(paths[0])).sgemm_, ctypes.c_void_p).value
    except (OSError, AttributeError):  # not loadable by ctypes, or no such symbol
        return None


def _linear_shapes(
    x_shape: tuple[int, ...], weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[int, int, int, int]:
    """(rows, in, features, sgemm's address) of :func:`linear` of an input of ``x_shape`` by weight and bias,
    checked; RuntimeError where torch exports no sgemm."""
    cpu = torch.device("cpu")
    for name, t in (("weight", weight),) + ((("bias", bias),) if bias is not None else ()):
        _check(name, _tensor(name, t), torch.float32, cpu)
        if not t.is_contiguous():
            raise ValueError(f"linear: {name} must be contiguous, got strides {t.stride()}")
    if len(x_shape) != 2 or weight.dim() != 2 or x_shape[1] != weight.shape[1] or min(*x_shape, *weight.shape) < 1:
        raise ValueError(
            f"linear: x must be [rows, in] and weight [features, in], all sizes >= 1; got x {tuple(x_shape)}, "
            f"weight {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    sgemm = sgemm_address()
    if sgemm is None:
        raise RuntimeError("linear: torch's CPU library exports no sgemm_ (kernel 8 calls the BLAS torch calls)")
    return x_shape[0], x_shape[1], weight.shape[0], sgemm


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A fully connected layer (kernel 8, CPU) through the BLAS sgemm of :func:`sgemm_address`: ``F.linear(x, weight,
    bias)`` bit for bit where that is the gemm torch's linear calls (the bias copied into each row, then sgemm with
    beta 1; without a bias beta 0). The engine checks the bits against torch's on each shape before it lists it.

    x: float32 [rows, in]; weight: float32 [features, in]; bias: float32 [features] or None; all contiguous, on the
    CPU. Returns a new float32 [rows, features]. RuntimeError where torch's library exports no sgemm.
    """
    _check("x", _tensor("x", x), torch.float32, torch.device("cpu"))
    if not x.is_contiguous():
        raise ValueError(f"linear: x must be contiguous, got strides {x.stride()}")
    rows, size, features, sgemm = _linear_shapes(tuple(x.shape), weight, bias)
    out = torch.empty((rows, features), dtype=torch.float32)
    ok = _core().linear(
        rows,
        size,
        features,
        x.data_ptr(),
        weight.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        out.data_ptr(),
        sgemm,
    )
    if not ok:
        raise ValueError(f"linear: sizes {(rows, size, features)} pass the BLAS's 32-bit integers")
    return out


def _bias_shapes(shape: tuple[int, ...], bias: torch.Tensor) -> tuple[int, int, int]:
    """(rows, channels, floats per channel) of :func:`bias_add`'s x of ``shape`` and its bias, checked."""
    _check("bias", _tensor("bias", bias), torch.float32, torch.device("cpu"))
    if len(shape) < 2 or bias.dim() != 1 or bias.shape[0] != shape[1] or not bias.is_contiguous():
        raise ValueError(
            f"bias_add: x must be [N, C, ...] and bias a contiguous [C]; got x {tuple(shape)}, bias {tuple(bias.shape)}"
        )
    return shape[0], shape[1], math.prod(shape[2:])


def bias_add(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A per-channel bias added to x in place (kernel 9, CPU): ``x.add_(bias.reshape(1, -1, 1, ...))`` bit for bit
    (one float32 addition per element). x: float32 [N, C, ...], contiguous; bias: float32 [C], contiguous; both on
    the CPU. Returns x."""
    if _tensor("x", x).device.type != "cpu":
        raise ValueError(f"bias_add runs on the CPU, got x on {x.device}")
    _check("x", x, torch.float32, x.device)
    if not x.is_contiguous():
        raise ValueError(f"bias_add: x must be contiguous, got strides {x.stride()}")
    rows, channels, plane = _bias_shapes(tuple(x.shape), bias)
    if x.numel():
        _core().bias_add(rows, channels, plane, x.data_ptr(), bias.data_ptr(), _launch(x.device, x.numel())[2])
    return x


BLOCK = 16
"""Channels per block of :func:`block_conv2d`: output channels per AVX-512 register, input channels per partial sum
of oneDNN's direct kernel."""


def block_conv_order(
    kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], cin: int, size: tuple[int, int]
) -> tuple[int, bool]:
    """The order of sums oneDNN's AVX-512 float32 kernels use for a conv of ``cin`` input channels of ``size`` (H, W)
    (see csrc/block_conv.h): (input channels per partial sum, whether the bias starts the first partial). 1x1 kernels
    without padding whose strides divide the input's size: one partial over all channels that starts at the bias
    (jit_1x1); others: partials of 16 channels, the last over the rest where 16 does not divide ``cin`` (24 channels:
    16, then 8), the bias added to the first (the direct kernel, which also runs a 1x1 kernel with stride 2 on an odd
    size), or one partial over fewer than 16 channels (its first-layer variant, an image's)."""
    if kernel == (1, 1) and padding == (0, 0) and size[0] % stride[0] == 0 and size[1] % stride[1] == 0:
        return cin, True
    return min(BLOCK, cin), False


def block_conv_group(cout: int) -> int:
    """Blocks of 16 output channels whose weights :func:`pack_block_conv_weight` lays side by side: 4, else 2, else 1,
    whichever divides Cout / 16. The block conv sums that many blocks at once, and their weights for one input
    channel and tap are then one run of 64-256 bytes (0.76-1.0 of the time with the blocks a layer apart, 1 row
    or 4, on the w96 analog stem's layers)."""
    blocks = cout // BLOCK
    return 4 if blocks % 4 == 0 else 2 if blocks % 2 == 0 else 1


def pack_block_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """Conv weights float32 [Cout, Cin, kh, kw] (Cout a multiple of 16) repacked for :func:`block_conv2d`: float32
    [Cout / (16 G), kh, kw, Cin, G, 16], G = :func:`block_conv_group` (Cout)."""
    _check_conv_weight(weight)
    cout, cin, kh, kw = weight.shape
    if cout % BLOCK:
        raise ValueError(
            f"block_conv2d needs output channels in blocks of {BLOCK}, got weight of shape {tuple(weight.shape)}"
        )
    g = block_conv_group(cout)
    return weight.reshape(cout // (BLOCK * g), g, BLOCK, cin, kh, kw).permute(0, 4, 5, 3, 1, 2).contiguous()


def block_conv2d(
    x: torch.Tensor,
    packed: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    simd: bool = True,
    max_density: float = 0.0,
) -> torch.Tensor:
    """Dense convolution (kernel 6, CPU): ``F.conv2d(x, weight, bias, stride, padding)`` summed in the order of
    oneDNN's AVX-512 float32 kernels (:func:`block_conv_order`), so with their bits where PyTorch runs them (an
    AVX-512 CPU; the engine checks each layer before it uses this, dcsim.sim.block_conv), without the ~40 us
    PyTorch and oneDNN spend around each call. See dcsim.sim.reference.block_conv2d.

    x: float32 [n, Cin, H, W], contiguous, on the CPU; packed: float32 [Cout / (16 G), kh, kw, Cin, G, 16] from
    :func:`pack_block_conv_weight`; bias: float32 [Cout] or None. Returns a new contiguous float32
    [n, Cout, OH, OW]. simd: the AVX-512 loop where the CPU has it; False runs the portable loop (the same bits).
    max_density: where the AVX-512 loop runs and at most this fraction of x is nonzero, the sparse loop, which
    leaves out the taps of zero inputs (the same bits where the weights are finite: see csrc/block_conv.h; about
    0.4-0.6 of the dense loop's time on 96-384 channels at 17% nonzero, slower on 16-32 channels); 0: never.
    """
    device = _tensor("x", x).device
    if device.type != "cpu":
        raise ValueError(f"block_conv2d runs on the CPU, got x on {device}")
    _check("x", x, torch.float32, device)
    if x.dim() != 4 or not x.is_contiguous():
        raise ValueError(
            f"x must be a contiguous [n, Cin, H, W] tensor, got shape {tuple(x.shape)}, strides {x.stride()}"
        )
    return bound_block_conv(packed, bias, stride, padding, tuple(x.shape), simd, max_density)(x)


def bound_block_conv(
    packed: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    x_shape: tuple[int, ...],
    simd: bool = True,
    max_density: float = 0.0,
) -> BoundBlockConv:
    """:func:`block_conv2d` for inputs of shape ``x_shape`` [n, Cin, H, W], its arguments checked once: the returned
    call takes x and returns the new output. Nothing is checked per call: x must be a contiguous float32 CPU tensor
    of that shape (for :class:`dcsim.sim.program.ChunkProgram`, whose tensors are by construction)."""
    cpu = torch.device("cpu")
    _check("packed", packed, torch.float32, cpu)
    if len(x_shape) != 4:
        raise ValueError(f"x must be [n, Cin, H, W], got shape {x_shape}")
    n, cin, h, w = x_shape
    shape = tuple(packed.shape)
    if (
        len(shape) != 6
        or shape[3] != cin
        or shape[5] != BLOCK
        or shape[4] != block_conv_group(shape[0] * shape[4] * BLOCK)
        or not packed.is_contiguous()
    ):
        raise ValueError(
            f"packed must be a contiguous [Cout / ({BLOCK} G), kh, kw, {cin}, G, {BLOCK}] tensor (G = "
            f"block_conv_group(Cout)), as pack_block_conv_weight makes it, got shape {shape}"
        )
    kh, kw, group = shape[1], shape[2], shape[4]
    cout = shape[0] * group * BLOCK
    if bias is not None:
        _check("bias", bias, torch.float32, cpu, (cout,))
        bias = bias.contiguous()
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = _conv_output((h, w), (kh, kw), stride, padding)
    chunk, bias_first = block_conv_order((kh, kw), (sh, sw), (ph, pw), cin, (h, w))
    if not 0.0 <= max_density <= 1.0:
        raise ValueError(f"max_density must be a fraction in [0, 1], got {max_density}")
    head = (n, cin, h, w, cout, oh, ow, kh, kw, sh, sw, ph, pw, chunk, bias_first, max_density, group)
    return BoundBlockConv(head, packed, bias, (n, cout, oh, ow), _launch(cpu, n * cout * oh * ow)[2], simd)


class BoundBlockConv:
    """A :func:`bound_block_conv` call: ``call(x)`` returns the new output; its kernel's arguments but x's and the
    output's pointers fixed."""

    __slots__ = ("_bias", "_head", "_native", "_packed", "_pointers", "_tail", "out_shape")

    def __init__(
        self,
        head: tuple[int | bool | float, ...],
        packed: torch.Tensor,
        bias: torch.Tensor | None,
        out_shape: tuple[int, int, int, int],
        threads: int,
        simd: bool,
    ) -> None:
        self._native = _core().block_conv
        self._head = head
        self._packed, self._bias = packed, bias  # kept alive: the kernel reads them by their addresses
        self._pointers = (packed.data_ptr(), 0 if bias is None else bias.data_ptr())
        self.out_shape = out_shape
        self._tail = (threads, simd)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(self.out_shape, dtype=torch.float32)
        if self.out_shape[0]:
            self._native(*self._head, x.data_ptr(), *self._pointers, out.data_ptr(), *self._tail)
        return out

    def list_into(self, calls: Any, x: Ref, out: Ref) -> None:
        """Append this call to a :func:`call_list`, x's and the output's pointers as references (see :data:`Ref`)."""
        weights, bias = self._pointers
        calls.block_conv(*self._head, x, (-1, weights), (-1, bias), out, *self._tail)


def call_list() -> Any:
    """A new empty list of CPU kernel calls (``dcsim._core.CallList``, csrc/call_list.h): calls are appended by the
    bound calls' ``list_into`` and :func:`list_avg_pool_2x2`, :func:`list_global_avg_pool`, :func:`list_linear`,
    :func:`list_bias_add`, each pointer a :data:`Ref`; :func:`run_calls` and :func:`run_until` make them. For :class:`dcsim.sim.program.ChunkProgram`."""
    return _core().CallList()


def run_calls(calls: Any, table: list[int]) -> None:
    """The calls of a :func:`call_list` in order, in one native call, each pointer resolved against ``table`` (one
    address per slot). Checks nothing but that every slot named is in the table (IndexError, before any call)."""
    if not calls.run(table):
        raise IndexError(f"run_calls: a call reads a slot past the table of {len(table)} addresses, or below -1")


def run_until(calls: Any, table: list[int], max_runs: int, flag: Ref) -> int:
    """The calls of a :func:`call_list` run again and again in one native call, at most ``max_runs`` times, until the
    byte at ``flag`` (a :data:`Ref`: a lone sample's exit flag in the step record) is nonzero after a run; returns the
    runs made. IndexError (no call made) where a slot is past the table or the flag has no address."""
    runs = calls.run_until(table, max_runs, flag)
    if runs < 0:
        raise IndexError(
            f"run_until: a call or the flag reads a slot past the table of {len(table)} addresses, or the flag has "
            "no address"
        )
    return int(runs)


def list_linear(
    calls: Any,
    rows: int,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x: Ref,
    out: Ref,
) -> None:
    """Append :func:`linear` of a float32 [rows, in] input at x (contiguous) into [rows, features] at out to a
    :func:`call_list`; the weight [features, in] and bias [features] (or None) are read at their addresses (the caller
    keeps them alive). RuntimeError where torch exports no sgemm."""
    _, size, features, sgemm = _linear_shapes((rows, weight.shape[1]), weight, bias)
    bias_ref = (-1, 0 if bias is None else bias.data_ptr())
    calls.linear(rows, size, features, x, (-1, weight.data_ptr()), bias_ref, out, sgemm)


def list_bias_add(calls: Any, shape: tuple[int, ...], x: Ref, bias: torch.Tensor) -> None:
    """Append :func:`bias_add` of a contiguous float32 x of ``shape`` [N, C, ...] to a :func:`call_list`; the bias
    [C] is read at its address (the caller keeps it alive)."""
    rows, channels, plane = _bias_shapes(shape, bias)
    calls.bias_add(
        rows, channels, plane, x, (-1, bias.data_ptr()), _launch(torch.device("cpu"), rows * channels * plane)[2]
    )


def list_avg_pool_2x2(calls: Any, shape: tuple[int, int, int, int], x: Ref, out: Ref) -> None:
    """Append :func:`avg_pool_2x2` of a contiguous float32 [N, C, H, W] input of ``shape`` to a :func:`call_list`."""
    n, c, h, w = shape
    calls.avg_pool_2x2(n * c, h, w, x, out, _launch(torch.device("cpu"), n * c * h * w)[2])


def list_global_avg_pool(calls: Any, shape: tuple[int, int, int, int], x: Ref, out: Ref) -> None:
    """Append :func:`global_avg_pool` of a contiguous float32 [N, C, H, W] input of ``shape`` (H * W >= 1) to a
    :func:`call_list`."""
    n, c, h, w = shape
    if h * w < 1:
        raise ValueError(f"global_avg_pool needs H, W >= 1, got shape {shape}")
    calls.global_avg_pool(n * c, h * w, x, out, _launch(torch.device("cpu"), n * c * h * w)[2])
