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
    """One row per method and mode: the numbers of the paper's Table 1 plus spikes, synaptic operations,
    MACs and energy per inference (uJ, and the ratio to the ANN's), the ANN's MACs and energy, and wall time.

    results: [{"method", "no_dc", "dc"}, optionally "stem"], each mode's dict with the fields of
    :meth:`dcsim.workflows.dynamic_confidence.LiveEval.to_dict` and of ``energy_columns``. A quantized stem
    (see :func:`dcsim.convert`) is named in the method's label.
    """
    rows = []
    for r in results:
        label = r["method"].upper() + (" (quantized stem)" if r.get("stem") == "quantized" else "")
        for mode, key in (("", "no_dc"), (" + DC", "dc")):
            e = r[key]
            rows.append(
                {
                    "method": label + mode,
                    "ann_accuracy": ann_accuracy,
                    "snn_accuracy": e["accuracy"],
                    "threshold": e["threshold"] if key == "dc" else None,
                    "mean_steps": e["mean_steps"],
                    "saving": e["saving"],
                    "spikes_per_neuron": e["spikes_per_neuron"],
                    "sops_per_inference": e["sops_per_inference"],
                    "macs_per_inference": e["macs_per_inference"],
                    "energy_uj": e["energy_uj"],
                    "energy_ratio_to_ann": e["energy_ratio_to_ann"],
                    "ann_macs_per_inference": e["ann_macs_per_inference"],
                    "ann_energy_uj": e["ann_energy_uj"],
                    "ms_per_inference": e["ms_per_inference"],
                }
            )
    return rows


def count(x: float) -> str:
    """An operation count for a table: three significant digits with k, M, G or T (``1.23M``)."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def markdown_table(rows: list[dict]) -> str:
    """Markdown table of :func:`table_rows` (accuracies in %, saving in %, operations per inference, energy
    in uJ), with a first row for the ANN (its MACs and energy, from the rows' ANN fields)."""
    head = (
        "| method | ANN acc (%) | SNN acc (%) | th_c | mean steps | saving (%) | spikes/neuron | SOPs/inference | "
        "MACs/inference | energy (uJ) | energy / ANN | ms/inference |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    ann = (
        f"| ANN | {100 * rows[0]['ann_accuracy']:.2f} | - | - | - | - | - | - | "
        f"{count(rows[0]['ann_macs_per_inference'])} | {rows[0]['ann_energy_uj']:.4g} | 1 | - |\n"
        if rows
        else ""
    )
    body = "".join(
        f"| {r['method']} | {100 * r['ann_accuracy']:.2f} | {100 * r['snn_accuracy']:.2f} | "
        f"{'-' if r['threshold'] is None else format(r['threshold'], '.4g')} | {r['mean_steps']:.2f} | "
        f"{100 * r['saving']:.0f} | {r['spikes_per_neuron']:.3f} | {count(r['sops_per_inference'])} | "
        f"{count(r['macs_per_inference'])} | {r['energy_uj']:.4g} | {r['energy_ratio_to_ann']:.3g} | "
        f"{r['ms_per_inference']:.3f} |\n"
        for r in rows
    )
    return head + ann + body


def energy_note(report: dict) -> str:
    """One sentence on how the energy columns were computed, from a :func:`dcsim.analysis.energy.report`."""
    m = report["energy_model"]
    once = report["first_layer"] == "once"
    return (
        f"Energy per inference E = E_MAC x MACs + E_AC x SOPs with {m['name']} constants (E_MAC {m['e_mac']:g} pJ, "
        f"E_AC {m['e_ac']:g} pJ); the ANN's E = E_MAC x its MACs. SOPs: accumulates triggered by spikes; MACs: the "
        f"image-fed layers', counted {'once per inference' if once else 'at every step the image drives'}. "
        "Means over the test images."
    )
