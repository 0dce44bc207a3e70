"""The ``dcsim`` command line: train, trace, analyze, eval, report, reproduce, demo, bench, stream, import, zoo.

Every command takes ``--json PATH`` ('-' for stdout) for machine-readable output. Exit codes:
0 success, 1 a run-time error (bad file, bad data, bad model), 2 bad command-line usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch

from .byom import add_import_parser, add_normalize_args
from .engine import PRECISIONS
from .models import ARCHITECTURES

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


# ------------------------------------------------------------------ data and models


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        choices=["digits", "cifar10", "imagefolder"],
        default="digits",
        help="digits: scikit-learn's bundled 8x8 digits (no files needed); cifar10: the python batches, "
        "class folders or the .tar.gz at --data-root; imagefolder: ImageNet-style train/ and val/ class folders",
    )
    p.add_argument("--data-root", type=Path, help="dataset location (cifar10, imagefolder)")
    p.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="validation images drawn from train (default: digits 300, cifar10 5000, imagefolder 10000)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split and of training")
    p.add_argument(
        "--loader",
        choices=["auto", "memory", "stream"],
        default="auto",
        help="memory: whole splits in memory; stream: image folders decoded batch by batch in worker "
        "processes (bounded memory); auto: stream image folders above 2 GiB decoded",
    )
    p.add_argument(
        "--loader-workers",
        type=int,
        default=None,
        help="with a streamed split: DataLoader worker processes per rank (default: CPUs / ranks; 0: none)",
    )


def load_splits(args: argparse.Namespace) -> dict:
    """{"train","val","test"} datasets for the command-line data arguments."""
    from . import data

    if args.dataset != "digits" and args.data_root is None:
        raise ValueError(f"--data-root is required for --dataset {args.dataset}")
    splits = data.open_splits(
        args.dataset, args.data_root, loader=getattr(args, "loader", "auto"), val_size=args.val_size, seed=args.seed
    )
    if any(isinstance(s, data.FolderSplit) for s in splits.values()):
        data.return_large_buffers()  # streamed: keep resident memory bounded over any number of batches
    return splits


def _loader_workers(args: argparse.Namespace) -> int:
    """--loader-workers, by default the usable CPUs shared among this node's ranks (at least 1)."""
    workers = getattr(args, "loader_workers", None)
    if workers is None:
        workers = max(
            1,
            (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
            // args.world.local_size,
        )
    if workers < 0:
        raise ValueError(f"--loader-workers must be >= 0, got {workers}")
    return workers


def _source(args: argparse.Namespace, split):
    """(images, labels) of a split for the pipeline: sharded over the ranks, streamed when the split is."""
    from .distributed import Sharded

    source = Sharded(split, args.world, workers=_loader_workers(args), progress=not getattr(args, "quiet", False))
    return source, split.labels


def _agree(args: argparse.Namespace, splits: dict, used: tuple[str, ...]) -> None:
    """Under torchrun: every rank must run the same dcsim, checkpoint and data (else an error names the rank)."""
    from . import __version__
    from .distributed import check_agreement, data_fingerprint
    from .fileio import sha256_file

    if not args.world.distributed:
        return
    items = {"dcsim version": __version__, "torch version": torch.__version__}
    if getattr(args, "checkpoint", None) is not None:
        items["checkpoint digest"] = sha256_file(args.checkpoint)
    items |= {f"{name} data fingerprint": data_fingerprint(splits[name]) for name in used}
    check_agreement(args.world, items)


def _tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    return ds.normalized(), ds.labels


def _check_dataset_matches(meta: dict, splits: dict, ckpt: Path) -> None:
    classes = list(splits["test"].classes)
    if list(meta.get("classes", [])) != classes:
        raise ValueError(f"{ckpt}: checkpoint classes {meta.get('classes')} differ from the data's {classes}")


# ------------------------------------------------------------------ commands


def limit_splits(splits: dict, train_subset: int | None = None, max_test: int | None = None, seed: int = 0) -> dict:
    """The splits with at most ``train_subset`` training and ``max_test`` test images (seeded random picks)."""
    out = dict(splits)
    for name, n in (("train", train_subset), ("test", max_test)):
        if n is None:
            continue
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(
                f"--{'train-subset' if name == 'train' else 'max-test'} must be a positive integer, got {n!r}"
            )
        if n < len(splits[name]):
            out[name] = splits[name].subset(
                torch.randperm(len(splits[name]), generator=torch.Generator().manual_seed(seed))[:n]
            )
    return out


def cmd_train(args: argparse.Namespace, splits: dict | None = None) -> dict:
    """Train and write the checkpoint ``args.out``; ``splits`` (default: loaded from the data arguments).

    The working folder (``--workdir``, default OUT.work/: per-epoch state for resuming) is held by
    this run from start to end (by rank 0 under torchrun): a second run into it is an error.
    """
    from .fileio import exclusive_folder

    with exclusive_folder(_train_workdir(args), held=args.world.main):
        return _train(args, splits)


def _train_workdir(args: argparse.Namespace) -> Path:
    return args.workdir or args.out.with_suffix(".work")


def _train(args: argparse.Namespace, splits: dict | None) -> dict:
    from .batching import DeviceSplit, StreamedSplit, random_crop_flip
    from .checkpoint import save_checkpoint
    from .data import Dataset
    from .distributed import DataParallel, write_if_main
    from .models import build_model, init_whitening
    from .training import TrainConfig, TrainRuntime, milestones, split_accuracy, train

    splits = limit_splits(splits or load_splits(args), getattr(args, "train_subset", None), seed=args.seed)
    tr, va, te = splits["train"], splits["val"], splits["test"]
    streamed = not isinstance(tr, Dataset)
    if streamed and args.budget_minutes is not None:
        raise ValueError(
            "--budget-minutes times batches of a split held in memory; with a streamed split "
            "(--loader stream) give --epochs and --float-epochs"
        )
    _agree(args, splits, ("train", "val", "test"))
    in_channels = tr.image_shape[0] if streamed else tr.images.shape[1]
    arch_kwargs = {"num_classes": len(tr.classes), "in_channels": in_channels, "bits": args.bits}
    if args.width is not None or args.arch == "small_cnn":
        arch_kwargs["width"] = args.width or 32  # small_cnn's default; the others default to the paper's 64
    torch.manual_seed(args.seed)  # weight initialisation
    model = build_model(args.arch, **arch_kwargs)
    if hasattr(model, "whiten") and not streamed:  # patch whitening from the training split only
        init_whitening(model, tr.normalized(slice(0, 5000)))
    config = TrainConfig(
        epochs=args.epochs,
        float_epochs=args.float_epochs,
        lr=args.lr,
        lr_decay=args.lr_decay,
        batch_size=args.train_batch_size,
        seed=args.seed,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        lsq_lr=args.lsq_lr,
        warmup_epochs=args.warmup_epochs,
        nesterov=args.nesterov,
        label_smoothing=args.label_smoothing,
    )
    world = args.world
    runtime = TrainRuntime(
        precision=args.train_precision, compile=args.compile, loader_workers=_loader_workers(args) if streamed else 0
    )
    device = world.device
    if streamed:  # augmented as decoded (random-resized crop and flip); --no-augment: the eval transform
        augment = None
        if not args.augment:
            tr = dataclasses.replace(tr, transform="eval")
    else:
        augment = random_crop_flip if args.augment else None
    data = {"normalization": (tr.mean, tr.std), "device": device}
    workdir = _train_workdir(args)
    t0 = time.perf_counter()
    plan, time_limit = None, None
    if args.budget_minutes is not None:
        config, plan = _budget_plan(model, tr, len(va), config, args, runtime, augment, data, workdir)
        time_limit = 60 * args.budget_minutes * 1.15  # past the plan by 15%: stop, the run is incomplete
        if args.world.main:
            print(
                f"[dcsim] budget {args.budget_minutes} min: {config.float_epochs} float + {config.epochs} LSQ epochs "
                f"(~{plan['seconds_per_epoch']['float']:.1f} / {plan['seconds_per_epoch']['lsq']:.1f} s each)",
                file=sys.stderr,
            )
    sync_bn = getattr(args, "sync_bn", False)
    parallel = DataParallel(world, sync_batchnorm=sync_bn) if world.distributed or sync_bn else None

    def images(ds):  # what train() takes: the uint8 images, or the streamed split itself
        return ds if streamed else ds.images

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
        progress=not args.quiet and world.main,
        normalization=data["normalization"],
        runtime=runtime,
        time_limit_s=time_limit,
        parallel=parallel,
    )
    train_seconds = time.perf_counter() - t0
    acc = {
        name: split_accuracy(
            model,
            StreamedSplit(ds, device, workers=runtime.loader_workers)
            if streamed
            else DeviceSplit(ds.images, ds.labels, ds.mean, ds.std, device),
        )
        for name, ds in (("val", va), ("test", te))
    }
    model.cpu()
    if args.epochs == 0:  # float pre-training only: a float ReLU checkpoint (see dcsim.byom, --normalize)
        from .lsq import set_quantization

        set_quantization(model, False)
    training = {
        "completed": history["completed"],
        "planned_epochs": history["planned_epochs"],
        "epochs": history["epochs"],
        "seconds": train_seconds,
        "device": _device_label(device),
        "runtime": {"precision": args.train_precision, "compile": args.compile},
        "budget_plan": plan,
        "milestones": milestones(history, (0.5, 0.8, 0.9, 0.92, 0.93, 0.935)),
        "train_images": len(tr),
    }
    for key in ("stopped", "resumed_at_epochs"):
        if key in history:
            training[key] = history[key]
    meta = {
        "architecture": args.arch,
        "arch_kwargs": arch_kwargs,
        "classes": list(tr.classes),
        "normalization": {"mean": list(tr.mean), "std": list(tr.std)},
        "dataset": args.dataset,
        "data_root": str(args.data_root) if args.data_root else None,
        "seed": args.seed,
        "accuracy": acc,
        "train_config": history["config"],
        "training": training,
        "ranks": world.size,
    }
    if args.epochs == 0:
        meta["activations"] = "float_relu"
    write_if_main(world, args.out, lambda path: save_checkpoint(path, model, meta))
    return {
        "checkpoint": str(args.out),
        "accuracy": acc,
        "train_seconds": train_seconds,
        "history": history["epochs"],
        "completed": history["completed"],
        "budget_plan": plan,
    }


