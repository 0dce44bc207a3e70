"""An exponential moving average of a model's weights, validated and kept in place of the last weights."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    """avg <- decay * avg + (1 - decay) * w after every update, for each floating-point entry of the model's
    state (parameters, LSQ step sizes and batch-norm running statistics alike); integer entries (batch norm's
    batch counters) take the latest value. The average starts as a copy of the first state it sees.

    decay in (0, 1): per update; an update's weight in the average halves after about 0.69 / (1 - decay)
    updates (decay 0.99: 69).
    """

    def __init__(self, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"ema must lie in (0, 1) (0 turns it off), got {decay!r}")
        self.decay = decay
        self.state: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current state into the average."""
        current = model.state_dict()
        if self.state is None:
            self.state = {k: v.detach().clone() for k, v in current.items()}
            return
        for k, avg in self.state.items():
            value = current[k].detach()
            if avg.is_floating_point():
                avg.lerp_(value, 1.0 - self.decay)
            else:
                avg.copy_(value)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The model holds the average inside the block and its own state again after it (even on error)."""
        if self.state is None:
            raise RuntimeError("the weight average has seen no update yet")
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(own)
