"""What the workflows read: data splits for the data options, checkpoints (files or zoo folders), and a
loaded checkpoint made ready to convert (bringing your own model).

Checkpoint kinds (all dcsim safetensors checkpoints, see dcsim.io.checkpoint):

- quantized (the default): LSQ activations, converted as they are;
- imported with ``dcsim import official``: the same, with metadata "source";
- float ReLU: metadata ``"activations": "float_relu"`` (written by ``dcsim train --epochs 0``,
  float pre-training only); its LSQActivation layers compute ReLUs, and trace/eval/report
  need ``--threshold-percentile P`` to set thresholds from the training split (never the test split).

The data are normalized with the checkpoint's mean and std (the ones the model was trained with).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__, data
from ..checks import check_int
from ..conversion.thresholds import clip_relus
from ..io import zoo
from ..io.atomic import sha256_file
from ..io.checkpoint import CheckpointMeta, load_checkpoint
from ..models import build_model
from ..models.lsq import set_quantization
from ..parallel.distributed import Sharded, World, check_agreement, data_fingerprint
from .options import DataOptions, ModelOptions

FLOAT_RELU = "float_relu"
"""Metadata value of "activations" for a float ReLU checkpoint."""


def load_splits(opts: DataOptions) -> dict[str, Any]:
    """{"train","val","test"} datasets for the data options."""
    splits = data.open_splits(opts.dataset, opts.data_root, loader=opts.loader, val_size=opts.val_size, seed=opts.seed)
    if any(isinstance(s, data.FolderSplit) for s in splits.values()):
        data.return_large_buffers()  # read from disk: keep resident memory bounded over any number of batches
    return splits


def limit_splits(splits: dict, train_subset: int | None = None, max_test: int | None = None, seed: int = 0) -> dict:
    """The splits with at most ``train_subset`` training and ``max_test`` test images (seeded random picks)."""
    out = dict(splits)
    for name, n in (("train", train_subset), ("test", max_test)):
        if n is None:
            continue
        check_int(n, f"--{'train-subset' if name == 'train' else 'max-test'}")
        if n < len(splits[name]):
            out[name] = splits[name].subset(
                torch.randperm(len(splits[name]), generator=torch.Generator().manual_seed(seed))[:n]
            )
    return out


def loader_workers(opts: DataOptions, world: World) -> int:
    """--loader-workers, by default the usable CPUs shared among this node's ranks (at least 1)."""
    workers = opts.loader_workers
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = max(1, cpus // world.local_size)
    if workers < 0:
        raise ValueError(f"--loader-workers must be >= 0, got {workers}")
    return workers


def source(opts: DataOptions, world: World, split: Any, quiet: bool = False) -> tuple[Sharded, torch.Tensor]:
    """(images, labels) of a split for the runs: sharded over the ranks, read from disk batch by batch when the split is."""
    return Sharded(split, world, workers=loader_workers(opts, world), progress=not quiet), split.labels


def tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalized images float32 [N, C, H, W], labels int64 [N]) of an in-memory split."""
    return ds.normalized(), ds.labels


def agree(world: World, splits: dict, used: tuple[str, ...], checkpoint: Path | None = None) -> None:
    """Under torchrun: every rank must run the same dcsim, checkpoint and data (else an error names the rank)."""
    if not world.distributed:
        return
    items: dict[str, object] = {"dcsim version": __version__, "torch version": torch.__version__}
    if checkpoint is not None:
        items["checkpoint digest"] = sha256_file(checkpoint)
    items |= {f"{name} data fingerprint": data_fingerprint(splits[name]) for name in used}
    check_agreement(world, items)


def check_dataset_matches(meta: CheckpointMeta, splits: dict, ckpt: Path) -> None:
    """The checkpoint's classes must be the data's."""
    classes = list(splits["test"].classes)
    if list(meta.classes) != classes:
        raise ValueError(f"{ckpt}: checkpoint classes {meta.classes} differ from the data's {classes}")


def check_held_out(meta: CheckpointMeta, splits: dict, ckpt: Path, seed: int) -> None:
    """The validation split must be images the checkpoint's training held out: th_c chosen on images the
    network learned would overstate what it does on new ones. The held-out size is the checkpoint's
    ``val_size``, or (older checkpoints) its pool less its ``training.train_images``; a checkpoint that
    records neither is not checked. Raises ValueError naming the flags to pass."""
    held = meta.val_size
    trained = (meta.training or {}).get("train_images")
    pool = len(splits["train"]) + len(splits["val"])
    if held is None and isinstance(trained, int) and 0 < trained < pool:
        held = pool - trained
    if held is None:
        return
    train_seed = seed if meta.seed is None else meta.seed
    wanted = f"pass --val-size {held} --seed {train_seed}"
    if train_seed != seed:
        raise ValueError(
            f"{ckpt}: trained with --seed {train_seed}, whose held-out validation images another seed "
            f"does not draw; {wanted}"
        )
    outside = data.outside_held_out(splits["train"], splits["val"], held, seed) if held < pool else None
    if outside:
        raise ValueError(
            f"{ckpt}: {outside} of the {len(splits['val'])} validation images (--val-size {len(splits['val'])}) "
            f"lie outside the {held} its training held out, so th_c would be chosen on images it may have "
            f"learned; {wanted}"
        )


def load_model(path: Path) -> tuple[nn.Module, CheckpointMeta]:
    """(model, metadata) from a checkpoint file or a zoo folder (shards checked against their sha256)."""
    model, meta = zoo.load(path, build_model) if zoo.is_zoo(path) else load_checkpoint(path, build_model)
    return model, CheckpointMeta.from_dict(meta, str(path))


def model_and_splits(
    model_opts: ModelOptions, data_opts: DataOptions, world: World, used: tuple[str, ...], method: str = "qcfs"
) -> tuple[nn.Module, dict, dict]:
    """(model ready to convert, metadata dict, splits) for a checkpoint (see :func:`prepare`); under torchrun
    the ranks first agree on the splits ``used`` (see :func:`agree`). Where "val" is used, it must lie
    in the images the checkpoint's training held out (see :func:`check_held_out`)."""
    model, meta = load_model(model_opts.checkpoint)
    splits = load_splits(data_opts)
    check_dataset_matches(meta, splits, model_opts.checkpoint)
    if "val" in used:
        check_held_out(meta, splits, model_opts.checkpoint, data_opts.seed)
    agree(world, splits, used, model_opts.checkpoint)
    model, splits = prepare(model, meta, splits, model_opts, method, data_opts.seed)
    return model, meta.to_dict(), splits


