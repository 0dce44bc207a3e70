"""Which CPU convs run as block convs (kernel 6, :func:`dcsim.sim.ops.block_conv2d`): checked once per layer and
input shape against the oneDNN call they replace, timed once per call shape against it; used in calls of at most
MAX_ROWS rows (a chunk program's convs, a lone sample's image-fed ones).

PyTorch's CPU conv costs about 40 us per call around oneDNN's own run of it, whatever the rows (primitive look-up,
memory objects, reorders of the input, weights and output): at batch 1, a call of one step spends half its time
there, and the fixed cost does not shrink with the steps a sample skips. The block conv sums every output in the
order oneDNN's AVX-512 float32 kernels do (csrc/block_conv.h) and is called on the tensors' pointers. Whether its
bits are oneDNN's depends on the kernel oneDNN picks on this machine (another ISA blocks channels by 8, a channels_last
input is summed in another order), so :class:`BlockConvs` runs both on a seeded Gaussian input of
``row_floor.REFERENCE_ROWS`` rows (the large-batch result every call of the engine must give) and uses the block conv
only where every output agrees bit for bit: on such inputs a sum in another order differs in most outputs. Where they
differ the layer keeps oneDNN: the results never change, only the time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable

import torch

from . import ops, row_floor
from .network import Conv, onednn_conv, onednn_conv_applies

MAX_ROWS = 8
"""Calls of at most this many rows (steps x samples) may use the block conv. In larger calls the ~40 us it saves
is a small part of the conv, and its sums, which read the input's channels a plane apart, lose more to cache
misses within a network than a timing of the layer alone shows: on the zoo ResNet-18, 27-row calls ran 17% slower
with block convs (the first kernel) chosen by timing (docs/results/table2-cpu.md)."""
TIMED_ROUNDS = 5
"""Interleaved rounds in which the block conv and oneDNN are timed on a layer's call shape (medians compared)."""


class BlockConvs:
    """Per engine: for each conv node and call shape, the block conv where it gives oneDNN's bits on the layer (checked
    once per input shape, see the module's docstring) and is the faster of the two on that call shape (timed once:
    its sums take 0.4-1.05 of oneDNN's time on the zoo's layers, and the ~40 us it saves matters most in small calls)."""

    def __init__(self) -> None:
        self._exact: dict[Hashable, tuple[Conv, torch.Tensor | None]] = {}  # (node, sample shape) -> (node, packed)
        self._calls: dict[Hashable, tuple[Conv, Callable[[torch.Tensor], torch.Tensor] | None]] = {}

    def call(self, node: Conv, x_shape: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The block conv of node for contiguous float32 CPU inputs of shape ``x_shape`` [n, Cin, H, W] (as
        :func:`dcsim.sim.ops.bound_block_conv` returns it), or None where it would not give oneDNN's bits, cannot
        run, or is slower than oneDNN on this shape. The nodes are held with the results, so that their ids are
        not reused."""
        threads = torch.get_num_threads()
        key = (id(node), tuple(x_shape), threads)
        if key not in self._calls:
            exact = (id(node), tuple(x_shape[1:]), threads)
            if exact not in self._exact:
                self._exact[exact] = (node, _packed_if_exact(node, tuple(x_shape[1:])))
            packed = self._exact[exact][1]
            block = None
            if packed is not None:
                block = ops.bound_block_conv(packed, node.bias, node.stride, node.padding, tuple(x_shape))
                if not _faster(block, node, tuple(x_shape)):
                    block = None
            self._calls[key] = (node, block)
        return self._calls[key][1]

    def chosen(self) -> dict[Hashable, bool]:
        """The (node id, call shape, threads) decided so far and whether each runs as a block conv."""
        return {key: block is not None for key, (_, block) in self._calls.items()}


def _faster(block: Callable[[torch.Tensor], torch.Tensor], node: Conv, x_shape: tuple[int, ...]) -> bool:
    """Whether ``block`` computes node's conv of an x_shape input in less time than oneDNN: medians over TIMED_ROUNDS
    interleaved rounds, after one call of each."""
    x = torch.randn(x_shape, generator=torch.Generator().manual_seed(1))
    times: dict[bool, list[float]] = {True: [], False: []}
    with torch.no_grad():
        block(x), onednn_conv(node, x)
        for _ in range(TIMED_ROUNDS):
            for ours in (True, False):
                t0 = time.perf_counter()
                block(x) if ours else onednn_conv(node, x)
                times[ours].append(time.perf_counter() - t0)
    return statistics.median(times[True]) < statistics.median(times[False])


def eligible(node: Conv, sample_shape: tuple[int, ...]) -> bool:
    """Whether the block conv can compute node on inputs of ``sample_shape`` (Cin, H, W) at all: float32 weights on
    the CPU, one group, no dilation, output channels in blocks of 16, input channels in the kernel's partial sums."""
    cout, cin, kh, kw = node.weight.shape
    if node.weight.dtype != torch.float32 or node.weight.device.type != "cpu" or len(sample_shape) != 3:
        return False
    if node.groups != 1 or node.dilation != (1, 1) or cout % ops.BLOCK or sample_shape[0] != cin:
        return False
    chunk, _ = ops.block_conv_order((kh, kw), node.padding, cin)
    return cin % chunk == 0


def avx512() -> bool:
    """Whether PyTorch runs its CPU kernels with AVX-512 here: elsewhere oneDNN blocks channels by 8 and sums in
    another order, so the check could only fail (and on wide layers its probe, in the portable loop, takes seconds)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _packed_if_exact(node: Conv, sample_shape: tuple[int, ...]) -> torch.Tensor | None:
    """node's weights packed for the block conv if it gives oneDNN's large-batch bits on a seeded Gaussian input of
    ``sample_shape``, else None."""
    if not eligible(node, sample_shape) or not avx512():
        return None
    packed = ops.pack_block_conv_weight(node.weight)
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn((row_floor.REFERENCE_ROWS, *sample_shape), generator=gen)
    if not onednn_conv_applies(probe):  # no oneDNN: the engine's convs take another kernel
        return None
    with torch.no_grad():
        same = torch.equal(
            ops.block_conv2d(probe, packed, node.bias, node.stride, node.padding), onednn_conv(node, probe)
        )
    return packed if same else None
