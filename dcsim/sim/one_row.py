"""A conv call of one row on the CPU with its large-batch result, without padding it to two rows.

:class:`dcsim.sim.network.Conv` computes float32 CPU convs by oneDNN on at least 2 rows (``CPU_MIN_ROWS``),
because PyTorch sends a 1-row call to another kernel that rounds differently (float32, about 1e-7), which
flips spikes on trained networks; a padded 1-row call costs as much as a 2-row one. oneDNN's conv at one row
(``torch.mkldnn_convolution`` unpadded) takes 0.5-0.85 of that time and, for nearly every shape, gives the
padded call's first row bit for bit; for a few shapes oneDNN picks another kernel at one row (in fuzzing: a
7x7 kernel onto a 1x1 output). So :class:`OneRowConvs` checks each geometry (the weights', the input's and
the call's shapes and strides, and the threads) once, on seeded random inputs, and runs a 1-row call
unpadded only where the check found the padded call's bits; the other shapes stay padded. Either way a row
gets the result it gets in a large batch (tests/test_row_invariance.py).
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from .network import Conv, memory_format, onednn_conv, onednn_conv_applies


def applies(x: torch.Tensor) -> bool:
    """Whether x float32 [1, C, H, W] on the CPU is a call :class:`OneRowConvs` may take (oneDNN present)."""
    return x.shape[0] == 1 and onednn_conv_applies(x)


def matches_padded(node: Conv, x: torch.Tensor) -> bool:
    """Whether oneDNN's unpadded conv (:func:`dcsim.sim.network.onednn_conv`) of inputs shaped and strided like
    x [1, C, H, W] gives, bit for bit, what ``node.apply`` gives them (the padded 2-row call), on two seeded
    random inputs: one Gaussian, one of spikes (20% at 0.37, the rest 0). Another oneDNN kernel sums in
    another order, which shows on such inputs."""
    gen = torch.Generator().manual_seed(0)
    gauss = torch.randn(x.shape, generator=gen)
    spikes = (torch.rand(x.shape, generator=gen) < 0.2).float() * 0.37
    for probe in (gauss, spikes):
        p = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype).copy_(probe)
        if not torch.equal(onednn_conv(node, p), node.apply(p)):
            return False
    return True


def canonical(x: torch.Tensor) -> torch.Tensor:
    """x [1, C, H, W] with the strides of a fresh tensor in its layout (:func:`dcsim.sim.network.memory_format`,
    the layout :func:`dcsim.sim.network.Conv.apply` pads it in): x itself if it has them, else a copy."""
    _, c, h, w = x.shape
    fmt = memory_format(x)
    strides = (h * w * c, 1, w * c, c) if fmt == torch.channels_last else (c * h * w, h * w, w, 1)
    if x.stride() == strides:
        return x
    return torch.empty(x.shape, dtype=x.dtype, memory_format=fmt).copy_(x)


class OneRowConvs:
    """1-row CPU conv calls, each unpadded where :func:`matches_padded` holds for its geometry, else padded.

    One per engine; the check runs once per geometry: oneDNN picks its kernel from the shapes, strides and
    threads, not from the values."""

    def __init__(self) -> None:
        self._exact: dict[Hashable, bool] = {}

    def __call__(self, node: Conv, x: torch.Tensor) -> torch.Tensor:
        """node's conv of x float32 [1, C, H, W] (see :func:`applies`): the padded call's result, in the padded
        call's memory layout. x is first given that layout's own strides (a 1-row view may carry another sample
        stride, which oneDNN reads as another geometry and answers in another layout)."""
        x = canonical(x)
        w = node.weight
        geometry = (tuple(w.shape), w.stride(), node.bias is not None, node.stride, node.padding, node.dilation)
        key = (*geometry, node.groups, tuple(x.shape), x.stride(), torch.get_num_threads())
        exact = self._exact.get(key)
        if exact is None:
            exact = self._exact[key] = matches_padded(node, x)
        return onednn_conv(node, x) if exact else node.apply(x)

    def checked(self) -> dict[Hashable, bool]:
        """The shapes checked so far and whether each runs directly (a copy)."""
        return dict(self._exact)