def with_checkpoint_normalization(splits: dict, meta: CheckpointMeta) -> dict:
    """The splits normalized with the checkpoint's mean/std instead of the data set's own."""
    norm = meta.normalization
    mean, std = tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
    return {k: dataclasses.replace(ds, mean=mean, std=std) for k, ds in splits.items()}


def prepare(
    model: nn.Module, meta: CheckpointMeta, splits: dict, opts: ModelOptions, method: str = "qcfs", seed: int = 0
) -> tuple[nn.Module, dict]:
    """(model ready to convert, splits) for a loaded checkpoint.

    A float ReLU checkpoint requires ``opts.threshold_percentile``; a quantized one refuses it. Calibration
    images: ``opts.calibration_size`` images of the training split, drawn with ``seed``.
    """
    splits = with_checkpoint_normalization(splits, meta)
    percentile = opts.threshold_percentile
    is_float = meta.activations == FLOAT_RELU
    if is_float and percentile is None:
        raise ValueError(
            f"{opts.checkpoint}: a float ReLU checkpoint; give --threshold-percentile P (e.g. 99.9 or max) to set "
            "its thresholds from training data"
        )
    if percentile is None:
        return model, splits
    if not is_float:
        raise ValueError(
            f"{opts.checkpoint}: --threshold-percentile applies to float ReLU checkpoints (metadata "
            f"activations = {FLOAT_RELU!r}); this one is quantized"
        )
    if method != "qcfs":
        raise ValueError(
            "--threshold-percentile: a clipped float network converts with --method qcfs only (QFFS needs levels)"
        )
    if opts.calibration_size < 1:
        raise ValueError(f"--calibration-size must be >= 1, got {opts.calibration_size}")
    train = splits["train"]
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: opts.calibration_size]
    set_quantization(model, False)
    return clip_relus(model, train.normalized(idx), percentile=percentile), splits
