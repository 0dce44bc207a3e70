"""Thresholds for a float ReLU network from its activations (the literature's data-based normalization).

``clip_relus(model, calibration_images, percentile)`` runs the float network on calibration
images, takes for every ReLU layer the ``percentile``-th percentile of its positive activations
(100: the maximum; 99.9: the robust choice of Rueckauer et al. 2017) as its threshold lambda,
and returns a copy in which each ReLU is a :class:`ClipReLU` min(max(x, 0), lambda). That is
the data-based normalization with the thresholds alone: scaling layer l's weights and biases by
lambda_{l-1} / lambda_l with unit thresholds gives the same spikes, since the clip is
positively homogeneous. ``per_channel=True`` takes one lambda per channel; it scales the
producing conv/linear layer's output channel by 1/lambda_c and the consuming layer's input
channel by lambda_c, so every neuron keeps a single threshold (1).

The converter turns a ClipReLU into IF neurons with th = lambda and u0 = th/2 (QCFS); after
T steps the SNN's mean output current is the clip quantized to T levels (half up), so the
SNN approaches the clipped network as T grows. Read out with alpha = T (the paper's QCFS
rule: ``Readout.paper("qcfs", None, T)``). QFFS needs a spike cap and is not used here.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
from torch import fx, nn

from ..checks import check_int
from ..models.lsq import LSQActivation


class ClipReLU(nn.Module):
    """min(max(x, 0), threshold): a ReLU clipped at the data-based threshold (> 0, a buffer)."""

    threshold: torch.Tensor  # the buffer

    def __init__(self, threshold: float) -> None:
        super().__init__()
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def extra_repr(self) -> str:
        return f"threshold={float(self.threshold):.6g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0, float(self.threshold))


def _is_relu(m: nn.Module) -> bool:
    """nn.ReLU, or dcsim's LSQActivation in float mode (which computes a ReLU)."""
    return isinstance(m, nn.ReLU) or (isinstance(m, LSQActivation) and not m.quantize)


class _TopK:
    """Running statistics of one layer's positive activations, for an exact percentile.

    Pass 1 counts the positive values (``observe_count``); pass 2 keeps the ``k`` largest
    (``observe_top``), where k covers the interpolation points of the percentile.
    """

    def __init__(self, per_channel: bool) -> None:
        self.per_channel = per_channel
        self.count: torch.Tensor | None = None  # [C] or []
        self.top: list[torch.Tensor] = []
        self.k: list[int] = []

    def _rows(self, y: torch.Tensor) -> list[torch.Tensor]:
        if not self.per_channel:
            return [y.reshape(-1)]
        return list(y.transpose(0, 1).reshape(y.shape[1], -1))

    def observe_count(self, y: torch.Tensor) -> None:
        counts = torch.stack([(r > 0).sum() for r in self._rows(y)])
        self.count = counts if self.count is None else self.count + counts

    def observe_top(self, y: torch.Tensor) -> None:
        for i, r in enumerate(self._rows(y)):
            kept = torch.cat([self.top[i], r[r > 0].float()])
            self.top[i] = kept.topk(min(self.k[i], kept.numel())).values

    def plan(self, percentile: float) -> None:
        """k per row: the values from the percentile's lower interpolation point upwards."""
        q = percentile / 100.0
        assert self.count is not None, "observe_count comes first"
        self.k = [int(n) - math.floor(q * (int(n) - 1)) if int(n) else 0 for n in self.count.reshape(-1)]
        self.top = [torch.empty(0) for _ in self.k]

    def result(self, percentile: float) -> list[float]:
        """The percentile of each row's positive values (linear interpolation, as torch.quantile); 0 if none."""
        q = percentile / 100.0
        assert self.count is not None, "observe_count comes first"
        out = []
        for n, top in zip(self.count.reshape(-1).tolist(), self.top, strict=True):
            if n == 0:
                out.append(0.0)
                continue
            pos = q * (n - 1)
            lo, frac = math.floor(pos), pos - math.floor(pos)
            desc = top.sort(descending=True).values  # desc[j] is the (n-1-j)-th smallest value
            v_lo = float(desc[n - 1 - lo])
            v_hi = float(desc[max(n - 1 - min(lo + 1, n - 1), 0)])
            out.append(v_lo + frac * (v_hi - v_lo))
        return out


