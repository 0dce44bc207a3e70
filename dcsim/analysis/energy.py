"""Energy per inference from operation counts: E = E_MAC x MACs + E_AC x SOPs, beside the ANN's E_MAC x MACs.

The counts come from the engine (:attr:`dcsim.sim.state.Simulation.sops`, ``.macs``; see :mod:`dcsim.sim.sops`
for what is counted). The energy per operation is a preset from Horowitz's 45 nm, 0.9 V table
("Computing's energy problem", ISSCC 2014), as SpikingJelly and syops use, or the user's constants:

========  ============  ====================================
preset    E_MAC (pJ)    E_AC (pJ)
========  ============  ====================================
fp32      4.6           0.9   (float32 mult 3.7 + add 0.9)
fp16      1.5           0.4   (float16 mult 1.1 + add 0.4)
int32     3.2           0.1   (int32 mult 3.1 + add 0.1)
int8      0.23          0.03  (int8 mult 0.2 + add 0.03)
========  ============  ====================================

Every function returns plain dicts (JSON-ready: ints, floats, strings, lists): counts per layer and in
total, per inference (the mean over samples), energy in microjoules (uJ).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..sim import sops as ops_count
from ..sim.network import SpikingNetwork
from ..sim.state import ExitResult, Simulation

PJ_PER_UJ = 1e6


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation: e_mac (pJ per multiply-accumulate) and e_ac (pJ per accumulate, one SOP)."""

    e_mac: float
    e_ac: float
    name: str = "custom"

    def __post_init__(self) -> None:
        for field, value in (("e_mac", self.e_mac), ("e_ac", self.e_ac)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"energy constant {field} must be a finite number >= 0 (pJ), got {value!r}")

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


PRESETS: dict[str, EnergyModel] = {
    "fp32": EnergyModel(4.6, 0.9, "fp32"),
    "fp16": EnergyModel(1.5, 0.4, "fp16"),
    "int32": EnergyModel(3.2, 0.1, "int32"),
    "int8": EnergyModel(0.23, 0.03, "int8"),
}
"""45 nm, 0.9 V energies per operation (Horowitz, ISSCC 2014): MAC = multiply + add, AC = add."""
DEFAULT_PRESET = "fp32"
FIRST_LAYER = ("once", "per_step")
"""Conventions for the image-fed layers' MACs: "once" per sample (as dcsim computes them) or at every step
the image drives (as papers that feed the image through the first conv at every step count them)."""


def energy_model(
    preset: str | None = DEFAULT_PRESET, e_mac: float | None = None, e_ac: float | None = None
) -> EnergyModel:
    """The preset's energies (see :data:`PRESETS`), with e_mac / e_ac (pJ) overriding them when given;
    preset None takes both constants from the user."""
    if preset is None:
        if e_mac is None or e_ac is None:
            raise ValueError("without a preset, both energy constants e_mac and e_ac (pJ) are required")
        return EnergyModel(e_mac, e_ac)
    if preset not in PRESETS:
        raise ValueError(f"unknown energy preset {preset!r}; presets: {', '.join(PRESETS)}")
    base = PRESETS[preset]
    if e_mac is None and e_ac is None:
        return base
    return EnergyModel(
        base.e_mac if e_mac is None else e_mac, base.e_ac if e_ac is None else e_ac, f"{preset} (user constants)"
    )


def _steps(result: Simulation | ExitResult) -> torch.Tensor:
    """Steps each sample ran, int64 [N]."""
    if isinstance(result, ExitResult):
        return result.exit_step.to(torch.int64)
    return torch.full((result.pred.shape[0],), result.pred.shape[1], dtype=torch.int64)


def ann_summary(net: SpikingNetwork, sample_shape: tuple[int, ...], model: EnergyModel) -> dict:
    """The ANN of the same network: MACs per inference per conv/linear layer and in total, and its energy (uJ)."""
    macs = ops_count.layer_macs(net, sample_shape)
    total = sum(macs.values())
    return {
        "macs_per_inference": total,
        "energy_uj": model.e_mac * total / PJ_PER_UJ,
        "per_layer": [{"layer": net.nodes[i].name, "macs": m} for i, m in macs.items()],
    }


