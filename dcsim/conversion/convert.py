"""ANN-to-SNN conversion: a PyTorch model with LSQ activations -> SpikingNetwork.

The model is traced with torch.fx (LSQ activations are leaves). Batch norm is folded into the
conv or linear layer before it; every quantized activation becomes a Neuron with
threshold th = Qp * s and initial membrane u0 = u0_fraction * th (dcsim's LSQActivation and
ClipReLU are built in; other activation modules are read by adapters passed as ``quantizers``,
see dcsim.conversion.adapters); weights and biases are copied
unchanged; residual additions become Add nodes summed before the post-add neuron; the last
layer integrates (no spikes). The model itself is never modified; an unsupported layer or
pattern raises ConversionError naming it, and nothing is returned half-converted.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..models.lsq import LSQActivation
from ..sim.network import (
    STEMS,
    AdaptiveAvgPool,
    Add,
    AvgPool,
    Conv,
    Flatten,
    Input,
    Linear,
    Neuron,
    Node,
    Quantize,
    SpikingNetwork,
)
from ..sim.semantics import Semantics
from .adapters import Adapter, Matcher, Quantization, Quantizers, RoundingWarning, find_adapter, registry

SUPPORTED = (
    "Conv2d (zero padding), Linear, BatchNorm1d/2d directly after a conv or linear layer, "
    "LSQActivation, ClipReLU, activations with an adapter in quantizers=, AvgPool2d, AdaptiveAvgPool2d, Flatten / torch.flatten, Dropout, Identity, "
    "residual '+' / torch.add of currents"
)


class ConversionError(ValueError):
    """A layer or pattern that cannot become part of a spiking network."""


class _Tracer(fx.Tracer):
    def __init__(self, adapters: list[tuple[Matcher, Adapter]]) -> None:
        super().__init__()
        self.adapters = adapters

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return find_adapter(m, self.adapters) is not None or super().is_leaf_module(m, qualname)


def _quantization(mod: nn.Module, adapters: list[tuple[Matcher, Adapter]], where: str) -> Quantization | None:
    """The adapter's reading of ``mod`` (None when no adapter claims it); errors name the layer."""
    fn = find_adapter(mod, adapters)
    if fn is None:
        return None
    what = f"{where} ({type(mod).__name__}, adapter {getattr(fn, '__name__', fn)!r})"
    try:
        q = fn(mod)
    except (ValueError, TypeError, AttributeError) as err:
        raise ConversionError(f"{what}: {err}") from err
    if not isinstance(q, Quantization):
        raise ConversionError(f"{what} returned a {type(q).__name__}, not a dcsim.conversion.adapters.Quantization")
    return q


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    """A 2-D size (an int for both dimensions, or a sequence of one or two) as a pair, as torch reads it."""
    return (v, v) if isinstance(v, int) else (v[0], v[-1])


def _pair_or_none(v: int | tuple[int | None, ...] | None) -> tuple[int | None, int | None]:
    """:func:`_pair` for adaptive pooling sizes, where None keeps the input's size."""
    return (v, v) if v is None or isinstance(v, int) else (v[0], v[-1])


def _is_alias(n: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Nodes that pass their input through unchanged at inference (Dropout, Identity)."""
    if n.op == "call_module":
        return isinstance(modules[str(n.target)], (nn.Dropout, nn.Identity))
    return n.op == "call_function" and n.target is F.dropout


def _consumers(n: fx.Node, modules: dict[str, nn.Module]) -> list[fx.Node]:
    """The nodes that use n's value, looking through aliases."""
    out: list[fx.Node] = []
    for u in n.users:
        out += _consumers(u, modules) if _is_alias(u, modules) else [u]
    return out


def _fold_bn(node: Conv | Linear, bn: nn.BatchNorm1d | nn.BatchNorm2d, name: str) -> Conv | Linear:
    """Fold eval-mode batch norm into the conv/linear ``node``: w' = w*g, b' = (b - mean)*g + beta."""
    if bn.running_mean is None or bn.running_var is None:  # both or neither
        raise ConversionError(f"layer {name!r} (BatchNorm) has no running statistics (track_running_stats=False)")
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_mean)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_mean)
    g = gamma / torch.sqrt(bn.running_var + bn.eps)
    w = node.weight * g.reshape(-1, *([1] * (node.weight.dim() - 1)))
    b = node.bias if node.bias is not None else torch.zeros_like(bn.running_mean)
    return replace(node, weight=w, bias=(b - bn.running_mean) * g + beta)


