"""``dcsim reproduce``: from the data set to the paper's Table 1 in one command.

In order: train (float stage, then LSQ fine-tuning; the weights are saved before anything is
evaluated), the quantized ANN's test accuracy, temperature calibration on the validation split,
QCFS and QFFS validation traces at the paper's T (ResNet-18: 27 and 4; VGG-16: 30 and 6),
th_c selected on them at zero tolerance, live early exit on the test split, then report.md /
report.json in Table 1's layout with the paper's numbers beside ours, spikes per neuron with and
without DC, the oracle bound, QCFS accuracy against t next to the official code's curve, and plots.

Every finished stage is written to OUT/results.json at once (``status`` says how far it got), so
a run cut off by a time limit or an error keeps what it finished. A model that did not finish its
planned training, or whose ANN test accuracy is below ``--min-accuracy``, is "untrained": the
run stops with an error after saving the weights and writes no report.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from pathlib import Path

import torch

from ..analysis.plots import plot_curves, plot_training_curve
from ..analysis.selection import trace_identity
from ..analysis.tables import markdown_table, table_rows, write_json
from ..io import zoo
from ..io.atomic import write_text_atomic
from ..io.checkpoint import CheckpointMeta
from ..parallel.distributed import World
from ..training import split_accuracy
from ..training.device_batches import DeviceSplit
from .benchmark import device_name
from .dynamic_confidence import calibrate
from .inputs import limit_splits, load_model, load_splits, tensors
from .options import DataOptions, ReproduceOptions
from .report import method_results
from .train import train_checkpoint

PAPER_STEPS = {
    "resnet18": {"qcfs": 27, "qffs": 4},
    "vgg16": {"qcfs": 30, "qffs": 6},
    "whitened_cnn": {"qcfs": 27, "qffs": 4},  # not in the paper: its ResNet-18 T, for comparison
    "whitened_cnn_analog": {"qcfs": 27, "qffs": 4},
}
"""T of the paper's CIFAR-10 runs per architecture and method."""

PAPER_TABLE1 = {
    "resnet18": {"ann": 93.79, "qffs": (94.11, 4, 94.11, 2.52), "qcfs": (94.27, 27, 94.27, 11.51)},
    "vgg16": {"ann": 92.41, "qffs": (92.41, 6, 92.41, 3.17), "qcfs": (92.50, 30, 92.50, 12.69)},
}
"""The paper's Table 1 (CIFAR-10, 2-bit): ANN accuracy (%), and per method (SNN accuracy (%) at T,
SNN + DC accuracy (%) at mean steps)."""

PAPER_SPIKES = {("resnet18", "qcfs"): (3.02, 1.29)}
"""Table 3: spikes per neuron without and with DC."""

OFFICIAL_QCFS_CURVE = [
    78.76,
    84.28,
    87.07,
    88.89,
    90.11,
    90.96,
    91.68,
    92.17,
    92.49,
    92.79,
    93.08,
    93.18,
    93.40,
    93.53,
    93.63,
    93.76,
    93.85,
    93.92,
    94.01,
    94.01,
    94.08,
    94.13,
    94.22,
    94.23,
    94.22,
    94.22,
    94.27,
]
"""QCFS test accuracy (%) of the official code's 2-bit ResNet-18 on CIFAR-10 at t = 1..27."""

NAMES = {
    "resnet18": "ResNet-18",
    "vgg16": "VGG-16",
    "resnet50": "ResNet-50",
    "small_cnn": "small CNN",
    "whitened_cnn": "whitened CNN",
    "whitened_cnn_analog": "whitened CNN (analog stem)",
}


class Results:
    """OUT/results.json, rewritten (atomically) after every stage: {"status", "stages": {name: result}}."""

    def __init__(self, out: Path, command: list[str]) -> None:
        self.path = out / "results.json"
        self.data: dict = {"status": "running", "command": command, "stages": {}, "started": time.time()}
        self._write()

    def stage(self, name: str, value: dict) -> None:
        self.data["stages"][name] = value | {"seconds_since_start": time.time() - self.data["started"]}
        self._write()

    def finish(self, status: str, message: str | None = None) -> None:
        self.data["status"] = status
        if message:
            self.data["message"] = message
        self._write()

    def _write(self) -> None:
        write_json(self.path, self.data)


def untrained_reason(training: dict, ann_accuracy: float, min_accuracy: float) -> str | None:
    """Why a trained model does not count as trained, or None: training stopped before its planned
    epochs, or the quantized ANN's test accuracy is below ``min_accuracy``."""
    if not training.get("completed", False):
        done = len(training.get("epochs", []))
        return (
            f"training did not complete its planned epochs ({done} of {training.get('planned_epochs')}"
            f"{': ' + training['stopped'] if training.get('stopped') else ''})"
        )
    if ann_accuracy < min_accuracy:
        return f"the 2-bit ANN reached {100 * ann_accuracy:.2f}% test accuracy, below the floor of {100 * min_accuracy:.2f}%"
    return None


