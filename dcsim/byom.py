"""Command-line glue for bringing your own model: ``dcsim import`` and ``--normalize``.

Checkpoint kinds the commands take (all dcsim safetensors checkpoints, see dcsim.checkpoint):

- quantized (the default): LSQ activations, converted as they are;
- imported with ``dcsim import official``: the same, with metadata "source";
- float ReLU: metadata ``"activations": "float_relu"`` (written by ``dcsim train --epochs 0``,
  float pre-training only); its LSQActivation layers compute ReLUs, and trace/eval/report
  need ``--normalize P`` to set thresholds from the training split (never the test split).

The data are normalized with the checkpoint's mean and std (the ones the model was trained with).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from torch import nn

FLOAT_RELU = "float_relu"
"""Metadata value of "activations" for a float ReLU checkpoint."""


def percentile_arg(text: str) -> float:
    """``--normalize`` value: 'max' (100) or a percentile in (0, 100]."""
    if text == "max":
        return 100.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--normalize takes 'max' or a percentile in (0, 100], got {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"--normalize: the percentile must be in (0, 100], got {value}")
    return value


def add_normalize_args(p: argparse.ArgumentParser) -> None:
    """--normalize and --calibration-size (trace, eval, report, stream)."""
    p.add_argument(
        "--normalize",
        type=percentile_arg,
        metavar="P",
        help="float ReLU checkpoint: thresholds from the P-th percentile ('max' or 100: the maximum) of each "
        "layer's activations on training-split images (QCFS only)",
    )
    p.add_argument(
        "--calibration-size", type=int, default=1000, help="training images drawn (seeded by --seed) for --normalize"
    )


def with_checkpoint_normalization(splits: dict, meta: dict) -> dict:
    """The splits normalized with the checkpoint's mean/std instead of the data set's own."""
    norm = meta["normalization"]
    mean, std = tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
    return {k: dataclasses.replace(ds, mean=mean, std=std) for k, ds in splits.items()}


def prepare(model: nn.Module, meta: dict, splits: dict, args: argparse.Namespace) -> tuple[nn.Module, dict]:
    """(model ready to convert, splits) for a loaded checkpoint and the command-line arguments.

    A float ReLU checkpoint requires ``--normalize``; a quantized one refuses it. Calibration
    images: ``--calibration-size`` images of the training split, drawn with ``--seed``.
    """
    from .lsq import set_quantization
    from .normalize import normalize

    splits = with_checkpoint_normalization(splits, meta)
    percentile = getattr(args, "normalize", None)
    is_float = meta.get("activations") == FLOAT_RELU
    if is_float and percentile is None:
        raise ValueError(
            f"{args.checkpoint}: a float ReLU checkpoint; give --normalize P (e.g. 99.9 or max) to set "
            "its thresholds from training data"
        )
    if not is_float:
        if percentile is not None:
            raise ValueError(
                f"{args.checkpoint}: --normalize applies to float ReLU checkpoints (metadata "
                f"activations = {FLOAT_RELU!r}); this one is quantized"
            )
        return model, splits
    if getattr(args, "method", "qcfs") != "qcfs":
        raise ValueError("--normalize: a normalized float network converts with --method qcfs only (QFFS needs levels)")
    size = args.calibration_size
    if size < 1:
        raise ValueError(f"--calibration-size must be >= 1, got {size}")
    train = splits["train"]
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(train), generator=gen)[:size]
    set_quantization(model, False)
    assert percentile is not None  # a float checkpoint needs --normalize (checked above)
    return normalize(model, train.normalized(idx), percentile=percentile), splits


def cmd_import(args: argparse.Namespace) -> dict:
    """``dcsim import official FILE.pth --out model.safetensors``."""
    from .official import import_official

    classes = tuple(args.classes.split(",")) if args.classes else None
    kwargs = {"classes": classes} if classes else {}
    out = import_official(args.file, args.out, bits=args.bits, **kwargs)
    if args.json is None:
        print(f"dcsim import: wrote {out}")
    return {"checkpoint": str(out), "source": str(args.file), "kind": args.kind, "bits": args.bits}


def add_import_parser(p: argparse.ArgumentParser) -> None:
    """Arguments of ``dcsim import``."""
    p.add_argument(
        "kind", choices=["official"], help="official: the Dynamic Confidence code's CIFAR-10 ResNet-18 state dict"
    )
    p.add_argument("file", type=Path, help="the .pth state dict (read with weights_only=True)")
    p.add_argument("--out", type=Path, required=True, help="dcsim checkpoint to write (.safetensors)")
    p.add_argument("--bits", type=int, default=2, help="activation bits (the official 'constraint'; not in the .pth)")
    p.add_argument("--classes", help="comma-separated class names in label order (default: CIFAR-10's)")
    p.set_defaults(func=cmd_import)
