"""The commands' handlers: the checked ``argparse.Namespace`` (with ``world``, see dcsim.parallel.distributed.setup)
becomes the workflow's typed options (:func:`_pick`), the workflow runs, and its JSON result is returned."""

from __future__ import annotations

import dataclasses
from argparse import Namespace
from pathlib import Path
from typing import Any, TypeVar

from ..sim.semantics import Semantics
from ..workflows import options as o
from .checks import UsageError

T = TypeVar("T")


def _pick(cls: type[T], args: Namespace, **given: Any) -> T:
    """``cls`` from the arguments of the same names (``given`` first; ``semantics`` from --qffs-semantics): nested
    options are picked in turn, and lists (None for a tuple) become tuples. A rule of the options that the
    arguments break is a :class:`UsageError`."""
    semantics = getattr(args, "qffs_semantics", None)
    known = {**vars(args), "semantics": None if semantics is None else Semantics(semantics), **given}
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if dataclasses.is_dataclass(nested := getattr(o, str(f.type), None)) and f.name not in given:
            values[f.name] = _pick(nested, args)  # type: ignore[arg-type]
        elif f.name in known:
            values[f.name] = tuple(known[f.name] or ()) if str(f.type).startswith("tuple") else known[f.name]
    try:
        return cls(**values)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _says(args: Namespace) -> bool:
    """Whether this process prints the human summary: rank 0, with stdout not taken by ``--json -``."""
    return bool(args.world.main) and str(args.json) != "-"


def run(args: Namespace) -> dict:
    """The workflow of train, bench, reproduce, trace, eval or stream (imported here: most load matplotlib)."""
    from ..workflows import bench, continuous, evaluate, reproduce, train

    table: dict[str, tuple[Any, Any]] = {
        "train": (o.TrainOptions, train.train_checkpoint), "bench": (o.BenchOptions, bench.bench),
        "reproduce": (o.ReproduceOptions, reproduce.run), "trace": (o.TraceOptions, evaluate.trace),
        "eval": (o.EvalOptions, evaluate.evaluate), "stream": (o.StreamOptions, continuous.continuous)}  # fmt: skip
    cls, workflow = table[args.command]
    opts, data = _pick(cls, args), _pick(o.DataOptions, args)
    if args.command in ("trace", "eval", "stream"):
        return workflow(opts, _pick(o.ModelOptions, args), data, args.world, _says(args))
    return workflow(opts, data, args.world)


train = bench = reproduce = trace = eval = stream = run


def analyze(args: Namespace) -> dict:
    from ..workflows.evaluate import analyze_trace

    plots = args.plots or (args.json.parent if args.json and str(args.json) != "-" else Path("."))
    return analyze_trace(_pick(o.AnalyzeOptions, args, plots=plots), _says(args))


def report(args: Namespace) -> dict:
    from ..workflows.inputs import model_and_splits
    from ..workflows.report import report

    data, opts = _pick(o.DataOptions, args), _pick(o.ReportOptions, args)
    model, meta, splits = model_and_splits(_pick(o.ModelOptions, args), data, args.world, ("val", "test"))
    return report(model, meta, splits, args.out, opts, data, args.world, checkpoint=args.checkpoint)


def demo(args: Namespace) -> dict:
    from ..workflows.demo import demo, demo_training

    keys = ("epochs", "float_epochs", "lr", "train_batch_size", "quiet")
    train = demo_training(args.out, **{k: getattr(args, k) for k in keys})
    return demo(args.out, train, _pick(o.ReportOptions, args), args.seed, args.world)


def zoo(args: Namespace) -> dict:
    from ..io import zoo

    manifest = zoo.verify(zoo.export(args.checkpoint, args.out, zoo.shard_bytes(args.max_shard_mib)).parent)
    shards = [{k: v for k, v in sh.items() if k != "tensors"} for sh in manifest["shards"]]
    return {"folder": str(args.out), "shards": shards}


def import_(args: Namespace) -> dict:
    """``dcsim import official FILE.pth --out model.safetensors``."""
    from ..conversion.official import import_official

    kwargs = {"classes": tuple(args.classes.split(","))} if args.classes else {}
    out = import_official(args.file, args.out, bits=args.bits, **kwargs)
    if args.json is None:
        print(f"dcsim import: wrote {out}")
    return {"checkpoint": str(out), "source": str(args.file), "kind": args.kind, "bits": args.bits}
