"""The float stage of the fast recipe on the whitened CNN, beside variants that do not convert.

Trains only the float stage (LSQ layers as ReLUs) of ``whitened_cnn_analog`` for a few epochs and
tests it on all test images, plainly and with airbench's test-time augmentation (for comparison
with airbench's published figures only; no dcsim result uses it). Variants (``--variants``, comma
separated):

- ``convertible``: the network as dcsim trains it (ReLU, 2x2 average pool after the activation);
- ``gelu_max``: the same with GELU and max pooling (does not convert);
- ``airbench``: airbench94_muon's shape (whitening with both signs and a GELU, conv -> max pool -> BN
  -> GELU, no cutout, batch 2000; the whitening's bias frozen, a global average pool);
add ``_nocut`` to the first two to train without cutout. Results: docs/results/cifar10-whitened-cnn.md
("What holds the float stage at about 90%"). Each variant of 8 epochs at width 64 takes 13-23 minutes on
two CPU cores. Example:

    python bench/float_stage_probe.py --data-root cifar10-jpeg.tar.gz --variants convertible_nocut,airbench \
        --epochs 8 --width 64 --json probe.json
"""

import argparse
import functools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dcsim.data.augment import random_crop_flip
from dcsim.models import build_model
from dcsim.models.lsq import LSQActivation, set_quantization
from dcsim.training import TrainConfig, TrainRuntime, split_accuracy, train
from dcsim.training.device_batches import DeviceSplit
from dcsim.training.muon import fast_recipe_init_
from dcsim.workflows.inputs import load_splits
from dcsim.workflows.options import DataOptions

VARIANTS = ("convertible", "convertible_nocut", "gelu_max", "gelu_max_nocut", "airbench")


def build(variant: str, width: int) -> nn.Module:
    """The float network of ``variant`` (seeded), initialised as the fast recipe does."""
    torch.manual_seed(0)
    airbench = variant == "airbench"
    model = build_model("whitened_cnn" if airbench else "whitened_cnn_analog", num_classes=10, width=width)
    if airbench:
        model.act0 = nn.GELU()
        model.whiten.bias.requires_grad_(False)
    mods = list(model.groups)
    if airbench or variant.startswith("gelu_max"):
        mods = [nn.MaxPool2d(2) if isinstance(m, nn.AvgPool2d) else m for m in mods]
        mods = [nn.GELU() if isinstance(m, LSQActivation) else m for m in mods]
    if airbench:  # conv -> pool -> BN -> act in the first half of each group
        mods = [
            m
            for i in range(0, len(mods), 7)
            for m in (mods[i], mods[i + 3], *mods[i + 1 : i + 3], *mods[i + 4 : i + 7])
        ]
    model.groups = nn.Sequential(*mods)
    fast_recipe_init_(model)
    return model


@torch.no_grad()
def tta_accuracy(model: nn.Module, split: DeviceSplit) -> float:
    """Accuracy under airbench's level-2 test-time augmentation: the mean logits of the image and its
    mirror (weight 1/2) and of both for one-pixel translations up-left and down-right (1/4 each)."""

    def mirror(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(x).float() + model(x.flip(-1)).float())

    right = 0
    for x, y in split.eval_batches(1000):
        pad = F.pad(x, (1, 1, 1, 1), mode="reflect")
        logits = 0.5 * mirror(x) + 0.25 * (mirror(pad[:, :, :32, :32]) + mirror(pad[:, :, 2:, 2:]))
        right += int((logits.argmax(1) == y).sum())
    return right / len(split)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True, help="CIFAR-10 (archive or folder)")
    parser.add_argument("--variants", default="convertible_nocut,airbench")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--json", type=Path, help="results, rewritten after each variant")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {VARIANTS}")
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    splits = load_splits(DataOptions(dataset="cifar10", data_root=args.data_root, val_size=2000, seed=0))
    tr, va, te = splits["train"], splits["val"], splits["test"]
    test = DeviceSplit(te.images, te.labels, te.mean, te.std, torch.device("cpu"))
    results = {}
    for variant in variants:
        model = build(variant, args.width)
        airbench = variant == "airbench"
        config = TrainConfig(
            epochs=0,
            float_epochs=args.epochs,
            lr=0.24,
            weight_decay=0.002,
            batch_size=2000 if airbench else 1000,
            schedule="linear",
            label_smoothing=0.2,
            optimizer="muon",
        )
        cutout = 0 if airbench or variant.endswith("_nocut") else 8
        t0 = time.perf_counter()
        history = train(
            model,
            tr.images,
            tr.labels,
            va.images,
            va.labels,
            config,
            augment=functools.partial(random_crop_flip, padding=2, cutout_size=cutout),
            device="cpu",
            normalization=(tr.mean, tr.std),
            runtime=TrainRuntime(precision="bf16", channels_last=True, compile=True),
        )
        seconds = time.perf_counter() - t0
        set_quantization(model, False)  # train() leaves LSQ layers quantizing; this is the float network
        model.eval()
        results[variant] = {
            "val_after_each_epoch": [e["val_acc"] for e in history["epochs"]],
            "test": split_accuracy(model, test),
            "test_tta": tta_accuracy(model, test),
            "train_seconds": seconds,
            "epochs": args.epochs,
            "width": args.width,
        }
        print(variant, json.dumps(results[variant]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
