"""Augmentation of image batches on their device: random crop (zero padding) and horizontal flip."""

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


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None, padding: int = 4) -> torch.Tensor:
    """:func:`crop_flip` with offsets uniform in [0, 2 * padding] and flips with p = 0.5.

    The draws come from ``generator`` on the CPU (the same augmentation on every device, and a
    state that checkpoints can store): oy [B], then ox [B], then flip [B].
    """
    b = x.shape[0]
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.randint(0, 2, (b,), generator=generator).bool()
    return crop_flip(x, oy, ox, flip, padding)
