"""Float ReLU route: SNN accuracy against T and DC's saving, thresholds at the 99.9th percentile vs the max.

    python bench/float_relu_thresholds.py CHECKPOINT [--dataset digits] [--steps 1 2 4 ... 128] [--out results/x.json]

CHECKPOINT is a float ReLU checkpoint (``dcsim train --epochs 0 --float-epochs N``). For each
threshold percentile (99.9 and 100 = max; calibration: 1000 training images): test accuracy
of the SNN at every T in --steps (one run of max(steps) steps), and the DC pipeline
(dcsim.workflows.dynamic_confidence.dynamic_confidence: T = smallest T reaching the clipped ANN's validation accuracy,
th_c selected on the validation split at zero accuracy loss, live on the test split).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from dcsim.conversion.convert import convert
from dcsim.io.checkpoint import load_checkpoint
from dcsim.models import build_model
from dcsim.sim.engine import Engine
from dcsim.training import accuracy
from dcsim.workflows.dynamic_confidence import calibrate, dynamic_confidence
from dcsim.workflows.inputs import load_splits, prepare
from dcsim.workflows.options import DataOptions, ModelOptions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--dataset", choices=["digits", "cifar10", "imagefolder"], default="digits")
    p.add_argument("--data-root", type=Path)
    p.add_argument("--val-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    p.add_argument("--max-steps", type=int, default=128, help="largest T for the DC pipeline")
    p.add_argument("--calibration-size", type=int, default=1000)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    rows = []
    for percentile in (99.9, 100.0):
        model, meta = load_checkpoint(args.checkpoint, build_model)
        data = DataOptions(args.dataset, args.data_root, args.val_size, args.seed)
        opts = ModelOptions(args.checkpoint, percentile, args.calibration_size)
        model, splits = prepare(model, meta, load_splits(data), opts, "qcfs", args.seed)
        test_x, test_y = splits["test"].normalized(), splits["test"].labels
        val = (splits["val"].normalized(), splits["val"].labels)
        ann_test = accuracy(model, test_x, test_y)
        sim = Engine(convert(model, method="qcfs")).simulate(test_x, max(args.steps))
        acc_t = {t: float((sim.pred[:, t - 1] == test_y).float().mean()) for t in args.steps}
        tau = calibrate(model, *val)["tau"]
        dc = dynamic_confidence(
            model, "qcfs", {"val": val, "test": (test_x, test_y)}, max_steps=args.max_steps, tau=tau
        )
        row = {
            "percentile": percentile,
            "ann_test_accuracy": ann_test,
            "snn_test_accuracy_vs_T": acc_t,
            "T": dc["steps"],
            "no_dc": {k: dc["no_dc"].to_dict()[k] for k in ("accuracy", "mean_steps")},
            "dc": {k: dc["dc"].to_dict()[k] for k in ("threshold", "accuracy", "mean_steps", "saving")},
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(
        "| thresholds at | ANN (clipped) | "
        + " | ".join(f"T={t}" for t in args.steps)
        + " | T chosen | no DC | DC (mean steps, saving) |"
    )
    print("|---|---|" + "---|" * len(args.steps) + "---|---|---|")
    for r in rows:
        name = "max" if r["percentile"] == 100 else f"{r['percentile']}%"
        print(
            f"| {name} | {100 * r['ann_test_accuracy']:.2f} | "
            + " | ".join(f"{100 * a:.2f}" for a in r["snn_test_accuracy_vs_T"].values())
            + f" | {r['T']} | {100 * r['no_dc']['accuracy']:.2f} | {100 * r['dc']['accuracy']:.2f} "
            f"({r['dc']['mean_steps']:.2f}, {100 * r['dc']['saving']:.0f}%) |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"machine": platform.machine(), "torch": torch.__version__, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
