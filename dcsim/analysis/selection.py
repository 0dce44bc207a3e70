"""Traces used to select th_c, checked against the network they will run (see issue 25).

A trace records which checkpoint it was recorded from (``checkpoint_sha256``: the checkpoint's
content hash, the same for a checkpoint file and its zoo folder), its ``num_classes``, ``split``
and ``steps`` (:func:`dcsim.analysis.traces.identity_meta`). Before a trace's T, readout and th_c are
used for a checkpoint, :func:`load_trace_for` loads it and checks it with
:func:`dcsim.analysis.traces.check_trace_for`; :func:`trace_readout` reads its readout with errors
naming the file.
"""

from __future__ import annotations

import math
import os
from typing import Any

from ..io.zoo import model_identity
from ..sim.readout import READOUT_KINDS, Readout
from .traces import Trace, check_trace_for, identity_meta, load_trace


def trace_identity(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The identity fields to record in a trace of ``checkpoint`` (a file or zoo folder)."""
    meta, digest = model_identity(checkpoint)
    return identity_meta(digest, len(meta["classes"]))


def load_trace_for(
    trace_path: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    allow_test_split: bool = False,
    allow_unmatched: bool = False,
) -> Trace:
    """Load the trace at ``trace_path`` and check that it may select th_c for ``checkpoint`` (a file or
    zoo folder): same network (content hash; a trace or checkpoint without one only if
    ``allow_unmatched``), labels within its classes, not the test split unless ``allow_test_split`` (see :func:`dcsim.analysis.traces.check_trace_for`). Errors name both files."""
    trace = load_trace(trace_path)
    meta, digest = model_identity(checkpoint)
    check_trace_for(
        trace,
        digest,
        len(meta["classes"]),
        trace_path=trace_path,
        checkpoint_path=checkpoint,
        allow_test_split=allow_test_split,
        allow_unmatched=allow_unmatched,
    )
    return trace


def trace_readout(trace: Trace, trace_path: str | os.PathLike[str]) -> tuple[Readout, int]:
    """(readout, T) recorded in the trace's metadata; a missing or bad field is a ValueError naming the file."""
    where = f"trace {os.fspath(trace_path)}"
    meta = trace.meta
    missing = [k for k in ("readout", "alpha", "tau", "steps") if k not in meta]
    if missing:
        raise ValueError(f"{where}: the metadata lacks {missing}; record the trace again with `dcsim trace`")
    kind = meta["readout"]
    if not isinstance(kind, str) or kind not in READOUT_KINDS:
        raise ValueError(f"{where}: meta 'readout' must be one of {sorted(READOUT_KINDS)}, got {kind!r}")
    values = {}
    for name in ("alpha", "tau"):
        value = meta[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"{where}: meta '{name}' must be a finite number > 0, got {value!r}")
        values[name] = float(value)
    return Readout(kind, values["alpha"], values["tau"]), trace.steps  # steps: checked against the arrays on load