def _device_label(device: torch.device) -> str:
    from .benchmark import device_name

    return device_name(device)


def _budget_plan(
    model, tr, val_size: int, config, args: argparse.Namespace, runtime, augment, data: dict, workdir: Path
):
    """(config, plan) for ``--budget-minutes``: measured and planned once, then reused from workdir/plan.json on resume."""
    from dataclasses import replace

    from .fileio import write_text_atomic
    from .training import budget_config

    saved = Path(workdir) / "plan.json"
    if saved.exists():
        plan = json.loads(saved.read_text())
        if plan.get("budget_minutes") == args.budget_minutes and plan.get("lsq_share") == args.lsq_share:
            return replace(config, float_epochs=plan["float_epochs"], epochs=plan["epochs"]), plan
    config, plan = budget_config(
        model,
        tr.images,
        tr.labels,
        val_size,
        config,
        args.budget_minutes,
        args.lsq_share,
        runtime,
        data["device"],
        data["normalization"],
        augment,
    )
    Path(workdir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(saved, json.dumps(plan, indent=2))
    return config, plan


def _load_model(path: Path):
    """(model, metadata) from a checkpoint file or a zoo folder (shards checked against their sha256)."""
    from . import zoo
    from .checkpoint import load_checkpoint
    from .models import build_model

    return zoo.load(path, build_model) if zoo.is_zoo(path) else load_checkpoint(path, build_model)


def _model_and_splits(args: argparse.Namespace, used: tuple[str, ...]):
    """(model ready to convert, metadata, splits) for ``args.checkpoint`` (see dcsim.byom: normalization, --normalize);
    under torchrun the ranks first agree on the splits ``used`` (see _agree)."""
    from .byom import prepare

    model, meta = _load_model(args.checkpoint)
    splits = load_splits(args)
    _check_dataset_matches(meta, splits, args.checkpoint)
    _agree(args, splits, used)
    model, splits = prepare(model, meta, splits, args)
    return model, meta, splits


def _readout(args: argparse.Namespace, method: str, bits: int | None, steps: int, tau: float):
    from .readout import OFFICIAL_DEMO_ALPHA, Readout

    if args.alpha == "paper":
        if bits is None and method == "qffs":
            raise ValueError(
                "the model's activations have no single bit width (mixed, or levels not 2^b - 1): "
                "give --alpha as a number"
            )
        return Readout.paper(method, bits, steps, tau=tau, kind=args.readout)
    alpha = OFFICIAL_DEMO_ALPHA if args.alpha == "official" else float(args.alpha)
    return Readout(args.readout, alpha, 1.0 if args.alpha == "official" else tau)


def _tau(args: argparse.Namespace, model, splits: dict) -> tuple[float, dict | None]:
    from .pipeline import calibrate

    if args.tau == "auto":
        report = calibrate(model, *_source(args, splits["val"]))
        return report["tau"], report
    tau = float(args.tau)
    if not tau > 0:
        raise ValueError(f"--tau must be > 0 or 'auto', got {args.tau}")
    return tau, None


def _semantics(args: argparse.Namespace, method: str) -> str | None:
    """The QFFS semantics asked for with --qffs-semantics (None: the method's default); an error with QCFS."""
    semantics = getattr(args, "qffs_semantics", None)
    if semantics is not None and method != "qffs":
        raise ValueError(f"--qffs-semantics applies to --method qffs only, got --method {method}")
    return semantics


def _says(args: argparse.Namespace) -> bool:
    """Whether this process prints the human summary: rank 0, with stdout not taken by ``--json -``."""
    world = getattr(args, "world", None)
    return (world is None or world.main) and str(args.json) != "-"


def cmd_trace(args: argparse.Namespace) -> dict:
    from .analysis import accuracy_vs_t, save_trace
    from .convert import convert
    from .distributed import write_if_main
    from .engine import Engine
    from .pipeline import record_trace
    from .selection import trace_identity

    model, _meta, splits = _model_and_splits(args, ("val", args.split))
    tau, calib = _tau(args, model, splits)
    net = convert(model, method=args.method, semantics=_semantics(args, args.method))
    engine = Engine(net, device=args.world.device)
    readout = _readout(args, args.method, net.bits, args.steps, tau)
    x, y = _source(args, splits[args.split])
    t0 = time.perf_counter()
    trace = record_trace(
        engine,
        x,
        y,
        args.steps,
        readout,
        {"model": str(args.checkpoint), "split": args.split, "dataset": args.dataset}
        | trace_identity(args.checkpoint),  # which network, its classes (checked when the trace is used)
        batch_size=args.batch_size,
        record_sums=args.sums,
    )
    write_if_main(args.world, args.out, lambda path: save_trace(path, trace))
    seconds = time.perf_counter() - t0
    if _says(args):
        print(
            f"{args.method} T={args.steps}: traced {len(y)} {args.split} samples in {seconds:.1f} s on "
            f"{args.world.size} rank(s), accuracy at T {accuracy_vs_t(trace)[-1]:.4f}: {args.out}"
        )
    return {
        "trace": str(args.out),
        "samples": len(y),
        "steps": args.steps,
        "readout": readout.to_dict(),
        "calibration": calib,
        "trace_seconds": seconds,
        "ranks": args.world.size,
    }


def _write_plots(report: dict, folder: Path, stem: str = "") -> list[str]:
    from . import plots

    folder.mkdir(parents=True, exist_ok=True)
    return [
        str(p)
        for p in (
            plots.plot_front(report, folder / f"{stem}front.png"),
            plots.plot_exit_histogram(report, folder / f"{stem}exit_histogram.png"),
            plots.plot_accuracy_confidence(report, folder / f"{stem}accuracy_confidence.png"),
        )
    ]


def cmd_analyze(args: argparse.Namespace) -> dict:
    from .analysis import analyze, load_trace

    trace = load_trace(args.trace)
    report = analyze(trace, resolution=args.resolution, tolerance=args.tolerance)
    plot_dir = args.plots or (args.json.parent if args.json and str(args.json) != "-" else Path("."))
    report["plots"] = _write_plots(report, plot_dir, stem=args.trace.stem + "_")
    if _says(args):
        s = report["selected"]
        print(
            f"baseline: accuracy {report['baseline']['accuracy']:.4f} at {report['baseline']['mean_steps']:.2f} steps"
        )
        print(
            f"selected th_c {s['threshold']:.4g}: accuracy {s['accuracy']:.4f}, mean steps {s['mean_steps']:.2f}, "
            f"saving {100 * s['saving']:.1f}%"
        )
    return report


def _from_trace(args: argparse.Namespace):
    """(readout, T, th_c) from the validation trace ``args.trace``: its readout and length, th_c selected on it."""
    from .analysis import analyze
    from .selection import load_trace_for, trace_readout

    trace = load_trace_for(args.trace, args.checkpoint, allow_test_split=getattr(args, "select_on_test", False))
    tm = trace.meta
    if tm.get("method") != args.method:
        raise ValueError(f"{args.trace}: trace method {tm.get('method')!r} differs from --method {args.method!r}")
    semantics = _semantics(args, args.method) or ("settle" if args.method == "qffs" else "constant")
    traced = tm.get("semantics", "constant")  # traces without the field predate the settle semantics
    if traced != semantics:
        raise ValueError(
            f"{args.trace}: the trace was recorded with the {traced!r} QFFS semantics but this run uses "
            f"{semantics!r}; pass --qffs-semantics {traced} or record the trace again"
        )
    threshold = analyze(trace, tolerance=args.tolerance)["selected"]["threshold"]
    return (*trace_readout(trace, args.trace), threshold)


def cmd_eval(args: argparse.Namespace) -> dict:
    from .convert import convert
    from .engine import Engine
    from .pipeline import evaluate_live

    model, _meta, splits = _model_and_splits(args, ("val", args.split))
    if (args.threshold is None) == (args.trace is None):
        raise ValueError("give exactly one of --threshold and --trace (a validation trace to select th_c from)")
    net = convert(model, method=args.method, semantics=_semantics(args, args.method))
    if args.trace is not None:
        readout, steps, threshold = _from_trace(args)
    else:
        steps, threshold = args.steps, args.threshold
        if steps is None:
            raise ValueError("--steps is required with --threshold")
        tau, _ = _tau(args, model, splits)
        readout = _readout(args, args.method, net.bits, steps, tau)
    engine = Engine(
        net,
        device=args.world.device,
        channels_last=args.channels_last,
        precision=args.precision,
        spike_convs=args.spike_convs,
    )
    x, y = _source(args, splits[args.split])
    res = evaluate_live(
        engine, x, y, steps, readout, threshold, batch_size=args.batch_size, chunk=args.chunk, graphs=args.graphs
    )
    out = res.to_dict() | {
        "steps": steps,
        "readout": readout.to_dict(),
        "split": args.split,
        "samples": len(y),
        "batch_size": args.batch_size,
        "device": str(engine.device),
    }
    if _says(args):
        print(
            f"{args.method} T={steps} th_c={threshold:.4g}: accuracy {res.accuracy:.4f}, mean steps {res.mean_steps:.2f}, "
            f"saving {100 * res.saving:.1f}%, spikes/neuron {res.spikes['pooled']:.3f}, {res.ms_per_inference:.3f} ms/inference"
        )
    return out


def run_report(model, meta: dict, splits: dict, out: Path, args: argparse.Namespace, checkpoint=None) -> dict:
    """Calibrate, then QCFS and QFFS with and without DC; writes report.md, report.json, traces and plots."""
    from .analysis import save_trace
    from .distributed import write_if_main
    from .fileio import write_text_atomic
    from .pipeline import ann_logits, calibrate, dynamic_confidence
    from .report import markdown_table, table_rows, write_json
    from .selection import trace_identity

    main = args.world.main
    val, test = _source(args, splits["val"]), _source(args, splits["test"])
    calib = calibrate(model, *val)
    tau = calib["tau"] if args.tau == "auto" else float(args.tau)
    ann_test = float((ann_logits(model, test[0]).argmax(1) == test[1]).float().mean())
    results, plots = [], []
    methods = ("qcfs",) if getattr(args, "normalize", None) else ("qcfs", "qffs")  # normalized float nets: no levels
    for method in methods:
        max_steps = args.qcfs_max_steps if method == "qcfs" else args.qffs_max_steps
        fixed = args.qcfs_steps if method == "qcfs" else args.qffs_steps
        if main:
            print(
                f"[dcsim] {method.upper()}: choosing T, tracing the validation split, selecting th_c, evaluating live",
                file=sys.stderr,
            )
        r = dynamic_confidence(
            model,
            method,
            {"val": val, "test": test},
            max_steps=max_steps,
            tau=tau,
            steps=fixed,
            semantics=args.qffs_semantics if method == "qffs" else None,
            tolerance=args.tolerance,
            device=args.world.device,
            batch_size=args.batch_size,
            meta={"model": meta.get("architecture"), "dataset": meta.get("dataset")}
            | (trace_identity(checkpoint) if checkpoint else {}),
        )
        if main:
            save_trace(out / f"{method}_val_trace.npz", r["trace"])
            plots += _write_plots(r["analysis"], out, stem=f"{method}_")
        results.append(
            {
                "method": method,
                "steps": r["steps"],
                "readout": r["readout"],
                "val_accuracy_vs_t": r["val_accuracy_vs_t"],
                "analysis": r["analysis"],
                "no_dc": r["no_dc"].to_dict(),
                "dc": r["dc"].to_dict(),
            }
        )
    rows = table_rows(ann_test, results)
    table = markdown_table(rows)
    summary = {
        "model": meta.get("architecture"),
        "dataset": meta.get("dataset"),
        "calibration": calib,
        "ann_test_accuracy": ann_test,
        "rows": rows,
        "results": results,
        "plots": plots,
        "device": str(args.world.device),
        "test_samples": len(test[1]),
        "ranks": args.world.size,
    }
    md = (
        f"# dcsim report: {meta.get('architecture')} on {meta.get('dataset')}\n\n"
        f"Quantized ANN test accuracy {100 * ann_test:.2f}%; temperature tau = {tau:.4f} "
        f"(validation ECE {calib['ece_before']:.4f} -> {calib['ece_after']:.4f}).\n"
        "T: " + ", ".join(f"{r['method'].upper()} {r['steps']}" for r in results) + " steps. "
        f"th_c selected on the validation split, numbers on the test split ({len(test[1])} images).\n\n"
        + table
        + "\n"
        + "".join(f"![{Path(p).stem}]({Path(p).name})\n" for p in plots)
    )
    if main:
        write_text_atomic(out / "report.md", md)
        write_json(out / "report.json", summary)
        print(table, file=sys.stderr)
    write_if_main(args.world, out, lambda _: None)  # every rank returns after rank 0 has written
    return summary


def cmd_report(args: argparse.Namespace) -> dict:
    model, meta, splits = _model_and_splits(args, ("val", "test"))
    return run_report(model, meta, splits, args.out, args, checkpoint=args.checkpoint)


def cmd_demo(args: argparse.Namespace) -> dict:
    """Train a small LSQ CNN on digits, then the full report, into args.out."""
    from .training import discard_workdir

    t0 = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    args.dataset, args.data_root, args.val_size = "digits", None, None
    args.arch, args.width, args.bits, args.augment = "small_cnn", 16, 2, False
    args.momentum, args.weight_decay, args.lr_decay, args.workdir = 0.9, 2.5e-5, 0.95, None
    _set_train_defaults(args)
    args.out = out / "model.safetensors"
    print("[dcsim] demo: training a 2-bit LSQ small CNN on scikit-learn's digits", file=sys.stderr)
    trained = cmd_train(args)
    model, meta = _load_model(args.out)
    summary = run_report(model, meta, load_splits(args), out, args, checkpoint=args.out)
    summary["train"] = {k: trained[k] for k in ("accuracy", "train_seconds")}
    summary["seconds"] = time.perf_counter() - t0
    discard_workdir(_train_workdir(args))  # the run succeeded: its resume state is not needed
    print(f"[dcsim] demo done in {summary['seconds']:.1f} s: {out / 'report.md'}", file=sys.stderr)
    return summary


def cmd_reproduce(args: argparse.Namespace) -> dict:
    from .reproduce import run

    return run(args)


def cmd_zoo(args: argparse.Namespace) -> dict:
    from . import zoo

    manifest = zoo.verify(zoo.export(args.checkpoint, args.out, zoo.shard_bytes(args.max_shard_mib)).parent)
    return {
        "folder": str(args.out),
        "shards": [{k: v for k, v in sh.items() if k != "tensors"} for sh in manifest["shards"]],
    }


def cmd_bench(args: argparse.Namespace) -> dict:
    from tqdm.auto import tqdm

    from .benchmark import (
        bench_case,
        device_name,
        markdown,
        progress_line,
        skipped_models,
        standard_set,
        stream_case,
        stream_markdown,
    )

    device = args.world.device
    cases = standard_set(device, quick=args.quick, full=args.full)
    if not args.models and skipped_models(cases):
        print(
            f"dcsim bench: models {', '.join(dict.fromkeys(c[0] for c in cases))}; skipped "
            f"{', '.join(skipped_models(cases))} (run with --full for them)",
            file=sys.stderr,
            flush=True,
        )
    if args.models:
        cases = [c for c in cases if c[0] in args.models] or [
            (m, meth, b) for m in args.models for meth in ("qcfs", "qffs") for b in (1, 32)
        ]
    graphs = args.graphs or (["on"] if device.type == "cuda" else ["off"])
    configs = [(g == "on", cf) for g in graphs for cf in ((0.0, 1.0) if g == "on" and args.masked else (0.0,))]
    spike_convs = [s == "on" for s in (args.spike_convs or (["off", "on"] if device.type == "cpu" else ["off"]))]
    if any(spike_convs) and device.type != "cpu":
        raise ValueError("--spike-convs on: event-driven convs run on the CPU only")
    networks = {}
    if args.checkpoint is not None:
        networks = _bench_networks(args, device)
        cases += [
            (label, method, batch)
            for label in networks
            for method in ("qcfs", "qffs")
            for batch in dict.fromkeys(b for _, _, b in standard_set(device, quick=True))
        ]
    rows, errors = [], []
    start = time.perf_counter()
    for done, (model, method, batch) in enumerate(tqdm(cases, desc="dcsim bench", disable=None)):
        if done:
            print(progress_line(done, len(cases), time.perf_counter() - start, "cases"), file=sys.stderr, flush=True)
        for chunk, precision, (use_graphs, compact_fraction), spikes in itertools.product(
            args.chunk, args.precision, configs, spike_convs
        ):
            if use_graphs and compact_fraction >= 1 and batch == 1:
                continue  # at batch 1 buckets and a masked batch are the same thing
            if spikes and PRECISIONS[precision] != torch.float32:
                continue  # event-driven convs are float32
            case = dict(
                model=model,
                method=method,
                batch=batch,
                chunk=chunk,
                graphs=use_graphs,
                compact_fraction=compact_fraction,
                precision=precision,
                spike_convs=spikes,
            )
            try:
                new = bench_case(
                    model,
                    method,
                    batch,
                    device,
                    repeats=args.repeats,
                    chunk=chunk,
                    channels_last=args.channels_last,
                    graphs=use_graphs,
                    compact_fraction=compact_fraction,
                    precision=precision,
                    spike_convs=spikes,
                    network=networks.get(model),
                )
            except RuntimeError as err:  # report the case and go on with the others
                errors.append({**case, "error": str(err).splitlines()[0]})
                print(f"dcsim bench: {case} failed: {errors[-1]['error']}", file=sys.stderr, flush=True)
                continue
            rows += new
            print(markdown(new).split("\n", 2)[2], end="", file=sys.stderr, flush=True)  # rows as they come
    print(markdown(rows), file=sys.stderr)
    stream_rows: list[dict[str, object]] = []
    if args.stream:
        stream_rows = [
            stream_case(model, method, args.stream, device, repeats=args.repeats, graphs=use_graphs)
            for model, method in dict.fromkeys((m, meth) for m, meth, _ in cases)
            for use_graphs in dict.fromkeys(g for g, _ in configs)
        ]
        print(stream_markdown(stream_rows), file=sys.stderr)
    if errors:
        print(f"dcsim bench: {len(errors)} case(s) failed", file=sys.stderr)
    return {"device": device_name(device), "rows": rows, "stream_rows": stream_rows, "errors": errors}


def _bench_networks(args: argparse.Namespace, device: torch.device) -> dict:
    """--checkpoint: {row label: (model, inputs, weights)}: the trained model on real test images and a
    random-weight twin of the same architecture on random inputs (initialised as the standard set's)."""
    from .benchmark import random_inputs
    from .models import build_model

    model, meta = _load_model(args.checkpoint)
    splits = load_splits(args)
    _check_dataset_matches(meta, splits, args.checkpoint)
    x, _ = _tensors(splits["test"])
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[:256]]
    torch.manual_seed(0)
    twin = build_model(meta["architecture"], **meta["arch_kwargs"]).train()
    with torch.no_grad():
        twin(torch.randn(4, *x.shape[1:]))
    name = f"{meta['architecture']} {meta['arch_kwargs'].get('width', '')}".strip()
    return {
        f"{name} trained": (model, x, "trained"),
        f"{name} random": (twin.eval(), random_inputs(len(x), tuple(x.shape[1:]), torch.device("cpu")), "random"),
    }


