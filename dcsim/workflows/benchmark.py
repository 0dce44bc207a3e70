"""Standard benchmark set of ``dcsim bench``: wall time per inference, side by side.

For each model, method, batch size and mode (full T, or early exit at a threshold that stops
samples around mid-simulation), it times:
  - dcsim's engine (native kernels, static layers computed once, compaction);
  - the official-style eager simulator (dcsim.sim.eager: batch 1, host sync every step),
    at batch 1 only (that is how it runs);
  - the quantized ANN's forward pass at the same batch (the floor: one step can hardly cost less),
    on a GPU also replayed as a CUDA graph (its kernels alone, no launch overhead).
Random weights are fine for timing. Ratios are the point; absolute times depend on the machine.

Everything a row compares runs interleaved, round by round, in one process (after one warm-up call
each), so a slow spell of a shared machine hits all of them alike; each time is the median over the
rounds with its min and max, and a row whose spread (max - min) / median exceeds UNSTABLE_SPREAD is
flagged ``unstable``. A saving of one run against another (DC against no DC) is paired: each round's
two times give one saving, and the row reports the median over the rounds (see :func:`paired_saving`).
The CPU thread count is pinned for the case and reported.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ..conversion.convert import convert
from ..models import build_model
from ..sim.continuous import StreamStats, stream
from ..sim.eager import EagerSimulator
from ..sim.engine import Engine, gpu_flags
from ..sim.graphs import capture_graphs
from ..sim.readout import Readout
from ..sim.state import ExitResult
from .dynamic_confidence import NO_EXIT

MODELS: dict[str, tuple[str, dict, tuple[int, int, int]]] = {
    "resnet18": ("resnet18", {"num_classes": 10}, (3, 32, 32)),
    "vgg16": ("vgg16", {"num_classes": 10}, (3, 32, 32)),
    "resnet50": ("resnet50", {"num_classes": 1000}, (3, 224, 224)),
    "small_cnn": ("small_cnn", {"num_classes": 10}, (3, 32, 32)),
}
DEFAULT_STEPS = {"qcfs": 27, "qffs": 4}
UNSTABLE_SPREAD = 0.10
"""A row whose time spread (max - min) / median over the rounds exceeds this is flagged unstable."""

BATCH1_INPUTS = 16
"""Real inputs a batch-1 case of a given network times, one per batch (``bench_case(network=...)``): the step saving
is that of the inputs timed, and one input's says little."""
PLAN_WARM_CALLS = 4
"""Untimed calls per engine run at batch 1 with chunk=None: the plan probes its chunk sizes on about 5 samples."""


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time in seconds of ``repeats`` calls (after one warm-up call)."""
    return min(interleaved({"fn": fn}, device, repeats)["fn"]["wall"])


def interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Times of each fn over ``rounds`` rounds, each round calling every fn once, in the given order in even rounds
    and in reverse in odd ones (so that a drift of the machine within a round, or the cache state one fn leaves
    the next, weighs on every fn alike), after one warm-up call each: {name: {"wall": seconds per round, "cpu":
    process CPU seconds per round (all threads)}}."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for fn in fns.values():
        fn()
    out: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in fns}
    order = list(fns.items())
    for r in range(rounds):
        for name, fn in order if r % 2 == 0 else order[::-1]:
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            _sync(device)
            out[name]["wall"].append(time.perf_counter() - t0)
            out[name]["cpu"].append(time.process_time() - c0)
    return out


def spread(values: list[float]) -> dict[str, float | bool]:
    """median, min, max of ``values`` (times, or ratios of any sign), their spread (max - min) / |median| (infinite
    for a zero median), and ``unstable`` (spread > UNSTABLE_SPREAD)."""
    med = statistics.median(values)
    rel = (max(values) - min(values)) / abs(med) if med else float("inf")
    return {"median": med, "min": min(values), "max": max(values), "spread": rel, "unstable": rel > UNSTABLE_SPREAD}


def paired_saving(times: list[float], base: list[float]) -> dict[str, float]:
    """The saving 1 - times[i] / base[i] of each round (the two runs timed back to back in one round), and
    its median, min and max over the rounds. Pairing cancels a slow spell that spans a round, which a
    ratio of the two medians does not: the two medians can come from different rounds."""
    if len(times) != len(base) or not times:
        raise ValueError(f"paired_saving: {len(times)} and {len(base)} rounds; need the same number, at least one")
    per_round = [1 - t / b for t, b in zip(times, base, strict=True)]
    return {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round)}


def spike_saving(full: ExitResult, early: ExitResult) -> float:
    """The share of the spikes that ``early`` (an early-exit run) leaves out against ``full`` (the same inputs run to T):
    what convs whose time follows the spikes can save. A QFFS run spikes less in the late steps it skips, so its time
    saving tracks this, not the step saving. 0 where the full run emits no spike."""
    total = float(full.spikes.sum())
    return 1 - float(early.spikes.sum()) / total if total > 0 else 0.0


def cut_steps(exit_step: torch.Tensor, steps: int) -> list[int]:
    """The steps below T at which some sample of an early-exit run stops (exit_step int64 [N], T = ``steps``):
    the lengths of the no-DC runs that :func:`ideal_saving` needs, increasing."""
    return sorted({int(s) for s in exit_step.tolist()} - {steps})


def ideal_saving(exit_step: torch.Tensor, steps: int, cut_seconds: dict[int, float], full_seconds: float) -> float:
    """The wall saving of an ideal Dynamic Confidence on one round: each sample runs exactly its steps at the
    no-DC run's cost per step and sample, with no exit decision, compaction or call of its own.

    exit_step: int64 [N], the samples' exit steps in 1..T (T = ``steps``); cut_seconds: for each step t of
    :func:`cut_steps`, the seconds of the same no-DC run cut at t steps (the same N samples, batch size and
    engine); full_seconds: the seconds of the no-DC run of T steps. Between two exit steps e' < e the samples
    still running are those with exit >= e, so the ideal run costs the sum over the exit steps e of
    (share of samples with exit >= e) * (run cut at e - run cut at e'). At batch 1 this is the run in which
    each sample is one call of exactly its exit steps (the oracle); at larger batches it takes a step's cost
    to fall with its rows in proportion. A bound for DC, not a measurement of it: DC's own wall saving over
    this is the share of the reachable saving it reaches.
    """
    if full_seconds <= 0:
        raise ValueError(f"full_seconds must be > 0, got {full_seconds!r}")
    exits = [int(s) for s in exit_step.tolist()]
    if not exits or min(exits) < 1 or max(exits) > steps:
        raise ValueError(f"exit_step must hold steps in 1..{steps}, got {sorted(set(exits))}")
    needed = cut_steps(exit_step, steps)
    if sorted(cut_seconds) != needed:
        raise ValueError(f"cut_seconds must time the runs cut at steps {needed}, got {sorted(cut_seconds)}")
    at = {**cut_seconds, steps: full_seconds}
    cost, before = 0.0, 0.0
    for e in [*needed, steps]:
        running = sum(1 for s in exits if s >= e) / len(exits)
        cost += running * (at[e] - before)
        before = at[e]
    return 1 - cost / full_seconds


def ideal_savings(
    exit_step: torch.Tensor, steps: int, cut_walls: dict[int, list[float]], full_walls: list[float]
) -> list[float]:
    """:func:`ideal_saving` of each timed round: cut_walls maps each step of :func:`cut_steps` to the seconds of the
    no-DC run cut there, one per round; full_walls: the no-DC run's seconds, one per round (the same rounds)."""
    if any(len(w) != len(full_walls) for w in cut_walls.values()):
        raise ValueError(f"ideal_savings: every cut run needs the full run's {len(full_walls)} rounds")
    return [
        ideal_saving(exit_step, steps, {t: walls[r] for t, walls in cut_walls.items()}, full_s)
        for r, full_s in enumerate(full_walls)
    ]


def graphed_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time in seconds of ``fn`` captured once as a CUDA graph and replayed: its kernels alone,
    with no launch overhead (warm-up with cuDNN autotuning, capture without; full float32)."""
    with torch.no_grad():
        graph = capture_graphs({"forward": fn}, device, lambda autotune: gpu_flags(False, autotune), "a benchmark")
    return timeit(graph["forward"].replay, device, repeats)


def random_inputs(n: int, shape: tuple[int, ...], device: torch.device, seed: int = 0) -> torch.Tensor:
    """Seeded float32 [n, *shape] normal inputs, drawn on the CPU (the same on every device, and no use of
    the GPU's random generator, which a failed graph capture can leave unusable), then moved to ``device``."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed)).to(device)


def prepared_model(name: str, seed: int = 0) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """Random-weight LSQ model with initialised step sizes and BN statistics, in eval mode."""
    arch, kwargs, shape = MODELS[name]
    torch.manual_seed(seed)
    model = build_model(arch, **kwargs)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, *shape))
    return model.eval(), shape