def run(opts: ReproduceOptions, data: DataOptions, world: World) -> dict:
    """The whole reproduction into ``opts.out`` (see the module doc); returns the summary of report.json."""
    out = opts.out
    t0 = time.perf_counter()
    # the data first: a bad data root fails before anything is written
    splits = limit_splits(load_splits(data), opts.train.train_subset, opts.max_test, data.seed)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(out, sys.argv)
    try:
        return _run(opts, data, world, results, splits, t0)
    except BaseException as err:  # record the failure (a time limit's signal included), then re-raise
        if results.data["status"] == "running":
            results.finish("failed", f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=-3)}")
        raise


def _run(opts: ReproduceOptions, data: DataOptions, world: World, results: Results, splits: dict, t0: float) -> dict:
    device, out, arch = world.device, opts.out, opts.train.arch
    results.stage("data", {k: len(v) for k, v in splits.items()})

    # 1. train, and save the weights before any evaluation
    train = dataclasses.replace(
        opts.train, out=out / "model.safetensors", workdir=opts.train.workdir or out / "model.work"
    )
    trained = train_checkpoint(train, data, world, splits)
    model, meta = load_model(train.out)
    zoo.export(train.out, out / "zoo")  # the same weights as sha256-checked shards of <= 16 MiB
    training = meta.training
    assert training is not None, "train_checkpoint writes the training history"
    results.stage(
        "train",
        {
            "checkpoint": str(train.out),
            "completed": training["completed"],
            "epochs": training["epochs"],
            "budget_plan": training["budget_plan"],
            "seconds": training["seconds"],
            "milestones": training["milestones"],
        },
    )

    # 2. the quantized ANN's test accuracy (float32)
    test_ds = splits["test"]
    ann_test = split_accuracy(
        model.to(device), DeviceSplit(test_ds.images, test_ds.labels, test_ds.mean, test_ds.std, device)
    )
    model.cpu()
    results.stage("ann", {"test_accuracy": ann_test, "val_accuracy": trained["accuracy"]["val"]})
    reason = untrained_reason(training, ann_test, opts.min_accuracy)
    if reason is not None:
        results.finish("untrained", reason)
        raise ValueError(
            f"{reason}: no report is written for it (weights kept in {train.out}; "
            f"give a larger --budget-minutes or more epochs)"
        )

    # 3. temperature
    val, test = tensors(splits["val"]), tensors(test_ds)
    calib = calibrate(model, *val)
    results.stage("calibration", calib)

    # 4-6. per method: validation trace, th_c, live early exit on the test split, test curve
    def stage(entry: dict) -> None:
        results.stage(
            entry["method"],
            {k: v for k, v in entry.items() if k != "analysis"}
            | {"selected": entry["analysis"]["selected"], "oracle": entry["analysis"]["oracle"]},
        )

    methods = method_results(
        model,
        val,
        test,
        ("qcfs", "qffs"),
        opts.report,
        calib["tau"],
        world,
        out,
        {"model": arch, "dataset": data.dataset} | trace_identity(train.out),
        default_steps=lambda method: PAPER_STEPS.get(arch, {}).get(method),
        test_traces=True,
        on_method=stage,
    )

    # 7. report
    curve = methods[0]["test_accuracy_vs_t"]
    curves = {"dcsim (test)": [100 * a for a in curve]}
    if arch == "resnet18":
        curves["official code, ResNet-18"] = OFFICIAL_QCFS_CURVE
    plots = [
        plot_curves(curves, out / "qcfs_accuracy_vs_t.png", f"QCFS accuracy vs t: {NAMES.get(arch, arch)}"),
        plot_training_curve(training["epochs"], out / "training_curve.png", f"training: {NAMES.get(arch, arch)}"),
    ]
    summary = _summary(
        arch,
        data.dataset,
        len(test_ds),
        meta,
        ann_test,
        calib,
        methods,
        [str(p) for p in plots],
        device,
        time.perf_counter() - t0,
    )
    write_text_atomic(out / "report.md", _markdown(summary))
    write_json(out / "report.json", summary)
    results.finish("complete")
    print(_markdown_table1(summary), file=sys.stderr)
    return summary


