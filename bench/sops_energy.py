"""SOPs, MACs and energy per inference with and without Dynamic Confidence on a zoo model (CIFAR-10).

Run: python bench/sops_energy.py zoo/cifar10-small-cnn-2bit --data cifar10-jpeg --method qcfs
Takes the first ``--val`` training images of each class as the validation split (tau by temperature
scaling, T as the smallest with the quantized ANN's validation accuracy up to --max-steps, th_c from a
validation trace, as dcsim's pipeline does) and the first ``--test`` test images of each class; prints
the rows (markdown) and writes the energy report (dcsim.analysis.energy.report) as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import dcsim
from dcsim import analysis
from dcsim.analysis import energy
from dcsim.io import zoo
from dcsim.workflows.dynamic_confidence import ann_logits, calibrate, choose_steps, record_trace


def load_split(folder: Path, per_class: int, mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` images (sorted names) of each class folder: normalized float32 [N, 3, H, W], labels."""
    images, labels = [], []
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for label, cls in enumerate(classes):
        for path in sorted((folder / cls).glob("*.jpg"))[:per_class]:
            images.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0)
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x.contiguous(), torch.tensor(labels, dtype=torch.int64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a zoo folder")
    p.add_argument("--data", type=Path, required=True, help="CIFAR-10 as train/<class>/*.jpg and test/<class>/*.jpg")
    p.add_argument("--method", choices=["qcfs", "qffs"], default="qcfs")
    p.add_argument("--max-steps", type=int, default=32)
    p.add_argument("--val", type=int, default=100, help="validation images per class (from the training split)")
    p.add_argument("--test", type=int, default=100, help="test images per class")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--out", type=Path, help="write the JSON report here")
    args = p.parse_args()
    t0 = time.time()
    model, meta = zoo.load(args.model)
    model.eval()
    norm = meta["normalization"]
    val_x, val_y = load_split(args.data / "train", args.val, norm["mean"], norm["std"])
    test_x, test_y = load_split(args.data / "test", args.test, norm["mean"], norm["std"])
    tau = calibrate(model, val_x, val_y)["tau"]
    ann_val = float((ann_logits(model, val_x).argmax(1) == val_y).float().mean())
    ann_test = float((ann_logits(model, test_x).argmax(1) == test_y).float().mean())
    net = dcsim.convert(model, method=args.method)
    engine = dcsim.Engine(net)
    steps, _ = choose_steps(engine, val_x, val_y, args.max_steps, ann_val, args.batch_size)
    readout = dcsim.Readout.paper(args.method, net.bits, steps, tau=tau)
    trace = record_trace(engine, val_x, val_y, steps, readout, {}, args.batch_size)
    threshold = analysis.analyze(trace)["selected"]["threshold"]
    runs = {
        "no_dc": engine.early_exit(test_x, steps, readout, 1.0, batch_size=args.batch_size),
        "dc": engine.early_exit(test_x, steps, readout, threshold, batch_size=args.batch_size),
    }
    shape = tuple(test_x.shape[1:])
    reports = {preset: energy.report(net, shape, runs, preset) for preset in ("fp32", "int8")}
    reports["fp32_per_step"] = energy.report(net, shape, runs, "fp32", first_layer="per_step")
    acc = {k: float((r.pred == test_y).float().mean()) for k, r in runs.items()}
    out = {
        "model": args.model.name,
        "method": args.method,
        "steps": steps,
        "tau": tau,
        "threshold": threshold,
        "ann_test_accuracy": ann_test,
        "accuracy": acc,
        "val_samples": len(val_y),
        "test_samples": len(test_y),
        "reports": reports,
        "seconds": time.time() - t0,
    }
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    ann = reports["fp32"]["ann"]
    print(f"{args.model.name} {args.method.upper()} T={steps} th_c={threshold:.4g} ({out['seconds']:.0f} s)")
    print(
        "| run | accuracy | mean steps | SOPs/inf | MACs/inf (once) | E fp32 uJ | E int8 uJ | E/E_ANN fp32 | E fp32 uJ, image MACs per step |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| ANN | {100 * ann_test:.2f}% | 1 | 0 | {ann['macs_per_inference']:,} | {ann['energy_uj']:.3f} | "
          f"{reports['int8']['ann']['energy_uj']:.4f} | 1 | {ann['energy_uj']:.3f} |")  # fmt: skip
    for label in ("no_dc", "dc"):
        r, r8, rs = (reports[k]["runs"][label] for k in ("fp32", "int8", "fp32_per_step"))
        print(
            f"| SNN {'with' if label == 'dc' else 'without'} DC | {100 * acc[label]:.2f}% | {r['mean_steps']:.2f} | "
            f"{r['sops_per_inference']:,.0f} | {r['macs_per_inference']:,.0f} | {r['energy_uj']:.3f} | "
            f"{r8['energy_uj']:.4f} | {r['energy_ratio_to_ann']:.3f} | {rs['energy_uj']:.3f} |"
        )


if __name__ == "__main__":
    main()
