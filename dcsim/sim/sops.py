"""Synaptic operations (SOPs) and multiply-accumulates (MACs) of a :class:`~dcsim.sim.network.SpikingNetwork`, exactly.

Definitions (all counts are integers, per sample):

- **Fan-out** of a hidden neuron: the accumulates one of its spikes triggers downstream, following its
  value through the layers without weights (average pooling, flatten, residual add) to the layers that
  take it in: a conv or linear layer adds one weight per (output, kernel tap) the neuron is connected
  to (borders, stride, padding, dilation and groups as the layer has them); a neuron or the output
  integrator reached through an identity path (a residual shortcut) adds the spike once per unit it
  reaches. A pooling passes a spike on to every pooled value whose window holds the neuron (each then
  triggers its own fan-out; the pooling's own additions carry no weight and are not counted). A value
  reaching two layers (both branches of a residual block) counts both. The fan-out map of a layer is
  the transpose of this connectivity applied to ones: :func:`fanout_map`.
- **SOPs** of a spiking layer: the sum over steps and neurons of ``|spike| * fan-out`` (QFFS negative
  spikes count as operations too). An ``Engine(net, count_ops=True)`` accumulates it in the fused
  neuron step (:attr:`dcsim.sim.state.Simulation.sops`), only over the steps each sample ran; counting
  is off by default (it costs 1-5% of a step at batch 1 on a CPU).
- **MACs** of the image-fed layers (the convs and linears that depend on the input image only, through
  :class:`~dcsim.sim.network.Quantize` layers too, the quantized stem's): dcsim
  computes their values once per sample (:func:`image_macs`); :func:`dcsim.analysis.energy.summary` also offers
  the other convention, these MACs at every step the image drives.
- **ANN MACs**: every conv and linear layer once (:func:`ann_macs`), the same network run as an ANN.

Bias additions, membrane updates and pooling additions are not counted (the conventions of
SpikingJelly's and syops' counters). A layer type not listed in :data:`COUNTED` is an error naming it,
never a silent zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .network import AdaptiveAvgPool, Add, AvgPool, Conv, Flatten, Input, Linear, Neuron, Node, Quantize, SpikingNetwork

COUNTED: tuple[type[Node], ...] = (Input, Conv, Linear, AvgPool, AdaptiveAvgPool, Flatten, Add, Neuron, Quantize)
"""Node types the counter knows (exact types: a subclass may compute something else)."""
FANOUT_MAX = 2**21 - 1
"""Largest fan-out the kernels take: the CPU kernel sums runs of 1024 outputs' fan-outs in int32
(csrc/neuron_step.cpp, kSopsRun), so 1024 * FANOUT_MAX < 2^31 (a 3x3 conv to 2048 channels: 18,432)."""


def check_counted(net: SpikingNetwork) -> None:
    """Raise ValueError naming the first layer whose type the counter does not know, or whose operations are
    neither synaptic operations nor once-per-sample MACs (a weighted layer fed both by spikes and, through
    layers without weights, by the image)."""
    static = net.static_nodes()
    mixes_image: set[int] = set()  # dynamic nodes that carry an image-fed value without a neuron in between
    for i, node in enumerate(net.nodes):
        if type(node) not in COUNTED:
            raise ValueError(
                f"the operation counter does not know layer {i} {node.name!r} of type {type(node).__name__} "
                f"(it counts {', '.join(t.__name__ for t in COUNTED)})"
            )
        if i in static or isinstance(node, Neuron):
            continue
        if any(j in static or j in mixes_image for j in node.inputs):
            if isinstance(node, (Conv, Linear)):
                raise ValueError(
                    f"layer {i} {node.name!r} ({type(node).__name__}) takes both spikes and an image-fed value: "
                    "its operations are neither synaptic operations nor once-per-sample MACs, which the counter does not count"
                )
            mixes_image.add(i)


def layer_macs(net: SpikingNetwork, sample_shape: tuple[int, ...]) -> dict[int, int]:
    """MACs per sample of each conv and linear layer (node index -> count) for inputs of per-sample shape
    ``sample_shape``: output elements x (input channels per group x kernel taps) for a conv, output x
    input features for a linear layer."""
    check_counted(net)
    shapes = net.shapes(sample_shape)
    macs: dict[int, int] = {}
    for i, node in enumerate(net.nodes):
        if isinstance(node, (Conv, Linear)):
            macs[i] = math.prod(shapes[i]) * math.prod(node.weight.shape[1:])
    return macs


def image_macs(net: SpikingNetwork, sample_shape: tuple[int, ...]) -> dict[int, int]:
    """MACs per evaluation of the image-fed (static) conv and linear layers: node index -> count."""
    static = net.static_nodes()
    return {i: m for i, m in layer_macs(net, sample_shape).items() if i in static}


def ann_macs(net: SpikingNetwork, sample_shape: tuple[int, ...]) -> int:
    """MACs per sample of the network run once as an ANN: every conv and linear layer."""
    return sum(layer_macs(net, sample_shape).values())


def _adaptive_sum(x: torch.Tensor, output_size: tuple[int | None, int | None]) -> torch.Tensor:
    """Sums (not means) over adaptive average pooling's regions of x float64 [1, C, H, W]."""
    h, w = x.shape[-2:]
    oh, ow = output_size[0] or h, output_size[1] or w

    def sizes(n: int, o: int) -> torch.Tensor:  # region lengths: [floor(i n / o), ceil((i + 1) n / o))
        return torch.tensor([-((-(i + 1) * n) // o) - (i * n) // o for i in range(o)], dtype=x.dtype)

    return F.adaptive_avg_pool2d(x, (oh, ow)) * (sizes(h, oh)[:, None] * sizes(w, ow)[None, :])


def connectivity(node: Node, *xs: torch.Tensor) -> torch.Tensor:
    """``node`` applied to float64 values with every weight 1 and no bias, and pooling as sums: the number
    of paths from each input unit to each output unit (for :func:`fanout_map` and brute-force counts)."""
    if isinstance(node, Conv):
        ones = torch.ones(node.weight.shape, dtype=xs[0].dtype)
        return F.conv2d(xs[0], ones, None, node.stride, node.padding, node.dilation, node.groups)
    if isinstance(node, Linear):
        return F.linear(xs[0], torch.ones(node.weight.shape, dtype=xs[0].dtype))
    if isinstance(node, AvgPool):
        return F.avg_pool2d(
            xs[0], node.kernel, node.stride, node.padding, node.ceil_mode, node.count_include_pad, divisor_override=1
        )
    if isinstance(node, AdaptiveAvgPool):
        return _adaptive_sum(xs[0], node.output_size)
    if isinstance(node, (Flatten, Add)):
        return node.apply(*xs)
    raise ValueError(f"the operation counter has no connectivity for layer {node.name!r} of type {type(node).__name__}")


def fanout_map(net: SpikingNetwork, layer: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Fan-out of every neuron of the spiking layer ``layer`` (a node index), int64 [*shape] (its per-sample shape).

    Computed once per layer as the gradient of the total downstream connectivity (:func:`connectivity`)
    with respect to the layer's units, in float64 on the CPU (exact for counts below 2^53, checked).
    """
    check_counted(net)
    nodes = net.nodes
    if not 0 <= layer < len(nodes) or not isinstance(nodes[layer], Neuron):
        raise ValueError(f"layer {layer} is not a spiking (Neuron) layer of the network")
    x = torch.ones((1, *shape), dtype=torch.float64, requires_grad=True)
    values: dict[int, torch.Tensor] = {layer: x}
    total = x.new_zeros(())
    with torch.enable_grad():
        for j in range(layer + 1, len(nodes)):
            node = nodes[j]
            reached = [k for k in node.inputs if k in values]
            if not reached:
                continue
            ref = values[reached[0]]
            args = [values[k] if k in values else torch.zeros_like(ref) for k in node.inputs]
            if isinstance(node, Neuron):  # an identity synapse per unit reached (a residual shortcut)
                total = total + sum(a.sum() for a in args)
                continue
            value = connectivity(node, *args)
            if isinstance(node, (Conv, Linear)) or j == net.output:  # weights, or the output integrator
                total = total + value.sum()
            else:
                values[j] = value
    if not total.requires_grad:  # the layer feeds nothing
        return torch.zeros(shape, dtype=torch.int64)
    (grad,) = torch.autograd.grad(total, x)
    fan = grad[0].round()
    if bool((fan - grad[0]).abs().max() > 1e-6) or float(fan.max()) > FANOUT_MAX:
        raise ValueError(f"the fan-out of layer {nodes[layer].name!r} is not an integer below 2^21: {float(fan.max())}")
    return fan.to(torch.int64)


def fanout_maps(net: SpikingNetwork, sample_shape: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Fan-out maps (int64 [C, H, W] or [features]) of every spiking layer, by node index, for inputs of
    per-sample shape ``sample_shape``."""
    shapes = net.shapes(sample_shape)
    return {i: fanout_map(net, i, shapes[i]) for i in net.neurons}


def consumers(net: SpikingNetwork, layer: int) -> list[str]:
    """Names of the layers whose operations the spikes of ``layer`` trigger (weighted layers, neurons and the
    output reached through layers without weights), in network order."""
    reached, names = {layer}, []
    for j in range(layer + 1, len(net.nodes)):
        node = net.nodes[j]
        if any(k in reached for k in node.inputs):
            if isinstance(node, (Conv, Linear, Neuron)) or j == net.output:
                names.append(node.name)
            else:
                reached.add(j)
    return names
