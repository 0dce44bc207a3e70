"""Small CPU conv calls with their large-batch result: per geometry, the fewest rows a call needs, found by a check.

oneDNN picks its kernel, and with it the order in which a conv sums, from the call's shapes, the number of rows
included. On most geometries a call of any number of rows gives each row the bits it gets in a large batch; on
a few, a call of a few rows rounds otherwise (float32, about 1e-7 relative), which flips spikes on trained
networks and makes a sample's result depend on the batch, chunk and compaction it ran in. Fuzzing found a 7x7
kernel onto a 1x1 output at 1 row (on an AVX-512 Xeon) and grouped 5x5 convs of few channels at 1-5 rows (on an
AVX2 EPYC, where oneDNN computes them by a GEMM whose blocking follows the rows).

So :class:`RowFloors` checks each geometry once (the weights', the input's and the call's shapes and layout, and
the threads): on a seeded Gaussian input of REFERENCE_ROWS rows, the call of n rows for every n below
CHECK_ROWS against the first n rows of the full call. The geometry's *floor* is one more than the largest n
whose call differs (1 where none does); a call of fewer rows than the floor is computed on zero rows appended
up to it, and a call of at least the floor runs as it is. A row gets its large-batch result either way
(tests/test_row_invariance.py), and at batch 1 a conv of one row is computed on one row wherever its bits allow
(on the zoo networks, every geometry), which costs 0.5-0.85 of a padded call.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from .network import Conv, _at_least, memory_format, onednn_conv, onednn_conv_applies

CHECK_ROWS = 8
"""Calls of fewer rows are checked per geometry. Fuzzing (calls of 1-16 rows against 64, tests/test_row_invariance.py)
found differing calls of at most 5 rows; larger calls run as they come."""
REFERENCE_ROWS = 32
"""Rows of the call the smaller ones are checked against."""


def applies(x: torch.Tensor) -> bool:
    """Whether x float32 [n, C, H, W] on the CPU with n < CHECK_ROWS is a call :class:`RowFloors` takes (oneDNN
    present)."""
    return 0 < x.shape[0] < CHECK_ROWS and onednn_conv_applies(x)


def canonical(x: torch.Tensor) -> torch.Tensor:
    """x [n, C, H, W] with the strides of a fresh tensor in its layout (:func:`dcsim.sim.network.memory_format`):
    x itself if it has them, else a copy. A 1-row view may carry another sample stride (in channels_last, C),
    which oneDNN reads as another geometry and rounds otherwise."""
    _, c, h, w = x.shape
    fmt = memory_format(x)
    strides = (h * w * c, 1, w * c, c) if fmt == torch.channels_last else (c * h * w, h * w, w, 1)
    if x.stride() == strides:
        return x
    return torch.empty(x.shape, dtype=x.dtype, memory_format=fmt).copy_(x)


def padded_conv(node: Conv, x: torch.Tensor, rows: int) -> torch.Tensor:
    """node's conv of x [n, C, H, W] by oneDNN, computed on zero rows appended to x up to ``rows`` (if n < rows):
    the first n rows, in x's memory layout."""
    padded = _at_least(x, rows)
    out = onednn_conv(node, padded)
    return out if padded is x else out[: x.shape[0]]


def floor(node: Conv, x: torch.Tensor) -> int:
    """The fewest rows a conv call of node on inputs laid out like x [n, C, H, W] needs for its large-batch bits
    (see the module's docstring), from one seeded Gaussian input: another kernel sums in another order, which
    shows on such inputs."""
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn((REFERENCE_ROWS, *x.shape[1:]), generator=gen).contiguous(memory_format=memory_format(x))
    full = onednn_conv(node, probe)
    for n in range(CHECK_ROWS - 1, 0, -1):
        if not torch.equal(onednn_conv(node, probe[:n]), full[:n]):
            return n + 1
    return 1


class RowFloors:
    """CPU conv calls of fewer than CHECK_ROWS rows, each padded up to its geometry's :func:`floor` where it is
    smaller. One per engine; the check runs once per geometry: oneDNN picks its kernel from the shapes, strides
    and threads, not from the values."""

    def __init__(self) -> None:
        self._floors: dict[Hashable, int] = {}

    def __call__(self, node: Conv, x: torch.Tensor) -> torch.Tensor:
        """node's conv of x float32 [n, C, H, W] (see :func:`applies`): each row's large-batch result, in x's
        memory layout. x is first given that layout's own strides (:func:`canonical`)."""
        x = canonical(x)
        return padded_conv(node, x, self.floor_of(node, x))

    def floor_of(self, node: Conv, x: torch.Tensor) -> int:
        """The floor of node's geometry for inputs laid out like x [n, C, H, W] with its layout's own strides (see
        :func:`canonical`), checked on the first call for the geometry."""
        w = node.weight
        geometry = (tuple(w.shape), w.stride(), node.bias is not None, node.stride, node.padding, node.dilation)
        key = (*geometry, node.groups, tuple(x.shape[1:]), memory_format(x), torch.get_num_threads())
        rows = self._floors.get(key)
        if rows is None:
            rows = self._floors[key] = floor(node, x)
        return rows

    def floors(self) -> dict[Hashable, int]:
        """The geometries checked so far and each one's floor (1: every call runs as it is)."""
        return dict(self._floors)
