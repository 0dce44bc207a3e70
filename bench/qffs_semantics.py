"""QFFS accuracy against T under each semantics ("settle", "constant"), next to QCFS.

Loads a dcsim checkpoint, runs the full-length simulation of a split once per method and
semantics, and prints the accuracy at every step t = 1..T as a markdown table (and JSON with
--out). The prediction at t is the argmax of the running sums S_t, so it does not depend on the
readout. Examples (the README's models):

    python bench/qffs_semantics.py dcsim-demo/model.safetensors --dataset digits --steps 8
    python bench/qffs_semantics.py runs/cifar10_small_cnn.safetensors --dataset cifar10 \
        --data-root ../shared/data/cifar10-jpeg.tar.gz --steps 8 --split val
"""

import argparse
import json
from pathlib import Path

import torch

import dcsim
from dcsim.io.checkpoint import load_checkpoint
from dcsim.models import build_model
from dcsim.training import accuracy
from dcsim.workflows.inputs import load_splits
from dcsim.workflows.options import DataOptions

RUNS = (("QCFS", "qcfs", None), ("QFFS settle", "qffs", "settle"), ("QFFS constant", "qffs", "constant"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--dataset", choices=["digits", "cifar10", "imagefolder"], default="digits")
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--val-size", type=int)
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split (as in training)")
    parser.add_argument("--split", choices=["val", "test"], default="val")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    args = parser.parse_args()
    model, _ = load_checkpoint(args.checkpoint, build_model)
    ds = load_splits(DataOptions(args.dataset, args.data_root, args.val_size, args.seed))[args.split]
    x, y = ds.normalized(), ds.labels
    ann = accuracy(model, x, y)
    rows = []
    for label, method, semantics in RUNS:
        net = dcsim.convert(model, method=method, semantics=semantics)
        sim = dcsim.Engine(net).simulate(x, args.steps, batch_size=args.batch_size)
        acc = (sim.pred == y[:, None]).float().mean(0)
        rows.append(
            {"run": label, "method": method, "semantics": net.semantics, "accuracy_vs_t": [float(a) for a in acc]}
        )
        print(f"{label}: " + " ".join(f"{100 * a:.2f}" for a in acc), flush=True)
    head = " | ".join(str(t) for t in range(1, args.steps + 1))
    print(f"\n{args.split} accuracy (%), {len(y)} images; quantized ANN {100 * ann:.2f}%\n")
    print(f"| t | {head} |\n|---|" + "---|" * args.steps)
    for r in rows:
        print(f"| {r['run']} | " + " | ".join(f"{100 * a:.2f}" for a in r["accuracy_vs_t"]) + " |")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "checkpoint": str(args.checkpoint),
                    "split": args.split,
                    "samples": len(y),
                    "ann_accuracy": ann,
                    "rows": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
