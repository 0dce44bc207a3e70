"""Cost of counting synaptic operations (dcsim.sim.sops): counting on vs off, interleaved in one process.

Run: pytest bench/bench_sops.py -o python_files='bench_*.py' --benchmark-only -s
Each round times the same work with counting off and on, alternating which goes first, so that load
from other processes falls on both; the ratio on / off is taken per round and its median over
ROUNDS rounds (with min and max) stored in extra_info and printed. Two levels: a whole engine step of
a zoo model (convs, neuron steps, output step), and the fused neuron step alone (the only code that
counting changes: one multiply-add per neuron).
"""

import statistics
import time
from pathlib import Path

import pytest
import torch

import dcsim
from dcsim.io import zoo
from dcsim.sim import ops
from dcsim.sim.readout import Readout

ROUNDS = 21
ZOO = Path(__file__).resolve().parent.parent / "zoo"


def _interleaved(off, on, repeats: int) -> dict:
    """Median, min and max over ROUNDS of time(on) / time(off), each timed over ``repeats`` calls."""
    off(), on()  # warm-up
    ratios, times = [], {"off": [], "on": []}
    for r in range(ROUNDS):
        pair = [("off", off), ("on", on)] if r % 2 == 0 else [("on", on), ("off", off)]
        got = {}
        for name, fn in pair:
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            got[name] = (time.perf_counter() - t0) / repeats
            times[name].append(got[name])
        ratios.append(got["on"] / got["off"])
    return {
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ms_off_median": 1e3 * statistics.median(times["off"]),
        "ms_on_median": 1e3 * statistics.median(times["on"]),
        "rounds": ROUNDS,
    }


@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.parametrize("name", ["cifar10-small-cnn-2bit", "cifar10-resnet18w16-2bit"])
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_engine_step_cost(benchmark, name, method, batch):
    model, _ = zoo.load(ZOO / name)
    net = dcsim.convert(model.eval(), method=method)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    readout = Readout()
    engines = {"off": dcsim.Engine(net), "on": dcsim.Engine(net, count_ops=True)}
    states = {k: e.start(x) for k, e in engines.items()}

    def step(k: str):
        return lambda: engines[k].step(states[k], 1 << 30, readout)

    stats = _interleaved(step("off"), step("on"), repeats=100 if batch == 1 else 10)
    benchmark.group = f"engine step {name} {method}"
    benchmark.extra_info.update(stats)
    benchmark.pedantic(step("on"), rounds=5, iterations=1)
    print(f"\n{name} {method} batch {batch}: step on/off {stats}")


@pytest.mark.parametrize("n,m", [(1, 65536), (32, 65536)])
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_neuron_step_cost(benchmark, method, n, m):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, m, generator=g) * 0.3
    u = torch.rand(n, m, generator=g)
    z = torch.randint(0, 3, (n, m), generator=g, dtype=torch.int32) if method == "qffs" else None
    out, counts, sops = torch.empty(n, m), torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64)
    fanout = torch.randint(0, 4608, (1, m), generator=g, dtype=torch.int32)

    def off():
        ops.neuron_step(method, x, u, z, out, counts, 1.0, 3)

    def on():
        ops.neuron_step(method, x, u, z, out, counts, 1.0, 3, fanout=fanout, sops=sops)

    stats = _interleaved(off, on, repeats=200 if n == 1 else 20)
    benchmark.group = f"neuron_step counting {method}"
    benchmark.extra_info.update(stats)
    benchmark.pedantic(on, rounds=20, iterations=1)
    print(f"\nneuron_step {method} {n}x{m}: on/off {stats}")
