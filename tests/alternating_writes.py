"""Two versions of a trace, a checkpoint and a report, written and recognised: the kill-during-save tests
rewrite a file with them in a loop and check that what a kill leaves loads as one of them, complete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dcsim import analysis
from dcsim.io.atomic import write_text_atomic
from dcsim.io.checkpoint import load_checkpoint, save_checkpoint
from dcsim.models import build_model

KINDS = ("trace", "checkpoint", "report")
_ARCH = {"num_classes": 3, "in_channels": 1, "width": 4}
_META = {"architecture": "small_cnn", "arch_kwargs": _ARCH, "classes": ["a", "b", "c"],
         "normalization": {"mean": [0.0], "std": [1.0]}, "dataset": "x", "accuracy": {}}  # fmt: skip


class Writer:
    """Writes version 0 or 1 of a file of one kind (two random models for the checkpoints)."""

    def __init__(self) -> None:
        self.models = [build_model("small_cnn", **_ARCH) for _ in range(2)]

    def write(self, kind: str, path: Path, v: int) -> None:
        if kind == "trace":
            n = 20000 + v
            conf = np.full((n, 8), 0.25 * (v + 1), dtype=np.float32)
            trace = analysis.Trace(labels=np.full(n, v), pred=np.full((n, 8), v), conf=conf, meta={"v": v})
            analysis.save_trace(path, trace)
        elif kind == "checkpoint":
            save_checkpoint(path, self.models[v], _META | {"seed": v})
        else:
            write_text_atomic(path, json.dumps({"v": v, "rows": [v] * (200000 + v)}))


def version(kind: str, path: Path) -> int:
    """Which of the two versions ``path`` holds; it must load completely (else the loader's error)."""
    if kind == "trace":
        return int(analysis.load_trace(path).meta["v"])
    if kind == "checkpoint":
        return int(load_checkpoint(path, build_model)[1]["seed"])
    report = json.loads(path.read_text())
    assert len(report["rows"]) == 200000 + report["v"]
    return int(report["v"])