def _stream_setup(args: argparse.Namespace):
    """Model, engine, readout, T, th_c and the split for ``stream``."""
    from .convert import convert
    from .distributed import local_share
    from .engine import Engine

    model, _meta, splits = _model_and_splits(args, (args.split,))
    readout, steps, threshold = _from_trace(args)
    engine = Engine(
        convert(model, method=args.method, semantics=_semantics(args, args.method)),
        device=args.world.device,
        channels_last=args.channels_last,
        precision=args.precision,
        spike_convs=args.spike_convs,
    )
    return (
        engine,
        readout,
        steps,
        threshold,
        local_share(splits[args.split], args.world, getattr(args, "loader_workers", None)),
    )


def cmd_stream(args: argparse.Namespace) -> dict:
    from .benchmark import stream_vs_static
    from .latency import LatencyHistogram

    engine, readout, steps, threshold, (x, y) = _stream_setup(args)
    out = (
        stream_vs_static(
            engine,
            x.to(engine.device),
            y,
            args.slots,
            steps,
            readout,
            threshold,
            repeats=args.repeats if args.compare else 1,
            compare=args.compare,
            graphs=args.graphs,
        )
        if len(y)
        else None
    )
    if args.world.distributed:  # every rank streamed its own share: totals over the ranks
        ranks = [
            r | {"samples": n}
            for r, n in zip(args.world.all_gather(out), args.world.all_gather(len(y)), strict=True)
            if r is not None
        ]
        total = sum(r["samples"] for r in ranks)
        latency = functools.reduce(
            LatencyHistogram.merge,
            (LatencyHistogram.from_dict(r["stream"]["latency_histogram"]) for r in ranks),
            LatencyHistogram(),
        )
        out = {
            "stream": {
                "throughput": sum(r["stream"]["throughput"] for r in ranks),
                "accuracy": sum(r["stream"]["accuracy"] * r["samples"] for r in ranks) / total,
                "samples": total,
                "latency_ms": latency.summary(),
            },
            "ranks": ranks,
        }
        if _says(args):
            lat = out["stream"]["latency_ms"]
            print(
                f"stream S={args.slots} on {args.world.size} ranks: {out['stream']['throughput']:.1f} samples/s "
                f"in total, accuracy {out['stream']['accuracy']:.4f}, latency over all ranks p50 {lat['p50']:.2f} ms "
                f"p99 {lat['p99']:.2f} ms"
            )
        return out
    if out is None:  # only one rank's share of a split may be empty
        raise ValueError("no images: the split is empty")
    summary = out["stream"]
    if _says(args):
        print(
            f"stream S={args.slots}: {summary['throughput']:.1f} samples/s, accuracy {summary['accuracy']:.4f}, "
            f"latency p50 {summary['latency_ms']['p50']:.2f} ms p99 {summary['latency_ms']['p99']:.2f} ms, "
            f"occupancy {summary['occupancy']:.2f}"
        )
        if args.compare:
            print(
                f"throughput vs static batches without early exit: {out['throughput_ratio_vs_static_no_dc']:.2f}x, "
                f"vs static batches with early exit: {out['throughput_ratio_vs_static_dc']:.2f}x"
            )
    return out


