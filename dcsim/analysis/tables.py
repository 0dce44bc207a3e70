"""Table-1-style reports (Markdown and JSON) of QCFS / QFFS with and without Dynamic Confidence."""

from __future__ import annotations

import json
from pathlib import Path

from ..io.atomic import write_text_atomic


def write_json(path: str | Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON to ``path``, or to stdout when path is '-'."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    if str(path) == "-":
        print(text, end="")
    else:
        write_text_atomic(path, text)


def table_rows(ann_accuracy: float, results: list[dict]) -> list[dict]:
    """One row per method and mode: the numbers of the paper's Table 1 plus spikes and wall time."""
    rows = []
    for r in results:
        for mode, key in (("", "no_dc"), (" + DC", "dc")):
            e = r[key]
            rows.append(
                {
                    "method": r["method"].upper() + mode,
                    "ann_accuracy": ann_accuracy,
                    "snn_accuracy": e["accuracy"],
                    "threshold": e["threshold"] if key == "dc" else None,
                    "mean_steps": e["mean_steps"],
                    "saving": e["saving"],
                    "spikes_per_neuron": e["spikes_per_neuron"],
                    "ms_per_inference": e["ms_per_inference"],
                }
            )
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Markdown table of :func:`table_rows` (accuracies in %, saving in %)."""
    head = (
        "| method | ANN acc (%) | SNN acc (%) | th_c | mean steps | saving (%) | spikes/neuron | ms/inference |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['method']} | {100 * r['ann_accuracy']:.2f} | {100 * r['snn_accuracy']:.2f} | "
        f"{'-' if r['threshold'] is None else format(r['threshold'], '.4g')} | {r['mean_steps']:.2f} | "
        f"{100 * r['saving']:.0f} | {r['spikes_per_neuron']:.3f} | {r['ms_per_inference']:.3f} |\n"
        for r in rows
    )
    return head + body
