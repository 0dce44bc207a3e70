"""The bounded latency histogram of streams: quantiles against numpy's exact ones, merging, edges."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dcsim.sim.latency import BINS, GROWTH, LOWEST_MS, LatencyHistogram


def _of(values) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values:
        h.add(float(v))
    return h


@pytest.mark.parametrize("seed", range(4))
def test_quantiles_within_half_a_percent_of_the_exact_order_statistic(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    values = rng.lognormal(mean=rng.uniform(-2, 6), sigma=rng.uniform(0.1, 2.5), size=n)
    h = _of(values)
    for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0):
        exact = float(np.quantile(values, q, method="inverted_cdf"))
        assert abs(h.quantile(q) - exact) <= 0.005 * exact + 1e-12, (q, h.quantile(q), exact)
    assert h.count == n and math.isclose(h.mean, float(values.mean()), rel_tol=1e-12)
    assert h.min_ms == values.min() and h.max_ms == values.max()


def test_merged_histograms_equal_the_histogram_of_all_samples():
    rng = np.random.default_rng(7)
    parts = [rng.exponential(rng.uniform(0.1, 50), size=rng.integers(0, 500)) for _ in range(3)]
    merged = LatencyHistogram()
    for p in parts:
        merged = merged.merge(_of(p))
    whole = _of(np.concatenate(parts))
    assert np.array_equal(merged.counts, whole.counts) and merged.count == whole.count
    assert math.isclose(merged.total_ms, whole.total_ms) and merged.summary() == pytest.approx(whole.summary())


def test_dict_round_trip_through_json():
    h = _of([0.0, 1e-5, 0.5, 3.0, 3.0, 1e12])
    back = LatencyHistogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert np.array_equal(back.counts, h.counts) and back.summary() == h.summary()
    empty = LatencyHistogram.from_dict(json.loads(json.dumps(LatencyHistogram().to_dict())))
    assert empty.count == 0 and empty.summary() == {"mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    bad = h.to_dict() | {"count": 99}
    with pytest.raises(ValueError, match="count"):
        LatencyHistogram.from_dict(bad)


def test_edges_underflow_overflow_and_bad_values():
    top = LOWEST_MS * GROWTH**BINS
    h = _of([0.0, LOWEST_MS / 10])
    assert h.counts[0] == 2 and h.quantile(1.0) == LOWEST_MS / 10  # clipped to the exact maximum
    assert 0.0 <= h.quantile(0.0) < LOWEST_MS  # below the first edge: within LOWEST_MS
    h = _of([1.0, 2 * top])
    assert h.counts[BINS + 1] == 1 and h.quantile(1.0) == 2 * top  # overflow reads as the exact maximum
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="latency"):
            LatencyHistogram().add(bad)
    with pytest.raises(ValueError, match="q must"):
        h.quantile(1.5)


def test_memory_does_not_grow_with_the_samples():
    h = _of(np.random.default_rng(0).uniform(0.1, 100, size=20000))
    assert h.counts.shape == (BINS + 2,) and len(h.to_dict()["bins"]) <= BINS + 2