# ------------------------------------------------------------------ parser


def _add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tau", default="auto", help="temperature: 'auto' (fit on val) or a number > 0")
    p.add_argument(
        "--tolerance", type=float, default=0.0, help="accepted accuracy drop below the baseline when selecting th_c"
    )
    p.add_argument(
        "--qcfs-steps", type=int, help="T for QCFS (default: the smallest T reaching the ANN's val accuracy)"
    )
    p.add_argument("--qffs-steps", type=int, help="T for QFFS (default: as for QCFS)")
    p.add_argument("--qcfs-max-steps", type=int, default=64, help="largest T considered for QCFS")
    p.add_argument("--qffs-max-steps", type=int, default=12, help="largest T considered for QFFS")
    _add_semantics_arg(p)


def _add_semantics_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--qffs-semantics",
        choices=["settle", "constant"],
        help="QFFS only: 'settle' (default: image and biases drive the first Qp steps, then the network "
        "settles; holds accuracy beyond T = Qp) or 'constant' (image and biases at every step)",
    )


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    """Engine options of eval and stream: --precision and --spike-convs."""
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="conv/linear precision: fp32 (default), tf32 (GPU), bf16, fp16 (reduced; spikes may differ)",
    )
    p.add_argument(
        "--spike-convs",
        action="store_true",
        help="CPU: event-driven convs of spike maps (sum only the weights of spiking inputs; float32)",
    )


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """Options of train and reproduce beyond the architecture and the basic schedule."""
    p.add_argument(
        "--augment",
        action="store_true",
        help="random crop (pad 4) and horizontal flip, in batches on the device; with a streamed split "
        "(--loader stream): random-resized crop and flip as each image is decoded",
    )
    p.add_argument(
        "--schedule",
        choices=["exponential", "cosine"],
        default="exponential",
        help="exponential: lr * lr-decay^epoch; cosine: per stage, warm-up then cosine to zero (per batch)",
    )
    p.add_argument("--lsq-lr", type=float, help="cosine: peak learning rate of the LSQ stage (default lr / 10)")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="cosine: linear warm-up of each stage, in epochs")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument(
        "--train-precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="training forward/backward: auto = bf16 autocast and channels_last on CUDA, float32 elsewhere",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward pass (GPU, many epochs)")
    p.add_argument(
        "--budget-minutes",
        type=float,
        help="set the float and LSQ epochs to fill this much training time (measured on this machine)",
    )
    p.add_argument("--lsq-share", type=float, default=0.4, help="with --budget-minutes: the LSQ stage's share of it")
    p.add_argument("--train-subset", type=int, help="train on this many training images (seeded random pick)")
    p.add_argument("--workdir", type=Path, help="per-epoch state for resuming (default: OUT.work/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun: batch norm over the global batch (SyncBatchNorm on CUDA, GlobalBatchNorm2d on the CPU)",
    )


