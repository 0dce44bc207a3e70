"""Training a checkpoint: float pre-training and LSQ fine-tuning on the data options' splits."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..data import Dataset
from ..data.augment import random_crop_flip
from ..io.atomic import exclusive_folder, write_text_atomic
from ..io.checkpoint import save_checkpoint
from ..models import build_model
from ..models.lsq import set_quantization
from ..parallel.distributed import DataParallel, World, write_if_main
from ..training import FloatStage, TrainConfig, TrainRuntime, budget_config, milestones, split_accuracy, train
from ..training.device_batches import DeviceSplit, DiskSplit
from ..training.loop import discard_workdir
from ..training.muon import fast_recipe_init_
from .benchmark import device_name
from .inputs import agree, limit_splits, load_splits, loader_workers
from .options import DataOptions, TrainOptions


def train_checkpoint(opts: TrainOptions, data: DataOptions, world: World, splits: dict | None = None) -> dict:
    """Train and write the checkpoint ``opts.out``; ``splits`` (default: loaded from ``data``).

    The working folder (``opts.working_folder``: per-epoch state for resuming) is held by this run
    from start to end (by rank 0 under torchrun): a second run into it is an error. Once the
    checkpoint of a completed run is written, the run's files in it are removed (and the folder,
    if that empties it); a run stopped by its time limit keeps them, to resume.
    Returns the checkpoint path, accuracy {"val", "test"} (fractions), train_seconds, history and
    the budget plan.
    """
    splits = splits or load_splits(data)  # a bad data root fails before the working folder is made
    with exclusive_folder(opts.working_folder, held=world.main):
        trained = _train(opts, data, world, splits)
    if world.main and trained["completed"]:
        discard_workdir(opts.working_folder)  # the per-epoch state of a finished run
    return trained


def _train(opts: TrainOptions, data: DataOptions, world: World, splits: dict) -> dict:
    splits = limit_splits(splits, opts.train_subset, seed=data.seed)
    tr, va, te = splits["train"], splits["val"], splits["test"]
    from_disk = not isinstance(tr, Dataset)
    if from_disk and opts.budget_minutes is not None:
        raise ValueError(
            "--budget-minutes times batches of a split held in memory; with a split read from disk "
            "(--loader disk) give --epochs and --float-epochs"
        )
    if from_disk and opts.cutout:
        raise ValueError(
            "--cutout applies to a split held in memory; a split read from disk (--loader disk) is "
            "augmented as it is decoded, without cutout"
        )
    agree(world, splits, ("train", "val", "test"))
    in_channels = tr.image_shape[0] if from_disk else tr.images.shape[1]
    arch_kwargs = {"num_classes": len(tr.classes), "in_channels": in_channels, "bits": opts.bits}
    if opts.width is not None or opts.arch == "small_cnn":
        arch_kwargs["width"] = opts.width or 32  # small_cnn's default; the others default to the paper's 64
    torch.manual_seed(data.seed)  # weight initialisation
    model = build_model(opts.arch, **arch_kwargs)
    if opts.optimizer == "muon":
        fast_recipe_init_(model)
    config = opts.config(data.seed)
    runtime = TrainRuntime(
        precision=opts.train_precision,
        channels_last=opts.train_channels_last,
        compile=opts.compile,
        loader_workers=loader_workers(data, world) if from_disk else 0,
    )
    device = world.device
    if from_disk:  # augmented as decoded (random-resized crop and flip); --no-augment: the eval transform
        augment = None
        if not opts.augment:
            tr = dataclasses.replace(tr, transform="eval")
    else:
        augment = (
            functools.partial(random_crop_flip, padding=opts.crop_padding, cutout_size=opts.cutout)
            if opts.augment
            else None
        )
    normalization = (tr.mean, tr.std)
    workdir = opts.working_folder
    t0 = time.perf_counter()
    plan, time_limit = None, None
    if opts.budget_minutes is not None:
        config, plan = _budget_plan(model, tr, len(va), config, opts, runtime, augment, device, normalization)
        time_limit = 60 * opts.budget_minutes * 1.15  # past the plan by 15%: stop, the run is incomplete
        if world.main:
            print(
                f"[dcsim] budget {opts.budget_minutes} min: {config.float_epochs} float + {config.epochs} LSQ epochs "
                f"(~{plan['seconds_per_epoch']['float']:.1f} / {plan['seconds_per_epoch']['lsq']:.1f} s each)",
                file=sys.stderr,
            )
    parallel = DataParallel(world, sync_batchnorm=opts.sync_bn) if world.distributed or opts.sync_bn else None

    def images(ds: Any) -> Any:  # what train() takes: the uint8 images, or the split read from disk itself
        return ds if from_disk else ds.images

    float_stage = None
    if opts.float_stage is not None:
        float_stage = FloatStage(opts.float_stage, _float_setup(opts, data, world, arch_kwargs, len(tr), from_disk))
    history = train(
        model,
        images(tr),
        tr.labels,
        images(va),
        va.labels,
        config,
        augment=augment,
        workdir=workdir,
        device=device,
        progress=not opts.quiet and world.main,
        normalization=normalization,
        runtime=runtime,
        time_limit_s=time_limit,
        parallel=parallel,
        float_stage=float_stage,
    )
    train_seconds = time.perf_counter() - t0
    acc = {
        name: split_accuracy(
            model,
            DiskSplit(ds, device, workers=runtime.loader_workers)
            if from_disk
            else DeviceSplit(ds.images, ds.labels, ds.mean, ds.std, device),
        )
        for name, ds in (("val", va), ("test", te))
    }
    model.cpu()
    if opts.epochs == 0:  # float pre-training only: a float ReLU checkpoint (workflows.inputs, --threshold-percentile)
        set_quantization(model, False)
    training = {
        "completed": history["completed"],
        "planned_epochs": history["planned_epochs"],
        "epochs": history["epochs"],
        "seconds": train_seconds,
        "device": device_name(device),
        "runtime": {
            "precision": opts.train_precision,
            "channels_last": opts.train_channels_last,
            "compile": opts.compile,
        },
        "budget_plan": plan,
        "milestones": milestones(history, (0.5, 0.8, 0.9, 0.92, 0.93, 0.935)),
        "train_images": len(tr),
    }
    for key in ("stopped", "resumed_at_epochs", "float_stage", "bn_reestimate"):
        if key in history:
            training[key] = history[key]
    meta = {
        "architecture": opts.arch,
        "arch_kwargs": arch_kwargs,
        "classes": list(tr.classes),
        "normalization": {"mean": list(tr.mean), "std": list(tr.std)},
        "dataset": data.dataset,
        "data_root": str(data.data_root) if data.data_root else None,
        "seed": data.seed,
        "val_size": len(va),
        "accuracy": acc,
        "train_config": history["config"],
        "training": training,
        "ranks": world.size,
    }
    if opts.epochs == 0:
        meta["activations"] = "float_relu"
    write_if_main(world, opts.out, lambda path: save_checkpoint(path, model, meta))
    return {
        "checkpoint": str(opts.out),
        "accuracy": acc,
        "train_seconds": train_seconds,
        "history": history["epochs"],
        "completed": history["completed"],
        "budget_plan": plan,
    }


def _float_setup(
    opts: TrainOptions, data: DataOptions, world: World, arch_kwargs: dict, train_images: int, from_disk: bool
) -> dict:
    """What shapes the float stage besides the training configuration: stored with a --float-stage file
    and compared when it is read (a different data root holding the same data set may share it)."""
    return {
        "arch": opts.arch,
        "arch_kwargs": arch_kwargs,
        "dataset": data.dataset,
        "val_size": data.val_size,
        "train_subset": opts.train_subset,
        "train_images": train_images,
        "streamed": from_disk,  # the field's name in stored float stages
        "augment": opts.augment,
        "crop_padding": opts.crop_padding,
        "cutout": opts.cutout,
        "train_precision": opts.train_precision,
        "train_channels_last": opts.train_channels_last,
        "compile": opts.compile,
        "ranks": world.size,
        "sync_bn": opts.sync_bn,
    }


def _budget_plan(
    model: torch.nn.Module,
    tr: Any,
    val_size: int,
    config: TrainConfig,
    opts: TrainOptions,
    runtime: TrainRuntime,
    augment: Any,
    device: torch.device,
    normalization: Any,
) -> tuple[TrainConfig, dict]:
    """(config, plan) for ``--budget-minutes``: measured and planned once, then reused from workdir/plan.json on resume."""
    saved = Path(opts.working_folder) / "plan.json"
    if saved.exists():
        plan = json.loads(saved.read_text())
        if plan.get("budget_minutes") == opts.budget_minutes and plan.get("lsq_share") == opts.lsq_share:
            return dataclasses.replace(config, float_epochs=plan["float_epochs"], epochs=plan["epochs"]), plan
    assert opts.budget_minutes is not None
    config, plan = budget_config(
        model,
        tr.images,
        tr.labels,
        val_size,
        config,
        opts.budget_minutes,
        opts.lsq_share,
        runtime,
        device,
        normalization,
        augment,
    )
    saved.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(saved, json.dumps(plan, indent=2))
    return config, plan
