"""Latency percentiles in bounded memory: a log-binned histogram that merges across ranks.

A stream can run for days, so its statistics cannot keep every latency. :class:`LatencyHistogram`
counts latencies in bins whose edges grow by 1 % from 1 microsecond to about 14 days; a quantile is
read from the bin holding it, so it is within 0.5 % of the exact order statistic (within 1 microsecond below that) (numpy's
``inverted_cdf`` quantile), and histograms of several ranks add up to the histogram of all their
samples. The mean, minimum and maximum are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

LOWEST_MS = 1e-3
"""Lower edge of the first bin, in ms; smaller latencies (including 0) fall in an underflow bin."""
GROWTH = 1.01
"""Ratio of consecutive bin edges."""
BINS = 2800
"""Number of log-spaced bins: they reach LOWEST_MS * GROWTH**BINS, about 1.2e9 ms (14 days); larger values
overflow (their quantiles read as the maximum)."""


@dataclass
class LatencyHistogram:
    """Counts of latencies (ms) in log-spaced bins, with exact count, sum, min and max.

    counts: int64 [BINS + 2]; index 0 is [0, LOWEST_MS), index k in 1..BINS is
    [LOWEST_MS * GROWTH**(k-1), LOWEST_MS * GROWTH**k), index BINS + 1 holds the rest.
    """

    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS + 2, dtype=np.int64))
    count: int = 0
    total_ms: float = 0.0
    min_ms: float = math.inf
    max_ms: float = 0.0

    def add(self, ms: float) -> None:
        """Count one latency of ``ms`` milliseconds (finite, >= 0)."""
        if not (ms >= 0 and math.isfinite(ms)):
            raise ValueError(f"a latency must be a finite number of ms >= 0, got {ms!r}")
        k = 0 if ms < LOWEST_MS else min(BINS + 1, 1 + int(math.log(ms / LOWEST_MS) / math.log(GROWTH)))
        self.counts[k] += 1
        self.count += 1
        self.total_ms += ms
        self.min_ms = min(self.min_ms, ms)
        self.max_ms = max(self.max_ms, ms)

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """A new histogram of the samples of both."""
        return LatencyHistogram(
            self.counts + other.counts,
            self.count + other.count,
            self.total_ms + other.total_ms,
            min(self.min_ms, other.min_ms),
            max(self.max_ms, other.max_ms),
        )

    def quantile(self, q: float) -> float:
        """The q-quantile in ms (the smallest sample with at least q of the samples at or below it),
        within 0.5 % of the exact value (1 microsecond below LOWEST_MS); 0.0 for an empty histogram."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must lie in [0, 1], got {q!r}")
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        k = int(np.searchsorted(np.cumsum(self.counts), rank))
        if k == 0:
            value = LOWEST_MS / 2
        elif k == BINS + 1:
            value = self.max_ms
        else:
            value = LOWEST_MS * GROWTH ** (k - 0.5)  # the bin's geometric middle
        return min(max(value, self.min_ms), self.max_ms)

    @property
    def mean(self) -> float:
        """Exact mean in ms (0.0 when empty)."""
        return self.total_ms / self.count if self.count else 0.0

    def summary(self) -> dict:
        """{"mean", "p50", "p99", "max"} in ms."""
        return {"mean": self.mean, "p50": self.quantile(0.5), "p99": self.quantile(0.99), "max": self.max_ms}

    def to_dict(self) -> dict:
        """A JSON-ready form (non-empty bins only), read back by :meth:`from_dict`."""
        nz = np.flatnonzero(self.counts)
        return {
            "bins": nz.tolist(),
            "counts": self.counts[nz].tolist(),
            "count": self.count,
            "total_ms": self.total_ms,
            "min_ms": self.min_ms if self.count else None,
            "max_ms": self.max_ms,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LatencyHistogram:
        counts = np.zeros(BINS + 2, dtype=np.int64)
        counts[np.asarray(d["bins"], dtype=np.int64)] = np.asarray(d["counts"], dtype=np.int64)
        if int(counts.sum()) != d["count"]:
            raise ValueError(f"latency histogram: bin counts sum to {int(counts.sum())}, not count {d['count']}")
        return cls(
            counts,
            int(d["count"]),
            float(d["total_ms"]),
            math.inf if d["min_ms"] is None else float(d["min_ms"]),
            float(d["max_ms"]),
        )
