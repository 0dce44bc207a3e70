"""QCFS with the spiking and the quantized stem on the zoo networks: which networks the quantized stem helps
(docs/results/cifar10-whitened-cnn.md, "The quantized QCFS stem").

    python bench/qcfs_stem.py zoo/cifar10-resnet18w16-2bit zoo/cifar10-whitened-cnn96-2bit \\
        --data-root cifar10-jpeg.tar.gz --images 1000 --json out.json

For each zoo folder: ``--images`` images (a seeded random pick) of the validation split its training held out (its
``val_size``, else the 50,000 less its ``train_images``, else the default 5,000; checked as ``dcsim`` checks it), the 2-bit ANN's accuracy on them, and for each stem the QCFS trace at T = 27
(tau fitted on the same images): the accuracy at t = 1, 4, 8, 16 and T, and the front's point at zero
tolerance (th_c, accuracy, mean steps, saving). th_c is selected on the images it is scored on, so the
savings are optimistic alike for both stems: this compares the stems, it does not replace ``dcsim report``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dcsim import analysis, data
from dcsim.analysis.traces import accuracy_vs_t
from dcsim.conversion.convert import convert
from dcsim.io.checkpoint import CheckpointMeta
from dcsim.io.zoo import load
from dcsim.models import build_model
from dcsim.sim.engine import Engine
from dcsim.sim.network import STEMS
from dcsim.sim.readout import Readout
from dcsim.workflows.dynamic_confidence import calibrate, record_trace
from dcsim.workflows.inputs import check_held_out, with_checkpoint_normalization

STEPS = 27
"""QCFS's T, as in the report rows."""
SHOWN = (1, 4, 8, 16, STEPS)
"""The steps whose accuracy the table shows."""
POOL = 50_000
"""CIFAR-10's training images, from which the validation split is held out."""


def measure(folder: str, data_root: Path, images: int) -> dict:
    """The ANN's accuracy and each stem's QCFS trace summary on ``images`` held-out images of ``folder``
    (a seeded random pick: the split is stored class by class)."""
    model, raw = load(folder, build_model)
    meta = CheckpointMeta.from_dict(raw, folder)
    trained = (meta.training or {}).get("train_images")
    held = meta.val_size or (POOL - trained if isinstance(trained, int) else 5000)
    splits = data.open_splits("cifar10", data_root, val_size=held, seed=meta.seed or 0)
    check_held_out(meta, splits, Path(folder), meta.seed or 0)  # the images its training held out, or an error
    val = with_checkpoint_normalization(splits, meta)["val"]
    pick = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:images]  # the split is by class
    x, y = val.normalized(pick), val.labels[pick]
    with torch.no_grad():
        ann = float((model(x).argmax(1) == y).float().mean())
    tau = calibrate(model, x, y)["tau"]
    out: dict = {"network": Path(folder).name, "images": images, "ann": ann, "stems": {}}
    for stem in STEMS:
        net = convert(model, method="qcfs", stem=stem)
        trace = record_trace(Engine(net), x, y, STEPS, Readout.paper("qcfs", net.bits, STEPS, tau=tau), {})
        curve = accuracy_vs_t(trace)
        out["stems"][stem] = {
            "accuracy_at": {t: float(curve[t - 1]) for t in SHOWN},
            "selected": analysis.analyze(trace)["selected"],
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+")
    p.add_argument("--data-root", type=Path, required=True, help="CIFAR-10 (folder or .tar.gz), as dcsim takes it")
    p.add_argument("--images", type=int, default=1000, help="validation images per network (a seeded pick)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    rows = [measure(f, args.data_root, args.images) for f in args.folders]
    head = " | ".join(f"t = {t}" for t in SHOWN)
    print(f"| network | ANN | stem | {head} | th_c | DC acc | mean steps | saving |")
    print("|---" * (8 + len(SHOWN)) + "|")
    for r in rows:
        for stem, s in r["stems"].items():
            sel, acc = s["selected"], " | ".join(f"{100 * a:.2f}" for a in s["accuracy_at"].values())
            print(
                f"| {r['network']} | {100 * r['ann']:.2f} | {stem} | {acc} | {sel['threshold']:.4g} | "
                f"{100 * sel['accuracy']:.2f} | {sel['mean_steps']:.2f} | {100 * sel['saving']:.1f}% |"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
