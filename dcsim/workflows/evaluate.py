"""Trace, analyze and evaluate: a checkpoint's full-length run recorded, its Dynamic Confidence front, and
live early exit on a split with its synaptic operations and energy. Each returns the command's JSON result;
``say`` prints a one-line summary."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import nn

from ..analysis import accuracy_vs_t, analyze, load_trace, save_trace
from ..analysis import plots as plotting
from ..analysis.selection import load_trace_for, trace_identity, trace_readout
from ..conversion.convert import convert
from ..parallel.distributed import World, write_if_main
from ..sim.engine import Engine
from ..sim.readout import OFFICIAL_DEMO_ALPHA, Readout
from ..sim.semantics import Semantics
from .dynamic_confidence import (
    NO_EXIT,
    calibrate,
    energy_columns,
    energy_report,
    evaluate_live_runs,
    record_trace,
)
from .inputs import model_and_splits, source
from .options import AnalyzeOptions, DataOptions, EvalOptions, ModelOptions, ReadoutOptions, TraceOptions


def write_plots(report: dict, folder: Path, stem: str = "") -> list[str]:
    """The front, exit histogram and accuracy-confidence PNGs of an analysis into ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        str(p)
        for p in (
            plotting.plot_front(report, folder / f"{stem}front.png"),
            plotting.plot_exit_histogram(report, folder / f"{stem}exit_histogram.png"),
            plotting.plot_accuracy_confidence(report, folder / f"{stem}accuracy_confidence.png"),
        )
    ]


def make_readout(opts: ReadoutOptions, bits: int | None, steps: int, tau: float) -> Readout:
    """The readout of ``opts`` for a network of ``bits`` (None: mixed) run for ``steps`` steps."""
    if opts.alpha == "paper":
        if bits is None and opts.method == "qffs":
            raise ValueError(
                "the model's activations have no single bit width (mixed, or levels not 2^b - 1): "
                "give --alpha as a number"
            )
        return Readout.paper(opts.method, bits, steps, tau=tau, kind=opts.readout)
    alpha = OFFICIAL_DEMO_ALPHA if opts.alpha == "official" else float(opts.alpha)
    return Readout(opts.readout, alpha, 1.0 if opts.alpha == "official" else tau)


def temperature(tau: str, model: nn.Module, val: tuple[Any, Any]) -> tuple[float, dict | None]:
    """(tau, calibration report or None): fitted on the validation split ``val`` for 'auto', else the number
    (ReadoutOptions has checked that it is one > 0)."""
    if tau == "auto":
        report = calibrate(model, *val)
        return report["tau"], report
    return float(tau), None


def from_trace(
    path: Path,
    checkpoint: Path,
    method: str,
    semantics: Semantics | None,
    tolerance: float,
    allow_test_split: bool = False,
    allow_unmatched: bool = False,
    *,
    stem: str = "spiking",
) -> tuple[Readout, int, float]:
    """(readout, T, th_c) from the validation trace ``path`` of ``checkpoint``: its readout and length,
    th_c selected on it. The trace must come from that network (unless ``allow_unmatched``, a trace or
    checkpoint without a content hash is refused) and (unless ``allow_test_split``) not from the test
    split (see :func:`dcsim.analysis.selection.load_trace_for`), and its method, QFFS semantics and QCFS ``stem``
    must be this run's; errors name the files."""
    trace = load_trace_for(path, checkpoint, allow_test_split=allow_test_split, allow_unmatched=allow_unmatched)
    tm = trace.meta
    if tm.get("method") != method:
        raise ValueError(f"{path}: trace method {tm.get('method')!r} differs from --method {method!r}")
    wanted = Semantics.resolve(semantics, method, "--qffs-semantics")
    traced = tm.get("semantics", "constant")  # traces without the field predate the settle semantics
    if traced != wanted:
        raise ValueError(
            f"{path}: the trace was recorded with the {traced!r} QFFS semantics but this run uses "
            f"{wanted.value!r}; pass --qffs-semantics {traced} or record the trace again"
        )
    traced_stem = tm.get("stem", "spiking")  # traces without the field predate the quantized stem
    if traced_stem != stem:
        raise ValueError(
            f"{path}: the trace was recorded with the {traced_stem!r} QCFS stem but this run uses {stem!r}; "
            f"pass --qcfs-stem {traced_stem} or record the trace again"
        )
    threshold = analyze(trace, tolerance=tolerance)["selected"]["threshold"]
    return (*trace_readout(trace, path), threshold)


