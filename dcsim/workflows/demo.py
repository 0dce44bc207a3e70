"""The end-to-end demo: a 2-bit LSQ small CNN trained on scikit-learn's digits, then the full report."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from ..parallel.distributed import World
from .inputs import load_model, load_splits
from .options import DataOptions, ReportOptions, TrainOptions
from .report import report
from .train import train_checkpoint


def demo_training(out: Path, **overrides: object) -> TrainOptions:
    """The demo's training options into OUT/model.safetensors (``overrides``: epochs, lr, ...)."""
    base = TrainOptions(
        out=out / "model.safetensors", arch="small_cnn", width=16, bits=2, augment=False, momentum=0.9,
        weight_decay=2.5e-5, lr_decay=0.95,
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def demo(out: Path, train: TrainOptions, opts: ReportOptions, seed: int, world: World) -> dict:
    """Train (``train``, see :func:`demo_training`) on digits, then :func:`report` into the folder ``out``."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = DataOptions(dataset="digits", seed=seed)
    print("[dcsim] demo: training a 2-bit LSQ small CNN on scikit-learn's digits", file=sys.stderr)
    trained = train_checkpoint(train, data, world)
    model, meta = load_model(train.out)
    summary = report(model, meta.to_dict(), load_splits(data), out, opts, data, world, checkpoint=train.out)
    summary["train"] = {k: trained[k] for k in ("accuracy", "train_seconds")}
    summary["seconds"] = time.perf_counter() - t0
    print(f"[dcsim] demo done in {summary['seconds']:.1f} s: {out / 'report.md'}", file=sys.stderr)
    return summary
