"""Accuracy effect of reduced precision (``Engine(precision=...)``: tf32, bf16, fp16) against float32.

Trains the small CNN on the embedded digits data (seconds, on the CPU), chooses th_c on the
validation split with the float32 engine, then runs the test split with each engine: full-length
traces (how often the prediction at each step agrees with float32) and live early exit at th_c
(accuracy, mean steps). Writes JSON and prints a line per method. For a trained checkpoint, compare
``dcsim eval --precision P`` runs. TF32 applies on GPUs only (default precisions: tf32 on cuda).

    python bench/precision_effect.py --device cuda --out precision.json
"""

import argparse
import json

import numpy as np
import torch

import dcsim
from dcsim import analysis, training
from dcsim.sim.engine import PRECISIONS
from dcsim.workflows.dynamic_confidence import NO_EXIT, record_trace

STEPS = {"qcfs": 16, "qffs": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=[p for p in PRECISIONS if p != "fp32"],
        help="reduced precisions to compare with fp32 (default: bf16 fp16, and tf32 on cuda)",
    )
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args()
    reduced = args.precisions or (["tf32"] if args.device.startswith("cuda") else []) + ["bf16", "fp16"]
    splits = dcsim.data.load_digits_splits(seed=0)
    (xtr, ytr), (xva, yva), (xte, yte) = [(s.normalized(), s.labels) for s in splits.values()]
    torch.manual_seed(0)
    model = dcsim.models.small_cnn(num_classes=10, in_channels=1, width=16)
    training.train(model, xtr, ytr, xva, yva, training.TrainConfig(epochs=6, float_epochs=3, lr=0.05), progress=False)
    rows = []
    for method, steps in STEPS.items():
        net = dcsim.convert(model, method)
        readout = dcsim.Readout.paper(method, net.bits, steps)
        engines = {p: dcsim.Engine(net, device=args.device, precision=p) for p in ["fp32", *reduced]}
        th = analysis.analyze(record_trace(engines["fp32"], xva, yva, steps, readout, {}))["selected"]["threshold"]
        traces = {p: record_trace(e, xte, yte, steps, readout, {}) for p, e in engines.items()}
        row = {"method": method, "steps": steps, "threshold": th}
        for p in reduced:
            row[f"{p}_pred_agreement_per_step"] = (traces["fp32"].pred == traces[p].pred).mean(axis=0).tolist()
        for p, e in engines.items():
            for name, c in (("full", NO_EXIT), ("dc", th)):
                res = e.early_exit(xte.to(e.device), steps, readout, c)
                row[f"{p}_{name}_accuracy"] = float((res.pred == yte).float().mean())
                row[f"{p}_{name}_mean_steps"] = float(res.exit_step.float().mean())
        rows.append(row)
        print(
            f"{method} T={steps} th_c={th:.4f}: min per-step prediction agreement with fp32 "
            + ", ".join(f"{p} {np.min(row[f'{p}_pred_agreement_per_step']):.4f}" for p in reduced)
            + "; "
            + "; ".join(
                f"{p} acc {row[f'{p}_full_accuracy']:.4f} -> DC {row[f'{p}_dc_accuracy']:.4f} "
                f"at {row[f'{p}_dc_mean_steps']:.2f} steps"
                for p in engines
            )
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": args.device, "samples": len(yte), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