def _check_calibration(images: torch.Tensor, batch_size: int) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"calibration_images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(
            f"calibration_images must be a float tensor [N, ...] (normalized images), got dtype {images.dtype}"
        )
    if images.dim() < 2 or images.shape[0] < 1:
        raise ValueError(f"calibration_images must be [N, ...] with N >= 1 samples, got shape {list(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("calibration_images hold NaN or infinite values")
    check_int(batch_size, "batch_size")


def activation_thresholds(
    model: nn.Module,
    calibration_images: torch.Tensor,
    percentile: float = 99.9,
    per_channel: bool = False,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """The data-based threshold of every ReLU layer of ``model``: {qualified name: lambda}.

    lambda is the ``percentile``-th percentile (linear interpolation) of the layer's positive
    outputs over all calibration images (and positions); a scalar tensor, or [C] per channel
    (dim 1 of the layer's output) with ``per_channel``. Exact: two passes over the data,
    memory proportional to the values above the percentile. Raises ValueError naming the
    argument for bad calibration data or percentile, and naming the layer when it never fires.
    """
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    _check_calibration(calibration_images, batch_size)
    layers = {name: m for name, m in model.named_modules() if _is_relu(m)}
    if not layers:
        raise ValueError("the model has no ReLU layer (nn.ReLU modules, or dcsim LSQActivation in float mode) to clip")
    stats = {name: _TopK(per_channel) for name in layers}

    def run(observe: str) -> None:
        """One pass over the calibration data calling ``stats[layer].<observe>`` on each ReLU output."""
        handles = [
            m.register_forward_hook(lambda _m, _i, y, s=stats[name]: getattr(s, observe)(y))
            for name, m in layers.items()
        ]
        try:
            for i in range(0, len(calibration_images), batch_size):
                model(calibration_images[i : i + batch_size])
        except RuntimeError as err:
            raise ValueError(
                f"calibration_images of shape {list(calibration_images.shape)} do not fit the "
                f"model: {str(err).splitlines()[0]}"
            ) from err
        finally:
            for h in handles:
                h.remove()

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run("observe_count")
            if any(s.count is None for s in stats.values()):
                unused = [n for n, s in stats.items() if s.count is None]
                raise ValueError(f"layers {unused} (ReLU) are not used by the model's forward pass")
            for s in stats.values():
                s.plan(percentile)
            run("observe_top")
    finally:
        model.train(was_training)
    out: dict[str, torch.Tensor] = {}
    for name in layers:
        values = torch.tensor(stats[name].result(percentile), dtype=torch.float32)
        dead = (values <= 0).nonzero().flatten().tolist()
        if dead and not per_channel:
            raise ValueError(
                f"layer {name!r} (ReLU) never outputs a positive value on the calibration data: no threshold can be set"
            )
        out[name] = values if per_channel else values.reshape(())
    return out


class _ReluLeaves(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_relu(m) or super().is_leaf_module(m, qualname)


_PASS_THROUGH = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity, nn.Flatten)
"""Layers between a ReLU and its consuming conv/linear that keep channels apart (per_channel)."""


def _scale_channels(model: nn.Module, thresholds: dict[str, torch.Tensor]) -> None:
    """Fold per-channel thresholds into the weights: producer's channel c / lam_c, consumer's input c * lam_c.

    Afterwards each ReLU clipped at 1 computes clip(x_c, 0, lam_c) / lam_c, and the consumer
    sees the same currents as with a per-channel clip. Channels that never fired on the
    calibration data take the layer's largest threshold. Raises ValueError naming the layer
    when the graph around a ReLU is not producer -> ReLU -> pass-through layers -> consumer.
    """
    try:
        graph = _ReluLeaves().trace(model)
    except Exception as err:  # fx raises many types for untraceable code
        raise ValueError(f"per_channel needs a model torch.fx can trace: {err}") from err
    modules = dict(model.named_modules())
    by_target = {n.target: n for n in graph.nodes if n.op == "call_module" and n.target in thresholds}
    for name, lam in thresholds.items():
        lam = lam.clone()
        if not bool((lam > 0).any()):
            raise ValueError(f"layer {name!r} (ReLU) never outputs a positive value on the calibration data")
        lam[lam <= 0] = lam.max()
        node = by_target[name]
        where = f"per_channel: layer {name!r} (ReLU)"
        prev = node.args[0]
        if len(prev.users) != 1 or prev.op != "call_module":
            raise ValueError(f"{where} must be the only user of a conv/linear (+ batch norm) layer's output")
        producer = modules[prev.target]
        targets: list[torch.Tensor]
        if isinstance(producer, (nn.BatchNorm1d, nn.BatchNorm2d)) and producer.affine:
            targets = [producer.weight, producer.bias]
        elif isinstance(producer, (nn.Conv2d, nn.Linear)):
            targets = [producer.weight] + ([producer.bias] if producer.bias is not None else [])
        else:
            raise ValueError(
                f"{where} is fed by {type(producer).__name__} {prev.target!r}; per_channel needs a conv, "
                "linear or affine batch norm layer there"
            )
        with torch.no_grad():
            for t in targets:
                t.div_(lam.reshape(-1, *([1] * (t.dim() - 1))))
        consumer, flattened = node, False
        while True:
            if len(consumer.users) != 1:
                raise ValueError(
                    f"{where}: its output must reach exactly one conv/linear layer (through pooling, "
                    f"flatten, dropout), but {consumer.name!r} has {len(consumer.users)} users"
                )
            consumer = next(iter(consumer.users))
            mod = modules.get(consumer.target) if consumer.op == "call_module" else None
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                break
            is_flatten = isinstance(mod, nn.Flatten) or consumer.target in (torch.flatten, "flatten", "view", "reshape")
            if not (isinstance(mod, _PASS_THROUGH) or is_flatten):
                raise ValueError(
                    f"{where}: {consumer.name!r} between it and the next conv/linear layer is not a "
                    "pooling, flatten or dropout layer"
                )
            flattened = flattened or is_flatten
        with torch.no_grad():
            w = mod.weight
            if isinstance(mod, nn.Conv2d):
                if mod.groups != 1:
                    raise ValueError(f"{where}: the grouped conv {consumer.target!r} is not supported")
                w.mul_(lam.reshape(1, -1, 1, 1))
            else:
                per = w.shape[1] // lam.numel() if flattened else 1
                if per * lam.numel() != w.shape[1]:
                    raise ValueError(
                        f"{where}: {consumer.target!r} has {w.shape[1]} inputs, not a multiple of "
                        f"{lam.numel()} channels"
                    )
                w.mul_(lam.repeat_interleave(per).reshape(1, -1))


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def clip_relus(
    model: nn.Module,
    calibration_images: torch.Tensor,
    percentile: float = 99.9,
    per_channel: bool = False,
    batch_size: int = 256,
) -> nn.Module:
    """A copy of the float ReLU network ``model`` with every ReLU clipped at its data-based threshold.

    calibration_images: float [N, ...] inputs as the model takes them (normalized images of
    the training split, never the test split). percentile in (0, 100]: 100 is the maximum
    (max normalization), 99.9 the robust normalization. per_channel: one threshold per channel
    (see the module doc; needs each ReLU fed by a conv/linear (+ batch norm) layer and read by
    one conv/linear layer, through pooling, flatten, dropout only). The returned model is in
    eval mode and converts with ``dcsim.convert(model, method="qcfs")``; ``model`` is not
    modified. ReLUs must be modules (nn.ReLU, or dcsim LSQActivation in float mode).
    """
    thresholds = activation_thresholds(model, calibration_images, percentile, per_channel, batch_size)
    out = copy.deepcopy(model).eval()
    if per_channel:
        _scale_channels(out, thresholds)
        thresholds = {name: torch.tensor(1.0) for name in thresholds}
    for name, lam in thresholds.items():
        _set_module(out, name, ClipReLU(float(lam)))
    return out


def normalize(*args: Any, **kwargs: Any) -> nn.Module:
    """The old name of :func:`clip_relus`, for one release (with a DeprecationWarning)."""
    warnings.warn("dcsim.conversion.thresholds.normalize is now clip_relus; the old name goes away in the next release",
                  DeprecationWarning, 2)  # fmt: skip
    return clip_relus(*args, **kwargs)
