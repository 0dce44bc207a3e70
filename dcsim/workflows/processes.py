"""A measurement repeated in fresh processes, and its rows' medians over them.

On this project's 2-core CPU a process keeps its own speed ratio between two runs it interleaves
(Dynamic Confidence against none): blocks of rounds inside one process agree within a few percent,
while fresh processes spread by 10-20% (docs/results/table2-cpu.md). More rounds in one process do
not average that out; the median over fresh processes does, as pyperf does it. Processes run one
after another (never side by side: they would share the cores), each writes its rows to a JSON file
in a temporary folder that is removed afterwards, and a failed process stops the measurement.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .benchmark import spread


def in_fresh_processes(command: Callable[[Path], list[str]], processes: int) -> list[dict]:
    """Run ``command(json_path)`` (an argv that writes its result as JSON to json_path) in ``processes``
    fresh processes, one after another; return each process's JSON object in order."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    results = []
    with tempfile.TemporaryDirectory(prefix="dcsim_processes_") as tmp:
        for i in range(processes):
            print(f"process {i + 1}/{processes}", file=sys.stderr, flush=True)
            path = Path(tmp) / f"process{i}.json"
            subprocess.run(command(path), check=True)
            results.append(json.loads(path.read_text()))
    return results


def over_processes(values: Sequence[float | None]) -> dict[str, Any]:
    """:func:`dcsim.workflows.benchmark.spread` of one quantity over the processes (median, min, max, spread,
    ``unstable``); all None where a process has no value (e.g. a ratio to
    a step saving of zero)."""
    if not values or any(v is None for v in values):
        return {"median": None, "min": None, "max": None, "spread": None, "unstable": False}
    return spread([float(v) for v in values if v is not None])


def median_rows(per_process: Sequence[Sequence[dict]], identity: Sequence[str], fields: Sequence[str]) -> list[dict]:
    """One row per row of the processes (the same rows, in the same order, in every process; a mismatch of
    the ``identity`` keys is a ValueError): the first process's row with each of ``fields`` replaced by its
    median over the processes, and ``processes``: {field: :func:`over_processes` of it}."""
    if not per_process:
        raise ValueError("median_rows: no processes")
    counts = {len(rows) for rows in per_process}
    if len(counts) != 1:
        raise ValueError(f"median_rows: the processes gave different numbers of rows: {sorted(counts)}")
    out = []
    for rows in zip(*per_process, strict=True):
        ids = {tuple(r.get(k) for k in identity) for r in rows}
        if len(ids) != 1:
            raise ValueError(
                f"median_rows: the processes' rows differ in {', '.join(identity)}: {sorted(map(str, ids))}"
            )
        row = dict(rows[0])
        stats = {f: over_processes([r.get(f) for r in rows]) for f in fields if f in rows[0]}
        for f, s in stats.items():
            row[f] = s["median"]
        row["processes"] = stats
        out.append(row)
    return out
