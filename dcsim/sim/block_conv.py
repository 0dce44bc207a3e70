"""Which CPU convs run as block convs (kernel 6, :func:`dcsim.sim.ops.block_conv2d`): checked once per layer and
input shape against the oneDNN call they replace, timed against it once per call shape (per bucket of rows in large
calls); used in the engine's CPU convs (a chunk program's, the general path's, an image-fed one's).

PyTorch's CPU conv costs about 40 us per call around oneDNN's own run of it, whatever the rows (primitive look-up,
memory objects, reorders of the input, weights and output): at batch 1, a call of one step spends half its time
there, and the fixed cost does not shrink with the steps a sample skips. The block conv sums every output in the
order oneDNN's AVX-512 float32 kernels do (csrc/block_conv.h) and is called on the tensors' pointers. Whether its
bits are oneDNN's depends on the kernel oneDNN picks on this machine (another ISA blocks channels by 8, a channels_last
input is summed in another order), so :class:`BlockConvs` runs both on a seeded Gaussian input of
``row_floor.REFERENCE_ROWS`` rows (the large-batch result every call of the engine must give) and uses the block conv
only where every output agrees bit for bit: on such inputs a sum in another order differs in most outputs. Where they
differ the layer keeps oneDNN: the results never change, only the time. Its sparse loop, which leaves out the taps of
zero inputs (the same bits, csrc/block_conv.h), is checked on the probe with 80% of it zeros and timed with the dense
loop and oneDNN on an input of TIMED_DENSITY nonzero: the fastest of the three runs each layer and call shape.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Hashable

import torch

from . import ops, row_floor
from .network import Conv, onednn_conv, onednn_conv_applies

EXACT_ROWS = 8
"""Calls of at most this many rows (steps x samples) are timed on their own shape; larger ones on TIMED_ROWS."""
TIMED_ROWS = (16, 32)
"""The shapes on which larger calls are timed, by their rows: a call of up to 16 rows on 16, any larger one on 32.
Past 16-32 rows a conv's time grows with its rows in every loop, so the choice holds for larger calls (the zoo's
networks at batch 32 and 256, docs/results/table2-cpu.md), and a new batch size left after compaction is not
timed again."""
TIMED_ROUNDS = 5
"""Interleaved rounds in which oneDNN and the block conv's loops are timed on a layer's call shape (medians
compared)."""
TIMED_DENSITY = 0.2
"""Fraction of nonzero inputs in the timing's input: trained networks fire 10-25% of their neurons per step (the
zoo's w96 analog stem 8-24% per layer, docs/results/table2-cpu.md), and the sparse loop's time follows it."""
MAX_DENSITY = 0.35
"""A call of the sparse loop runs the dense loop where more than this fraction of its input is nonzero (an
image-fed conv, a layer that fires unusually often): on the zoo's layers the sparse loop is the faster one below
30-50% (docs/results/table2-cpu.md)."""


class BlockConvs:
    """Per engine: for each conv node and call shape, oneDNN or the block conv's dense or sparse loop, whichever is
    the fastest on that call shape among those that give oneDNN's bits on the layer (checked once per input shape,
    see the module's docstring; timed once per :func:`timed_rows`, on an input with TIMED_DENSITY nonzero)."""

    def __init__(self) -> None:
        # (node, sample shape, threads) -> (node, packed weights or None, whether the sparse loop may run)
        self._exact: dict[Hashable, tuple[Conv, torch.Tensor | None, bool]] = {}
        # (node, sample shape, timed rows, threads, spikes) -> (node, the fastest: "onednn", "dense" or "sparse")
        self._kinds: dict[Hashable, tuple[Conv, str]] = {}
        # (node, call shape, threads, spikes) -> (node, the block conv bound to the shape or None, its loop or None)
        self._calls: dict[Hashable, tuple[Conv, Callable[[torch.Tensor], torch.Tensor] | None, str | None]] = {}

    def call(
        self, node: Conv, x_shape: tuple[int, ...], spikes: bool = True
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The block conv of node for contiguous float32 CPU inputs of shape ``x_shape`` [n, Cin, H, W] (as
        :func:`dcsim.sim.ops.bound_block_conv` returns it), or None where it would not give oneDNN's bits, cannot
        run, or is slower than oneDNN on this shape (timed on :func:`timed_rows` rows). spikes: whether the inputs are
        spike maps, mostly zeros (else, an image: the sparse loop is not offered). The nodes are held with the
        results, so that their ids are not reused."""
        threads = torch.get_num_threads()
        key = (id(node), tuple(x_shape), threads, spikes)
        if key not in self._calls:
            sample = tuple(x_shape[1:])
            exact = (id(node), sample, threads)
            if exact not in self._exact:
                self._exact[exact] = (node, *_packed_if_exact(node, sample))
            _, packed, sparse = self._exact[exact]
            block, kind = None, None
            if packed is not None:
                rows = timed_rows(x_shape[0])
                timed = (id(node), sample, rows, threads, spikes)
                if timed not in self._kinds:
                    offered = ("dense", "sparse") if sparse and spikes else ("dense",)
                    loops = {k: _bound(node, packed, (rows, *sample), k) for k in offered}
                    self._kinds[timed] = (
                        node,
                        _fastest({"onednn": functools.partial(onednn_conv, node), **loops}, (rows, *sample)),
                    )
                kind = self._kinds[timed][1]
                if kind != "onednn":
                    block = _bound(node, packed, tuple(x_shape), kind)
            self._calls[key] = (node, block, kind if block is not None else None)
        return self._calls[key][1]

    def chosen(self) -> dict[Hashable, str | None]:
        """The (node id, call shape, threads, spikes) decided so far and the block conv's loop each runs ("dense" or
        "sparse"), None where oneDNN runs."""
        return {key: kind for key, (_, _, kind) in self._calls.items()}


def timed_rows(rows: int) -> int:
    """The rows on which the loops are timed for a call of ``rows`` rows: its own up to EXACT_ROWS, else the first
    of TIMED_ROWS at least as large, or the last."""
    if rows <= EXACT_ROWS:
        return rows
    return next((t for t in TIMED_ROWS if rows <= t), TIMED_ROWS[-1])


def _bound(
    node: Conv, packed: torch.Tensor, x_shape: tuple[int, ...], kind: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The block conv's ``kind`` loop ("dense" or "sparse") of node for x_shape inputs, bound to the shape."""
    max_density = MAX_DENSITY if kind == "sparse" else 0.0
    return ops.bound_block_conv(packed, node.bias, node.stride, node.padding, x_shape, max_density=max_density)


