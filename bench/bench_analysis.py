"""Front and analysis cost on a 10,000 x 64 trace, beside a one-pass-per-threshold grid scan.

Run: PYTHONPATH=. python -m pytest bench/bench_analysis.py -q --benchmark-only -o python_files='bench_*.py'
All benchmarks share one group so pytest-benchmark prints them side by side; nothing asserts on time.
"""

from __future__ import annotations

import numpy as np
import pytest

from dcsim import analysis as A

N, T, K = 10_000, 64, 10
GROUP = f"analysis {N}x{T}"


@pytest.fixture(scope="module")
def trace() -> A.Trace:
    """Confidence rising with t (as a running softmax does), predictions settling on the label."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, N)
    settle = rng.integers(1, T + 1, N)
    noise = rng.integers(0, K, (N, T))
    pred = np.where(np.arange(1, T + 1)[None, :] >= settle[:, None], labels[:, None], noise)
    drift = np.cumsum(rng.normal(0.02, 0.05, (N, T)), axis=1)
    conf = np.clip(rng.uniform(0.1, 0.6, (N, 1)) + drift, 0.0, 1.0).astype(np.float32)
    return A.Trace(labels, pred, conf, meta={"bench": True})


def brute_grid(trace: A.Trace, resolution: float) -> list[A.FrontPoint]:
    """The baseline: one vectorised pass over the trace per threshold."""
    grid = np.round(np.arange(round(1 / resolution) + 1) * resolution, 10)
    return [A.FrontPoint(float(c), *A.evaluate(trace, float(c))) for c in grid]


def _run(benchmark, fn, *args, **kwargs):
    return benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group=GROUP)
def test_front_exact(benchmark, trace):
    front = _run(benchmark, A.front_exact, trace)
    benchmark.extra_info["points"] = len(front)
    assert front[-1] == A.FrontPoint(1.0, *A.evaluate(trace, 1.0))


@pytest.mark.benchmark(group=GROUP)
def test_front_grid_001(benchmark, trace):
    front = _run(benchmark, A.front_grid, trace, 0.01)
    assert front == brute_grid(trace, 0.01)


@pytest.mark.benchmark(group=GROUP)
def test_analyze(benchmark, trace):
    report = _run(benchmark, A.analyze, trace)
    benchmark.extra_info["exact_points"] = len(report["front_exact"])
    benchmark.extra_info["saving"] = report["selected"]["saving"]


@pytest.mark.benchmark(group=GROUP)
def test_brute_grid_001_baseline(benchmark, trace):
    front = _run(benchmark, brute_grid, trace, 0.01)
    assert len(front) == 101