def _set_train_defaults(args: argparse.Namespace) -> None:
    """Give ``args`` the defaults of the training options it lacks (for commands that train without offering them)."""
    parser = argparse.ArgumentParser(add_help=False)
    _add_train_args(parser)
    for key, value in vars(parser.parse_args([])).items():
        args.__dict__.setdefault(key, value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcsim", description="Spiking networks from LSQ CNNs with Dynamic Confidence."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", type=Path, help="write the result as JSON to this file ('-': stdout)")
        p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
        p.add_argument("--batch-size", type=int, default=256, help="samples simulated together")
        return p

    p = command("train", "float pre-training and LSQ fine-tuning; writes a safetensors checkpoint")
    _add_data_args(p)
    p.add_argument("--arch", default="small_cnn", choices=sorted(ARCHITECTURES))
    p.add_argument(
        "--width",
        type=int,
        help="base width: channels of the first conv (default: small_cnn 32; "
        "resnet18, resnet50, vgg16 64, the paper's networks)",
    )
    p.add_argument("--bits", type=int, default=2, help="activation bits b (levels 0..2^b-1)")
    p.add_argument("--epochs", type=int, default=60, help="LSQ fine-tuning epochs")
    p.add_argument("--float-epochs", type=int, default=0, help="float (ReLU) pre-training epochs before LSQ")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--lr-decay", type=float, default=0.95, help="exponential decay of the learning rate per epoch")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=2.5e-5)
    p.add_argument("--train-batch-size", dest="train_batch_size", type=int, default=32)
    _add_train_args(p)
    p.add_argument("--out", type=Path, required=True, help="checkpoint path (.safetensors)")
    p.set_defaults(func=cmd_train)

    def readout_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--method", choices=["qcfs", "qffs"], required=True)
        p.add_argument("--readout", choices=["max_softmax", "entropy", "margin"], default="max_softmax")
        p.add_argument(
            "--alpha", default="paper", help="'paper' (2^b-1 QFFS, T QCFS), 'official' (30, tau 1) or a number"
        )
        p.add_argument("--tau", default="auto", help="temperature: 'auto' (fit on val) or a number > 0")
        p.add_argument("--split", choices=["train", "val", "test"], default="val")
        _add_semantics_arg(p)

    p = command("trace", "record a full-length run (prediction and score per sample and step) to .npz")
    p.add_argument("checkpoint", type=Path)
    _add_data_args(p)
    readout_args(p)
    p.add_argument("--steps", type=int, required=True, help="T")
    p.add_argument("--sums", action="store_true", help="also store the running sums S_t [N, T, K]")
    p.add_argument("--out", type=Path, required=True, help="trace file (.npz)")
    add_normalize_args(p)
    p.set_defaults(func=cmd_trace)

    p = command("analyze", "Pareto front, selected threshold, oracle and plots from a trace")
    p.add_argument("trace", type=Path)
    p.add_argument("--resolution", type=float, default=0.1, help="grid of the front (the paper: 0.1)")
    p.add_argument("--tolerance", type=float, default=0.0, help="accepted accuracy drop when selecting th_c")
    p.add_argument("--plots", type=Path, help="folder for the PNG plots (default: beside --json)")
    p.set_defaults(func=cmd_analyze)

    p = command("eval", "live early exit on a split: accuracy, mean steps, saving, spikes, wall time")
    p.add_argument("checkpoint", type=Path)
    _add_data_args(p)
    readout_args(p)
    p.set_defaults(split="test")
    p.add_argument("--steps", type=int, help="T (taken from the trace with --trace)")
    p.add_argument("--threshold", type=float, help="th_c in [0, 1]; 1 disables early exit")
    p.add_argument("--trace", type=Path, help="validation trace to select th_c from")
    p.add_argument("--select-on-test", action="store_true", help="accept a --trace of the test split")
    p.add_argument("--tolerance", type=float, default=0.0)
    p.add_argument("--chunk", type=int, default=1, help="steps per conv call (faster at small batches; same results)")
    p.add_argument("--channels-last", action="store_true", help="run the engine in the channels_last layout")
    p.add_argument("--graphs", action="store_true", help="step loop as CUDA graphs (GPU; same results)")
    _add_engine_args(p)
    add_normalize_args(p)
    p.set_defaults(func=cmd_eval)

    p = command("report", "QCFS and QFFS with and without Dynamic Confidence: Table-1 report and plots")
    p.add_argument("checkpoint", type=Path)
    _add_data_args(p)
    _add_report_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_normalize_args(p)
    p.set_defaults(func=cmd_report)

    p = command("bench", "standard benchmark set: engine vs official-style eager simulator vs ANN forward")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="small models only (small_cnn, resnet18; the default on a CPU: a few minutes)",
    )
    size.add_argument(
        "--full", action="store_true", help="resnet18, vgg16 and resnet50 (the default on a GPU; long on a CPU)"
    )
    p.add_argument("--models", nargs="+", choices=["small_cnn", "resnet18", "vgg16", "resnet50"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, nargs="+", default=[1], help="engine steps computed layer-major at a time")
    p.add_argument("--channels-last", action="store_true", help="run the engine in the channels_last layout")
    p.add_argument(
        "--graphs",
        nargs="+",
        choices=["on", "off"],
        help="engine step loop as CUDA graphs, eager, or both (default: on for cuda, off for cpu)",
    )
    p.add_argument(
        "--masked",
        action="store_true",
        help="with graphs: also time a masked fixed batch (no compaction) beside the bucketed one",
    )
    p.add_argument(
        "--precision",
        nargs="+",
        choices=list(PRECISIONS),
        default=["fp32"],
        help="engine conv/linear precisions to time (all but fp32 reduced; see dcsim.Engine)",
    )
    p.add_argument(
        "--spike-convs",
        nargs="+",
        choices=["on", "off"],
        help="event-driven convs of spike maps (float32, CPU), dense convs, or both (default: both on cpu)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="also time this trained network (checkpoint or zoo folder) on real "
        "test images of --dataset, beside a random-weight twin",
    )
    _add_data_args(p)
    p.add_argument(
        "--stream",
        type=int,
        metavar="SLOTS",
        help="also time streaming with SLOTS slots against static batches of SLOTS (per model and method)",
    )
    p.set_defaults(func=cmd_bench)

    p = command("stream", "continuous batching with early exit over a split (slots refilled as samples exit)")
    p.add_argument("checkpoint", type=Path)
    _add_data_args(p)
    p.add_argument("--method", choices=["qcfs", "qffs"], required=True)
    p.add_argument("--trace", type=Path, required=True, help="validation trace: T, readout and th_c come from it")
    p.add_argument("--select-on-test", action="store_true", help="accept a --trace of the test split")
    p.add_argument("--tolerance", type=float, default=0.0)
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--slots", type=int, default=64, help="S: samples in flight")
    _add_semantics_arg(p)
    p.add_argument("--compare", action="store_true", help="also time static batches of S with and without early exit")
    p.add_argument("--graphs", action="store_true", help="step loops as CUDA graphs (GPU; same results)")
    p.add_argument("--channels-last", action="store_true", help="run the engine in the channels_last layout")
    _add_engine_args(p)
    p.add_argument("--repeats", type=int, default=2, help="with --compare: interleaved rounds, best time of each")
    add_normalize_args(p)
    p.set_defaults(func=cmd_stream)

    add_import_parser(command("import", "import a checkpoint trained elsewhere as a dcsim checkpoint"))

    p = command("reproduce", "train, convert, calibrate, trace, select th_c, exit early and report in Table 1's layout")
    _add_data_args(p)
    p.add_argument("--arch", default="resnet18", choices=sorted(ARCHITECTURES))
    p.add_argument("--width", type=int, help="base width (default: the paper's network)")
    p.add_argument("--bits", type=int, default=2, help="activation bits b")
    p.add_argument("--float-epochs", type=int, default=30, help="float epochs (without --budget-minutes)")
    p.add_argument("--epochs", type=int, default=15, help="LSQ epochs (without --budget-minutes)")
    p.add_argument("--lr", type=float, default=0.2, help="peak learning rate of the float stage")
    p.add_argument("--lr-decay", type=float, default=0.95, help="with --schedule exponential: decay per epoch")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--train-batch-size", dest="train_batch_size", type=int, default=512)
    _add_train_args(p)
    p.set_defaults(augment=True, schedule="cosine", lsq_lr=0.02, warmup_epochs=1.0, nesterov=True)
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no crop/flip augmentation")
    p.add_argument(
        "--min-accuracy",
        type=float,
        default=0.5,
        help="below this 2-bit ANN test accuracy the model counts as untrained: no report",
    )
    p.add_argument("--max-test", type=int, help="evaluate on this many test images (seeded random pick)")
    p.add_argument("--tolerance", type=float, default=0.0, help="accepted accuracy drop when selecting th_c")
    p.add_argument("--qcfs-steps", type=int, help="T for QCFS (default: the paper's, else chosen on validation)")
    p.add_argument("--qffs-steps", type=int, help="T for QFFS (as for QCFS)")
    p.add_argument("--qcfs-max-steps", type=int, default=64, help="largest T considered when T is chosen")
    p.add_argument("--qffs-max-steps", type=int, default=12, help="largest T considered when T is chosen")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=cmd_reproduce)

    p = command("zoo", "split a checkpoint into sha256-checked safetensors shards (a folder other commands accept)")
    p.add_argument("checkpoint", type=Path, help="checkpoint file, or a zoo folder to re-shard")
    p.add_argument("--out", type=Path, required=True, help="zoo folder (manifest.json and shards)")
    p.add_argument("--max-shard-mib", type=float, default=16.0, help="largest shard in MiB")
    p.set_defaults(func=cmd_zoo)

    p = command("demo", "the end-to-end demo on scikit-learn's digits (trains, converts, reports)")
    _add_report_args(p)
    p.add_argument("--out", type=Path, default=Path("dcsim-demo"), help="output folder")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--float-epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--train-batch-size", dest="train_batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .distributed import setup, teardown

    args = build_parser().parse_args(argv)
    where = ""
    try:
        args.world = setup(args.command, getattr(args, "device", None))
        if args.world.distributed:
            where = f" (rank {args.world.rank} of {args.world.size})"
        result = args.func(args)
    except (ValueError, TypeError, FileNotFoundError, IndexError) as err:
        print(f"dcsim {args.command}{where}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        teardown()
    if args.json is not None and args.world.main:
        from .report import write_json

        write_json(args.json, result)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