def trace(opts: TraceOptions, model_opts: ModelOptions, data: DataOptions, world: World, say: bool = False) -> dict:
    """``dcsim trace``: record T steps of every sample of a split into ``opts.out``."""
    ro = opts.readout
    used = ("val", opts.split) if ro.tau == "auto" else (opts.split,)  # the validation split fits tau
    model, _meta, splits = model_and_splits(model_opts, data, world, used, ro.method)
    tau, calib = temperature(ro.tau, model, source(data, world, splits["val"]))
    net = convert(model, method=ro.method, semantics=ro.semantics, stem=ro.qcfs_stem)
    engine = Engine(net, device=world.device)
    readout = make_readout(ro, net.bits, opts.steps, tau)
    x, y = source(data, world, splits[opts.split])
    t0 = time.perf_counter()
    recorded = record_trace(
        engine,
        x,
        y,
        opts.steps,
        readout,
        {"model": str(model_opts.checkpoint), "split": opts.split, "dataset": data.dataset}
        | trace_identity(model_opts.checkpoint),
        batch_size=opts.batch_size,
        record_sums=opts.sums,
    )
    write_if_main(world, opts.out, lambda path: save_trace(path, recorded))
    seconds = time.perf_counter() - t0
    if say:
        print(
            f"{ro.method} T={opts.steps}: traced {len(y)} {opts.split} samples in {seconds:.1f} s on "
            f"{world.size} rank(s), accuracy at T {accuracy_vs_t(recorded)[-1]:.4f}: {opts.out}"
        )
    return {
        "trace": str(opts.out),
        "samples": len(y),
        "steps": opts.steps,
        "readout": readout.to_dict(),
        "calibration": calib,
        "trace_seconds": seconds,
        "ranks": world.size,
    }


def analyze_trace(opts: AnalyzeOptions, say: bool = False) -> dict:
    """``dcsim analyze``: front, selected th_c and oracle of a trace, with plots in ``opts.plots``."""
    report = analyze(load_trace(opts.trace), resolution=opts.resolution, tolerance=opts.tolerance)
    report["plots"] = write_plots(report, opts.plots, stem=opts.trace.stem + "_")
    if say:
        s, b = report["selected"], report["baseline"]
        print(f"baseline: accuracy {b['accuracy']:.4f} at {b['mean_steps']:.2f} steps")
        print(
            f"selected th_c {s['threshold']:.4g}: accuracy {s['accuracy']:.4f}, mean steps {s['mean_steps']:.2f}, "
            f"saving {100 * s['saving']:.1f}%"
        )
    return report


