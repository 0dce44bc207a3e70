"""Table 2 on the CPU: seconds per inference with and without Dynamic Confidence on the trained zoo networks
(docs/results/table2-cpu.md).

    python bench/table2_cpu.py zoo/cifar10-resnet18w16-2bit zoo/cifar10-small-cnn-2bit \\
        --data-root cifar10-jpeg.tar.gz --batches 1 32 256

For each network, method (QCFS T=27, QFFS T=4 "settle") and batch size, three runs of
``Engine.early_exit`` on the same CIFAR-10 test images are interleaved round by round in this process
(after a warm-up call each): no DC (threshold 1), DC as before this change (``compact_fraction=0``:
a gather at every exit) and DC now (the default: the measured cost model, in-place compaction). th_c
is selected as ``dcsim report`` selects it (bench/zoo_setup.py). Reported per row: median wall and
process-CPU ms per inference with min and max over the rounds (``unstable`` where the wall spread
exceeds 10%), the step saving, the spike saving (the share of the spikes DC leaves out: what event-driven
convs, whose time follows the spikes, can save), the wall-clock and CPU savings, and their ratios to the step
saving (and the wall-clock saving's to the spike saving).
``--ideal`` also times, in the same rounds, the no-DC run cut at each step below T at which some sample
stops, and reports the saving of an ideal DC (``dcsim.workflows.benchmark.ideal_saving``: each sample runs
exactly its steps at the no-DC run's cost per step and sample) over the step saving (the most any DC reaches
on these step costs: under QFFS the late steps cost less than the first) and DC's saving over it.
The wall-clock saving is paired by round (``paired_saving``: the median over the rounds of each round's
saving, min and max beside it); the JSON keeps every round's wall times.
``--batches-per-call K`` times K batches per call at batch sizes above 1 (default 1), which steadies short calls.
``--processes P`` (default 1) runs the whole measurement in P fresh worker processes, one after another,
and reports per row the median of the P wall ratios with their min and max, flagged ``unstable`` where
they spread more than 10%: on this project's 2-core CPU a process keeps its own speed ratio between DC
and no DC, which more rounds in one process do not average out (docs/results/table2-cpu.md).
The CPU figures do not count the time other processes hold the cores, so on a shared machine they
are the stable ones. Results of the three runs are checked equal where they must be (both DC runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from zoo_setup import Case, arguments, early_exit_run, load_cases, machine

from dcsim.sim.engine import Engine
from dcsim.workflows.benchmark import cut_steps, ideal_savings, interleaved, paired_saving, spike_saving, spread
from dcsim.workflows.processes import in_fresh_processes, over_processes

TEST_IMAGES = 512
"""CIFAR-10 test images loaded per case; a timed call runs at most this many."""


def unstable(row: dict, key: str) -> str:
    """' unstable' where the run ``key`` of ``row`` spread more than 10% over the rounds."""
    return " unstable" if row["unstable"][key] else ""


def parser() -> argparse.ArgumentParser:
    """This script's command line: the zoo measurements' (zoo_setup.arguments) and its own options."""
    p = arguments(__doc__ or "", batches=[1, 32, 256], rounds=7)
    p.add_argument(
        "--batch1-images",
        type=int,
        default=32,
        help="images timed at batch 1 (one batch otherwise); their exit steps set the step saving, so few images "
        "give a row that holds for those images only",
    )
    p.add_argument(
        "--batches-per-call",
        type=int,
        default=1,
        help="batches each timed call runs at batch sizes above 1 (longer calls, steadier)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="fresh worker processes, run one after another; rows report the median over them",
    )
    p.add_argument(
        "--ideal",
        action="store_true",
        help="also time the no-DC run cut at each exit step below T and report an ideal DC's saving (more runs a round)",
    )
    p.add_argument("--json", type=Path)
    return p


def main() -> None:
    p = parser()
    args = p.parse_args()
    if args.batches_per_call < 1 or max(args.batches, default=1) * args.batches_per_call > TEST_IMAGES:
        p.error(
            f"--batches-per-call {args.batches_per_call}: needs >= 1, and the largest batch times it <= {TEST_IMAGES} "
            "(the test images loaded)"
        )
    if args.processes < 1:
        p.error(f"--processes {args.processes}: needs >= 1")
    if args.processes > 1:
        across_processes(args)
    else:
        measure(args)


def worker_command(args: argparse.Namespace, json_path: Path) -> list[str]:
    """The command line of one worker process: this script with ``args``, one process, rows to ``json_path``."""
    command = [sys.executable, str(Path(__file__).resolve()), *args.folders, "--batches", *map(str, args.batches)]
    for flag, value in (
        ("--rounds", args.rounds),
        ("--data-root", args.data_root),
        ("--threads", args.threads),
        ("--cache", args.cache),
        ("--batch1-images", args.batch1_images),
        ("--batches-per-call", args.batches_per_call),
        ("--json", json_path),
    ):
        command += [flag, str(value)]
    return [*command, "--methods", *args.methods, "--qcfs-stem", args.qcfs_stem, *(["--ideal"] if args.ideal else [])]


def plan_cell(row: dict) -> str:
    """The batch-1 plan's ratios of a row over processes (median [min-max]), '-' at other batch sizes."""
    if "plan" not in row:
        return "-"
    return " / ".join(
        f"{row['plan'][k]['median']:.2f} [{row['plan'][k]['min']:.2f}-{row['plan'][k]['max']:.2f}]"
        for k in ("calls_only", "predicted")
    )


