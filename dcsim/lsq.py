"""LSQ activation quantization (Esser et al., 2020), the ANN side of the conversion.

y = s * round(clip(x / s, 0, Qp)) with Qp = 2^bits - 1 levels above zero, a learnable step
size s, straight-through gradients (paper eq. 9-11) and the LSQ gradient scale on s.
Rounding is half-up (floor(v + 0.5)): with u0 = th/2 and T = Qp steps an IF neuron
reproduces exactly this rounding, ties included.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

GRAD_SCALES = ("features", "batch", "none")


def _scale_grad(s: torch.Tensor, g: float) -> torch.Tensor:
    """Forward value exactly s, gradient multiplied by g."""
    return s.detach() + (s * g - (s * g).detach())


def _round_half_up_ste(v: torch.Tensor) -> torch.Tensor:
    """floor(v + 0.5) forward, identity gradient (straight-through)."""
    return (torch.floor(v + 0.5) - v).detach() + v


class LSQActivation(nn.Module):
    """LSQ-quantized ReLU with ``bits`` bits: levels 0..Qp, step size ``step`` (learned).

    grad_scale selects the gradient scale g on the step size:
      - "features": g = 1 / sqrt(features * Qp), features = elements per sample (LSQ paper);
      - "batch":    g = 1 / sqrt(batch * Qp), as the official Dynamic Confidence code does;
      - "none":     g = 1.
    On the first forward pass in training mode the step is initialised from the data:
    s = 2 * mean(|x|) / sqrt(Qp) (LSQ initialisation).
    Input and output: float tensors [batch, ...]; the output takes values s * {0..Qp}.
    With ``quantize = False`` (float pre-training, see :func:`set_quantization`) it is a ReLU.
    """

    initialized: torch.Tensor  # buffer: the step has been initialised from data

    def __init__(self, bits: int = 2, grad_scale: str = "features") -> None:
        super().__init__()
        if not isinstance(bits, int) or isinstance(bits, bool) or bits < 1:
            raise ValueError(f"bits must be an integer >= 1, got {bits!r}")
        if bits > 15:
            raise ValueError(f"bits must be <= 15 (spike counts are int32 and Zmax = 2^bits - 1), got {bits}")
        if grad_scale not in GRAD_SCALES:
            raise ValueError(f"grad_scale must be one of {GRAD_SCALES}, got {grad_scale!r}")
        self.bits = bits
        self.grad_scale = grad_scale
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.quantize = True
        self._init_seen = False  # host copy of ``initialized`` once seen True: no device sync per forward

    @property
    def needs_init(self) -> bool:
        """Whether the step still waits for its initialisation from data. Reads the ``initialized``
        buffer (a device sync on a GPU) only until it is seen set, then answers from the host."""
        if not self._init_seen:
            self._init_seen = bool(self.initialized)
        return not self._init_seen

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._init_seen = False  # the loaded buffer decides again

    @property
    def qp(self) -> int:
        """Highest quantization level Qp = 2^bits - 1."""
        return (1 << self.bits) - 1  # 2^bits - 1 (bits >= 1)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, grad_scale={self.grad_scale!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantize:
            return torch.relu(x)
        if self.training and self.needs_init:
            with torch.no_grad():
                self.step.copy_((2 * x.detach().abs().mean() / math.sqrt(self.qp)).clamp_min(1e-8))
                self.initialized.fill_(True)
            self._init_seen = True
        if self.grad_scale == "features":
            g = 1.0 / math.sqrt(max(x[0].numel(), 1) * self.qp)
        elif self.grad_scale == "batch":
            g = 1.0 / math.sqrt(max(x.shape[0], 1) * self.qp)
        else:
            g = 1.0
        s = _scale_grad(self.step, g)
        return _round_half_up_ste(torch.clamp(x / s, 0, self.qp)) * s


def set_quantization(model: nn.Module, enabled: bool) -> int:
    """Switch every LSQActivation in ``model`` between quantized (True) and float ReLU (False).

    Returns the number of LSQ layers switched.
    """
    layers = [m for m in model.modules() if isinstance(m, LSQActivation)]
    for m in layers:
        m.quantize = enabled
    return len(layers)
