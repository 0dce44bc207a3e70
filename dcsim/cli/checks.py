"""The command line's validation layer: every flag's value and every output path, checked before any work.
A bad value or an output that cannot be written is a :class:`UsageError` (exit 2) naming the flag. Rules
between flags are the typed options' own (dcsim.workflows.options); the handlers raise theirs as UsageError."""

from __future__ import annotations

import argparse

from ..checks import check_int, check_real, writable
from ..io.zoo import shard_bytes
from ..parallel.distributed import parse_device


class UsageError(ValueError):
    """A command-line value that cannot be used (exit code 2)."""


# Integer flags that must be >= 1 (``chunk`` takes several), and those that must be >= 0.
POSITIVE = ("batch_size", "train_batch_size", "steps", "slots", "repeats", "val_size", "calibration_size",
            "train_subset", "max_test", "qcfs_steps", "qffs_steps", "qcfs_max_steps", "qffs_max_steps", "width",
            "bits", "stream", "chunk", "clip_mix_epochs", "clip_mix_layers", "batches")  # fmt: skip
NON_NEGATIVE = ("epochs", "float_epochs", "loader_workers", "crop_padding", "cutout", "lsq_seed")
# Real flags: (low, high or None, low allowed[, high allowed: default True]).
REALS = {"lr": (0, None, False), "lr_decay": (0, None, False), "budget_minutes": (0, None, False),
         "max_shard_mib": (0, None, False), "resolution": (0, 1, False), "weight_decay": (0, None, True),
         "warmup_epochs": (0, None, True), "momentum": (0, 1, True), "label_smoothing": (0, 1, True, False),
         "lsq_label_smoothing": (0, 1, True, False), "distill": (0, 1, True), "clip_mix": (0, 1, True, False),
         "lsq_share": (0, 1, False), "tolerance": (0, 1, True), "threshold": (0, 1, True),
         "min_accuracy": (0, 1, True), "lsq_lr": (0, None, False), "e_mac": (0, None, True),
         "e_ac": (0, None, True), "threshold_percentile": (0, 100, False)}  # fmt: skip
FILE_OUTPUTS = ("train", "trace", "import")  # commands whose --out is a file; the other --out are folders
OUTPUTS = {"workdir": True, "plots": True, "json": False, "float_stage": False}  # other output flags: a folder?


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_args(args: argparse.Namespace) -> None:
    """Check the parsed arguments of any command; raises :class:`UsageError` naming the flag."""
    try:
        for name in POSITIVE + NON_NEGATIVE:
            values = getattr(args, name, None)
            for v in values if isinstance(values, list) else [values]:
                if v is not None:
                    check_int(v, _flag(name), minimum=1 if name in POSITIVE else 0)
        for name, (low, high, low_in, *high_in) in REALS.items():  # high_in: [] (allowed) or [bool]
            if getattr(args, name, None) is not None:
                check_real(getattr(args, name), _flag(name), low, high, bool(low_in), all(high_in))
        if getattr(args, "max_shard_mib", None) is not None:
            shard_bytes(args.max_shard_mib)  # room for a shard's header
        if getattr(args, "device", None) is not None:
            parse_device(args.device)
        outputs = {"out": args.command not in FILE_OUTPUTS} | OUTPUTS
        for name, folder in outputs.items():  # name: whether it is a folder
            if getattr(args, name, None) is not None and str(getattr(args, name)) != "-":
                writable(getattr(args, name), _flag(name), folder=folder)
    except ValueError as err:
        raise UsageError(str(err)) from None
