"""Plain-PyTorch reference implementations of the fused kernels.

Each function has the signature of its native twin in :mod:`dcsim.sim.ops`, updates the same
tensors in place and follows csrc/dcsim_math.h operation for operation, so spikes, counts,
predictions and exit flags match exactly and floats match to rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .ops import METHODS


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
    """One integrate-and-fire step of a layer, in place.

    x, x2: float32 [n, ...] input currents (x2 optional, summed into x; the residual branch).
    u:     float32 [n, ...] membrane potential.
    z:     int32 [n, ...] net spike count (QFFS) or None (QCFS).
    out:   float32 [n, ...] receives spike * th.
    counts: int64 [n] spikes per sample (+1 and -1 both count), accumulated.
    fanout: int32 [1, ...] synaptic operations one spike of each neuron triggers (see dcsim.sim.sops), or None.
    sops:  int64 [n] synaptic operations per sample, sum(|spike| * fanout), accumulated (with fanout).
    u0:    the first step of fresh state: u and z hold anything (they are not read) and count as u0 and 0.
    checked: the native twin's switch for its tensors' checks; torch's own ops check these tensors here.
    """
    del checked
    if (fanout is None) != (sops is None):  # as dcsim.sim.ops.neuron_step
        raise ValueError("fanout and sops go together: give both or neither")
    if u0 is not None:
        u.fill_(u0)
        if z is not None:
            z.zero_()
    current = x if x2 is None else x + x2
    u.copy_(u + current)
    if METHODS[method] == METHODS["qffs"]:
        if z is None:  # as dcsim.sim.ops.neuron_step
            raise ValueError("z (the spike count) is required for method 'qffs'")
        pos = (u >= th) & (z < zmax)
        neg = (u < 0) & (z > 0) & ~pos
        spike = pos.to(torch.int32) - neg.to(torch.int32)
        z.add_(spike)
    else:
        spike = (u >= th).to(torch.int32)
    current_out = spike.to(torch.float32) * th
    u.copy_(u - current_out)
    out.copy_(current_out)
    fired = (spike != 0).reshape(spike.shape[0], math.prod(spike.shape[1:]))
    counts.add_(fired.sum(dim=1))
    if fanout is not None and sops is not None:
        sops.add_((fired * fanout.reshape(1, -1).to(torch.int64)).sum(dim=1))


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
    """k steps of :func:`neuron_step` (k = out.shape[0]): step t with x[t] (x2[t]) where x (x2) is [k, n, ...],
    else x (x2) at every step, into out[t], u0 at t = 0 only; then counts_out[t] = counts, sops_out[t] = sops."""
    if sops_out is not None and sops is None:  # as dcsim.sim.ops.neuron_steps
        raise ValueError("sops_out needs sops (and fanout)")
    for t in range(out.shape[0]):
        neuron_step(
            method,
            x[t] if x.dim() == u.dim() + 1 else x,
            u,
            z,
            out[t],
            counts,
            th,
            zmax,
            x2=None if x2 is None else x2[t] if x2.dim() == u.dim() + 1 else x2,
            fanout=fanout,
            sops=sops,
            u0=u0 if t == 0 else None,
            checked=checked,
        )
        if counts_out is not None:
            counts_out[t] = counts
        if sops_out is not None and sops is not None:
            sops_out[t] = sops


def readout_score(sums: torch.Tensor, kind: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Score float32 [n] and argmax int64 [n] of running sums float32 [n, K] (see dcsim.sim.readout)."""
    n, k = sums.shape
    pred = sums.argmax(dim=1)
    if k == 1:
        return torch.ones(n, dtype=torch.float32, device=sums.device), pred
    smax = sums.max(dim=1, keepdim=True).values
    d = (sums - smax) * scale
    e = torch.exp(d)
    zsum = e.sum(dim=1)
    pmax = 1.0 / zsum
    if kind == 0:
        return pmax, pred
    if kind == 2:
        masked = sums.scatter(1, pred[:, None], -math.inf)
        second = masked.max(dim=1).values
        return pmax - torch.exp((second - smax[:, 0]) * scale) / zsum, pred
    h = torch.log(zsum) - (e * d).sum(dim=1) / zsum
    return (1.0 - h / math.log(k)).clamp(0.0, 1.0), pred


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
    """Accumulate S_t += x, score it and decide the exit, in place.

    x, sums: float32 [n, K]; steps: int32 [n] (incremented); pred: int64 [n];
    score: float32 [n]; exited: uint8 [n] = score > threshold or steps >= max_steps.
    checked: as for :func:`neuron_step`.
    """
    del checked
    sums.copy_(sums + x)
    steps.add_(1)
    s, p = readout_score(sums, readout, scale)
    score.copy_(s)
    pred.copy_(p)
    exited.copy_(((s > threshold) | (steps >= max_steps)).to(torch.uint8))