def ideal_cell(row: dict) -> str:
    """An ideal DC's saving over the step saving and DC's saving over the ideal's (median over processes), or '-'
    where the rows were timed without --ideal."""
    if "ideal_ratio" not in row:
        return "-"
    return " / ".join(
        "-" if row[k]["median"] is None else f"{row[k]['median']:.2f} [{row[k]['min']:.2f}-{row[k]['max']:.2f}]"
        for k in ("ideal_ratio", "of_ideal")
    )


def across_processes(args: argparse.Namespace) -> None:
    """Run the measurement in ``args.processes`` fresh processes, one after another, and print and save per row
    the median, min and max over the processes of the wall ratio (DC now) and of the ms per inference."""
    per_process = in_fresh_processes(lambda path: worker_command(args, path), args.processes)
    print(f"\n{args.processes} processes, {args.rounds} rounds each; median [min-max] over the processes")
    print(
        "| network | method | batch | step saving | spike saving | ms/inf no DC | ms/inf DC | wall ratio | "
        "wall saving / spike saving | per process | batch 1: the plan's ratio, calls only / predicted | "
        "ideal DC's ratio / DC's saving over the ideal's |"
    )
    print("|---" * 12 + "|")
    rows = []
    for rows_i in zip(*(d["rows"] for d in per_process), strict=True):
        first = rows_i[0]
        ratio = over_processes([r["wall_ratio"]["dc_now"] for r in rows_i])
        ms = {k: over_processes([r["ms_per_inference"][k] for r in rows_i]) for k in ("no_dc", "dc_now")}
        to_spikes = over_processes([r["wall_to_spike_ratio"] for r in rows_i])
        row = {
            "network": first["network"],
            "method": first["method"],
            "batch": first["batch"],
            "step_saving": first["step_saving"],
            "spike_saving": first["spike_saving"],
            "processes": args.processes,
            "wall_ratio": ratio,
            "wall_to_spike_ratio": to_spikes,
            "ms_per_inference": ms,
            "per_process": list(rows_i),
        }
        if "plan" in first:
            row["plan"] = {k: over_processes([r["plan"][k] for r in rows_i]) for k in ("calls_only", "predicted")}
        for key in ("ideal_ratio", "of_ideal"):
            if key in first:
                row[key] = over_processes([r[key] for r in rows_i])
        rows.append(row)
        print(
            f"| {row['network']} | {row['method']} T={first['steps']} | {row['batch']} | "
            f"{100 * row['step_saving']:.1f}% | {100 * row['spike_saving']:.1f}% | {ms['no_dc']['median']:.3f} | "
            f"{ms['dc_now']['median']:.3f} | "
            f"**{ratio['median']:.2f}** [{ratio['min']:.2f}-{ratio['max']:.2f}]{' unstable' if ratio['unstable'] else ''} | "
            f"{'-' if to_spikes['median'] is None else format(to_spikes['median'], '.2f')} | "
            f"{' / '.join(format(r['wall_ratio']['dc_now'], '.2f') for r in rows_i)} | {plan_cell(row)} | {ideal_cell(row)} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": per_process[0]["machine"], "rows": rows}, indent=1))


