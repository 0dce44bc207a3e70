"""A PyTorch-eager SNN simulator written the way the official Dynamic Confidence code works.

It is the reference point of the benchmarks: one sample at a time (batch 1), every layer
recomputed at every step (the input layer included), neurons as separate PyTorch ops with
their state in Python objects, and a host sync (``.item()``) after every step to decide the
exit. It produces the same spikes as the engine (same float operations); it is slow by design.
"""

from __future__ import annotations

import torch

from .network import Input, Neuron, SpikingNetwork
from .readout import Readout


class EagerSimulator:
    """Official-style simulation of ``net``: call :meth:`run` per sample."""

    def __init__(self, net: SpikingNetwork) -> None:
        self.net = net

    def run(self, x: torch.Tensor, steps: int, readout: Readout, threshold: float) -> tuple[int, int]:
        """Simulate one sample x float32 [1, ...]; returns (prediction, exit step)."""
        nodes = self.net.nodes
        qffs = self.net.method == "qffs"
        mem: dict[int, torch.Tensor] = {}
        count: dict[int, torch.Tensor] = {}
        total = None
        with torch.no_grad():
            for t in range(1, steps + 1):
                vals: list[torch.Tensor] = []
                for i, node in enumerate(nodes):
                    if isinstance(node, Input):
                        vals.append(x)
                    elif isinstance(node, Neuron):
                        cur = vals[node.inputs[0]]
                        for j in node.inputs[1:]:
                            cur = cur + vals[j]
                        if i not in mem:
                            mem[i] = torch.full_like(cur, node.u0)
                            count[i] = torch.zeros_like(cur)
                        mem[i] = mem[i] + cur
                        if qffs:
                            spike = ((mem[i] >= node.threshold) & (count[i] < node.zmax)).float() \
                                - ((mem[i] < 0) & (count[i] > 0)).float()
                            count[i] = count[i] + spike
                        else:
                            spike = (mem[i] >= node.threshold).float()
                        mem[i] = mem[i] - spike * node.threshold
                        vals.append(spike * node.threshold)
                    else:
                        vals.append(node.apply(*(vals[j] for j in node.inputs)))
                out = vals[-1]
                total = out if total is None else total + out
                conf = torch.softmax(total * readout.scale, dim=1).max()
                if conf.item() > threshold or t == steps:  # host sync every step, as the official code
                    return int(total.argmax(dim=1).item()), t
        raise AssertionError("unreachable: the loop returns at t == steps")
