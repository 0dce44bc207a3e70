"""Per-sample state of a simulation and the results it returns (shapes per field).

:class:`BatchState` is what :class:`dcsim.sim.engine.Engine` advances, one row per active sample;
:class:`StepRecord` what each step of a chunk produced; :class:`Simulation` and
:class:`ExitResult` what full-length and early-exit runs return. Kept apart from the engine so
that the CUDA-graph runners (:mod:`dcsim.sim.graphs`) depend on these types and a narrow engine
interface, not on the engine module.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass
class BatchState:
    """State of the active samples, one row each (n rows).

    ids:    int64 [n]   caller's id of the sample in each row
    static: {node: float32 [n, ...]}  values of input-only layers, computed once per sample
    u:      {neuron node: float32 [n, ...]}  membrane potentials
    z:      {neuron node: int32 [n, ...]}    net spike counts (QFFS only)
    counts: {neuron node: int64 [n]}         spikes emitted so far per sample
    sops:   {neuron node: int64 [n]}         synaptic operations their spikes triggered so far (see
            dcsim.sim.sops); empty when the engine does not count them
    sums:   float32 [n, K]  running output sums S_t
    steps:  int32 [n]       steps run so far
    pred:   int64 [n], score: float32 [n], exited: uint8 [n]  results of the last step
    admitted: float64 [n]   wall-clock admission time (time.perf_counter seconds)
    blank:  True until the first step when u and z were left unfilled: that step takes u0 and 0 in their
            place (dcsim.sim.ops.neuron_step's u0), which saves writing and reading them once
    """

    ids: torch.Tensor
    static: dict[int, torch.Tensor]
    u: dict[int, torch.Tensor]
    z: dict[int, torch.Tensor]
    counts: dict[int, torch.Tensor]
    sops: dict[int, torch.Tensor]
    sums: torch.Tensor
    steps: torch.Tensor
    pred: torch.Tensor
    score: torch.Tensor
    exited: torch.Tensor
    admitted: torch.Tensor
    blank: bool = False

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    def tensors(self) -> list[torch.Tensor]:
        """Every per-sample tensor, in a fixed order (see :meth:`replace_tensors`)."""
        out: list[torch.Tensor] = []
        for f in _tensor_fields():
            v = getattr(self, f.name)
            out += [v[k] for k in sorted(v)] if isinstance(v, dict) else [v]
        return out

    def replace_tensors(self, tensors: list[torch.Tensor]) -> BatchState:
        """A new state made of ``tensors`` given in the order of :meth:`tensors`."""
        it = iter(tensors)
        kwargs: dict[str, Any] = {"blank": self.blank}
        for f in _tensor_fields():
            v = getattr(self, f.name)
            kwargs[f.name] = {k: next(it) for k in sorted(v)} if isinstance(v, dict) else next(it)
        return BatchState(**kwargs)


def _tensor_fields() -> list[Any]:
    """BatchState's fields that hold tensors (all but ``blank``)."""
    return [f for f in fields(BatchState) if f.name != "blank"]


@dataclass
class Simulation:
    """A full-length run (all samples, all steps).

    sums:   float32 [N, T, K] running output sums S_t (None unless requested)
    pred:   int64 [N, T]   argmax of S_t at step t = 1..T (column t-1)
    conf:   float32 [N, T] stopping score of the readout at each step
    spikes: int64 [N, L]   spikes per sample per hidden layer over the T steps
    neurons: neurons per sample of each hidden layer [L]; layers: their names [L]
    sops:   int64 [N, L]   synaptic operations the spikes of each hidden layer triggered over the T steps
            (dcsim.sim.sops); None when the engine does not count them
    macs:   int64 [N]      multiply-accumulates of the image-fed layers, computed once per sample
            (dcsim.sim.sops.image_macs); None when the engine does not count them
    """

    sums: torch.Tensor | None
    pred: torch.Tensor
    conf: torch.Tensor
    spikes: torch.Tensor
    neurons: list[int]
    layers: list[str]
    sops: torch.Tensor | None = None
    macs: torch.Tensor | None = None


@dataclass
class ExitResult:
    """A live early-exit run.

    pred: int64 [N] prediction at exit; exit_step: int64 [N] in 1..T; conf: float32 [N] score
    at exit; spikes: int64 [N, L] spikes per hidden layer over the steps each sample ran;
    neurons, layers: as in :class:`Simulation`; sops: int64 [N, L] synaptic operations per hidden layer
    over the steps each sample ran, and macs: int64 [N] of the image-fed layers (once per sample), or None
    (as in :class:`Simulation`).
    """

    pred: torch.Tensor
    exit_step: torch.Tensor
    conf: torch.Tensor
    spikes: torch.Tensor
    neurons: list[int]
    layers: list[str]
    sops: torch.Tensor | None = None
    macs: torch.Tensor | None = None


@dataclass
class StepRecord:
    """What each step of a chunk produced for the n active samples (k steps).

    pred: int64 [k, n]; score: float32 [k, n]; exited: uint8 [k, n]; steps: int32 [k, n] (steps run);
    counts: int64 [L, k, n] spikes so far per hidden layer; sums: float32 [k, n, K] or None;
    sops: int64 [L, k, n] synaptic operations so far per hidden layer, or None (not counted).
    """

    pred: torch.Tensor
    score: torch.Tensor
    exited: torch.Tensor
    steps: torch.Tensor
    counts: torch.Tensor
    sums: torch.Tensor | None
    sops: torch.Tensor | None = None

    @staticmethod
    def empty(k: int, n: int, layers: int, classes: int | None, device: torch.device, sops: bool = False) -> StepRecord:
        return StepRecord(
            pred=torch.empty((k, n), dtype=torch.int64, device=device),
            score=torch.empty((k, n), dtype=torch.float32, device=device),
            exited=torch.empty((k, n), dtype=torch.uint8, device=device),
            steps=torch.empty((k, n), dtype=torch.int32, device=device),
            counts=torch.empty((layers, k, n), dtype=torch.int64, device=device),
            sums=None if classes is None else torch.empty((k, n, classes), dtype=torch.float32, device=device),
            sops=torch.empty((layers, k, n), dtype=torch.int64, device=device) if sops else None,
        )

    def store(self, t: int, state: BatchState) -> None:
        """Copy the output step's results into step t of the record (counts are stored by the neuron loop)."""
        self.pred[t] = state.pred
        self.score[t] = state.score
        self.exited[t] = state.exited
        self.steps[t] = state.steps
        if self.sums is not None:
            self.sums[t] = state.sums