def _fastest(calls: dict[str, Callable[[torch.Tensor], torch.Tensor]], x_shape: tuple[int, ...]) -> str:
    """The name of the call that computes an x_shape input in the least time: medians over TIMED_ROUNDS interleaved
    rounds, after one call of each, on a seeded input with TIMED_DENSITY nonzero."""
    x = (torch.rand(x_shape, generator=torch.Generator().manual_seed(1)) < TIMED_DENSITY).float()
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        for call in calls.values():
            call(x)
        for _ in range(TIMED_ROUNDS):
            for name, call in calls.items():
                t0 = time.perf_counter()
                call(x)
                times[name].append(time.perf_counter() - t0)
    return min(times, key=lambda name: statistics.median(times[name]))


def eligible(node: Conv, sample_shape: tuple[int, ...]) -> bool:
    """Whether the block conv can compute node on inputs of ``sample_shape`` (Cin, H, W) at all: float32 weights on
    the CPU, one group, no dilation, output channels in blocks of 16 (any number of input channels: the last partial
    sum takes the rest, as oneDNN's does)."""
    cout, cin = node.weight.shape[:2]
    if node.weight.dtype != torch.float32 or node.weight.device.type != "cpu" or len(sample_shape) != 3:
        return False
    return node.groups == 1 and node.dilation == (1, 1) and cout % ops.BLOCK == 0 and sample_shape[0] == cin


def avx512() -> bool:
    """Whether PyTorch runs its CPU kernels with AVX-512 here: elsewhere oneDNN blocks channels by 8 and sums in
    another order, so the check could only fail (and on wide layers its probe, in the portable loop, takes seconds)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _packed_if_exact(node: Conv, sample_shape: tuple[int, ...]) -> tuple[torch.Tensor | None, bool]:
    """node's weights packed for the block conv if its dense loop gives oneDNN's large-batch bits on a seeded
    Gaussian input of ``sample_shape`` (else None), and whether its sparse loop does too on the same input with
    80% of it zeros (which it leaves out; finite weights only, see csrc/block_conv.h)."""
    if not eligible(node, sample_shape) or not avx512():
        return None, False
    packed = ops.pack_block_conv_weight(node.weight)
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn((row_floor.REFERENCE_ROWS, *sample_shape), generator=gen)
    if not onednn_conv_applies(probe):  # no oneDNN: the engine's convs take another kernel
        return None, False
    spiky = probe * (torch.rand(probe.shape, generator=gen) < TIMED_DENSITY)
    with torch.no_grad():
        conv = functools.partial(
            ops.block_conv2d, packed=packed, bias=node.bias, stride=node.stride, padding=node.padding
        )
        if not torch.equal(conv(probe), onednn_conv(node, probe)):
            return None, False
        sparse = bool(torch.isfinite(node.weight).all()) and torch.equal(
            conv(spiky, max_density=1.0), onednn_conv(node, spiky)
        )
    return packed, sparse