def _stem_quantizer(mod: nn.Module, q: Quantization, name: str, x: int, where: str) -> Quantize:
    """The :class:`Quantize` layer of an activation that takes the image's current directly (stem "quantized"),
    with the ANN's own float32 step for an LSQActivation."""
    if q.levels is None:
        raise ConversionError(
            f"{where} ({type(mod).__name__}) is an unquantized clip in the stem: stem 'quantized' "
            "needs its levels Qp; use stem 'spiking'"
        )
    if isinstance(mod, LSQActivation):
        step = mod.step.detach().float().clone().reshape(())
    else:
        step = torch.tensor(q.step, dtype=torch.float32)
    return Quantize(name, (x,), step=step, levels=q.levels, rounding=q.rounding)


def convert(
    model: nn.Module,
    method: str = "qcfs",
    u0_fraction: float = 0.5,
    zmax: int | None = None,
    *,
    quantizers: Quantizers = None,
    semantics: str | Semantics | None = None,
    drive_steps: int | None = None,
    stem: str = "spiking",
) -> SpikingNetwork:
    """Convert ``model`` (float CNN with quantized hidden activations) to a spiking network.

    method: "qcfs" (soft-reset IF) or "qffs" (IF with negative spikes and the cap Zmax).
    u0_fraction: initial membrane as a fraction of each layer's threshold (paper: 0.5).
    zmax: QFFS spike-count cap; default Qp of each layer (2^bits - 1 for LSQ).
    quantizers: adapters for activation modules of other classes, ``{ModuleClass: fn}`` or a
    list of ``(ModuleClass or predicate, fn)`` pairs; fn(module) returns a
    dcsim.conversion.adapters.Quantization (see that module). Layers that round half to even are
    converted with a RoundingWarning: their IF neurons round exact ties half up.
    semantics: how the image and the biases drive the network over time. "settle" (the QFFS
        default): during the first ``drive_steps`` steps only, then the network settles and negative
        spikes correct; the spike counts converge to the quantized ANN's levels, so accuracy holds
        for any T >= Qp. "constant" (the only QCFS semantics): at every step; with QFFS the capped
        counts then fall behind the growing input beyond T = Qp. See SpikingNetwork.
    drive_steps: steps of drive under "settle"; default the layers' common Qp (one Qp required).
    stem: QCFS only. "spiking" (default): every activation becomes a neuron. "quantized": the activations that
        take the image's current directly (through convs and pools, no activation between: the first layer of
        activations) become :class:`Quantize` layers, the ANN's own quantizer computed once per sample; the
        convs after them are then image-fed too (MACs once per sample), and the next activations are the first
        neurons. A QCFS neuron fed a constant current tends, as T grows, to the clip instead of the quantizer,
        and at the first layer of activations nothing averages that error out (see docs/how-it-works.md,
        "The quantized stem").
    Warns (UserWarning) when an LSQActivation was never initialised (step still the default 1.0).
    """
    if method not in ("qcfs", "qffs"):
        raise ValueError(f"method must be 'qcfs' or 'qffs', got {method!r}")
    semantics = Semantics.resolve(semantics, method)
    if drive_steps is not None and semantics != "settle":
        raise ValueError(f"drive_steps applies to semantics 'settle' only, got semantics {semantics.value!r}")
    if not 0.0 <= u0_fraction <= 1.0:
        raise ValueError(f"u0_fraction must be in [0, 1], got {u0_fraction}")
    if zmax is not None and zmax < 1:
        raise ValueError(f"zmax must be >= 1, got {zmax}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if stem == "quantized" and method != "qcfs":
        raise ValueError(
            f"stem 'quantized' applies to method 'qcfs' only (QFFS's settle semantics reproduce the quantizer), got {method!r}"
        )
    adapters = registry(quantizers)
    try:
        graph = _Tracer(adapters).trace(model)
    except Exception as err:  # fx raises many types for untraceable code
        raise ConversionError(f"cannot trace the model with torch.fx: {err}") from err
    modules = dict(model.named_modules())
    nodes: list[Node] = []
    index: dict[fx.Node, int] = {}
    origin: dict[int, fx.Node] = {}
    bits_seen: set[int | None] = set()
    levels_seen: set[int | None] = set()
    half_even: list[str] = []
    untrained: list[str] = []
    result: int | None = None
    analog: set[int] = set()  # nodes computed from the image through no activation (the stem's currents)

    def add(node: Node, src: fx.Node) -> None:
        index[src] = len(nodes)
        origin[len(nodes)] = src
        if isinstance(node, Input) or (
            not isinstance(node, (Neuron, Quantize)) and all(j in analog for j in node.inputs)
        ):
            analog.add(len(nodes))
        nodes.append(node)

    def arg(a: object, where: str) -> int:
        if not isinstance(a, fx.Node) or a not in index:
            raise ConversionError(f"{where}: expected a tensor produced by a supported layer, got {a!r}")
        return index[a]

    for src in graph.nodes:
        where = f"layer {src.target!r}" if src.op == "call_module" else f"operation {src.name!r}"
        if src.op == "placeholder":
            if any(isinstance(n, Input) for n in nodes):
                raise ConversionError(f"the model takes several inputs ({src.name!r}); dcsim supports one image input")
            add(Input(src.name, ()), src)
        elif src.op == "get_attr":
            owner = str(src.target).rpartition(".")[0]
            hint = (
                (
                    f" Layer {owner!r} ({type(modules[owner]).__name__}) is unknown to dcsim; if it is an activation, "
                    f"give an adapter: dcsim.convert(model, quantizers={{{type(modules[owner]).__name__}: fn}}) "
                    "(see dcsim.conversion.adapters)."
                )
                if owner in modules and owner
                else ""
            )
            raise ConversionError(
                f"{where}: reading a parameter in forward is not supported; supported: {SUPPORTED}.{hint}"
            )
        elif src.op == "call_module":
            mod = modules[src.target]
            name = str(src.target)
            if len(src.args) != 1 or src.kwargs:
                raise ConversionError(f"{where} ({type(mod).__name__}) must take exactly one tensor")
            x = arg(src.args[0], where)
            q = _quantization(mod, adapters, where)
            if isinstance(mod, nn.Conv2d):
                if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                    raise ConversionError(
                        f"{where} (Conv2d) uses padding {mod.padding!r}/{mod.padding_mode!r}; only numeric zero padding is supported"
                    )
                add(
                    Conv(
                        name,
                        (x,),
                        mod.weight.detach().clone(),
                        None if mod.bias is None else mod.bias.detach().clone(),
                        _pair(mod.stride),
                        _pair(mod.padding),
                        _pair(mod.dilation),
                        mod.groups,
                    ),
                    src,
                )
            elif isinstance(mod, nn.Linear):
                add(
                    Linear(
                        name, (x,), mod.weight.detach().clone(), None if mod.bias is None else mod.bias.detach().clone()
                    ),
                    src,
                )
            elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                prev = nodes[x]
                if (
                    not isinstance(prev, (Conv, Linear))
                    or len(_consumers(src.args[0], modules)) != 1
                    or len(_consumers(origin[x], modules)) != 1
                ):
                    raise ConversionError(
                        f"{where} (BatchNorm) must directly follow a conv or linear layer whose output it alone uses; "
                        f"it follows {type(prev).__name__} {prev.name!r}"
                    )
                nodes[x] = _fold_bn(prev, mod, name)
                index[src] = x
            elif q is not None:
                if q.levels is None and method == "qffs" and zmax is None:
                    raise ConversionError(
                        f"{where} ({type(mod).__name__}) is an unquantized clip: QFFS needs a spike "
                        "cap, give zmax= or use method='qcfs'"
                    )
                if isinstance(mod, LSQActivation) and not bool(mod.initialized) and float(mod.step.detach()) == 1.0:
                    untrained.append(name)
                bits_seen.add(q.bits)
                levels_seen.add(q.levels)
                th = float(torch.tensor(q.threshold, dtype=torch.float32))
                if not th > 0:
                    raise ConversionError(
                        f"{where} ({type(mod).__name__}) has a threshold {q.threshold!r} that is 0 in float32"
                    )
                if stem == "quantized" and x in analog:
                    add(_stem_quantizer(mod, q, name, x, where), src)
                    continue
                if q.rounding == "half_even":
                    half_even.append(name)
                th_u0 = float(torch.tensor(u0_fraction * th, dtype=torch.float32))
                inputs: tuple[int, ...] = (x,)
                prev = nodes[x]
                # A residual sum used only here is fused into the neuron (its inputs are summed in the kernel).
                if (
                    isinstance(prev, Add)
                    and len(prev.inputs) == 2
                    and len(_consumers(origin[x], modules)) == 1
                    and x == len(nodes) - 1
                ):
                    inputs = prev.inputs
                    nodes.pop()
                    analog.discard(x)
                add(
                    Neuron(name, inputs, threshold=th, u0=th_u0, zmax=zmax if zmax is not None else (q.levels or 1)),
                    src,
                )
            elif isinstance(mod, nn.AvgPool2d):
                if mod.divisor_override is not None:
                    raise ConversionError(f"{where} (AvgPool2d) with divisor_override is not supported")
                add(
                    AvgPool(
                        name,
                        (x,),
                        _pair(mod.kernel_size),
                        _pair(mod.stride or mod.kernel_size),
                        _pair(mod.padding),
                        mod.ceil_mode,
                        mod.count_include_pad,
                    ),
                    src,
                )
            elif isinstance(mod, nn.AdaptiveAvgPool2d):
                add(AdaptiveAvgPool(name, (x,), _pair_or_none(mod.output_size)), src)
            elif isinstance(mod, nn.Flatten):
                if mod.start_dim != 1 or mod.end_dim != -1:
                    raise ConversionError(f"{where} (Flatten) must flatten dims 1..-1")
                add(Flatten(name, (x,)), src)
            elif _is_alias(src, modules):
                index[src] = x
            elif isinstance(mod, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
                raise ConversionError(
                    f"{where} ({type(mod).__name__}) cannot be converted: max pooling has no spiking "
                    f"equivalent here; use AvgPool2d. Supported: {SUPPORTED}"
                )
            else:
                raise ConversionError(
                    f"{where} ({type(mod).__name__}) cannot be converted to a spiking layer; supported: {SUPPORTED}. "
                    "Float activations such as ReLU must be replaced by dcsim.models.lsq.LSQActivation or given thresholds with "
                    "dcsim.conversion.thresholds.clip_relus; other activation classes need an adapter: dcsim.convert(model, "
                    "quantizers={ActivationClass: fn}) (see dcsim.conversion.adapters)."
                )
        elif src.op == "call_function":
            if src.target in (operator.add, torch.add) and len(src.args) == 2 and not src.kwargs:
                a, b = arg(src.args[0], where), arg(src.args[1], where)
                add(Add(src.name, (a, b)), src)
            elif src.target is torch.flatten and src.args[1:] in ((1,), ()) and src.kwargs.get("start_dim", 1) == 1:
                add(Flatten(src.name, (arg(src.args[0], where),)), src)
            elif _is_alias(src, modules):
                index[src] = arg(src.args[0], where)
            else:
                raise ConversionError(
                    f"{where} (function {getattr(src.target, '__name__', src.target)}) is not supported; supported: {SUPPORTED}"
                )
        elif src.op == "call_method":
            if src.target == "flatten" and src.args[1:] in ((1,), ()) and not src.kwargs:
                add(Flatten(src.name, (arg(src.args[0], where),)), src)
            else:
                raise ConversionError(f"{where} (tensor method .{src.target}) is not supported; supported: {SUPPORTED}")
        elif src.op == "output":
            result = arg(src.args[0], "the model output")
    if result is None or not nodes:
        raise ConversionError("the model has no output")
    if result != len(nodes) - 1:
        raise ConversionError("the model output must be its last layer")
    last = nodes[result]
    if not isinstance(last, (Conv, Linear, AvgPool, AdaptiveAvgPool, Flatten, Add)):
        raise ConversionError(
            f"the output layer {last.name!r} is a {type(last).__name__}; it must be a full-precision conv or linear "
            "layer (the integrator), not a quantized activation"
        )
    if (
        stem == "quantized"
        and not any(isinstance(n, Neuron) for n in nodes)
        and any(isinstance(n, Quantize) for n in nodes)
    ):
        raise ConversionError(
            "with stem 'quantized' the model's only activations are its first layer's: no layer is left to spike; "
            "use stem 'spiking'"
        )
    if not any(isinstance(n, Neuron) for n in nodes):
        raise ConversionError(
            "the model has no LSQActivation layer nor any activation matched by quantizers=: nothing to "
            f"convert to spiking neurons (supported: {SUPPORTED})"
        )
    if half_even:
        warnings.warn(
            f"layers {half_even} round half to even; their IF neurons (u0 = th/2) round half up, so at exact "
            "ties x/s = k + 0.5 with k even the SNN gives one level more than the ANN (equal elsewhere)",
            RoundingWarning,
            stacklevel=2,
        )
    if untrained:
        shown = ", ".join(repr(n) for n in untrained[:5]) + (
            f" and {len(untrained) - 5} more" if len(untrained) > 5 else ""
        )
        warnings.warn(
            f"convert: LSQActivation layer(s) {shown} still have the untrained step size 1.0 (never "
            "initialised from data by a training-mode forward pass), so their thresholds are Qp * 1.0; "
            "train or calibrate the model first",
            UserWarning,
            stacklevel=2,
        )
    if semantics == "settle" and drive_steps is None:
        if len(levels_seen) != 1 or None in levels_seen:
            raise ConversionError(
                f"the model's layers have level counts Qp {sorted(map(str, levels_seen))}, not one "
                "Qp; pass drive_steps for semantics 'settle' (the steps during which the image and "
                "biases drive the network)"
            )
        drive_steps = levels_seen.pop()
    return SpikingNetwork(nodes, method, bits_seen.pop() if len(bits_seen) == 1 else None, drive_steps)
