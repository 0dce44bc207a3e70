"""Shared setup of the CPU early-exit measurements on the trained zoo networks (profile, Table 2).

For a zoo folder and a method it returns the converted network (default semantics: QFFS "settle"),
the paper's readout with tau fitted on a validation subset, th_c selected as ``dcsim report`` selects
it (lowest mean steps at no accuracy loss on the validation trace), and CIFAR-10 test images. The
results are cached in a file (--cache) so repeated measurements skip the decoding and the trace.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dcsim import analysis
from dcsim.allocator import steady
from dcsim.conversion.convert import convert
from dcsim.data import load_cifar10
from dcsim.io import zoo
from dcsim.models import build_model
from dcsim.sim.engine import Engine
from dcsim.sim.network import STEMS, SpikingNetwork
from dcsim.sim.readout import Readout
from dcsim.sim.state import ExitResult
from dcsim.workflows.dynamic_confidence import calibrate, record_trace
from dcsim.workflows.options import method_stem

STEPS = {"qcfs": 27, "qffs": 4}
"""T per method, as in the issue's Table 2 runs (``--qcfs-steps 27 --qffs-steps 4``)."""


@dataclass
class Case:
    """One trained network and method, ready to time.

    net: the converted network; readout, steps (T), threshold (th_c); x: float32 [N, 3, 32, 32] test images.
    """

    name: str
    method: str
    net: SpikingNetwork
    readout: Readout
    steps: int
    threshold: float
    x: torch.Tensor


def early_exit_run(
    engine: Engine,
    case: Case,
    x: torch.Tensor,
    batch: int,
    threshold: float,
    fraction: float | None = None,
    steps: int | None = None,
) -> Callable[[], ExitResult]:
    """One timed call: early exit of x in batches of ``batch`` at ``threshold``, T = ``steps`` (default the
    case's), with ``compact_fraction=fraction`` (default: the engine's cost model)."""
    return lambda: engine.early_exit(
        x, steps or case.steps, case.readout, threshold, batch_size=batch, compact_fraction=fraction
    )


def machine() -> str:
    """CPU model, usable cores, torch threads and version: the line every result table names."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{model}, {cores} usable cores, torch {torch.__version__} with {torch.get_num_threads()} intra-op "
        f"thread(s), ISA {torch.backends.cpu.get_cpu_capability()}, {allocator()}"
    )


def allocator() -> str:
    """The allocator the timings ran with: the zoo measurements fix glibc's thresholds on parsing their arguments
    (:func:`arguments`, :func:`dcsim.allocator.steady`), as the ``dcsim`` commands do."""
    return "malloc: " + steady()


def arguments(doc: str, batches: list[int], rounds: int, cases: bool = True) -> argparse.ArgumentParser:
    """The command line the zoo measurements share: zoo folders, --batches and --rounds (these defaults); with
    ``cases`` also --data-root (CIFAR-10), --threads (pinned, default 1), --cache (see :func:`load_cases`),
    --methods (default: both) and --qcfs-stem (QCFS's conversion, see dcsim.convert; default spiking). Fixes the
    allocator's thresholds for this process first (:func:`allocator`)."""
    steady()
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+")
    p.add_argument("--batches", type=int, nargs="+", default=batches)
    p.add_argument("--rounds", type=int, default=rounds)
    if cases:
        p.add_argument("--data-root", type=Path, required=True, help="CIFAR-10 (folder or .tar.gz), as dcsim takes it")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--cache", type=Path, default=Path("/tmp/dcsim_zoo_cases.pt"))
        p.add_argument("--methods", nargs="+", choices=list(STEPS), default=list(STEPS), help="methods to measure")
        p.add_argument("--qcfs-stem", choices=list(STEMS), default="spiking", help="QCFS's stem (see dcsim.convert)")
    return p


def table_row(*cells: object) -> str:
    """A markdown table row of ``cells``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def load_cases(
    folders: list[str],
    n_test: int,
    n_val: int,
    cache: Path,
    data_root: Path,
    methods: list[str],
    qcfs_stem: str = "spiking",
) -> list[Case]:
    """A Case per (zoo folder, method in ``methods``, keys of STEPS): th_c from a trace of n_val validation
    images, n_test test images (CIFAR-10 at ``data_root``); QCFS converted with ``qcfs_stem`` (its cases' names
    say so when it is "quantized"); what it computes is kept in ``cache`` for the next run."""
    blob = torch.load(cache) if cache.exists() else {}
    splits = None
    cases = []
    for folder in folders:
        model, _ = zoo.load(folder, build_model)
        model.eval()
        name = Path(folder).name
        weights = zoo.model_identity(folder)[1]  # new weights in the same folder: a new key
        for method in methods:
            steps = STEPS[method]
            stem = method_stem(method, qcfs_stem)
            key = f"{name}/{weights}/{method}/{n_test}/{n_val}" + ("/quantized-stem" if stem == "quantized" else "")
            net = convert(model, method=method, stem=stem)
            if key not in blob:
                if splits is None:
                    splits = load_cifar10(data_root, val_size=n_val, seed=0)
                    xv, yv = splits["val"].normalized(), splits["val"].labels
                    xt = splits["test"].normalized()[:n_test]
                tau = calibrate(model, xv, yv)["tau"]
                readout = Readout.paper(method, net.bits, steps, tau=tau)
                trace = record_trace(Engine(net), xv, yv, steps, readout, {"split": "val"})
                th = analysis.analyze(trace)["selected"]["threshold"]
                blob[key] = {"tau": tau, "threshold": th, "x": xt}
                torch.save(blob, cache)
            e = blob[key]
            readout = Readout.paper(method, net.bits, steps, tau=e["tau"])
            label = name + (" (quantized stem)" if stem == "quantized" else "")
            cases.append(Case(label, method, net, readout, steps, e["threshold"], e["x"]))
    return cases
