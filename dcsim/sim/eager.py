"""A PyTorch-eager SNN simulator written the way the official Dynamic Confidence code works.

It is the reference point of the benchmarks: one sample at a time (batch 1), every layer
recomputed at every step (the input layer included), neurons as separate PyTorch ops with
their state in Python objects, and a host sync (``.item()``) after every step to decide the
exit. It produces the same spikes as the engine (the same float operations up to the order of a
bias add: exact on dyadic networks, tested); it is slow by design.
Under the "settle" semantics (QFFS) the image and the biases drive the first ``drive_steps``
steps only, as in the engine; this simulator removes them from the network's nodes instead.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .network import Conv, Input, Linear, Neuron, SpikingNetwork
from .readout import Readout


class EagerSimulator:
    """Official-style simulation of ``net``: call :meth:`run` per sample."""

    def __init__(self, net: SpikingNetwork) -> None:
        self.net = net
        settle = net.drive_steps is not None
        self.unbiased = [replace(n, bias=None) if settle and isinstance(n, (Conv, Linear)) else n for n in net.nodes]
        """Under "settle", convs and linears without their bias, which is added while the step is driven."""

    def run(self, x: torch.Tensor, steps: int, readout: Readout, threshold: float) -> tuple[int, int]:
        """Simulate one sample x float32 [1, ...]; returns (prediction, exit step)."""
        nodes = self.net.nodes
        qffs = self.net.method == "qffs"
        mem: dict[int, torch.Tensor] = {}
        count: dict[int, torch.Tensor] = {}
        total = None
        with torch.no_grad():
            for t in range(1, steps + 1):
                driven = self.net.drive_steps is None or t <= self.net.drive_steps
                vals: list[torch.Tensor] = []
                for i, node in enumerate(nodes):
                    if isinstance(node, Input):
                        vals.append(x if driven else torch.zeros_like(x))
                    elif isinstance(node, Neuron):
                        cur = vals[node.inputs[0]]
                        for j in node.inputs[1:]:
                            cur = cur + vals[j]
                        if i not in mem:
                            mem[i] = torch.full_like(cur, node.u0)
                            count[i] = torch.zeros_like(cur)
                        mem[i] = mem[i] + cur
                        if qffs:
                            spike = ((mem[i] >= node.threshold) & (count[i] < node.zmax)).float() - (
                                (mem[i] < 0) & (count[i] > 0)
                            ).float()
                            count[i] = count[i] + spike
                        else:
                            spike = (mem[i] >= node.threshold).float()
                        mem[i] = mem[i] - spike * node.threshold
                        vals.append(spike * node.threshold)
                    else:
                        v = self.unbiased[i].apply(*(vals[j] for j in node.inputs))
                        if (
                            self.unbiased[i] is not node
                            and isinstance(node, (Conv, Linear))
                            and node.bias is not None
                            and driven
                        ):
                            v = v + node.bias.reshape(1, -1, *([1] * (v.dim() - 2)))
                        vals.append(v)
                out = vals[-1]
                total = out if total is None else total + out
                conf = torch.softmax(total * readout.scale, dim=1).max()
                if conf.item() > threshold or t == steps:  # host sync every step, as the official code
                    return int(total.argmax(dim=1).item()), t
        raise AssertionError("unreachable: the loop returns at t == steps")
