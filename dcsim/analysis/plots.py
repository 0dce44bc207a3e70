"""PNG figures of a Dynamic Confidence analysis (the dict returned by :func:`dcsim.analysis.analyze`) and of
an energy report (:func:`dcsim.analysis.energy.report`).

Figures are drawn on a ``matplotlib.figure.Figure`` with the Agg canvas directly, so this
module never touches pyplot or the global backend. Each file is written atomically (a
temporary file beside it, then renamed) and the functions return its path.
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io.atomic import atomic_output

__all__ = ["plot_accuracy_confidence", "plot_curves", "plot_exit_histogram", "plot_front", "plot_sops_per_layer"]

_MAX_LABELLED = 21
"""Grid fronts with more points than this are drawn without threshold labels."""


def _get(analysis: dict, *keys: str):
    value = analysis
    for i, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise ValueError(
                f"analysis dict lacks {'.'.join(keys[: i + 1])!r} (expected the output of analysis.analyze)"
            )
        value = value[key]
    return value


def _title(analysis: dict, what: str) -> str:
    meta = analysis.get("meta") or {}
    parts = [str(meta[k]) if k != "model" else Path(str(meta[k])).stem for k in ("model", "method") if meta.get(k)]
    if meta.get("bits"):
        parts.append(f"{meta['bits']}-bit")
    parts.append(f"T={_get(analysis, 'steps')}")
    if meta.get("split"):
        parts.append(f"({meta['split']} split)")
    return f"{what}: {' '.join(parts)}"


def _new_axes(size: tuple[float, float]) -> tuple[Figure, Axes]:
    fig = Figure(figsize=size, dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def plot_front(analysis: dict, path: str | os.PathLike) -> Path:
    """Accuracy (%) vs mean time steps: grid front (labelled with th_c), exact front, baseline, oracles.

    The baseline curve stops every sample at T' = 1..T; the oracle curves stop each sample
    at its first correct step (or the start of its final correct run) within T'. The
    selected threshold is marked with a star.
    """
    steps = _get(analysis, "steps")
    fig, ax = _new_axes((7.0, 5.0))
    acc_t = _get(analysis, "curves", "accuracy_vs_t")
    ax.plot(
        range(1, len(acc_t) + 1),
        [100 * a for a in acc_t],
        "o-",
        color="0.45",
        ms=3,
        lw=1.2,
        label="no DC: stop all at T'",
    )
    for key, label, color in (
        ("oracle_first_correct", "oracle: first correct step", "tab:green"),
        ("oracle_stays_correct", "oracle: stays correct after", "tab:olive"),
    ):
        curve = _get(analysis, "curves", key)
        ax.plot(
            [p["mean_steps"] for p in curve],
            [100 * p["accuracy"] for p in curve],
            "--",
            color=color,
            lw=1.2,
            label=label,
        )
    exact = analysis.get("front_exact")
    if exact:
        pts = sorted((p["mean_steps"], 100 * p["accuracy"]) for p in exact)
        ax.plot(
            *zip(*pts, strict=True),
            "-",
            color="tab:blue",
            lw=1.0,
            alpha=0.7,
            label=f"DC, exact front ({len(exact)} th_c)",
        )
    front = _get(analysis, "front")
    ax.plot(
        [p["mean_steps"] for p in front],
        [100 * p["accuracy"] for p in front],
        "o",
        color="tab:blue",
        ms=5,
        label="DC, grid th_c",
    )
    if len(front) <= _MAX_LABELLED:
        labels: dict[tuple[float, float], list[str]] = {}
        for p in front:
            labels.setdefault((p["mean_steps"], 100 * p["accuracy"]), []).append(f"{p['threshold']:g}")
        for xy, names in labels.items():
            ax.annotate(", ".join(names), xy, xytext=(4, 4), textcoords="offset points", fontsize=7, color="tab:blue")
    sel = _get(analysis, "selected")
    ax.plot(
        [sel["mean_steps"]],
        [100 * sel["accuracy"]],
        "*",
        color="tab:red",
        ms=14,
        zorder=5,
        label=f"selected th_c={sel['threshold']:.4g}: {100 * sel['accuracy']:.2f}% at {sel['mean_steps']:.2f} steps",
    )
    ax.set_xlim(0, steps + 0.5)
    ax.set_xlabel("mean time steps per sample")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(_title(analysis, "Pareto front"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_exit_histogram(analysis: dict, path: str | os.PathLike) -> Path:
    """Bar chart of the number of samples exiting at each step t = 1..T at the selected threshold."""
    counts = _get(analysis, "exit_histogram")
    sel = _get(analysis, "selected")
    fig, ax = _new_axes((6.0, 4.0))
    ax.bar(range(1, len(counts) + 1), counts, color="tab:blue", width=0.8)
    ax.axvline(sel["mean_steps"], color="tab:red", ls="--", lw=1.2, label=f"mean {sel['mean_steps']:.2f} steps")
    ax.set_xlabel("exit time step t")
    ax.set_ylabel("samples")
    ax.set_title(_title(analysis, f"Exit steps at th_c={sel['threshold']:.4g}"), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_accuracy_confidence(analysis: dict, path: str | os.PathLike) -> Path:
    """Accuracy and mean stopping score of all samples after each step t = 1..T (no early exit)."""
    acc = _get(analysis, "curves", "accuracy_vs_t")
    conf = _get(analysis, "curves", "mean_confidence_vs_t")
    sel = _get(analysis, "selected")
    t = range(1, len(acc) + 1)
    fig, ax = _new_axes((6.0, 4.0))
    ax.plot(t, acc, "o-", color="tab:blue", ms=3, label="accuracy")
    ax.plot(t, conf, "s-", color="tab:orange", ms=3, label="mean confidence")
    ax.axhline(sel["threshold"], color="tab:red", ls=":", lw=1.2, label=f"selected th_c={sel['threshold']:.4g}")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time step t")
    ax.set_ylabel("fraction")
    ax.set_title(_title(analysis, "Accuracy and confidence vs t"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_curves(
    curves: dict[str, list[float]],
    path: str | os.PathLike,
    title: str,
    ylabel: str = "accuracy (%)",
    xlabel: str = "time step t",
) -> Path:
    """Line plot of named curves against t = 1..len(curve) (e.g. measured and published accuracy vs t)."""
    if not curves or not all(len(c) for c in curves.values()):
        raise ValueError("plot_curves: give at least one non-empty curve")
    fig, ax = _new_axes((6.0, 4.0))
    for label, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), ys, "o-", ms=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def training_series(epochs: list[dict]) -> list[tuple[str, list[float], list[float], str]]:
    """The lines of :func:`plot_training_curve`: (label, minutes, validation accuracy in %, line style) per
    stage, and for a stage whose epochs hold a weight average's accuracy (``--ema``: "trained_val_acc" beside
    "val_acc") a dashed line of the network as trained."""
    lines = []
    for phase in ("float", "lsq"):
        rows = [e for e in epochs if e["phase"] == phase]
        if not rows:
            continue
        minutes = [e["elapsed_s"] / 60 for e in rows]
        averaged = all("trained_val_acc" in e for e in rows)
        what = "the weight average, validation" if averaged else "validation"
        lines.append((f"{phase} stage ({what})", minutes, [100 * e["val_acc"] for e in rows], "o-"))
        if averaged:
            trained = [100 * e["trained_val_acc"] for e in rows]
            lines.append((f"{phase} stage (network as trained, validation)", minutes, trained, "o--"))
    return lines


def plot_training_curve(epochs: list[dict], path: str | os.PathLike, title: str) -> Path:
    """Validation accuracy (%) against wall-clock minutes of training, one marker per epoch, float
    and LSQ stages in their own colours (see :func:`training_series`). epochs: the training history's entries,
    each with "phase" ("float" or "lsq"), "val_acc" (fraction) and "elapsed_s" (seconds since the start)."""
    if not epochs:
        raise ValueError("plot_training_curve: the history has no epochs")
    fig, ax = _new_axes((6.0, 4.0))
    for label, minutes, accuracy, style in training_series(epochs):
        ax.plot(minutes, accuracy, style, ms=3, label=label)
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


_RUN_LABELS = {"no_dc": "no DC", "dc": "DC"}
"""Legend names of the report loop's run labels."""


