"""When compacting finished samples out of a running batch pays: a wall-clock cost model measured as it runs.

Under early exit a batch's finished rows either keep computing (masked: their results are already
recorded) or are compacted out. On the CPU the engine compacts in place
(:func:`dcsim.sim.ops.compact_rows_`): each finished row among the first n_keep is overwritten by a
running row from past n_keep, so a compaction moves at most ``finished`` rows of state, once, while
keeping them costs their share of every remaining step. It pays when

    finished / n * step_seconds * remaining_steps  >  moved_bytes / bytes_per_second

step_seconds: the wall time of the batch's last step (all n rows), measured by the caller, so a row's
share includes the step's fixed cost (Python, kernel launches): an overestimate at small n, where
moves are cheap anyway. bytes_per_second: the in-place move's speed, measured on every compaction of
at least MIN_MEASURED_BYTES (a start value PRIOR_BYTES_PER_SECOND until then). The choice changes the
time only, never the results.
"""

from __future__ import annotations

from dataclasses import dataclass

PRIOR_BYTES_PER_SECOND = 2e9
"""Speed of the in-place move before any measurement (bytes/s; this project's 2-core x86-64 CPU moves 2-6e9)."""
MIN_MEASURED_BYTES = 1 << 20
"""Compactions that move fewer bytes than this time mostly their fixed cost; they do not update the speed."""


@dataclass
class CompactionCost:
    """The cost model above, one per engine; ``bytes_per_second`` is the latest measured move speed."""

    bytes_per_second: float = PRIOR_BYTES_PER_SECOND

    def pays(self, finished: int, n: int, remaining_steps: int, step_seconds: float, moved_bytes: int) -> bool:
        """Whether compacting ``finished`` of the n rows (moving ``moved_bytes``) beats keeping them for
        ``remaining_steps`` more steps of ``step_seconds`` (the last step's wall time for all n rows)."""
        if finished <= 0 or remaining_steps <= 0:
            return False
        return finished / n * step_seconds * remaining_steps > moved_bytes / self.bytes_per_second

    def observe(self, moved_bytes: int, seconds: float) -> None:
        """Record a compaction that moved ``moved_bytes`` in ``seconds`` (wall time)."""
        if moved_bytes >= MIN_MEASURED_BYTES and seconds > 0:
            self.bytes_per_second = moved_bytes / seconds