def gather_rows(tensors: list[torch.Tensor], index: torch.Tensor) -> list[torch.Tensor]:
    """New tensors whose row r is row index[r] of each input (index int64 [n_out])."""
    return [t.index_select(0, index) for t in tensors]


def compact_rows_(tensors: list[torch.Tensor], index: torch.Tensor) -> list[torch.Tensor]:
    """Row r of each tensor [n_in, ...] becomes its row index[r] (int64 [n_out]), in place; views of the first n_out rows."""
    n = index.numel()
    for t in tensors:
        t[:n] = t.index_select(0, index)
    return [t[:n] for t in tensors]


class InPlaceCompaction:
    """The reference of :class:`dcsim.sim.ops.InPlaceCompaction`: :func:`compact_rows_` of the same tensors, call
    after call (keep: the source row of each row left, a list)."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self._tensors = list(tensors)
        n = tensors[0].shape[0]
        self.row_bytes = sum(t.element_size() * (t.numel() // n if n else 0) for t in tensors)

    def __call__(self, keep: list[int]) -> list[torch.Tensor]:
        return compact_rows_(self._tensors, torch.tensor(keep, dtype=torch.int64, device=self._tensors[0].device))


def spike_conv2d(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """Convolution of x float32 [n, Cin, H, W] with weights packed as [kh, kw, Cin, Cout] (a dense conv)."""
    return F.conv2d(x, packed.permute(3, 2, 0, 1), bias, stride, padding)


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """The reference of :func:`dcsim.sim.ops.avg_pool_2x2`: torch's ``F.avg_pool2d(x, 2)``."""
    return F.avg_pool2d(x, 2)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """The reference of :func:`dcsim.sim.ops.global_avg_pool`: torch's ``F.adaptive_avg_pool2d(x, 1)``."""
    return F.adaptive_avg_pool2d(x, 1)


def block_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """The reference of :func:`dcsim.sim.ops.block_conv2d`: the conv of x float32 [n, Cin, H, W] by weight
    [Cout, Cin, kh, kw] summed in the kernel's order (:func:`dcsim.sim.ops.block_conv_order`), one term at a time
    for all outputs at once; each product is rounded before its sum, so it gives the kernel's bits where the products
    are exact (spike inputs, 0 or 1), and agrees within float32 rounding elsewhere. Padding contributes no terms."""
    from .ops import block_conv_order

    n, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    chunk, bias_first = block_conv_order((kh, kw), (sh, sw), (ph, pw), cin, (h, w))
    xp = F.pad(x, (pw, pw, ph, ph))
    inside = F.pad(torch.ones(1, 1, h, w, dtype=torch.bool), (pw, pw, ph, ph))
    zero = x.new_zeros(n, cout, oh, ow)
    b = None if bias is None else bias.reshape(1, cout, 1, 1).expand(n, cout, oh, ow)
    total = zero
    for c0 in range(0, cin, chunk):
        part = b.clone() if (b is not None and bias_first and c0 == 0) else zero.clone()
        for ky in range(kh):
            rows = slice(ky, ky + sh * (oh - 1) + 1, sh)
            for kx in range(kw):
                cols = slice(kx, kx + sw * (ow - 1) + 1, sw)
                valid = inside[:, :, rows, cols]  # [1, 1, oh, ow]: taps inside the input
                for c in range(c0, min(c0 + chunk, cin)):
                    term = xp[:, c : c + 1, rows, cols] * weight[:, c, ky, kx].reshape(1, cout, 1, 1)
                    part = torch.where(valid, part + term, part)
        if c0 > 0:
            total = part + total
        elif b is not None and not bias_first:
            total = part + b
        else:
            total = part
    return total