def evaluate(opts: EvalOptions, model_opts: ModelOptions, data: DataOptions, world: World, say: bool = False) -> dict:
    """``dcsim eval``: live early exit on a split at a given th_c, or at one selected on a validation trace.

    The result holds the run's SOPs, MACs and energy per inference and the ANN's ("energy": the
    :func:`dcsim.analysis.energy.report` at ``opts.energy`` with the runs "no_dc" and, when th_c < 1, "dc";
    the no-DC counts come from a second run of every sample for T steps, timed as the first: "no_dc" holds its
    accuracy and ms per inference, and "time_saving" / "time_to_step_saving" DC's wall-clock saving against it).
    """
    ro = opts.readout
    if (opts.threshold is None) == (opts.trace is None):
        raise ValueError("give exactly one of --threshold and --trace (a validation trace to select th_c from)")
    selected = None
    if opts.trace is not None:  # checked before the model and the data are loaded
        selected = from_trace(
            opts.trace,
            model_opts.checkpoint,
            ro.method,
            ro.semantics,
            opts.tolerance,
            opts.select_on_test,
            allow_unmatched=opts.unmatched_trace,
            stem=ro.qcfs_stem,
        )
    used = ("val", opts.split) if selected is None and ro.tau == "auto" else (opts.split,)
    model, _meta, splits = model_and_splits(model_opts, data, world, used, ro.method)
    net = convert(model, method=ro.method, semantics=ro.semantics, stem=ro.qcfs_stem)
    if selected is not None:
        readout, steps, threshold = selected
    else:  # EvalOptions holds steps with a threshold
        assert opts.steps is not None
        steps, threshold = opts.steps, float(opts.threshold or 0.0)
        tau, _ = temperature(ro.tau, model, source(data, world, splits["val"]))
        readout = make_readout(ro, net.bits, steps, tau)
    eng = opts.engine
    engine = Engine(
        net,
        device=world.device,
        channels_last=eng.channels_last,
        precision=eng.precision,
        spike_convs=eng.spike_convs,
        count_ops=True,  # eval reports SOPs, MACs and energy
    )
    x, y = source(data, world, splits[opts.split])
    label = "dc" if threshold < NO_EXIT else "no_dc"
    thresholds = {"no_dc": NO_EXIT} | ({"dc": threshold} if label == "dc" else {})  # timed in turn
    runs = evaluate_live_runs(
        engine, x, y, steps, readout, thresholds, batch_size=opts.batch_size, chunk=opts.chunk, graphs=eng.graphs
    )
    res = runs[label]
    energy = energy_report(engine, x, runs, opts.energy)
    compare: dict = {}
    if label == "dc":
        base = runs["no_dc"]
        time_saving = 1.0 - res.ms_per_inference / base.ms_per_inference
        compare = {
            "no_dc": {
                k: v
                for k, v in base.to_dict().items()
                if k in ("accuracy", "mean_steps", "spikes_per_neuron", "ms_per_inference")
            },
            "time_saving": time_saving,
            "time_to_step_saving": time_saving / res.saving if res.saving > 0 else None,
        }
    out = (
        res.to_dict()
        | compare
        | energy_columns(energy, label)
        | {
            "steps": steps,
            "readout": readout.to_dict(),
            "split": opts.split,
            "samples": len(y),
            "batch_size": opts.batch_size,
            "device": str(engine.device),
            "energy": energy,
        }
    )
    if say:
        print(
            f"{ro.method} T={steps} th_c={threshold:.4g}: accuracy {res.accuracy:.4f}, mean steps {res.mean_steps:.2f}, "
            f"saving {100 * res.saving:.1f}%, spikes/neuron {res.spikes['pooled']:.3f}, {res.ms_per_inference:.3f} ms/inference"
        )
        if compare:
            print(
                f"  no DC: accuracy {compare['no_dc']['accuracy']:.4f}, spikes/neuron {compare['no_dc']['spikes_per_neuron']:.3f}, "
                f"{compare['no_dc']['ms_per_inference']:.3f} ms/inference: DC saves "
                f"{100 * compare['time_saving']:.1f}% of the time"
            )
        ann = energy["ann"]
        for name, run in energy["runs"].items():
            print(
                f"  {'with DC' if name == 'dc' else 'no DC'}: {run['sops_per_inference']:.4g} SOPs + "
                f"{run['macs_per_inference']:.4g} MACs per inference, {run['energy_uj']:.4g} uJ "
                f"({run['energy_ratio_to_ann']:.3g} x the ANN's {ann['macs_per_inference']:.4g} MACs, "
                f"{ann['energy_uj']:.4g} uJ; {energy['energy_model']['name']})"
            )
    return out