def _summary(
    arch: str,
    dataset: str,
    test_samples: int,
    meta: CheckpointMeta,
    ann_test: float,
    calib: dict,
    methods: list[dict],
    plots: list[str],
    device: torch.device,
    seconds: float,
) -> dict:
    rows = table_rows(ann_test, [{k: m[k] for k in ("method", "stem", "no_dc", "dc")} for m in methods])
    # the paper's rows of this network, else its ResNet-18 rows for reference (labelled as another network)
    paper_model = arch if arch in PAPER_TABLE1 else ("resnet18" if dataset == "cifar10" else None)
    paper = PAPER_TABLE1.get(paper_model) if paper_model else None
    return {
        "model": arch,
        "arch_kwargs": meta.arch_kwargs,
        "dataset": dataset,
        "device": device_name(device),
        "val_samples": int(methods[0]["analysis"]["samples"]),
        "test_samples": test_samples,
        "ann_test_accuracy": ann_test,
        "calibration": calib,
        "rows": rows,
        "paper": {
            "model": paper_model,
            "table1": paper,
            "spikes": {m: PAPER_SPIKES.get((paper_model or "", m)) for m in ("qcfs", "qffs")},
            "official_qcfs_curve": OFFICIAL_QCFS_CURVE if arch == "resnet18" else None,
        },
        "methods": [
            {k: v for k, v in m.items() if k != "analysis"}
            | {
                "selected": m["analysis"]["selected"],
                "oracle": m["analysis"]["oracle"],
                "baseline_val": m["analysis"]["baseline"],
            }
            for m in methods
        ],
        "training": meta.training,
        "train_config": meta.train_config,
        "plots": [p for m in methods for p in m["plots"]] + plots,
        "seconds": seconds,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _markdown_table1(s: dict) -> str:
    """Table 1's layout: ours and the paper's side by side."""
    name = NAMES.get(s["model"], s["model"])
    paper = s["paper"]["table1"]
    paper_model = s["paper"].get("model")
    label = (
        "paper"
        if paper_model in (None, s["model"])
        else f"paper's {NAMES.get(paper_model, paper_model)} (another network)"
    )
    head = (
        f"| {s['dataset']} | ANN (2-bit) | {label} | SNN, no DC | {label} | SNN + DC | {label} |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = []
    ann_paper = f"{paper['ann']:.2f}%" if paper else "-"
    for m in s["methods"]:
        no, dc, steps = m["no_dc"], m["dc"], m["steps"]
        p = paper[m["method"]] if paper else None
        stem = " (quantized stem)" if m.get("stem") == "quantized" else ""
        lines.append(
            f"| {name} {m['method'].upper()}{stem} | {_pct(s['ann_test_accuracy'])} | {ann_paper} | "
            f"{_pct(no['accuracy'])} at {steps} | {f'{p[0]:.2f}% at {p[1]}' if p else '-'} | "
            f"{_pct(dc['accuracy'])} at {dc['mean_steps']:.2f} ({100 * dc['saving']:.0f}% fewer) | "
            f"{f'{p[2]:.2f}% at {p[3]:.2f} ({100 * (1 - p[3] / p[1]):.0f}% fewer)' if p else '-'} |"
        )
    return head + "\n".join(lines) + "\n"


def _shape(arch_kwargs: dict) -> str:
    """'width 96, 2-bit activations' from a checkpoint's architecture arguments."""
    width = f"width {arch_kwargs['width']}, " if "width" in arch_kwargs else ""
    return f"{width}{arch_kwargs['bits']}-bit activations"


def _float_stage_note(training: dict) -> str:
    """'; the float stage (N epochs, M minutes when it ran) read from PATH' for a run that started from a stored one."""
    stage = training.get("float_stage")
    if not stage or not stage["read"]:
        return ""
    floats = [e for e in training["epochs"] if e["phase"] == "float"]
    minutes = floats[-1]["elapsed_s"] / 60 if floats else 0.0
    return (
        f"; the float stage ({len(floats)} epoch{'s' if len(floats) != 1 else ''}, {minutes:.1f} minutes when it ran) was read from "
        f"{stage['path']}, so this run's training time is the LSQ stage's"
    )


def _bn_note(training: dict) -> str:
    """' Batch-norm statistics re-estimated after the LSQ stage: validation X% -> Y%.' for a run with --bn-reestimate."""
    r = training.get("bn_reestimate")
    if not r:
        return ""
    return (
        f" Batch-norm statistics re-estimated after the LSQ stage ({r['seconds']:.0f} s): validation accuracy "
        f"{100 * r['val_before']:.2f}% -> {100 * r['val_after']:.2f}%."
    )


def _ema_note(training: dict) -> str:
    """' The LSQ stage kept a moving average ...' for a run with --ema: whose validation accuracy the table shows."""
    trained = [e["trained_val_acc"] for e in training["epochs"] if "trained_val_acc" in e]
    if not trained:
        return ""
    shown = " / ".join(f"{100 * a:.2f}" for a in trained)
    return (
        " The LSQ stage kept a moving average of the weights (`--ema`): the validation column of its epochs is "
        f"the average's, the network as trained scored {shown}% there."
    )


def _markdown(s: dict) -> str:
    name = NAMES.get(s["model"], s["model"])
    tr = s["training"]
    parts = [
        f"# dcsim reproduce: {name} ({_shape(s['arch_kwargs'])}) on {s['dataset']}\n\n",
        f"Device: {s['device']}. Whole run {s['seconds'] / 60:.1f} minutes; training {tr['seconds'] / 60:.1f} minutes "
        f"({len(tr['epochs'])} epochs on {tr['train_images']} images, {tr['device']}){_float_stage_note(tr)}.{_bn_note(tr)}"
        f"{_ema_note(tr)}\n\n",
        "## Table 1 (test split; th_c selected on the validation split at zero tolerance)\n\n",
        _markdown_table1(s),
        "\nAll rows, with th_c, spikes and wall time (live early exit):\n\n",
        markdown_table(s["rows"]),
        f"\nTemperature tau = {s['calibration']['tau']:.4f} (validation ECE {s['calibration']['ece_before']:.4f} -> "
        f"{s['calibration']['ece_after']:.4f}).\n",
        "\n## Spikes per neuron per inference (test split)\n\n| method | no DC | + DC | paper no DC | paper + DC |\n"
        "|---|---|---|---|---|\n",
    ]
    for m in s["methods"]:
        ps = s["paper"]["spikes"].get(m["method"])
        parts.append(
            f"| {m['method'].upper()} | {m['no_dc']['spikes_per_neuron']:.3f} | {m['dc']['spikes_per_neuron']:.3f} | "
            f"{ps[0] if ps else '-'} | {ps[1] if ps else '-'} |\n"
        )
    parts.append(
        "\n## Oracle bound (validation split, label-aware stopping at the first correct step)\n\n"
        "| method | T | baseline accuracy | oracle accuracy | oracle mean steps | DC mean steps |\n|---|---|---|---|---|---|\n"
    )
    for m in s["methods"]:
        o = m["oracle"]["first_correct"]
        parts.append(
            f"| {m['method'].upper()} | {m['steps']} | {_pct(m['baseline_val']['accuracy'])} | {_pct(o['accuracy'])} | "
            f"{o['mean_steps']:.2f} | {m['selected']['mean_steps']:.2f} |\n"
        )
    curve = s["methods"][0]["test_accuracy_vs_t"]
    official = s["paper"]["official_qcfs_curve"]
    parts.append(
        "\n## QCFS test accuracy (%) against t\n\n| t | dcsim |"
        + (" official code |" if official else "")
        + "\n|---|---|"
        + ("---|" if official else "")
        + "\n"
    )
    for t, a in enumerate(curve, 1):
        theirs = (f" {official[t - 1]:.2f} |" if t <= len(official) else " - |") if official else ""
        parts.append(f"| {t} | {100 * a:.2f} |{theirs}\n")
    parts.append(
        "\n## Training\n\n| epoch | stage | lr (end) | train acc | val acc | minutes (cumulative) |\n"
        "|---|---|---|---|---|---|\n"
    )
    parts.extend(
        f"| {e['epoch']} | {e['phase']} | {e['lr']:.4g} | {_pct(e['train_acc'])} | {_pct(e['val_acc'])} | "
        f"{e['elapsed_s'] / 60:.2f} |\n"
        for e in tr["epochs"]
    )
    parts.append(
        "\nEpochs and minutes until the validation accuracy first reached a level:\n\n"
        "| stage | level | epoch | minutes |\n|---|---|---|---|\n"
    )
    parts.extend(
        f"| {r['phase']} | {_pct(r['level'])} | {r['epoch'] or 'not reached'} | "
        f"{'-' if r['minutes'] is None else format(r['minutes'], '.2f')} |\n"
        for r in tr["milestones"]
    )
    if tr.get("budget_plan"):
        p = tr["budget_plan"]
        parts.append(
            f"\nBudget {p['budget_minutes']} minutes: {p['float_epochs']} float + {p['epochs']} LSQ epochs planned "
            f"from measured epoch times ({p['seconds_per_epoch']['float']:.1f} s / {p['seconds_per_epoch']['lsq']:.1f} s).\n"
        )
    parts.append("\n" + "".join(f"![{Path(p).stem}]({Path(p).name})\n" for p in s["plots"]))
    return "".join(parts)
