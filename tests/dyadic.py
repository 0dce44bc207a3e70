"""Dyadic networks for exact tests: weights, thresholds and inputs on power-of-two grids.

PyTorch's conv/linear may round differently at different batch sizes or devices; on these
networks every float operation is exact, so equality tests the engine's logic, not the BLAS
library's.
"""

import copy
import dataclasses
import functools
from dataclasses import replace

import numpy as np
import torch

import dcsim
from dcsim import analysis
from dcsim.sim.network import Conv, Linear, Neuron, Quantize


def dyadic_network(
    model: torch.nn.Module, method: str, sample_shape: tuple, seed: int, stem: str = "spiking"
) -> dcsim.SpikingNetwork:
    """Convert ``model`` (after a seeded train-mode forward, with ``stem``) and round it to power-of-two grids.

    Weights and biases are rounded to multiples of 1/64 and thresholds to multiples of 1/8; then
    every layer is made to spike: a layer firing in under MIN_RATE of its neuron-steps on dyadic
    inputs has its threshold halved (still a power-of-two multiple), layer by layer from the input,
    so that the exact tests below exercise every layer and not only the first ones.
    """
    from dcsim.models.lsq import LSQActivation

    torch.manual_seed(seed)
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: sizes.append(out[0].numel()))
        for m in model.modules()
        if isinstance(m, LSQActivation)
    ]
    model.train()
    model(torch.randn(16, *sample_shape))
    for h in hooks:
        h.remove()
    model.eval()
    net = dcsim.convert(model, method=method, stem=stem)
    nodes = []
    for node in net.nodes:
        if isinstance(node, (Conv, Linear)):
            node = replace(
                node,
                weight=torch.round(node.weight * 64) / 64,
                bias=None if node.bias is None else torch.round(node.bias * 64) / 64,
            )
        elif isinstance(node, Neuron):
            th = max(round(node.threshold * 8) / 8, 0.125)
            node = replace(node, threshold=th, u0=th / 2)
        elif isinstance(node, Quantize):
            node = replace(node, step=torch.clamp(torch.round(node.step * 64) / 64, min=1 / 64))
        nodes.append(node)
    spiking = [isinstance(n, Neuron) for n in net.nodes if isinstance(n, (Neuron, Quantize))]
    sizes = [size for size, spikes in zip(sizes, spiking, strict=True) if spikes]  # the neurons' sizes
    return _balanced(dataclasses.replace(net, nodes=nodes), sizes, sample_shape, seed)


MIN_RATE = 0.02
"""Least fraction of a layer's neuron-steps that spike in a balanced dyadic network."""


def _balanced(net: dcsim.SpikingNetwork, sizes: list[int], sample_shape: tuple, seed: int) -> dcsim.SpikingNetwork:
    neurons = [i for i, node in enumerate(net.nodes) if isinstance(node, Neuron)]
    if len(sizes) != len(neurons):
        raise AssertionError(f"{len(neurons)} neuron layers but {len(sizes)} LSQ activations")
    steps = 8
    x = dyadic_inputs(16, sample_shape, seed + 1000)
    readout = dcsim.Readout("max_softmax", 1.0, 1.0)
    for layer, i in enumerate(neurons):
        for _ in range(6):
            spikes = dcsim.Engine(net).simulate(x, steps, readout).spikes.double().mean(0)
            if spikes[layer] >= MIN_RATE * sizes[layer] * steps or net.nodes[i].threshold <= 1 / 64:
                break
            nodes = list(net.nodes)
            th = nodes[i].threshold / 2
            nodes[i] = replace(nodes[i], threshold=th, u0=th / 2)
            net = dataclasses.replace(net, nodes=nodes)
    return net


def dyadic_inputs(n: int, sample_shape: tuple, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.round(torch.randn((n, *sample_shape), generator=g) * 16) / 16


def small(method: str, seed: int = 0):
    model = dcsim.models.small_cnn(num_classes=10, in_channels=1, width=8)
    return dyadic_network(model, method, (1, 8, 8), seed), (1, 8, 8)


def resnet(method: str, seed: int = 0):
    """A full-width dyadic ResNet-18 on 1x8x8 inputs (a copy: tests may change it)."""
    return copy.deepcopy(_resnet(method, seed)), (1, 8, 8)


@functools.cache
def _resnet(method: str, seed: int) -> dcsim.SpikingNetwork:
    # built once per process: balancing its 17 neuron layers takes up to ~100 simulations
    # (seconds here, about 20 s in the sanitized build), so the tests share seed 3
    model = dcsim.models.resnet18(num_classes=10, in_channels=1)
    return dyadic_network(model, method, (1, 8, 8), seed)


def trace_of(engine: dcsim.Engine, x: torch.Tensor, steps: int, readout: dcsim.Readout) -> analysis.Trace:
    sim = engine.simulate(x, steps, readout)
    labels = np.zeros(len(x), dtype=np.int64)
    return analysis.Trace(labels=labels, pred=sim.pred.numpy(), conf=sim.conf.numpy(), sums=None, meta={})