def plan_bound(engine: Engine, case: Case, ms_no_dc: float, step_saving: float) -> dict:
    """Batch 1: what the engine's plan (dcsim.sim.chunking) makes of the call times and exit steps it recorded
    in this run. ``calls_ms``: a sample's expected ms in calls under the plan (V(0)), no DC and DC; ``rest_ms``:
    the rest of a sample's run (the measured no-DC ms minus its calls: input checks, the image-fed layers, the
    results), paid alike with and without DC; the wall ratios they give: ``calls_only`` (the best any exact
    plan reaches on these call costs and exits) and ``predicted`` (with the rest added: the measured ratio if
    the run is at the plan's optimum). ``step_saving``: DC's (nan where it saves no step)."""
    planner = engine.chunk_planner
    thresholds = {"no_dc": 1.0, "dc_now": case.threshold}
    calls = {
        k: 1000 * planner.expected_seconds((case.steps, case.readout, th), case.steps) for k, th in thresholds.items()
    }
    rest = ms_no_dc - calls["no_dc"]
    return {
        "calls_ms": calls,
        "rest_ms": rest,
        "calls_only": (1 - calls["dc_now"] / calls["no_dc"]) / step_saving,
        "predicted": (1 - (calls["dc_now"] + rest) / ms_no_dc) / step_saving,
    }


