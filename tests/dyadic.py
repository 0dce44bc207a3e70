"""Dyadic networks for exact tests: weights, thresholds and inputs on power-of-two grids.

PyTorch's conv/linear may round differently at different batch sizes or devices; on these
networks every float operation is exact, so equality tests the engine's logic, not the BLAS
library's.
"""

import dataclasses
from dataclasses import replace

import numpy as np
import torch

import dcsim
from dcsim import analysis
from dcsim.network import Conv, Linear, Neuron


def dyadic_network(model: torch.nn.Module, method: str, sample_shape: tuple, seed: int) -> dcsim.SpikingNetwork:
    """Convert ``model`` (after a seeded train-mode forward) and round it to power-of-two grids."""
    torch.manual_seed(seed)
    model.train()
    model(torch.randn(16, *sample_shape))
    model.eval()
    net = dcsim.convert(model, method=method)
    nodes = []
    for node in net.nodes:
        if isinstance(node, (Conv, Linear)):
            node = replace(node, weight=torch.round(node.weight * 64) / 64,
                           bias=None if node.bias is None else torch.round(node.bias * 64) / 64)
        elif isinstance(node, Neuron):
            th = max(round(node.threshold * 8) / 8, 0.125)
            node = replace(node, threshold=th, u0=th / 2)
        nodes.append(node)
    return dataclasses.replace(net, nodes=nodes)


def dyadic_inputs(n: int, sample_shape: tuple, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.round(torch.randn((n, *sample_shape), generator=g) * 16) / 16


def small(method: str, seed: int = 0):
    model = dcsim.models.small_cnn(num_classes=10, in_channels=1, width=8)
    return dyadic_network(model, method, (1, 8, 8), seed), (1, 8, 8)


def resnet(method: str, seed: int = 0):
    model = dcsim.models.resnet18(num_classes=10, in_channels=1)
    return dyadic_network(model, method, (1, 8, 8), seed), (1, 8, 8)


def trace_of(engine: dcsim.Engine, x: torch.Tensor, steps: int, readout: dcsim.Readout) -> analysis.Trace:
    sim = engine.simulate(x, steps, readout)
    labels = np.zeros(len(x), dtype=np.int64)
    return analysis.Trace(labels=labels, pred=sim.pred.numpy(), conf=sim.conf.numpy(), sums=None, meta={})
