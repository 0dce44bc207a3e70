"""Analysis of recorded runs: traces and the Dynamic Confidence front (traces), temperature calibration
(calibration), Table-1 tables (tables) and plots (plots).

The trace analysis is re-exported here (dcsim.analysis.analyze, dcsim.analysis.Trace, ...)."""

from . import traces
from .traces import *  # noqa: F403 (the names in traces.__all__)

__all__ = list(traces.__all__)
