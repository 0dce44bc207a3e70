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

from ..checks import check_int

GRAD_SCALES = ("features", "batch", "none")


def _scale_grad(s: torch.Tensor, g: float) -> torch.Tensor:
    """Forward value exactly s, gradient multiplied by g."""
    return s.detach() + (s * g - (s * g).detach())


def _round_half_up_ste(v: torch.Tensor) -> torch.Tensor:
    """floor(v + 0.5) forward, identity gradient (straight-through)."""
    return (torch.floor(v + 0.5) - v).detach() + v


def lsq_quantize_ref(
    x: torch.Tensor, step: torch.Tensor, g: float, qp: int, clip_rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference of the LSQ quantizer, composed of autograd ops: s * round_half_up(clamp(x / s, 0, Qp)).

    x: float [N, ...]; step: scalar parameter s; g: the gradient scale on s; qp: highest level.
    clip_rows: bool [N, 1, ...] (broadcast over x) or None: the rows it marks pass through the
    clip s * clamp(x / s, 0, Qp) unrounded (QCFS's limit at many steps) instead of the quantizer.
    """
    s = _scale_grad(step, g)
    v = torch.clamp(x / s, 0, qp)
    q = _round_half_up_ste(v)
    return (q if clip_rows is None else torch.where(clip_rows, v, q)) * s


class _LSQQuantize(torch.autograd.Function):
    """y = s * floor(clamp(x / s, 0, Qp) + 0.5) with LSQ's gradients, in fewer passes over memory.

    Forward values equal :func:`lsq_quantize_ref` bit for bit, and so does the input gradient ((dy * s) masked, / s, as
    autograd computes it there); the step's gradient is the same sum, g * sum(dy * (q - v) inside
    [0, Qp], dy * q outside; 0 inside for the clipped rows), reduced in one pass (float rounding may
    differ in the last bits).
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, step: torch.Tensor, g: float, qp: int, clip_rows: torch.Tensor | None
    ) -> torch.Tensor:
        v = x / step
        q = torch.clamp(v, 0, qp).add_(0.5).floor_()
        if clip_rows is not None:
            q = torch.where(clip_rows, torch.clamp(v, 0, qp), q)
        ctx.save_for_backward(v, q, step)
        ctx.g, ctx.qp = g, qp
        return q * step

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None, None]:
        v, q, step = ctx.saved_tensors
        inside = (v >= 0) & (v <= ctx.qp)
        grad_x = (grad * step).mul_(inside).div_(step)
        grad_step = (grad * torch.where(inside, q - v, q)).sum() * ctx.g  # a clipped row has q = v inside
        return grad_x, grad_step.reshape(step.shape), None, None, None


def lsq_quantize(
    x: torch.Tensor, step: torch.Tensor, g: float, qp: int, clip_rows: torch.Tensor | None = None
) -> torch.Tensor:
    """The LSQ quantizer of :func:`lsq_quantize_ref`, fused (see :class:`_LSQQuantize`)."""
    out: torch.Tensor = _LSQQuantize.apply(x, step, g, qp, clip_rows)  # type: ignore[no-untyped-call]
    return out


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
    ``clip_mix`` (see :func:`set_clip_mix`): in training, each image passes through the unrounded clip
    s * clamp(x / s, 0, Qp) instead of the quantizer with this probability, drawn per layer from the
    global torch generator; in eval mode it never does.
    """

    initialized: torch.Tensor  # buffer: the step has been initialised from data

    def __init__(self, bits: int = 2, grad_scale: str = "features") -> None:
        super().__init__()
        bits = check_int(bits, "bits")
        if bits > 15:
            raise ValueError(f"bits must be <= 15 (spike counts are int32 and Zmax = 2^bits - 1), got {bits}")
        if grad_scale not in GRAD_SCALES:
            raise ValueError(f"grad_scale must be one of {GRAD_SCALES}, got {grad_scale!r}")
        self.bits = bits
        self.grad_scale = grad_scale
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.quantize = True
        self.clip_mix = 0.0
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

    # Eager under torch.compile (it reads a buffer on the host). torch.compiler.disable would import torch._dynamo
    # here, 1.6 s of every `import dcsim` (and of every command); torch's own lazy form of it imports it at the
    # first call instead, which only the first training batch makes.
    @torch._disable_dynamo
    def _init_step(self, x: torch.Tensor) -> None:
        """Set the step from the first training batch x (LSQ initialisation), once."""
        if self.needs_init:
            with torch.no_grad():
                self.step.copy_((2 * x.detach().abs().mean() / math.sqrt(self.qp)).clamp_min(1e-8))
                self.initialized.fill_(True)
            self._init_seen = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantize:
            return torch.relu(x)
        if self.training and not self._init_seen:
            self._init_step(x)
        if self.grad_scale == "features":
            g = 1.0 / math.sqrt(max(x[0].numel(), 1) * self.qp)
        elif self.grad_scale == "batch":
            g = 1.0 / math.sqrt(max(x.shape[0], 1) * self.qp)
        else:
            g = 1.0
        clip_rows = None
        if self.training and self.clip_mix > 0:
            clip_rows = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) < self.clip_mix
        return lsq_quantize(x, self.step, g, self.qp, clip_rows)


def set_quantization(model: nn.Module, enabled: bool) -> int:
    """Switch every LSQActivation in ``model`` between quantized (True) and float ReLU (False).

    Returns the number of LSQ layers switched.
    """
    layers = [m for m in model.modules() if isinstance(m, LSQActivation)]
    for m in layers:
        m.quantize = enabled
    return len(layers)


def set_clip_mix(model: nn.Module, probability: float, first: int | None = None) -> int:
    """Set the LSQActivations' ``clip_mix`` (the chance, in [0, 1), that a training image takes the
    clip, QCFS's many-step limit, in place of the quantizer): the first ``first`` LSQ layers in the
    model's module order (its forward order for dcsim's models) take ``probability``, the rest 0;
    ``first`` None: every LSQ layer. Returns the number of LSQ layers set to ``probability``."""
    if not 0 <= probability < 1:
        raise ValueError(f"clip_mix must lie in [0, 1), got {probability!r}")
    layers = [m for m in model.modules() if isinstance(m, LSQActivation)]
    if first is not None and not 1 <= first <= len(layers):
        raise ValueError(f"clip_mix_layers must lie in [1, {len(layers)}] (the model's LSQ layers), got {first!r}")
    mixed = len(layers) if first is None else first
    for i, m in enumerate(layers):
        m.clip_mix = probability if i < mixed else 0.0
    return mixed
