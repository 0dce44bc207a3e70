"""Analysis of recorded runs: traces and the Dynamic Confidence front (traces), temperature calibration
(calibration), Table-1 tables (tables) and plots (plots).

The trace analysis is re-exported here (dcsim.analysis.analyze, dcsim.analysis.Trace, ...)."""

from .traces import (
    FrontPoint,
    Trace,
    accuracy_vs_t,
    analyze,
    baseline,
    baseline_curve,
    check_trace_for,
    evaluate,
    exit_histogram,
    exit_steps,
    front_exact,
    front_grid,
    identity_meta,
    load_trace,
    mean_confidence_vs_t,
    oracle,
    oracle_curves,
    save_trace,
    select_threshold,
)

__all__ = [
    "FrontPoint",
    "Trace",
    "accuracy_vs_t",
    "analyze",
    "baseline",
    "baseline_curve",
    "check_trace_for",
    "evaluate",
    "exit_histogram",
    "exit_steps",
    "front_exact",
    "front_grid",
    "identity_meta",
    "load_trace",
    "mean_confidence_vs_t",
    "oracle",
    "oracle_curves",
    "save_trace",
    "select_threshold",
]
