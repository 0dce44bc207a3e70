"""One handler per command: the parsed arguments become the workflow's typed options, then the workflow runs.

Each takes the checked ``argparse.Namespace`` (with ``world``, see dcsim.distributed.setup) and
returns the command's JSON result.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

from ..sim.semantics import Semantics
from ..workflows import options as o

T = TypeVar("T")


def _pick(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """``cls`` from the arguments of the same names (``given`` first)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in vars(args).items() if k in names and k not in given}
    return cls(**values, **given)


def _data(args: argparse.Namespace) -> o.DataOptions:
    return _pick(o.DataOptions, args)


def _semantics(args: argparse.Namespace) -> Semantics | None:
    value = getattr(args, "qffs_semantics", None)
    return None if value is None else Semantics(value)


def _readout(args: argparse.Namespace) -> o.ReadoutOptions:
    return _pick(o.ReadoutOptions, args, semantics=_semantics(args))


def _says(args: argparse.Namespace) -> bool:
    """Whether this process prints the human summary: rank 0, with stdout not taken by ``--json -``."""
    return bool(args.world.main) and str(args.json) != "-"


def _report(args: argparse.Namespace) -> o.ReportOptions:
    return _pick(o.ReportOptions, args, semantics=_semantics(args), energy=_pick(o.EnergyOptions, args))


def train(args: argparse.Namespace) -> dict:
    from ..workflows.train import train_checkpoint

    return train_checkpoint(_pick(o.TrainOptions, args), _data(args), args.world)


def trace(args: argparse.Namespace) -> dict:
    from ..workflows.evaluate import trace

    opts = _pick(o.TraceOptions, args, readout=_readout(args))
    return trace(opts, _pick(o.ModelOptions, args), _data(args), args.world, _says(args))


def analyze(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from ..workflows.evaluate import analyze_trace

    plots = args.plots or (args.json.parent if args.json and str(args.json) != "-" else Path("."))
    return analyze_trace(_pick(o.AnalyzeOptions, args, plots=plots), _says(args))


def eval(args: argparse.Namespace) -> dict:
    from ..workflows.evaluate import evaluate

    opts = _pick(
        o.EvalOptions,
        args,
        readout=_readout(args),
        engine=_pick(o.EngineOptions, args),
        energy=_pick(o.EnergyOptions, args),
    )
    return evaluate(opts, _pick(o.ModelOptions, args), _data(args), args.world, _says(args))


def report(args: argparse.Namespace) -> dict:
    from ..workflows.inputs import model_and_splits
    from ..workflows.report import report

    data = _data(args)
    model, meta, splits = model_and_splits(_pick(o.ModelOptions, args), data, args.world, ("val", "test"))
    return report(model, meta, splits, args.out, _report(args), data, args.world, checkpoint=args.checkpoint)


def demo(args: argparse.Namespace) -> dict:
    from ..workflows.demo import demo, demo_training

    keys = ("epochs", "float_epochs", "lr", "train_batch_size", "quiet")
    train = demo_training(args.out, **{k: getattr(args, k) for k in keys})
    return demo(args.out, train, _report(args), args.seed, args.world)


def reproduce(args: argparse.Namespace) -> dict:
    from ..workflows.reproduce import run

    opts = _pick(o.ReproduceOptions, args, train=_pick(o.TrainOptions, args), report=_report(args))
    return run(opts, _data(args), args.world)


def zoo(args: argparse.Namespace) -> dict:
    from ..io import zoo

    manifest = zoo.verify(zoo.export(args.checkpoint, args.out, zoo.shard_bytes(args.max_shard_mib)).parent)
    return {
        "folder": str(args.out),
        "shards": [{k: v for k, v in sh.items() if k != "tensors"} for sh in manifest["shards"]],
    }


def bench(args: argparse.Namespace) -> dict:
    from ..workflows.bench import bench

    lists = {k: tuple(getattr(args, k) or ()) for k in ("models", "chunk", "graphs", "precision", "spike_convs")}
    return bench(_pick(o.BenchOptions, args, **lists), _data(args), args.world)


def stream(args: argparse.Namespace) -> dict:
    from ..workflows.continuous import continuous

    opts = _pick(o.StreamOptions, args, semantics=_semantics(args), engine=_pick(o.EngineOptions, args))
    return continuous(opts, _pick(o.ModelOptions, args), _data(args), args.world, _says(args))


def import_(args: argparse.Namespace) -> dict:
    """``dcsim import official FILE.pth --out model.safetensors``."""
    from ..conversion.official import import_official

    kwargs = {"classes": tuple(args.classes.split(","))} if args.classes else {}
    out = import_official(args.file, args.out, bits=args.bits, **kwargs)
    if args.json is None:
        print(f"dcsim import: wrote {out}")
    return {"checkpoint": str(out), "source": str(args.file), "kind": args.kind, "bits": args.bits}
