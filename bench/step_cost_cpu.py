"""What early exit can save at a batch size: the cost of each step index, and the bound it sets on the
wall-clock saving over the step saving (docs/results/table2-cpu.md).

    python bench/step_cost_cpu.py zoo/cifar10-whitened-cnn96-analog-2bit-48k-clipmix50 \\
        --data-root cifar10-jpeg.tar.gz --methods qffs --batches 32

For each zoo network, method and batch size, on the first ``batch`` test images, full runs at T = 1 .. T
(no exit) and the run with DC at th_c (bench/zoo_setup.py) are interleaved round by round in this
process; step t's cost is the median time at T = t minus the median at T = t - 1 (step 1 also holds the
static layers and setup). The rows still running at each step under DC give the **bound**: the DC time
if every step cost in proportion to its running rows, and so the wall-clock over step saving that
perfect compaction would reach. The measured ratio falls short of the bound by what compaction and
small batches of stragglers cost.
"""

from __future__ import annotations

import statistics

import torch
from zoo_setup import arguments, early_exit_run, load_cases, machine

from dcsim.sim.engine import Engine
from dcsim.workflows.benchmark import interleaved


def main() -> None:
    p = arguments(__doc__ or "", batches=[32], rounds=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; {args.rounds} interleaved rounds")
    for case in load_cases(args.folders, 512, 1000, args.cache, args.data_root, args.methods, args.qcfs_stem):
        engine = Engine(case.net)
        for batch in args.batches:
            x = case.x[:batch]
            fns = {str(t): early_exit_run(engine, case, x, batch, 1.0, steps=t) for t in range(1, case.steps + 1)}
            fns["dc"] = early_exit_run(engine, case, x, batch, case.threshold)
            exit_step = fns["dc"]().exit_step
            times = interleaved(fns, torch.device("cpu"), args.rounds)
            ms = {k: 1000 * statistics.median(v["wall"]) / batch for k, v in times.items()}
            cost = [ms["1"]] + [ms[str(t)] - ms[str(t - 1)] for t in range(2, case.steps + 1)]
            alive = [int((exit_step >= t).sum()) for t in range(1, case.steps + 1)]
            bound_ms = sum(c * a / batch for c, a in zip(cost, alive, strict=True))
            no_dc = ms[str(case.steps)]
            step_saving = 1 - float(exit_step.float().mean()) / case.steps
            print(
                f"{case.name} {case.method} T={case.steps} batch {batch}: ms/inf per step "
                + " / ".join(f"{c:.3f}" for c in cost)
                + f"; rows running per step {alive}; no DC {no_dc:.3f} ms/inf, DC {ms['dc']:.3f}, bound {bound_ms:.3f}; "
                f"step saving {100 * step_saving:.1f}%; wall / step saving: measured {(1 - ms['dc'] / no_dc) / step_saving:.2f}, "
                f"bound {(1 - bound_ms / no_dc) / step_saving:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