def summary(
    net: SpikingNetwork,
    sample_shape: tuple[int, ...],
    result: Simulation | ExitResult,
    model: EnergyModel,
    first_layer: str = "once",
) -> dict:
    """Operations and energy per inference of one SNN run (a full-length :class:`Simulation` or an early-exit
    :class:`ExitResult` of ``net`` on inputs of per-sample shape ``sample_shape``, counted by the engine).

    Returns {"samples", "mean_steps", "sops_per_inference", "macs_per_inference", "energy_uj",
    "energy_ac_uj", "energy_mac_uj", "first_layer", "per_layer": [{"layer", "feeds", "sops_per_inference"}],
    "image_layers": [{"layer", "macs_per_inference"}]}; per inference = the mean over the samples.
    first_layer: "once" (the image-fed layers' MACs once per sample, as dcsim computes them) or "per_step"
    (at every step the image drives: every step run, or the first drive_steps under the "settle" semantics).
    """
    if first_layer not in FIRST_LAYER:
        raise ValueError(f"first_layer must be one of {FIRST_LAYER}, got {first_layer!r}")
    if result.sops is None or result.macs is None:
        raise ValueError("the result has no operation counts: run the engine with count_ops=True")
    n = int(result.sops.shape[0])
    if len(result.layers) != result.sops.shape[1] or [net.nodes[i].name for i in net.neurons] != result.layers:
        raise ValueError(f"the result's layers {result.layers} are not the spiking layers of the network")
    steps = _steps(result)
    driven = steps if net.drive_steps is None else steps.clamp(max=net.drive_steps)
    evaluations = driven if first_layer == "per_step" else torch.ones_like(steps)
    image = ops_count.image_macs(net, sample_shape)
    if n and int(result.macs[0]) != sum(image.values()):
        raise ValueError(
            f"the result's image-fed MACs ({int(result.macs[0])}) are not the network's for inputs {sample_shape}"
        )
    per_sample_macs = evaluations * sum(image.values())  # int64 [N]
    per_sample_sops = result.sops.sum(dim=1)  # int64 [N]
    denom = max(n, 1)
    sops_mean = float(per_sample_sops.sum()) / denom
    macs_mean = float(per_sample_macs.sum()) / denom
    return {
        "samples": n,
        "mean_steps": float(steps.sum()) / denom,
        "first_layer": first_layer,
        "sops_per_inference": sops_mean,
        "macs_per_inference": macs_mean,
        "energy_ac_uj": model.e_ac * sops_mean / PJ_PER_UJ,
        "energy_mac_uj": model.e_mac * macs_mean / PJ_PER_UJ,
        "energy_uj": (model.e_ac * sops_mean + model.e_mac * macs_mean) / PJ_PER_UJ,
        "per_layer": [
            {
                "layer": name,
                "feeds": ops_count.consumers(net, i),
                "sops_per_inference": float(result.sops[:, k].sum()) / denom,
            }
            for k, (i, name) in enumerate(zip(net.neurons, result.layers, strict=True))
        ],
        "image_layers": [
            {"layer": net.nodes[i].name, "macs_per_inference": float((evaluations * m).sum()) / denom}
            for i, m in image.items()
        ],
    }


def report(
    net: SpikingNetwork,
    sample_shape: tuple[int, ...],
    runs: dict[str, Simulation | ExitResult],
    preset: str | None = DEFAULT_PRESET,
    e_mac: float | None = None,
    e_ac: float | None = None,
    first_layer: str = "once",
) -> dict:
    """Energy report of several runs of ``net`` (e.g. {"no_dc": ..., "dc": ...}) beside its ANN.

    Returns {"energy_model": {"name", "e_mac", "e_ac"} (pJ), "first_layer", "ann": :func:`ann_summary`,
    "runs": {label: :func:`summary` plus "energy_ratio_to_ann" (SNN / ANN energy) and "ops_ratio_to_ann"
    ((SOPs + MACs) / ANN MACs)}}.
    """
    model = energy_model(preset, e_mac, e_ac)
    ann = ann_summary(net, sample_shape, model)
    out_runs = {}
    for label, result in runs.items():
        s = summary(net, sample_shape, result, model, first_layer)
        s["energy_ratio_to_ann"] = s["energy_uj"] / ann["energy_uj"] if ann["energy_uj"] else math.nan
        ops = s["sops_per_inference"] + s["macs_per_inference"]
        s["ops_ratio_to_ann"] = ops / ann["macs_per_inference"] if ann["macs_per_inference"] else math.nan
        out_runs[label] = s
    return {"energy_model": model.to_dict(), "first_layer": first_layer, "ann": ann, "runs": out_runs}