def case_inputs(
    model_name: str,
    network: tuple[torch.nn.Module, torch.Tensor, str] | None,
    n: int,
    device: torch.device,
    seed: int = 0,
    need: str | None = None,
) -> tuple[torch.nn.Module, torch.Tensor, str]:
    """(model in eval mode, inputs float32 [n, C, H, W] on ``device``, weights label) of one case: the standard
    random-weight model on random inputs drawn with ``seed``, or ``network``'s model and its first n inputs.
    need: what n is for; refuses a network with fewer than n inputs, naming it (without it, fewer are taken)."""
    if network is None:
        model, shape = prepared_model(model_name)
        return model, random_inputs(n, shape, device, seed=seed), "random"
    model, inputs, weights = network
    if need is not None and len(inputs) < n:
        raise ValueError(f"{len(inputs)} real inputs for {need}")
    return model.eval(), inputs[:n].to(device), weights


def mid_threshold(engine: Engine, x: torch.Tensor, steps: int, readout: Readout) -> float:
    """A threshold at which the samples of x stop around mid-simulation (median score at T/2)."""
    sim = engine.simulate(x, steps, readout)
    return float(sim.conf[:, max(steps // 2 - 1, 0)].median())


def engine_label(graphs: bool, compact_fraction: float | None, precision: str, spike_convs: bool = False) -> str:
    """Short name of an engine configuration in benchmark tables: ``no-graphs`` (the step loop launched from Python)
    or ``graphs+buckets`` / ``graphs+masked`` (replayed as CUDA graphs), then ``+precision`` and ``+spikeconv``
    where not the default. ("eager" is the official-style simulator the engine is compared with.)"""
    masked = compact_fraction is not None and compact_fraction >= 1
    label = ("graphs" + ("+masked" if masked else "+buckets")) if graphs else "no-graphs"
    return label + ("" if precision == "fp32" else f"+{precision}") + ("+spikeconv" if spike_convs else "")


def bench_case(
    model_name: str,
    method: str,
    batch: int,
    device: torch.device,
    steps: int | None = None,
    repeats: int = 3,
    eager: bool = True,
    chunk: int | None = None,
    channels_last: bool = False,
    graphs: bool = False,
    compact_fraction: float | None = None,
    precision: str = "fp32",
    spike_convs: bool = False,
    network: tuple[torch.nn.Module, torch.Tensor, str] | None = None,
    threads: int | None = None,
    stem: str = "spiking",
    ideal: bool = False,
) -> list[dict]:
    """Rows for one model/method/batch: modes "full" and "early_exit" (engine steps computed ``chunk`` at a time).

    graphs / compact_fraction / precision / spike_convs: the engine configuration (see
    :meth:`Engine.early_exit`, :class:`Engine`); the ANN forward and the eager reference always run in full float32.
    network: (model, inputs float32 [>= batch, C, H, W], weights label) timed instead of the standard
    random-weight model on random inputs, e.g. a trained model on real images ("trained") or a
    random twin of it ("random"); ``model_name`` then only labels the rows. At batch 1 such a case times its
    first BATCH1_INPUTS inputs (as many as it has, if fewer), one per batch, for the ANN, the engine and the
    eager reference alike; times per inference are divided by the inputs timed (row field ``inputs``).
    repeats: rounds; the ANN forward, the engine without and with early exit (and at batch 1 the eager
    reference) run interleaved in each (see :func:`interleaved`). threads: CPU threads pinned for the
    timing (default: torch's current count), reported in each row. stem: QCFS's (see dcsim.convert).
    Each row holds the spike rate (spikes per neuron per simulated step), the median wall ms per
    inference with its min, max, spread and ``unstable`` flag, and the median process CPU ms; the
    early-exit row the step saving, the spike saving, the wall-clock saving (paired by round: median, min and max
    over the rounds, :func:`paired_saving`) and its ratios to the two. ideal: the full run cut at each exit step
    below T (:func:`cut_steps`) is timed in the same rounds too, and the early-exit row holds an ideal early exit's
    saving (:func:`ideal_saving`: median, min and max over the rounds), its ratio to the step saving and the
    wall-clock saving's ratio to it.
    """
    n = min(BATCH1_INPUTS, len(network[1])) if network is not None and batch == 1 else batch
    model, x, weights = case_inputs(model_name, network, n, device, need=f"batch {batch}")
    steps = steps or DEFAULT_STEPS[method]
    net = convert(model, method=method, stem=stem)
    engine = Engine(net, device=device, channels_last=channels_last, precision=precision, spike_convs=spike_convs)
    ann = model.to(device)
    readout = Readout.paper(method, net.bits, steps)
    exit_threshold = mid_threshold(engine, x, steps, readout)
    ann_graph_s = graphed_seconds(lambda: ann(x[:batch]), device, repeats) if device.type == "cuda" else None
    eager_sim = EagerSimulator(net.to(device)) if eager and batch == 1 else None
    modes = {"full": 1.0, "early_exit": exit_threshold}

    def engine_run(threshold: float, run_steps: int = steps) -> Callable[[], ExitResult]:
        return lambda: engine.early_exit(
            x,
            run_steps,
            readout,
            threshold,
            batch_size=batch,
            chunk=chunk,
            graphs=graphs,
            compact_fraction=compact_fraction,
        )

    def ann_forward() -> None:
        with torch.no_grad(), gpu_flags(False, autotune=True):
            for lo in range(0, n, batch):
                ann(x[lo : lo + batch])

    def eager_run(sim: EagerSimulator, threshold: float) -> Callable[[], None]:
        def run() -> None:
            with gpu_flags(False, autotune=True):
                for i in range(n):  # batch 1
                    sim.run(x[i : i + 1], steps, readout, threshold)

        return run

    fns: dict[str, Callable[[], object]] = {"ann": ann_forward} | {m: engine_run(th) for m, th in modes.items()}
    if eager_sim is not None:
        fns |= {f"reference_{m}": eager_run(eager_sim, th) for m, th in modes.items()}
    # warm-up, untimed; at batch 1 long enough for chunk=None to time its probe chunk sizes (dcsim.sim.chunking)
    for _ in range(PLAN_WARM_CALLS if batch == 1 and chunk is None else 1):
        results = {m: engine_run(th)() for m, th in modes.items()}
    cuts = cut_steps(results["early_exit"].exit_step, steps) if ideal else []
    fns |= {f"cut_{t}": engine_run(1.0, t) for t in cuts}  # the full run cut at t steps (interleaved warms them)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or saved_threads)
    try:
        times = interleaved(fns, device, repeats)
    finally:
        torch.set_num_threads(saved_threads)
    ann_s = statistics.median(times["ann"]["wall"])
    rows: list[dict[str, Any]] = []  # JSON rows: names, counts, times, flags
    for mode, threshold in modes.items():
        res = results[mode]
        mean_steps = float(res.exit_step.float().mean())
        spike_rate = float(res.spikes.sum()) / (float(res.exit_step.sum()) * sum(res.neurons))
        wall = spread(times[mode]["wall"])
        ours = float(wall["median"])
        row: dict[str, Any] = {
            "device": device_name(device),
            "threads": threads or saved_threads,
            "model": model_name,
            "method": method,
            "stem": stem,
            "batch": batch,
            "inputs": n,
            "mode": mode,
            "engine": engine_label(graphs, compact_fraction, precision, spike_convs),
            "chunk": "auto" if chunk is None else chunk,
            "channels_last": engine.channels_last,
            "steps": steps,
            "threshold": threshold,
            "mean_steps": mean_steps,
            "weights": weights,
            "spikes_per_neuron_step": spike_rate,
            "rounds": repeats,
            "ms_per_inference": 1000 * ours / n,
            "ms_min": 1000 * float(wall["min"]) / n,
            "ms_max": 1000 * float(wall["max"]) / n,
            "spread": wall["spread"],
            "unstable": wall["unstable"],
            "cpu_ms_per_inference": 1000 * statistics.median(times[mode]["cpu"]) / n,
            "ms_per_step": 1000 * ours / n / mean_steps,
            "ann_ms_per_inference": 1000 * ann_s / n,
            "ratio_to_ann_per_step": (ours / mean_steps) / ann_s,
        }
        if ann_graph_s is not None:  # the floor without launch overhead: the ANN's kernels alone
            row["ann_graph_ms_per_inference"] = 1000 * ann_graph_s / batch
            row["ratio_to_ann_graph_per_step"] = (ours / n / mean_steps) / (ann_graph_s / batch)
        if eager_sim is not None:
            ref = statistics.median(times[f"reference_{mode}"]["wall"])
            row["reference_ms_per_inference"] = 1000 * ref / n
            row["speedup_vs_reference"] = ref / ours
        rows.append(row)
    full, early = rows
    saving_steps = 1 - early["mean_steps"] / full["mean_steps"]
    paired = paired_saving(times["early_exit"]["wall"], times["full"]["wall"])
    early["step_saving"] = saving_steps
    saving_spikes = spike_saving(results["full"], results["early_exit"])
    early["spike_saving"] = saving_spikes
    early["time_saving"] = paired["median"]
    early["time_saving_min"], early["time_saving_max"] = paired["min"], paired["max"]
    for key in ("", "_min", "_max"):  # undefined (None) where early exit saves no step
        early[f"time_saving_over_step_saving{key}"] = (
            early[f"time_saving{key}"] / saving_steps if saving_steps > 0 else None
        )
    early["time_saving_over_spike_saving"] = early["time_saving"] / saving_spikes if saving_spikes > 0 else None
    if ideal:
        per_round = ideal_savings(
            results["early_exit"].exit_step, steps, {t: times[f"cut_{t}"]["wall"] for t in cuts}, times["full"]["wall"]
        )
        early["ideal_saving"] = statistics.median(per_round)
        early["ideal_saving_min"], early["ideal_saving_max"] = min(per_round), max(per_round)
        early["ideal_saving_over_step_saving"] = early["ideal_saving"] / saving_steps if saving_steps > 0 else None
        early["time_saving_over_ideal_saving"] = (
            early["time_saving"] / early["ideal_saving"] if early["ideal_saving"] > 0 else None
        )
    return rows


def stream_vs_static(
    engine: Engine,
    x: torch.Tensor,
    y: torch.Tensor | None,
    slots: int,
    steps: int,
    readout: Readout,
    threshold: float,
    repeats: int = 2,
    compare: bool = True,
    graphs: bool = False,
) -> dict:
    """Streaming with ``slots`` slots against static batches of ``slots`` with and without early exit.

    Interleaved rounds, best throughput of each (samples/s); ``graphs``: all three with CUDA graphs. x: float32 [N, ...] on the engine's
    device; y: int64 [N] labels for accuracies (None: no accuracies). Returns {"stream": summary
    (throughput, latency_ms mean/p50/p99, occupancy, accuracy), "static_dc", "static_no_dc",
    "throughput_ratio_vs_static_no_dc", "throughput_ratio_vs_static_dc"} (static parts with ``compare``).
    """
    out: dict = {}
    for _ in range(repeats):
        stats = StreamStats(slots)
        preds = {r.id: r.pred for r in stream(engine, iter(x), slots, steps, readout, threshold, stats, graphs)}
        summary = stats.summary() | {"threshold": threshold, "steps": steps}
        if y is not None:
            summary["accuracy"] = sum(int(p == int(y[i])) for i, p in preds.items()) / len(y)
        if "stream" not in out or summary["throughput"] > out["stream"]["throughput"]:
            out["stream"] = summary
        if not compare:
            continue
        for name, th in (("static_dc", threshold), ("static_no_dc", NO_EXIT)):
            if engine.device.type == "cuda":
                torch.cuda.synchronize(engine.device)
            t0 = time.perf_counter()
            res = engine.early_exit(x, steps, readout, th, batch_size=slots, graphs=graphs)  # CPU results: synced
            row = {"mean_steps": float(res.exit_step.float().mean()), "throughput": len(x) / (time.perf_counter() - t0)}
            if y is not None:
                row["accuracy"] = float((res.pred == y.cpu()).float().mean())
            if name not in out or row["throughput"] > out[name]["throughput"]:
                out[name] = row
    if compare:
        out["throughput_ratio_vs_static_no_dc"] = out["stream"]["throughput"] / out["static_no_dc"]["throughput"]
        out["throughput_ratio_vs_static_dc"] = out["stream"]["throughput"] / out["static_dc"]["throughput"]
    return out


def stream_case(
    model_name: str,
    method: str,
    slots: int,
    device: torch.device,
    samples: int | None = None,
    repeats: int = 2,
    graphs: bool = False,
    stem: str = "spiking",
    network: tuple[torch.nn.Module, torch.Tensor, str] | None = None,
) -> dict:
    """Streaming vs static batches of ``samples`` (default 8 * slots) on a random-weight model and random inputs,
    or on ``network`` (model, inputs float32 [N, C, H, W], weights label; at most N samples), as
    :func:`bench_case`; threshold: samples stop around T/2; ``stem``: QCFS's (see dcsim.convert)."""
    model, x, weights = case_inputs(model_name, network, samples or 8 * slots, device, seed=1)
    steps = DEFAULT_STEPS[method]
    net = convert(model, method=method, stem=stem)
    engine = Engine(net, device=device)
    readout = Readout.paper(method, net.bits, steps)
    threshold = mid_threshold(engine, x[:slots], steps, readout)
    out = stream_vs_static(engine, x, None, slots, steps, readout, threshold, repeats, graphs=graphs)
    s = out["stream"]
    return {
        "device": device_name(device),
        "model": model_name,
        "method": method,
        "stem": stem,
        "weights": weights,
        "slots": slots,
        "samples": len(x),
        "engine": "graphs" if graphs else "no-graphs",
        "steps": steps,
        "threshold": threshold,
        "stream_throughput": s["throughput"],
        "latency_ms_p50": s["latency_ms"]["p50"],
        "latency_ms_p99": s["latency_ms"]["p99"],
        "occupancy": s["occupancy"],
        "static_dc_throughput": out["static_dc"]["throughput"],
        "static_no_dc_throughput": out["static_no_dc"]["throughput"],
        "mean_steps": out["static_dc"]["mean_steps"],
        "ratio_vs_static_no_dc": out["throughput_ratio_vs_static_no_dc"],
        "ratio_vs_static_dc": out["throughput_ratio_vs_static_dc"],
    }


def stream_markdown(rows: list[dict]) -> str:
    """Table of :func:`stream_case` rows."""
    head = (
        "| device | model | method | engine | slots | mean steps | stream (samples/s) | p50 / p99 latency (ms) | "
        "occupancy | vs static, no exit | vs static, early exit |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {r['device']} | {r['model']} | {method_label(r)} | {r['engine']} | {r['slots']} | {r['mean_steps']:.2f} | "
        f"{r['stream_throughput']:.1f} | {r['latency_ms_p50']:.2f} / {r['latency_ms_p99']:.2f} | {r['occupancy']:.2f} | "
        f"{r['ratio_vs_static_no_dc']:.2f}x | {r['ratio_vs_static_dc']:.2f}x |\n"
        for r in rows
    )


FULL_MODELS = ["resnet18", "vgg16", "resnet50"]
QUICK_MODELS = ["small_cnn", "resnet18"]


def standard_set(device: torch.device, quick: bool = False, full: bool = False) -> list[tuple[str, str, int]]:
    """(model, method, batch) cases: batch 1 and a large batch for each model and method.

    Models: FULL_MODELS with ``full`` or by default on a GPU; QUICK_MODELS with ``quick`` or by
    default on a CPU (there the full set takes far longer than a few minutes).
    """
    if quick and full:
        raise ValueError("quick and full exclude each other")
    large = 256 if device.type == "cuda" else 32
    models = FULL_MODELS if full or (device.type == "cuda" and not quick) else QUICK_MODELS
    return [
        (m, method, batch)
        for m in models
        for method in ("qcfs", "qffs")
        for batch in (1, large if m != "resnet50" or device.type == "cuda" else 4)
    ]


def skipped_models(cases: list[tuple[str, str, int]]) -> list[str]:
    """The models of the full set that ``cases`` leave out (what ``--full`` would add)."""
    return [m for m in FULL_MODELS if m not in {c[0] for c in cases}]


def progress_line(done: int, total: int, elapsed: float, what: str) -> str:
    """``[done/total] what; elapsed, estimated time left`` (seconds; the estimate assumes equal cases)."""
    left = elapsed / done * (total - done) if done else float("nan")
    return f"[{done}/{total}] {what}; {elapsed:.0f} s elapsed, about {left:.0f} s left"


def method_label(row: dict) -> str:
    """A row's method in tables: "qcfs", "qffs", or "qcfs (quantized stem)"."""
    return row["method"] + (" (quantized stem)" if row.get("stem", "spiking") != "spiking" else "")


def batch_label(row: dict) -> str:
    """A row's batch size, and the inputs it timed where they are more than one batch ("1 (16 inputs)")."""
    inputs = row.get("inputs", row["batch"])
    return str(row["batch"]) + (f" ({inputs} inputs)" if inputs != row["batch"] else "")


def markdown(rows: list[dict]) -> str:
    """Table of benchmark rows: wall ms per inference as median [min-max] over the rounds (``unstable`` where the
    spread exceeds UNSTABLE_SPREAD); for early-exit rows the step, spike and wall-clock savings and the wall-clock
    saving's ratios to the step and spike savings (and, where timed, an ideal early exit's saving over the step saving
    and the wall-clock saving over the ideal's). A batch-1
    row of a given network names the inputs it timed, one per batch (see :func:`bench_case`)."""

    def saving(r: dict) -> str:
        if "step_saving" not in r:
            return "- | - | - | - | - | -"
        ratio, ratio_s = r["time_saving_over_step_saving"], "-"
        if ratio is not None:
            lo, hi = r["time_saving_over_step_saving_min"], r["time_saving_over_step_saving_max"]
            ratio_s = f"{ratio:.2f} [{lo:.2f}-{hi:.2f}]"
            if r.get("processes", {}).get("time_saving_over_step_saving", {}).get("unstable"):
                ratio_s += " unstable"  # over fresh processes (dcsim.workflows.processes)
        spikes = r.get("spike_saving")
        to_spikes = r.get("time_saving_over_spike_saving")
        return (
            f"{100 * r['step_saving']:.1f}% | {'-' if spikes is None else format(100 * spikes, '.1f') + '%'} | "
            f"{100 * r['time_saving']:.1f}% | {ratio_s} | {'-' if to_spikes is None else format(to_spikes, '.2f')} | "
            f"{ideal(r)}"
        )

    def ideal(r: dict) -> str:
        if r.get("ideal_saving_over_step_saving") is None:
            return "-"
        of_ideal = r["time_saving_over_ideal_saving"]
        return f"{r['ideal_saving_over_step_saving']:.2f} / {'-' if of_ideal is None else format(of_ideal, '.2f')}"

    head = (
        "| device | threads | model | method | batch | mode | engine | chunk | mean steps | spikes/neuron/step | "
        "ms/inference [min-max] | CPU ms/inference | ms/step | step saving | spike saving | time saving | "
        "time / step saving | time / spike saving | ideal / step saving, time / ideal saving | vs eager reference | "
        "step / ANN forward | step / ANN graph |\n" + "|---" * 22 + "|\n"
    )
    return head + "".join(
        f"| {r['device']} | {r['threads']} | {r['model']} | {method_label(r)} | {batch_label(r)} | {r['mode']} | {r['engine']} | "
        f"{r['chunk']} | {r['mean_steps']:.2f} | {r['spikes_per_neuron_step']:.4f} | "
        f"{r['ms_per_inference']:.3f} [{r['ms_min']:.3f}-{r['ms_max']:.3f}]{' unstable' if r['unstable'] else ''} | "
        f"{r['cpu_ms_per_inference']:.3f} | {r['ms_per_step']:.3f} | {saving(r)} | "
        f"{format(r['speedup_vs_reference'], '.2f') + 'x' if 'speedup_vs_reference' in r else '-'} | "
        f"{r['ratio_to_ann_per_step']:.2f} | "
        f"{format(r['ratio_to_ann_graph_per_step'], '.2f') if 'ratio_to_ann_graph_per_step' in r else '-'} |\n"
        for r in rows
    )
