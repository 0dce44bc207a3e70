"""``dcsim bench``: the standard benchmark set (engine vs the eager simulator vs the ANN forward) over
chunk, precision, CUDA graphs and event-driven convs, optionally a trained network and streaming."""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import allocator
from ..models import build_model
from ..parallel.distributed import World
from ..sim.engine import PRECISIONS
from .benchmark import (
    bench_case,
    device_name,
    markdown,
    progress_line,
    random_inputs,
    skipped_models,
    standard_set,
    stream_case,
    stream_markdown,
)
from .inputs import check_dataset_matches, load_model, load_splits, tensors
from .options import BenchOptions, DataOptions
from .processes import in_fresh_processes, median_rows

ROW_IDENTITY = ("model", "method", "stem", "batch", "mode", "engine", "chunk", "weights")
"""The keys that name a row: the same in every process of a measurement over processes."""
TIMED_FIELDS = (
    "ms_per_inference", "cpu_ms_per_inference", "ms_per_step", "ann_ms_per_inference", "ann_graph_ms_per_inference",
    "ratio_to_ann_per_step", "ratio_to_ann_graph_per_step", "reference_ms_per_inference", "speedup_vs_reference",
    "time_saving", "time_saving_over_step_saving", "time_saving_over_spike_saving", "ideal_saving",
    "ideal_saving_over_step_saving", "time_saving_over_ideal_saving",
)  # fmt: skip
"""A row's fields that are times or ratios of times: their median over the processes."""


def bench(opts: BenchOptions, data: DataOptions, world: World) -> dict:
    """Rows of timings per case (see dcsim.workflows.benchmark); failed cases are reported, not raised. The C
    allocator's thresholds are fixed first (:func:`dcsim.allocator.steady`; the JSON's ``allocator``).
    With ``opts.processes`` > 1 the whole set runs in that many fresh processes (:func:`across_processes`)."""
    if opts.processes > 1:
        return across_processes(opts, data, world)
    memory = allocator.steady()  # the timings' allocator, recorded with them (dcsim.allocator)
    device = world.device
    cases = standard_set(device, quick=opts.quick, full=opts.full)
    if not opts.models and skipped_models(cases):
        print(
            f"dcsim bench: models {', '.join(dict.fromkeys(c[0] for c in cases))}; skipped "
            f"{', '.join(skipped_models(cases))} (run with --full for them)",
            file=sys.stderr,
            flush=True,
        )
    if opts.models:
        cases = [c for c in cases if c[0] in opts.models] or [
            (m, meth, b) for m in opts.models for meth in ("qcfs", "qffs") for b in (1, 32)
        ]
    if opts.batches:
        cases = [(m, meth, b) for m, meth in dict.fromkeys(c[:2] for c in cases) for b in opts.batches]
    graphs = opts.graphs or (["on"] if device.type == "cuda" else ["off"])
    configs = [(g == "on", cf) for g in graphs for cf in ((None, 1.0) if g == "on" and opts.masked else (None,))]
    spike_convs = [s == "on" for s in (opts.spike_convs or (["off", "on"] if device.type == "cpu" else ["off"]))]
    if any(spike_convs) and device.type != "cpu":
        raise ValueError("--spike-convs on: event-driven convs run on the CPU only")
    networks = {}
    if opts.checkpoint is not None:
        networks = _trained_networks(opts, data)
        cases += [
            (label, method, batch)
            for label in networks
            for method in ("qcfs", "qffs")
            for batch in opts.batches or dict.fromkeys(b for _, _, b in standard_set(device, quick=True))
        ]
    rows, errors = [], []
    start = time.perf_counter()
    for done, (model, method, batch) in enumerate(tqdm(cases, desc="dcsim bench", disable=None)):
        if done:
            print(progress_line(done, len(cases), time.perf_counter() - start, "cases"), file=sys.stderr, flush=True)
        for chunk, precision, (use_graphs, compact_fraction), spikes in itertools.product(
            opts.chunk, opts.precision, configs, spike_convs
        ):
            if use_graphs and compact_fraction == 1.0 and batch == 1:
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
                    repeats=opts.repeats,
                    chunk=chunk,
                    channels_last=opts.channels_last,
                    graphs=use_graphs,
                    compact_fraction=compact_fraction,
                    precision=precision,
                    spike_convs=spikes,
                    network=networks.get(model),
                    stem=opts.stem(method),
                    ideal=opts.ideal,
                )
            except RuntimeError as err:  # report the case and go on with the others
                errors.append({**case, "error": str(err).splitlines()[0]})
                print(f"dcsim bench: {case} failed: {errors[-1]['error']}", file=sys.stderr, flush=True)
                continue
            rows += new
            print(markdown(new).split("\n", 2)[2], end="", file=sys.stderr, flush=True)  # rows as they come
    print(markdown(rows), file=sys.stderr)
    stream_rows: list[dict[str, object]] = []
    if opts.stream:
        stream_rows = [
            stream_case(
                model,
                method,
                opts.stream,
                device,
                repeats=opts.repeats,
                graphs=use_graphs,
                stem=opts.stem(method),
                network=networks.get(model),
            )
            for model, method in dict.fromkeys((m, meth) for m, meth, _ in cases)
            for use_graphs in dict.fromkeys(g for g, _ in configs)
        ]
        print(stream_markdown(stream_rows), file=sys.stderr)
    if errors:
        print(f"dcsim bench: {len(errors)} case(s) failed", file=sys.stderr)
    return {
        "device": device_name(device),
        "allocator": memory,
        "rows": rows,
        "stream_rows": stream_rows,
        "errors": errors,
    }


