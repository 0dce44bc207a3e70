"""Steps per call at batch 1 on the CPU: chunk 1, the plan (``chunk=None``, dcsim.sim.chunking) and all T steps in
one call, each without DC (threshold 1) and with DC (th_c), on trained zoo networks (docs/results/table2-cpu.md).

    python bench/chunk_plan_cpu.py zoo/cifar10-resnet18w16-2bit --data-root cifar10-jpeg.tar.gz --images 16

th_c as in bench/table2_cpu.py (the same cache). The six runs are interleaved round by round in one process, on the same test images, one sample per batch.
Per run: the median wall ms per inference; per DC run: the wall-clock saving (paired by round, median with min
and max over the rounds) divided by the step saving, against no DC at the same chunk and against no DC at its
fastest chunk. Every run's results are checked equal (exits are decided per step, whatever the chunk). The plan's
chunk for each step and its measured call costs are printed at the end.
"""

from __future__ import annotations

import functools
import statistics

import torch
from zoo_setup import arguments, load_cases, machine

from dcsim.sim.engine import Engine
from dcsim.workflows.benchmark import interleaved, paired_saving


def main() -> None:
    p = arguments(__doc__ or "", batches=[1], rounds=5)
    p.add_argument("--images", type=int, default=16, help="test images timed per call, one per batch")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    for case in load_cases(
        args.folders, 512, 1000, args.cache, args.data_root, args.methods, args.qcfs_stem
    ):  # as table2_cpu.py
        case.x = case.x[: args.images]
        engine = Engine(case.net)
        chunks = {"1": 1, "auto": None, "T": case.steps}
        runs = {}
        for name, chunk in chunks.items():
            for mode, threshold in (("no DC", 1.0), ("DC", case.threshold)):
                runs[(name, mode)] = functools.partial(
                    engine.early_exit, case.x, case.steps, case.readout, threshold, batch_size=1, chunk=chunk
                )
        results = {key: run() for key, run in runs.items()}
        first = results[("1", "DC")]
        for key, res in results.items():
            if key[1] == "DC":
                for f in ("pred", "exit_step", "conf", "spikes"):
                    assert torch.equal(getattr(res, f), getattr(first, f)), (key, f)
        saving = 1 - float(first.exit_step.float().mean()) / case.steps
        times = interleaved(runs, engine.device, args.rounds)
        ms = {key: 1000 * statistics.median(t["wall"]) / len(case.x) for key, t in times.items()}
        best = min(chunks, key=lambda c: ms[(c, "no DC")])
        print(f"\n{case.name} {case.method} T={case.steps} th_c={case.threshold:.4g}, batch 1, {len(case.x)} images, "
              f"{args.rounds} rounds: {100 * saving:.1f}% fewer steps; no DC fastest at chunk {best}")  # fmt: skip
        print("| chunk | no DC ms | DC ms | ratio vs no DC, same chunk | ratio vs no DC at its fastest |")
        print("|---|---|---|---|---|")
        for name in chunks:
            same = paired_saving(times[(name, "DC")]["wall"], times[(name, "no DC")]["wall"])
            fast = paired_saving(times[(name, "DC")]["wall"], times[(best, "no DC")]["wall"])
            print(f"| {name} | {ms[(name, 'no DC')]:.2f} | {ms[(name, 'DC')]:.2f} | "
                  f"{same['median'] / saving:.2f} [{same['min'] / saving:.2f}-{same['max'] / saving:.2f}] | "
                  f"{fast['median'] / saving:.2f} [{fast['min'] / saving:.2f}-{fast['max'] / saving:.2f}] |")  # fmt: skip
        key = (case.steps, case.readout, case.threshold)
        print("plan (DC, chunk per step run so far):", engine.chunk_planner.plan_for(key))
        print("call ms:", {k: round(1000 * engine.chunk_planner.call_seconds(k), 2) for k in (1, 2, 4, 8, 16, case.steps)
                           if k <= case.steps})  # fmt: skip


if __name__ == "__main__":
    main()