def plot_sops_per_layer(energy_report: dict, path: str | os.PathLike, title: str) -> Path:
    """Bars of the synaptic operations per inference of each spiking layer (the SOPs of the layers it feeds),
    one bar per run of ``energy_report`` (e.g. without and with DC), labelled with the run's mean steps."""
    runs = energy_report.get("runs") if isinstance(energy_report, dict) else None
    if not runs:
        raise ValueError("energy report lacks 'runs' (expected the output of dcsim.analysis.energy.report)")
    layers = [p["layer"] for p in next(iter(runs.values()))["per_layer"]]
    width = 0.8 / len(runs)
    fig, ax = _new_axes((max(6.0, 0.6 * len(layers) + 2.0), 4.0))
    for k, (label, run) in enumerate(runs.items()):
        ax.bar(
            [i + (k - (len(runs) - 1) / 2) * width for i in range(len(layers))],
            [p["sops_per_inference"] for p in run["per_layer"]],
            width=width,
            label=f"{_RUN_LABELS.get(label, label)}: {run['mean_steps']:.2f} steps, "
            f"{run['sops_per_inference']:.3g} SOPs in total",
        )
    rotate = len(layers) > 6
    ax.set_xticks(
        range(len(layers)), layers, rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize=8
    )
    ax.set_xlabel("spiking layer (its spikes' synaptic operations in the layers it feeds)")
    ax.set_ylabel("SOPs per inference")
    ax.set_title(f"Synaptic operations per layer: {title}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
