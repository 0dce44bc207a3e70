"""What the conv library allows at batch 1: DC's wall-clock over step saving if a call of k steps cost its convs and
nothing per call besides (docs/results/table2-cpu.md).

    python bench/batch1_bound_cpu.py zoo/cifar10-resnet18w16-2bit zoo/cifar10-small-cnn-2bit \\
        --data-root cifar10-jpeg.tar.gz --images 64

For each zoo network and method (th_c as bench/table2_cpu.py selects it, the same cache): the exit steps of DC
on --images test images, one per batch; the engine's call times c(k) (its plan's medians, dcsim.sim.chunking,
after a run of the same images without DC and with DC); and the time of every conv after the image-fed layers at
k rows (k = 1 .. T, the engine's own call ``Engine._conv``: oneDNN, row floors), on spike-like inputs (0 or 1,
17% ones: a trained network's rate; oneDNN's time does not depend on the values), medians over --rounds rounds
with the k interleaved. The rest of a call, c(k) minus its convs, is split into a part per step (the slope between k = 1
and T) and a part per call. From each cost curve, the plan's expected time per sample (V(0), the DP of
dcsim.sim.chunking) with DC's exits and with every sample running to T, and their saving over the step saving:
the ratio the plan reaches with the engine's calls (``calls``) and with calls that cost only their convs and the
per-step rest (``no per-call rest``: no Python, launch or allocation cost per call). The latter is what an engine
with nothing per call but its convs would reach on this machine with this conv library; per-sample work (the
image-fed layers, set-up) lowers both.
"""

from __future__ import annotations

import statistics
import time

import torch
from zoo_setup import arguments, load_cases, machine

from dcsim.sim.chunking import ChunkPlanner
from dcsim.sim.engine import Engine
from dcsim.sim.network import Conv

FIRING = 0.17
"""Share of ones in the timed spike inputs (a trained network's firing rate per step)."""


def conv_costs(engine: Engine, sample_shape: tuple[int, ...], steps: int, rounds: int) -> list[float]:
    """Seconds of the convs after the image-fed layers in a call of k = 1 .. steps rows (index k - 1), medians over
    ``rounds`` rounds in which every k runs once."""
    shapes = engine.shapes(sample_shape)
    nodes = engine.net.nodes
    convs = [i for i in engine._dynamic if isinstance(nodes[i], Conv)]
    gen = torch.Generator().manual_seed(0)
    inputs = {
        (i, k): (torch.rand((k, *shapes[nodes[i].inputs[0]]), generator=gen) < FIRING).float()
        for i in convs
        for k in range(1, steps + 1)
    }
    times: dict[int, list[float]] = {k: [] for k in range(1, steps + 1)}
    with torch.no_grad():
        for r in range(rounds + 1):  # round 0: warm-up (each shape's first call sets up its kernel)
            for k in range(1, steps + 1):
                t0 = time.perf_counter()
                for i in convs:  # as Engine.advance calls them (a settle network's dynamic convs without bias)
                    engine._conv(i, engine._unbiased.get(i, nodes[i]), inputs[(i, k)])
                if r:
                    times[k].append(time.perf_counter() - t0)
    return [statistics.median(times[k]) for k in range(1, steps + 1)]


def ratio(exits: list[int], cost: list[float], step_saving: float) -> tuple[float, float, float]:
    """(V(0) with DC's exits, V(0) with every sample at T, their saving over the step saving) for call costs
    ``cost`` [T] (seconds, index k - 1)."""
    steps = len(exits)
    dc = ChunkPlanner.solve(exits, cost)[0][0]
    no_dc = ChunkPlanner.solve([0] * (steps - 1) + [sum(exits)], cost)[0][0]
    return dc, no_dc, (1 - dc / no_dc) / step_saving


def main() -> None:
    p = arguments(__doc__ or "", batches=[1], rounds=5)
    p.add_argument("--images", type=int, default=64, help="test images whose exits count, one per batch")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    print(
        "| network | method | step saving | c(1) / c(T) ms, calls | their convs | rest per call ms | ratio, calls | "
        "ratio, no per-call rest |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case in load_cases(args.folders, 512, 1000, args.cache, args.data_root, args.methods, args.qcfs_stem):
        x = case.x[: args.images]
        engine = Engine(case.net)
        for _ in range(2):  # the engine's plan times its calls: without DC (T-step calls) and with DC
            engine.early_exit(x, case.steps, case.readout, 1.0, batch_size=1)
            result = engine.early_exit(x, case.steps, case.readout, case.threshold, batch_size=1)
        exits = [int((result.exit_step == t).sum()) for t in range(1, case.steps + 1)]
        saving = 1 - float(result.exit_step.float().mean()) / case.steps
        calls = engine.chunk_planner.costs(case.steps)
        convs = conv_costs(engine, tuple(x.shape[1:]), case.steps, args.rounds)
        per_step = max(0.0, ((calls[-1] - convs[-1]) - (calls[0] - convs[0])) / max(case.steps - 1, 1))
        ideal = [c + k * per_step for k, c in enumerate(convs, start=1)]
        print(
            f"| {case.name} | {case.method} T={case.steps} | {100 * saving:.1f}% | "
            f"{1e3 * calls[0]:.3f} / {1e3 * calls[-1]:.3f} | {1e3 * convs[0]:.3f} / {1e3 * convs[-1]:.3f} | "
            f"{1e3 * (calls[0] - convs[0] - per_step):.3f} | {ratio(exits, calls, saving)[2]:.2f} | "
            f"{ratio(exits, ideal, saving)[2]:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