def _trained_networks(opts: BenchOptions, data: DataOptions) -> dict:
    """{row label: (model, inputs, weights)}: the trained model on a seeded pick of max(256, largest batch) real
    test images (at most the split's) and a random-weight twin of the same architecture on random inputs (initialised as the
    standard set's)."""
    assert opts.checkpoint is not None
    model, meta = load_model(opts.checkpoint)
    splits = load_splits(data)
    check_dataset_matches(meta, splits, opts.checkpoint)
    x, _ = tensors(splits["test"])
    largest = max(opts.batches, default=1)
    if len(x) < largest:
        raise ValueError(f"--batches {largest}: the test split of --checkpoint's dataset has only {len(x)} images")
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(data.seed))[: max(256, largest)]]
    torch.manual_seed(0)
    twin = build_model(meta.architecture, **meta.arch_kwargs).train()
    with torch.no_grad():
        twin(torch.randn(4, *x.shape[1:]))
    name = f"{meta.architecture} {meta.arch_kwargs.get('width', '')}".strip()
    return {
        f"{name} trained": (model, x, "trained"),
        f"{name} random": (twin.eval(), random_inputs(len(x), tuple(x.shape[1:]), torch.device("cpu")), "random"),
    }


def across_processes(opts: BenchOptions, data: DataOptions, world: World) -> dict:
    """The benchmark set run in ``opts.processes`` fresh processes, one after another (see
    dcsim.workflows.processes: a process keeps its own speed ratios). Each row holds the median over the
    processes of every time and ratio (TIMED_FIELDS); ms_min / ms_max, the wall saving's and the ratio's
    min / max, spread and ``unstable`` are then over the processes' medians, and ``processes`` keeps each
    field's median, min, max and spread. "per_process" keeps every process's own result."""
    spec = json.dumps(
        {"options": _plain(dataclasses.replace(opts, processes=1)), "data": _plain(data), "device": str(world.device)}
    )
    results = in_fresh_processes(lambda path: [sys.executable, "-m", __name__, spec, str(path)], opts.processes)
    rows = median_rows([r["rows"] for r in results], ROW_IDENTITY, TIMED_FIELDS)
    for row in rows:
        ms = row["processes"]["ms_per_inference"]
        row.update(ms_min=ms["min"], ms_max=ms["max"], spread=ms["spread"], unstable=ms["unstable"])
        for field in ("time_saving", "time_saving_over_step_saving"):
            if field in row["processes"]:
                row[f"{field}_min"], row[f"{field}_max"] = (row["processes"][field][k] for k in ("min", "max"))
    print(
        f"dcsim bench: the median over {opts.processes} fresh processes; [min-max] and unstable over the processes",
        file=sys.stderr,
    )
    print(markdown(rows), file=sys.stderr)
    errors = [err for r in results for err in r["errors"]]
    return {
        "device": results[0]["device"],
        "allocator": results[0]["allocator"],
        "processes": opts.processes,
        "rows": rows,
        "stream_rows": [],
        "errors": errors,
        "per_process": results,
    }


def _plain(options: Any) -> dict:
    """A frozen options dataclass as JSON values (paths as strings, tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(options), default=str))


def _options(cls: type, values: dict) -> Any:
    """``cls`` (BenchOptions or DataOptions) from :func:`_plain`'s values."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        v = values[f.name]
        if str(f.type).startswith("tuple"):
            v = tuple(v)
        elif "Path" in str(f.type) and v is not None:
            v = Path(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def _worker(spec: str, out: str) -> None:
    """One process of :func:`across_processes`: the benchmark set of ``spec`` (JSON), its result to ``out``."""
    given = json.loads(spec)
    world = World(device=torch.device(given["device"]))
    result = bench(_options(BenchOptions, given["options"]), _options(DataOptions, given["data"]), world)
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    _worker(*sys.argv[1:])
