"""Soak and fault injection for streaming: many samples in random arrival order through a small
model, with the input iterator raising at random points and the stream restarted after each error.

Every id must come back exactly once with the result of the sample run alone, and resident
memory must stay flat. CI runs DCSIM_SOAK_SAMPLES (default 2,000) samples; the full soak is
``DCSIM_SOAK_SAMPLES=200000 python -m pytest -s tests/test_soak.py`` (it prints its figures).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import dcsim
from dcsim import analysis
from dcsim.models.lsq import LSQActivation
from dcsim.sim.continuous import StreamStats, stream
from dyadic import dyadic_inputs, trace_of

SAMPLES = int(os.environ.get("DCSIM_SOAK_SAMPLES", "2000"))
DISTINCT = 48
"""Distinct inputs: sample id i is input i % DISTINCT (its isolated result is known)."""
FAIL_RATE = 0.002
"""Probability that the input iterator raises instead of yielding the next sample."""


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class InputFailure(RuntimeError):
    """The planted error of the flaky input iterator."""


def flaky_source(x, order: np.ndarray, position: list[int], rng: np.random.Generator):
    """(id, input) pairs in ``order`` from ``position[0]`` on; raises InputFailure at random points.

    position[0] advances only when an item is handed out, so a restarted source goes on with
    the first sample not yet admitted.
    """
    while position[0] < len(order):
        if rng.random() < FAIL_RATE:
            raise InputFailure(f"input failed before sample {position[0]}")
        i = int(order[position[0]])
        position[0] += 1
        yield i, x[i % DISTINCT]


def soak_model(seed: int) -> tuple[dcsim.SpikingNetwork, tuple[int, int, int]]:
    """conv 3x3 -> LSQ (2 bits, step 1/4) -> linear on 1x8x8 inputs, weights on a 1/16 grid (exact sums)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), LSQActivation(2), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    with torch.no_grad():
        for m in (model[0], model[3]):
            m.weight.copy_(torch.randint(-6, 7, m.weight.shape, generator=g) / 16)
            m.bias.copy_(torch.randint(-6, 7, m.bias.shape, generator=g) / 16)
        model[1].step.fill_(0.25)
        model[1].initialized.fill_(True)
    return dcsim.convert(model.eval(), method="qcfs"), (1, 8, 8)


def test_stream_soak_with_failing_inputs():
    method, steps, slots = "qcfs", 8, 64
    net, shape = soak_model(21)
    engine = dcsim.Engine(net)
    x = dyadic_inputs(DISTINCT, shape, seed=22)
    readout = dcsim.Readout.paper(method, 2, steps)
    conf = trace_of(engine, x, steps, readout).conf
    c = max(np.unique(conf)[:-1].tolist(), key=lambda v: len(np.unique(analysis.exit_steps(conf, v))))
    alone = engine.early_exit(x, steps, readout, c, batch_size=1)
    want_pred, want_step = alone.pred.numpy(), alone.exit_step.numpy()
    want_spikes = [tuple(s) for s in alone.spikes.tolist()]
    assert len(set(want_step.tolist())) > 2 and len(set(want_pred.tolist())) > 2, "degenerate soak model"

    rng = np.random.default_rng(23)
    order = rng.permutation(SAMPLES)
    seen = np.zeros(SAMPLES, dtype=np.int64)
    position, restarts, done, mismatches = [0], 0, 0, 0
    rss_start = rss_peak = None
    start = time.perf_counter()
    while position[0] < SAMPLES:
        stats = StreamStats(slots)
        try:
            for r in stream(engine, flaky_source(x, order, position, rng), slots, steps, readout, c, stats):
                seen[r.id] += 1
                k = r.id % DISTINCT
                mismatches += (r.pred, r.exit_step, r.spikes) != (want_pred[k], want_step[k], want_spikes[k])
                done += 1
                if rss_start is None and done >= min(1000, SAMPLES // 10):
                    rss_start = rss_peak = rss_mib()
                elif done % 1000 == 0 and rss_start is not None:
                    rss_peak = max(rss_peak, rss_mib())
        except InputFailure:
            restarts += 1
    seconds = time.perf_counter() - start
    rss_end = rss_mib()
    growth = rss_end - rss_start
    print(
        f"\nsoak: {SAMPLES} samples in {seconds:.1f} s ({SAMPLES / seconds:.0f}/s), {restarts} input failures "
        f"and restarts, lost {int((seen == 0).sum())}, duplicated {int((seen > 1).sum())}, mismatches {mismatches}; "
        f"RSS {rss_start:.1f} MiB after warm-up, peak {max(rss_peak, rss_end):.1f}, end {rss_end:.1f} "
        f"(growth {growth:+.1f} MiB)"
    )
    assert restarts > 0, "the fault injection never fired"
    assert (seen == 1).all(), f"lost {np.flatnonzero(seen == 0)[:10]}, duplicated {np.flatnonzero(seen > 1)[:10]}"
    assert mismatches == 0
    assert growth < 20 + SAMPLES * 1e-4, f"resident memory grew by {growth:.1f} MiB over {SAMPLES} samples"
