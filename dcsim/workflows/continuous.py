"""``dcsim stream``: continuous batching over a split (a slot is refilled as soon as its sample exits),
per rank under torchrun with the totals merged over the ranks."""

from __future__ import annotations

import functools
from typing import Any

from ..conversion.convert import convert
from ..parallel.distributed import World, local_share
from ..sim.engine import Engine
from ..sim.latency import LatencyHistogram
from .benchmark import stream_vs_static
from .evaluate import from_trace
from .inputs import model_and_splits
from .options import DataOptions, ModelOptions, StreamOptions


def continuous(
    opts: StreamOptions, model_opts: ModelOptions, data: DataOptions, world: World, say: bool = False
) -> dict:
    """Stream ``opts.split`` through ``opts.slots`` slots; throughput (samples/s), accuracy, latency (ms)."""
    readout, steps, threshold = from_trace(
        opts.trace,
        model_opts.checkpoint,
        opts.method,
        opts.semantics,
        opts.tolerance,
        opts.select_on_test,
        allow_unmatched=opts.unmatched_trace,
        stem=opts.qcfs_stem,
    )
    model, _meta, splits = model_and_splits(model_opts, data, world, (opts.split,), opts.method)
    eng = opts.engine
    engine = Engine(
        convert(model, method=opts.method, semantics=opts.semantics, stem=opts.qcfs_stem),
        device=world.device,
        channels_last=eng.channels_last,
        precision=eng.precision,
        spike_convs=eng.spike_convs,
    )
    x, y = local_share(splits[opts.split], world, data.loader_workers)
    out = (
        stream_vs_static(
            engine,
            x.to(engine.device),
            y,
            opts.slots,
            steps,
            readout,
            threshold,
            repeats=opts.repeats if opts.compare else 1,
            compare=opts.compare,
            graphs=eng.graphs,
        )
        if len(y)
        else None
    )
    if world.distributed:  # every rank streamed its own share: totals over the ranks
        return _merged(opts, world, out, len(y), say)
    if out is None:  # only one rank's share of a split may be empty
        raise ValueError("no images: the split is empty")
    summary = out["stream"]
    if say:
        print(
            f"stream S={opts.slots}: {summary['throughput']:.1f} samples/s, accuracy {summary['accuracy']:.4f}, "
            f"latency p50 {summary['latency_ms']['p50']:.2f} ms p99 {summary['latency_ms']['p99']:.2f} ms, "
            f"occupancy {summary['occupancy']:.2f}"
        )
        if opts.compare:
            print(
                f"throughput vs static batches without early exit: {out['throughput_ratio_vs_static_no_dc']:.2f}x, "
                f"vs static batches with early exit: {out['throughput_ratio_vs_static_dc']:.2f}x"
            )
    return out


def _merged(opts: StreamOptions, world: World, out: dict | None, samples: int, say: bool) -> dict:
    """The ranks' results with totals: throughput summed, accuracy weighted, latency histograms merged."""
    ranks: list[dict] = [
        r | {"samples": n}
        for r, n in zip(world.all_gather(out), world.all_gather(samples), strict=True)
        if r is not None
    ]
    total = sum(r["samples"] for r in ranks)
    latency = functools.reduce(
        LatencyHistogram.merge,
        (LatencyHistogram.from_dict(r["stream"]["latency_histogram"]) for r in ranks),
        LatencyHistogram(),
    )
    merged: dict[str, Any] = {
        "stream": {
            "throughput": sum(r["stream"]["throughput"] for r in ranks),
            "accuracy": sum(r["stream"]["accuracy"] * r["samples"] for r in ranks) / total,
            "samples": total,
            "latency_ms": latency.summary(),
        },
        "ranks": ranks,
    }
    if say:
        lat = merged["stream"]["latency_ms"]
        print(
            f"stream S={opts.slots} on {world.size} ranks: {merged['stream']['throughput']:.1f} samples/s "
            f"in total, accuracy {merged['stream']['accuracy']:.4f}, latency over all ranks p50 {lat['p50']:.2f} ms "
            f"p99 {lat['p99']:.2f} ms"
        )
    return merged
