"""The report loop (``dcsim report``, ``dcsim reproduce`` and the demo): per method, T chosen or given,
a validation trace, th_c selected on it, live early exit on the test split with its synaptic operations
and energy beside the ANN's, plots and traces written."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..analysis import accuracy_vs_t, save_trace
from ..analysis.plots import plot_sops_per_layer
from ..analysis.selection import trace_identity
from ..analysis.tables import energy_note, markdown_table, table_rows, write_json
from ..conversion.convert import convert
from ..io.atomic import write_text_atomic
from ..parallel.distributed import World, write_if_main
from ..sim.engine import Engine
from ..sim.readout import Readout
from .dynamic_confidence import ann_logits, calibrate, dynamic_confidence, energy_columns, record_trace
from .evaluate import write_plots
from .inputs import source
from .options import DataOptions, ReportOptions

Split = tuple[Any, Any]
"""(images, labels) of a split."""


def method_results(
    model: nn.Module,
    val: Split,
    test: Split,
    methods: tuple[str, ...],
    opts: ReportOptions,
    tau: float,
    world: World,
    out: Path,
    meta: dict,
    default_steps: Callable[[str], int | None] = lambda method: None,
    test_traces: bool = False,
    on_method: Callable[[dict], None] | None = None,
) -> list[dict]:
    """One entry per method: T, readout, the validation analysis, test rows without and with DC (each with
    its SOPs, MACs and energy per inference and the energy ratio to the ANN) and their energy report
    ("energy": :func:`dcsim.analysis.energy.report`, per layer included, at ``opts.energy``).

    T is ``opts``' fixed T of the method, else ``default_steps(method)``, else chosen on the validation
    split. Rank 0 writes OUT/<method>_val_trace.npz and the plots (the analysis's and
    <method>_sops_per_layer.png; with ``test_traces`` also a test trace and the test accuracy against t).
    ``on_method`` sees each entry as it is made.
    """
    results = []
    for method in methods:
        fixed, max_steps = opts.steps(method)
        if world.main:
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
            steps=fixed if fixed is not None else default_steps(method),
            semantics=opts.semantics if method == "qffs" else None,
            stem=opts.stem(method),
            tolerance=opts.tolerance,
            device=world.device,
            batch_size=opts.batch_size,
            meta=meta,
            energy_opts=opts.energy,
        )
        entry = {
            "method": method,
            "stem": r["trace"].meta["stem"],
            "steps": r["steps"],
            "readout": r["readout"],
            "val_accuracy_vs_t": r["val_accuracy_vs_t"],
            "analysis": r["analysis"],
            "no_dc": r["no_dc"].to_dict() | energy_columns(r["energy"], "no_dc"),
            "dc": r["dc"].to_dict() | energy_columns(r["energy"], "dc"),
            "energy": r["energy"],
        }
        if world.main:
            save_trace(out / f"{method}_val_trace.npz", r["trace"])
            plots = write_plots(r["analysis"], out, stem=f"{method}_")  # creates the folder
            title = f"{method.upper()}, T={r['steps']}"
            sops_plot = plot_sops_per_layer(r["energy"], out / f"{method}_sops_per_layer.png", title)
            entry["plots"] = [*plots, str(sops_plot)]
        if test_traces:
            semantics = opts.semantics if method == "qffs" else None
            engine = Engine(
                convert(model, method=method, semantics=semantics, stem=opts.stem(method)), device=world.device
            )
            test_trace = record_trace(
                engine, *test, r["steps"], Readout(**r["readout"]), meta | {"split": "test"}, opts.batch_size
            )
            save_trace(out / f"{method}_test_trace.npz", test_trace)
            entry["test_accuracy_vs_t"] = accuracy_vs_t(test_trace).tolist()
        if on_method is not None:
            on_method(entry)
        results.append(entry)
    return results


def report(
    model: nn.Module,
    meta: dict,
    splits: dict,
    out: Path,
    opts: ReportOptions,
    data: DataOptions,
    world: World,
    checkpoint: Path | None = None,
) -> dict:
    """Calibrate, then QCFS and QFFS with and without DC; writes report.md, report.json, traces and plots
    into the folder ``out``. A threshold-normalized float network (no levels) gets QCFS only.
    checkpoint: the model's file or zoo folder, whose identity the traces record (see
    :func:`dcsim.analysis.selection.trace_identity`).

    report.json's "energy" holds each method's :func:`dcsim.analysis.energy.report` (the ANN, the runs
    "no_dc" and "dc", per layer); its rows and report.md's table carry SOPs, MACs and energy per inference."""
    val, test = source(data, world, splits["val"]), source(data, world, splits["test"])
    calib = calibrate(model, *val)
    tau = calib["tau"] if opts.tau == "auto" else float(opts.tau)
    ann_test = float((ann_logits(model, test[0]).argmax(1) == test[1]).float().mean())
    methods = ("qcfs",) if meta.get("activations") == "float_relu" else ("qcfs", "qffs")
    meta_rows = {"model": meta.get("architecture"), "dataset": meta.get("dataset")}
    if checkpoint is not None:
        meta_rows |= trace_identity(checkpoint)
    entries = method_results(model, val, test, methods, opts, tau, world, out, meta_rows)
    plots = [p for e in entries for p in e.pop("plots", [])]
    energy = {e["method"]: e.pop("energy") for e in entries}
    rows = table_rows(ann_test, entries)
    table = markdown_table(rows)
    summary = {
        "model": meta.get("architecture"),
        "dataset": meta.get("dataset"),
        "calibration": calib,
        "ann_test_accuracy": ann_test,
        "rows": rows,
        "results": entries,
        "energy": energy,
        "plots": plots,
        "device": str(world.device),
        "test_samples": len(test[1]),
        "ranks": world.size,
    }
    md = (
        f"# dcsim report: {meta.get('architecture')} on {meta.get('dataset')}\n\n"
        f"Quantized ANN test accuracy {100 * ann_test:.2f}%; temperature tau = {tau:.4f} "
        f"(validation ECE {calib['ece_before']:.4f} -> {calib['ece_after']:.4f}).\n"
        "T: " + ", ".join(f"{r['method'].upper()} {r['steps']}" for r in entries) + " steps. "
        f"th_c selected on the validation split, numbers on the test split ({len(test[1])} images).\n\n"
        + table
        + "\n"
        + energy_note(next(iter(energy.values())))
        + "\n\n"
        + "".join(f"![{Path(p).stem}]({Path(p).name})\n" for p in plots)
    )
    if world.main:
        write_text_atomic(out / "report.md", md)
        write_json(out / "report.json", summary)
        print(table, file=sys.stderr)
    write_if_main(world, out, lambda _: None)  # every rank returns after rank 0 has written
    return summary
