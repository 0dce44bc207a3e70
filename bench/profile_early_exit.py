"""Where the time of a live early-exit run goes on the CPU (docs/results/profile-early-exit-cpu.md).

    python bench/profile_early_exit.py zoo/cifar10-resnet18w16-2bit zoo/cifar10-small-cnn-2bit \\
        --data-root cifar10-jpeg.tar.gz --batches 1 32 256

For each zoo network, method (QCFS T=27, QFFS T=4, default "settle" semantics) and batch size it runs
``Engine.early_exit`` without DC (threshold 1) and with DC (th_c as ``dcsim report`` selects it) with
every engine part wrapped in a wall-clock timer: the convs / linears / pools / adds (by node kind;
event-driven convs included), the neuron kernel, the output step (score and exit decision, one fused
kernel), compaction (the gather of every state tensor, or the in-place move), the settle schedule's
drive masks, the first (image-fed) layers and state set-up. What is left is Python overhead and bookkeeping (step
records, exit bookkeeping), reported per step. Times are CPU ms per inference (the thread's CPU time,
``time.thread_time``: on a shared machine it does not count the time other processes hold the core),
medians over --rounds warm rounds (each round runs no DC then DC). Run with one thread (--threads 1,
OMP_NUM_THREADS=1): then all work is on the timed thread and the CPU runs synchronously. The engine runs with its
chunk programs off (:mod:`dcsim.sim.program` calls the kernels past these timers): the parts are its general path's.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from zoo_setup import arguments, load_cases, machine, table_row

from dcsim.sim.engine import Engine
from dcsim.sim.network import Conv, Linear

PARTS = ["convs", "linears", "pools/adds/other", "neuron", "output", "compact", "masks", "static+setup", "python"]


def instrument(engine: Engine, acc: dict[str, float]) -> None:
    """Wrap the engine's parts in timers that add seconds to ``acc[part]`` (instance attributes only).

    Layers run inside ``fresh`` (a batch's setup: the image-fed layers) count as "static+setup"; ``acc["calls"]``
    counts the step calls (``advance``). The chunk programs are turned off: they call the kernels past the timers.
    """
    engine._programmed = False
    in_fresh = [False]

    def timed(part: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[part if isinstance(part, str) else part(*args)] += time.thread_time() - t0

        return wrapper

    def within(flag: list[bool], part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """fn timed as ``part``, with flag[0] set while it runs (for the wrappers of what it calls)."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            flag[0] = True
            try:
                return timed(part, fn)(*args, **kwargs)
            finally:
                flag[0] = False

        return wrapper

    def advance(*args: Any, **kwargs: Any) -> Any:
        acc["calls"] += 1
        return advance_fn(*args, **kwargs)

    def kind(node: Any, *_: Any) -> str:
        if in_fresh[0]:
            return "layers-in-fresh"
        return "convs" if isinstance(node, Conv) else "linears" if isinstance(node, Linear) else "pools/adds/other"

    fresh_fn, advance_fn = engine.fresh, engine.advance

    k = engine.kernels
    parts = {
        "neuron_step": "neuron",
        "neuron_steps": "neuron",
        "output_step": "output",
        "gather_rows": "compact",
        "compact_rows_": "compact",
        "spike_conv2d": "convs",
    }
    # every other kernel (the 2x2 pool of kernel 5) passes through: its caller, _apply, is timed
    kernels = {name: getattr(k, name) for name in dir(k) if not name.startswith("_")}
    engine.kernels = SimpleNamespace(  # type: ignore[assignment]
        **kernels | {name: timed(part, getattr(k, name)) for name, part in parts.items()}
    )
    # a step's convs go through _conv, which calls _apply only where it takes another way: timed once, as convs
    in_conv = [False]
    apply_fn, conv_fn = engine._apply, engine._conv
    apply_timed = timed(kind, apply_fn)

    def apply(*args: Any, **kwargs: Any) -> Any:
        return apply_fn(*args, **kwargs) if in_conv[0] else apply_timed(*args, **kwargs)

    engine._apply = apply  # type: ignore[method-assign]
    engine._conv = within(in_conv, "convs", conv_fn)  # type: ignore[method-assign]
    engine._drive_mask = timed("masks", engine._drive_mask)  # type: ignore[method-assign]
    engine.fresh = within(in_fresh, "static+setup", fresh_fn)  # type: ignore[method-assign]
    engine.advance = advance  # type: ignore[method-assign]


def profile(engine: Engine, case: Any, batch: int, n: int, threshold: float) -> dict[str, float]:
    """Seconds per part for one early-exit pass over n images in batches of ``batch``, plus total and steps."""
    acc: dict[str, float] = defaultdict(float)
    saved, programmed = engine.kernels, engine._programmed
    instrument(engine, acc)
    x = case.x[:n]
    t0 = time.thread_time()
    res = engine.early_exit(x, case.steps, case.readout, threshold, batch_size=batch)
    total = time.thread_time() - t0
    engine.kernels = saved
    for name in ("_apply", "_drive_mask", "fresh", "advance"):
        delattr(engine, name)
    engine._programmed = programmed
    acc.pop("layers-in-fresh", None)  # inside fresh's time already
    acc["python"] = total - sum(v for p, v in acc.items() if p not in ("python", "calls"))
    return dict(acc) | {"total": total, "steps": float(res.exit_step.float().sum())}


def main() -> None:
    p = arguments(__doc__ or "", batches=[1, 32, 256], rounds=3)
    p.add_argument("--images", type=int, default=64, help="test images per batch size (at least one batch)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    cases = load_cases(args.folders, 512, 1000, args.cache, args.data_root, args.methods, args.qcfs_stem)
    head = "| network | method | batch | DC | mean steps | total ms/inf | " + " | ".join(PARTS) + " | python us/step |"
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    for case in cases:
        engine = Engine(case.net)
        for batch in args.batches:
            n = max(args.images, batch)
            engine.early_exit(case.x[: max(batch, 8)], case.steps, case.readout, case.threshold, batch_size=batch)
            runs: dict[str, list[dict[str, float]]] = {"no": [], "yes": []}
            for _ in range(args.rounds):
                for dc, th in (("no", 1.0), ("yes", case.threshold)):
                    runs[dc].append(profile(engine, case, batch, n, th))
            for dc, rs in runs.items():
                med = {k: statistics.median(r.get(k, 0.0) for r in rs) for k in [*PARTS, "total", "steps", "calls"]}
                ms = {k: 1000 * v / n for k, v in med.items()}  # per inference
                cells = [f"{case.method} T={case.steps}", batch, dc, f"{med['steps'] / n:.2f}", f"{ms['total']:.3f}"]
                cells += [f"{ms[k]:.3f}" for k in PARTS] + [f"{1e6 * med['python'] / med['calls']:.0f}"]
                print(table_row(case.name, *cells), flush=True)


if __name__ == "__main__":
    main()
