"""Augmentation of image batches on their device: random crop (zero padding), horizontal flip and cutout."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import check_int


def crop_flip(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop every image of x, zero-padded by ``padding`` pixels, at its offsets, then mirror it where ``flip``.

    x: [B, C, H, W] of any dtype (uint8 included); oy, ox: int64 [B] in [0, 2 * padding]: the
    top-left corner of the crop in the padded image; flip: bool [B]. Returns a new tensor of
    x's shape, dtype and device: out[b] = pad(x[b])[:, oy:oy+H, ox:ox+W], flipped left-right if flip[b].
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(
            f"crop_flip: x must be a tensor [B, C, H, W], got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    padding = check_int(padding, "crop_flip: padding", minimum=0)
    b, c, h, w = x.shape
    for name, v in (("oy", oy), ("ox", ox), ("flip", flip)):
        if not isinstance(v, torch.Tensor) or v.shape != (b,):
            raise ValueError(f"crop_flip: {name} must be a tensor [{b}] (one per image)")
    if b and (int(torch.minimum(oy.min(), ox.min())) < 0 or int(torch.maximum(oy.max(), ox.max())) > 2 * padding):
        raise ValueError(f"crop_flip: offsets must lie in [0, {2 * padding}]")
    oy, ox, flip = oy.to(x.device), ox.to(x.device), flip.to(x.device, torch.bool)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = oy[:, None] + torch.arange(h, device=x.device)  # [B, H]
    ar_w = torch.arange(w, device=x.device)
    cols = ox[:, None] + torch.where(flip[:, None], ar_w.flip(0), ar_w)  # [B, W]
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def cutout(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square of every image of x, centred at (cy, cx) and clipped at the borders.

    x: [B, C, H, W] of any dtype; cy, cx: int64 [B], the centres, cy in [0, H) and cx in [0, W). The
    square covers rows cy - size // 2 .. cy - size // 2 + size - 1 (and the same for columns), as in
    DeVries and Taylor's cutout. Returns a new tensor of x's shape, dtype and device (zero is black
    before normalization).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError("cutout: x must be a tensor [B, C, H, W]")
    size = check_int(size, "cutout: size", minimum=0)
    b, _, h, w = x.shape
    for name, v, limit in (("cy", cy, h), ("cx", cx, w)):
        if not isinstance(v, torch.Tensor) or v.shape != (b,):
            raise ValueError(f"cutout: {name} must be a tensor [{b}] (one per image)")
        if b and (int(v.min()) < 0 or int(v.max()) >= limit):
            raise ValueError(f"cutout: {name} must lie in [0, {limit})")
    top = (cy.to(x.device) - size // 2)[:, None]  # [B, 1]
    left = (cx.to(x.device) - size // 2)[:, None]
    r = torch.arange(h, device=x.device)[None, :]
    c = torch.arange(w, device=x.device)[None, :]
    in_rows = (r >= top) & (r < top + size)  # [B, H]
    in_cols = (c >= left) & (c < left + size)  # [B, W]
    return x.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0)


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator | None, padding: int = 4, cutout_size: int = 0
) -> torch.Tensor:
    """:func:`crop_flip` with offsets uniform in [0, 2 * padding] and flips with p = 0.5, then, where
    ``cutout_size`` > 0, :func:`cutout` at centres uniform over the image.

    The draws come from ``generator`` on the CPU (the same augmentation on every device, and a
    state that checkpoints can store): oy [B], then ox [B], then flip [B], then (cutout only) cy [B]
    and cx [B]; without cutout the draws and results are those of crop and flip alone.
    """
    b, _, h, w = x.shape
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.randint(0, 2, (b,), generator=generator).bool()
    out = crop_flip(x, oy, ox, flip, padding)
    if cutout_size > 0:
        cy = torch.randint(0, h, (b,), generator=generator)
        cx = torch.randint(0, w, (b,), generator=generator)
        out = cutout(out, cy, cx, cutout_size)
    return out


def augment_cifar(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    """Random crop with ``padding`` pixels of zero padding, then a random horizontal flip (p = 0.5).

    x: float [B, C, H, W] (any device; usually already normalized, so the padding is the mean
    colour). Offsets and flips are drawn from ``generator`` on its own device. Returns a new
    tensor [B, C, H, W] of x's dtype and device; all samples are done at once (two gathers).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"augment_cifar: x must be a float tensor [B, C, H, W], got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    padding = check_int(padding, "augment_cifar: padding", minimum=0)
    return random_crop_flip(x, generator, padding)
