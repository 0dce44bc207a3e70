"""Dense against event-driven (spike) convs on this CPU, per layer shape of the zoo networks, against the
fraction of inputs that spiked (docs/results/spike-convs-crossover.md).

    python bench/spike_conv_crossover.py zoo/cifar10-resnet18w16-2bit zoo/cifar10-small-cnn-2bit --batches 1 32

For every conv fed by a spike layer (the convs ``Engine(spike_convs=True)`` runs event-driven) it
times, on random spike maps (0 or th, each input spiking with probability p), PyTorch's dense conv
in the dense engine's layout (contiguous) and in channels_last, and :func:`dcsim.sim.ops.spike_conv2d`;
CPU seconds of the calling thread (``time.thread_time``, one thread), medians over --rounds
interleaved rounds. The crossover is the largest p at which the spike conv is still faster than the
faster dense conv (linear interpolation between the measured p).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from itertools import pairwise

import torch
import torch.nn.functional as F
from zoo_setup import arguments, machine, table_row

from dcsim.conversion.convert import convert
from dcsim.io import zoo
from dcsim.models import build_model
from dcsim.sim import ops
from dcsim.sim.engine import Engine
from dcsim.sim.network import Conv, Neuron

RATES = [0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5]


def spike_conv_shapes(folder: str) -> list[tuple[int, int, int, Conv]]:
    """(Cin, H, W, conv node) of each distinct conv fed by a spike layer in the zoo network at ``folder``."""
    model, _ = zoo.load(folder, build_model)
    net = convert(model.eval(), method="qcfs")
    shapes = Engine(net).shapes((3, 32, 32))
    seen, out = set(), []
    for node in net.nodes:
        if isinstance(node, Conv) and len(node.inputs) == 1 and isinstance(net.nodes[node.inputs[0]], Neuron):
            c, h, w = shapes[node.inputs[0]]
            key = (c, h, w, tuple(node.weight.shape), node.stride, node.padding)
            if key not in seen:
                seen.add(key)
                out.append((c, h, w, node))
    return out


def cpu_seconds(fn: Callable[[], object]) -> float:
    t0 = time.thread_time()
    fn()
    return time.thread_time() - t0


def main() -> None:
    args = arguments(__doc__ or "", batches=[1, 32], rounds=5, cases=False).parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    print(
        "| network | conv (Cin x H x W -> Cout, k, stride) | batch | dense ms | dense channels_last ms | "
        + " | ".join(f"spike p={r}" for r in RATES)
        + " | crossover p |"
    )
    print("|---" * (6 + len(RATES)) + "|")
    g = torch.Generator().manual_seed(0)
    for folder in args.folders:
        for c, h, w, node in spike_conv_shapes(folder):
            weight, bias = node.weight.float(), None if node.bias is None else node.bias.float()
            packed = ops.pack_spike_conv_weight(weight)
            weight_cl = weight.contiguous(memory_format=torch.channels_last)
            for batch in args.batches:
                maps = {r: (torch.rand(batch, c, h, w, generator=g) < r).float() for r in RATES}
                maps_cl = {r: m.contiguous(memory_format=torch.channels_last) for r, m in maps.items()}
                fns: dict[str, Callable[[], object]] = {  # partial: the arguments of this iteration, bound now
                    "dense": partial(F.conv2d, maps[0.1], weight, bias, node.stride, node.padding),
                    "dense_cl": partial(F.conv2d, maps_cl[0.1], weight_cl, bias, node.stride, node.padding),
                }
                for r in RATES:
                    fns[f"spike {r}"] = partial(ops.spike_conv2d, maps_cl[r], packed, bias, node.stride, node.padding)
                for fn in fns.values():
                    fn()
                times: dict[str, list[float]] = {k: [] for k in fns}
                for _ in range(args.rounds):
                    for k, fn in fns.items():
                        times[k].append(cpu_seconds(fn))
                med = {k: 1000 * statistics.median(v) for k, v in times.items()}
                dense = min(med["dense"], med["dense_cl"])
                spike = [med[f"spike {r}"] for r in RATES]
                cross = crossover(RATES, spike, dense)
                cout, _, kh, _ = weight.shape
                conv = f"{c}x{h}x{w} -> {cout}, {kh}x{kh}, {node.stride[0]}"
                times_ms = [f"{t:.3f}" for t in (med["dense"], med["dense_cl"], *spike)]
                print(table_row(folder.rstrip("/").split("/")[-1], conv, batch, *times_ms, cross), flush=True)


def crossover(rates: list[float], spike_ms: list[float], dense_ms: float) -> str:
    """The firing rate at which the spike conv's time reaches the dense conv's ("< r0" / "> r_last" outside)."""
    if spike_ms[0] >= dense_ms:
        return f"< {rates[0]}"
    for (r0, s0), (r1, s1) in pairwise(zip(rates, spike_ms, strict=True)):
        if s1 >= dense_ms:
            return f"{r0 + (r1 - r0) * (dense_ms - s0) / (s1 - s0):.3f}"
    return f"> {rates[-1]}"


if __name__ == "__main__":
    main()