def measure(args: argparse.Namespace) -> None:
    """The measurement in this process: every network, method and batch size, rows printed as they come."""
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; {args.rounds} interleaved rounds")
    print(
        "| network | method | batch | mean steps no DC / DC | ms/inf no DC [min-max] | ms/inf DC before | "
        "ms/inf DC now | CPU ms no DC / DC before / DC now | step saving | spike saving | wall saving before / now | "
        "wall ratio before / now [min-max now] | CPU ratio before / now |"
    )
    print("|---" * 13 + "|")
    rows = []
    for case in load_cases(args.folders, TEST_IMAGES, 1000, args.cache, args.data_root, args.methods, args.qcfs_stem):
        engine = Engine(case.net)
        for batch in args.batches:
            n = args.batch1_images if batch == 1 else batch * args.batches_per_call
            x = case.x[:n]
            fns = {
                "no_dc": early_exit_run(engine, case, x, batch, 1.0, None),
                "dc_before": early_exit_run(engine, case, x, batch, case.threshold, 0.0),
                "dc_now": early_exit_run(engine, case, x, batch, case.threshold, None),
            }
            res = {k: fn() for k, fn in fns.items()}
            for field in ("pred", "exit_step", "conf", "spikes"):
                assert torch.equal(getattr(res["dc_before"], field), getattr(res["dc_now"], field)), field
            cuts = cut_steps(res["dc_now"].exit_step, case.steps) if args.ideal else []
            for t in cuts:  # the no-DC run cut at t steps, for the ideal DC's saving
                fns[f"cut_{t}"] = early_exit_run(engine, case, x, batch, 1.0, None, steps=t)
            times = interleaved(fns, torch.device("cpu"), args.rounds)
            steps = {k: float(r.exit_step.float().mean()) for k, r in res.items()}
            step_saving = 1 - steps["dc_now"] / steps["no_dc"]
            spikes_saved = spike_saving(res["no_dc"], res["dc_now"])
            wall = {k: spread(t["wall"]) for k, t in times.items()}
            cpu = {k: statistics.median(t["cpu"]) for k, t in times.items()}
            ms = {k: 1000 * float(w["median"]) / n for k, w in wall.items()}
            paired = {k: paired_saving(times[k]["wall"], times["no_dc"]["wall"]) for k in ("dc_before", "dc_now")}
            saving = {k: v["median"] for k, v in paired.items()}
            cpu_saving = {k: 1 - cpu[k] / cpu["no_dc"] for k in ("dc_before", "dc_now")}
            # the ratios to the step saving are undefined where DC saves no step (nan; the times still show its cost)
            per = step_saving if step_saving > 0 else float("nan")
            row = {
                "network": case.name,
                "method": case.method,
                "steps": case.steps,
                "threshold": case.threshold,
                "batch": batch,
                "images": n,
                "threads": args.threads,
                "rounds": args.rounds,
                "mean_steps": steps,
                "ms_per_inference": ms,
                "ms_min": {k: 1000 * float(w["min"]) / n for k, w in wall.items()},
                "ms_max": {k: 1000 * float(w["max"]) / n for k, w in wall.items()},
                "spread": {k: w["spread"] for k, w in wall.items()},
                "unstable": {k: w["unstable"] for k, w in wall.items()},
                "cpu_ms_per_inference": {k: 1000 * v / n for k, v in cpu.items()},
                "step_saving": step_saving,
                "spike_saving": spikes_saved,
                "wall_saving": saving,
                "cpu_saving": cpu_saving,
                "wall_ratio": {k: v / per for k, v in saving.items()},
                "wall_ratio_now_min": paired["dc_now"]["min"] / per,
                "wall_ratio_now_max": paired["dc_now"]["max"] / per,
                "cpu_ratio": {k: v / per for k, v in cpu_saving.items()},
                "wall_to_spike_ratio": saving["dc_now"] / spikes_saved if spikes_saved > 0 else None,
                "wall_seconds_per_round": {k: t["wall"] for k, t in times.items()},
            }
            if batch == 1:
                row["plan"] = plan_bound(engine, case, ms["no_dc"], per)
            if args.ideal:
                ideal = spread(
                    ideal_savings(
                        res["dc_now"].exit_step,
                        case.steps,
                        {t: times[f"cut_{t}"]["wall"] for t in cuts},
                        times["no_dc"]["wall"],
                    )
                )
                row["ideal_saving"] = {k: ideal[k] for k in ("median", "min", "max")}
                row["ideal_ratio"] = ideal["median"] / per
                row["of_ideal"] = saving["dc_now"] / ideal["median"] if ideal["median"] > 0 else None
            rows.append(row)
            print(
                f"| {case.name} | {case.method} T={case.steps} | {batch} | {steps['no_dc']:.2f} / {steps['dc_now']:.2f} | "
                f"{ms['no_dc']:.3f} [{row['ms_min']['no_dc']:.3f}-{row['ms_max']['no_dc']:.3f}]{unstable(row, 'no_dc')} | "
                f"{ms['dc_before']:.3f} [{row['ms_min']['dc_before']:.3f}-{row['ms_max']['dc_before']:.3f}]{unstable(row, 'dc_before')} | "
                f"{ms['dc_now']:.3f} [{row['ms_min']['dc_now']:.3f}-{row['ms_max']['dc_now']:.3f}]{unstable(row, 'dc_now')} | "
                f"{row['cpu_ms_per_inference']['no_dc']:.3f} / {row['cpu_ms_per_inference']['dc_before']:.3f} / "
                f"{row['cpu_ms_per_inference']['dc_now']:.3f} | {100 * step_saving:.1f}% | {100 * spikes_saved:.1f}% | "
                f"{100 * saving['dc_before']:.1f}% / {100 * saving['dc_now']:.1f}% | "
                f"{row['wall_ratio']['dc_before']:.2f} / {row['wall_ratio']['dc_now']:.2f} "
                f"[{row['wall_ratio_now_min']:.2f}-{row['wall_ratio_now_max']:.2f}] | "
                f"{row['cpu_ratio']['dc_before']:.2f} / {row['cpu_ratio']['dc_now']:.2f} |",
                flush=True,
            )
            if batch == 1:
                plan = row["plan"]
                print(
                    f"  the plan: ms in calls no DC / DC {plan['calls_ms']['no_dc']:.3f} / {plan['calls_ms']['dc_now']:.3f}, "
                    f"rest {plan['rest_ms']:.3f}; ratio calls only {plan['calls_only']:.2f}, predicted {plan['predicted']:.2f}",
                    flush=True,
                )
            if args.ideal:
                print(
                    f"  an ideal DC (no-DC runs cut at {cuts}): wall saving {100 * row['ideal_saving']['median']:.1f}% "
                    f"[{100 * row['ideal_saving']['min']:.1f}-{100 * row['ideal_saving']['max']:.1f}%], "
                    f"{row['ideal_ratio']:.2f} of the step saving; DC's saving "
                    f"{'-' if row['of_ideal'] is None else format(row['of_ideal'], '.2f')} of it",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
