"""The Dynamic Confidence workflow on a trained model: calibrate, trace, select, evaluate, report.

    quantized ANN --calibrate tau--> readout (alpha, tau)
    SNN on the validation split --trace--> front --select--> th_c
    SNN on the test split, live early exit at th_c --> accuracy, mean steps, spikes, wall time,
                                                     SOPs, MACs and energy per inference beside the ANN's

Every loop over a split takes its images either as one tensor [N, C, H, W] or as a
:class:`dcsim.parallel.distributed.Sharded` split (read from disk batch by batch and/or sharded over torchrun ranks);
both run the same batches, so the results are the same.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .. import analysis
from ..analysis import energy
from ..analysis.calibration import calibration_report
from ..conversion.convert import convert
from ..data.disk import FolderSplit
from ..parallel.distributed import Sharded, map_batches
from ..sim.engine import Engine
from ..sim.readout import Readout
from ..sim.state import ExitResult
from ..training import predict_logits
from .options import EnergyOptions

NO_EXIT = 1.0
"""Threshold at which no sample exits early (scores are <= 1 and the rule is strict)."""
TIMED_SECONDS = 0.5
"""evaluate_live_runs times rounds of passes over an in-memory split until each run's add up to this many
seconds (at most MAX_TIMED_PASSES rounds) and reports each run's median pass: one pass over the digits demo's 360 test images (about 25 ms)
moved by up to 30% from run to run, enough to show DC slower than no DC."""
MAX_TIMED_PASSES = 7
"""The most timed passes of one run of an evaluate_live_runs call."""


def spikes_per_neuron(spikes: torch.Tensor, neurons: list[int]) -> dict:
    """Spikes per neuron per inference over the hidden layers.

    spikes: int64 [N, L] spikes per sample per layer (only the steps each sample ran);
    neurons: [L] neurons per sample per layer. Returns {"pooled": float, "per_layer": [L floats]}.
    """
    n = max(spikes.shape[0], 1)
    per_layer = [float(spikes[:, i].sum()) / (n * m) for i, m in enumerate(neurons)]
    return {"pooled": float(spikes.sum()) / (n * sum(neurons)), "per_layer": per_layer}


Images = torch.Tensor | Sharded
"""float32 [N, C, H, W] normalized images, or a Sharded split (see the module doc)."""


def ann_logits(model: nn.Module, images: Images, batch_size: int = 512) -> torch.Tensor:
    """Logits float32 [N, K] of the quantized ANN in eval mode (see dcsim.training.predict_logits)."""
    return map_batches(images, batch_size, lambda x: (predict_logits(model, x, batch_size),), "ANN")[0]


def record_trace(
    engine: Engine,
    images: Images,
    labels: torch.Tensor,
    steps: int,
    readout: Readout,
    meta: dict,
    batch_size: int = 256,
    record_sums: bool = False,
) -> analysis.Trace:
    """Run all samples for ``steps`` steps and keep (prediction, score) per sample and step."""

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sim = engine.simulate(x.to(engine.device), steps, readout, record_sums=record_sums, batch_size=batch_size)
        return (sim.pred, sim.conf) + ((sim.sums,) if sim.sums is not None else ())  # sums: when record_sums

    out = map_batches(images, batch_size, run, "trace")
    full_meta = {
        "method": engine.net.method,
        "semantics": engine.net.semantics,
        "drive_steps": engine.net.drive_steps,
        "stem": engine.net.stem,
        "bits": engine.net.bits,
        "readout": readout.kind,
        "alpha": readout.alpha,
        "tau": readout.tau,
        "steps": steps,
    } | meta
    return analysis.Trace(
        labels=labels.cpu().numpy().astype("int64"),
        pred=out[0].numpy(),
        conf=out[1].numpy(),
        sums=out[2].numpy() if record_sums else None,
        meta=full_meta,
    )


def choose_steps(
    engine: Engine, images: Images, labels: torch.Tensor, max_steps: int, target: float, batch_size: int = 256
) -> tuple[int, list[float]]:
    """Smallest T whose validation accuracy reaches ``target`` (else the most accurate T <= max_steps).

    Returns (T, accuracy at t = 1..max_steps).
    """
    pred = map_batches(
        images,
        batch_size,
        lambda x: (engine.simulate(x.to(engine.device), max_steps, batch_size=batch_size).pred,),
        "choose T",
    )[0]
    acc = (pred == labels.cpu()[:, None]).float().mean(0).tolist()
    reached = [t + 1 for t, a in enumerate(acc) if a >= target]
    return (reached[0] if reached else max(range(1, max_steps + 1), key=lambda t: acc[t - 1])), acc


@dataclass
class LiveEval:
    """Live early-exit evaluation on a split (threshold 1.0 means no early exit)."""

    threshold: float
    accuracy: float
    mean_steps: float
    saving: float
    spikes: dict
    ms_per_inference: float
    result: ExitResult

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "accuracy": self.accuracy,
            "mean_steps": self.mean_steps,
            "saving": self.saving,
            "spikes_per_neuron": self.spikes["pooled"],
            "spikes_per_layer": self.spikes["per_layer"],
            "ms_per_inference": self.ms_per_inference,
        }


def evaluate_live_runs(
    engine: Engine,
    images: Images,
    labels: torch.Tensor,
    steps: int,
    readout: Readout,
    thresholds: Mapping[str, float],
    batch_size: int = 256,
    chunk: int | None = None,
    graphs: bool = False,
) -> dict[str, LiveEval]:
    """Live early exit at each of ``thresholds`` ({label: threshold}, e.g. without and with DC) on the same
    split; wall time per inference in ms. Returns {label: LiveEval}.

    chunk: steps computed per conv call (see Engine.advance); graphs: CUDA-graph step loop (see
    Engine.early_exit). Results are the same. The wall time is a whole pass's (with a Sharded split: until
    every rank is done, data loading included), timed warm: first an untimed run of each threshold on one
    batch of zero images (the conv libraries' set-up; with graphs an untimed pass over the split, which
    captures the graphs of every batch shape), so every command times ms per inference alike. An in-memory
    split whose passes are short is timed over several rounds (see TIMED_SECONDS), one pass of each run a
    round, in turn, so that the machine's drift falls on every run alike; each run reports its median pass.
    A split read from disk, or any split under torchrun, is timed over one round (every rank must run the same passes).
    """
    if isinstance(images, torch.Tensor):
        images = images.to(engine.device)
    layers: list = []

    def run(threshold: float) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
        def one(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            r = engine.early_exit(
                x.to(engine.device), steps, readout, threshold, batch_size=batch_size, chunk=chunk, graphs=graphs
            )
            layers[:] = [r.neurons, r.layers]
            counts = (r.sops, r.macs) if r.sops is not None and r.macs is not None else ()  # with engine.count_ops
            return (r.pred, r.exit_step, r.conf, r.spikes, *counts)

        return one

    warm = min(batch_size, len(images))
    for threshold in thresholds.values():
        if graphs:  # captures the graphs of every batch shape
            map_batches(images, batch_size, run(threshold), "warm-up")
        elif warm:
            with engine.chunk_planner.exits_unrecorded():  # a zero image's exit says nothing about the data's
                engine.early_exit(
                    torch.zeros((warm, *_sample_shape(images)), device=engine.device),
                    steps,
                    readout,
                    threshold,
                    batch_size=batch_size,
                    chunk=chunk,
                )
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    passes: dict[str, list[float]] = {label: [] for label in thresholds}  # seconds of each timed pass
    outs = {}  # the results are each run's first pass's (every pass gives the same)
    for label, threshold in thresholds.items():
        t0 = time.perf_counter()
        outs[label] = map_batches(images, batch_size, run(threshold), f"live th_c={threshold:.3g}")
        passes[label].append(time.perf_counter() - t0)
    rounds = 1
    while _repeatable(images) and min(sum(p) for p in passes.values()) < TIMED_SECONDS and rounds < MAX_TIMED_PASSES:
        rounds += 1
        with engine.chunk_planner.exits_unrecorded():  # the same samples again: no new exits for the plan
            for label, threshold in thresholds.items():
                t0 = time.perf_counter()
                map_batches(images, batch_size, run(threshold))
                passes[label].append(time.perf_counter() - t0)
    if not layers:  # this rank ran no batch: the layer sizes come from the network
        layers[:] = list(engine._layers(torch.empty((0, *_sample_shape(images)), device=engine.device)))
    neurons, names = layers
    evals = {}
    for label, threshold in thresholds.items():
        out = outs[label]
        pred, exit_step, conf, spikes = out[:4]
        sops, macs = out[4:] if len(out) == 6 else (None, None)
        res = ExitResult(pred, exit_step, conf, spikes, neurons, names, sops=sops, macs=macs)
        mean_steps = float(res.exit_step.float().mean())
        evals[label] = LiveEval(
            threshold=threshold,
            accuracy=float((res.pred == labels.cpu()).float().mean()),
            mean_steps=mean_steps,
            saving=1.0 - mean_steps / steps,
            spikes=spikes_per_neuron(res.spikes, res.neurons),
            ms_per_inference=1000.0 * statistics.median(passes[label]) / max(len(res.pred), 1),
            result=res,
        )
    return evals


def _repeatable(images: Images) -> bool:
    """Whether a timed pass over ``images`` may be repeated at will: an in-memory split in a single-process run
    (a tensor, or a Sharded in-memory split of one rank); under torchrun the ranks could disagree on the count."""
    if isinstance(images, torch.Tensor):
        return True
    return isinstance(images, Sharded) and not images.world.distributed and not isinstance(images.split, FolderSplit)


ENERGY_COLUMNS = ("sops_per_inference", "macs_per_inference", "energy_uj", "energy_ratio_to_ann")
"""The fields of one run's energy summary that the result rows carry (operations per inference, uJ, SNN / ANN)."""


def energy_report(engine: Engine, images: Images, runs: dict[str, LiveEval], opts: EnergyOptions) -> dict:
    """SOPs, MACs and energy per inference of live runs of ``engine``'s network beside its ANN.

    runs: {label: LiveEval} of the engine (counted: ``Engine(count_ops=True)``); returns
    :func:`dcsim.analysis.energy.report`'s dict (energies per operation in pJ, energy per inference in uJ,
    per layer included).
    """
    return energy.report(
        engine.net,
        _sample_shape(images),
        {label: run.result for label, run in runs.items()},
        preset=opts.energy_preset,
        e_mac=opts.e_mac,
        e_ac=opts.e_ac,
        first_layer=opts.first_layer,
    )


def energy_columns(report: dict, label: str) -> dict:
    """The :data:`ENERGY_COLUMNS` of run ``label`` of an :func:`energy_report`, with the ANN's
    "ann_macs_per_inference" and "ann_energy_uj" (uJ) beside them."""
    ann = report["ann"]
    return {k: report["runs"][label][k] for k in ENERGY_COLUMNS} | {
        "ann_macs_per_inference": ann["macs_per_inference"],
        "ann_energy_uj": ann["energy_uj"],
    }


def dynamic_confidence(
    model: nn.Module,
    method: str,
    splits: dict[str, tuple[Images, torch.Tensor]],
    max_steps: int,
    tau: float,
    steps: int | None = None,
    tolerance: float = 0.0,
    readout_kind: str = "max_softmax",
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    meta: dict | None = None,
    semantics: str | None = None,
    energy_opts: EnergyOptions | None = None,
    stem: str = "spiking",
) -> dict:
    """Convert, pick T and th_c on the validation split, and evaluate live on the test split.

    splits: {"val": (images, labels), "test": (images, labels)}. steps: T (default: the smallest
    T whose validation accuracy reaches the quantized ANN's, up to max_steps); semantics: QFFS's (see
    dcsim.convert; None: the method's default); stem: QCFS's (see dcsim.convert); energy_opts: the energy per operation (None: the fp32
    preset). Returns a dict with the trace, its analysis, the test rows without and with Dynamic
    Confidence and their :func:`energy_report` ("energy", runs "no_dc" and "dc").
    """
    net = convert(model.cpu().eval(), method=method, semantics=semantics, stem=stem)
    engine = Engine(net, device=device, count_ops=True)  # the rows carry SOPs, MACs and energy
    val_x, val_y = splits["val"]
    test_x, test_y = splits["test"]
    ann_val = float((ann_logits(model, val_x).argmax(1) == val_y.cpu()).float().mean())
    acc_curve = None
    if steps is None:
        steps, acc_curve = choose_steps(engine, val_x, val_y, max_steps, ann_val, batch_size)
    readout = (
        Readout.paper(method, net.bits, steps, tau=tau, kind=readout_kind)
        if net.bits
        else Readout(readout_kind, float(steps), tau)
    )
    trace = record_trace(engine, val_x, val_y, steps, readout, (meta or {}) | {"split": "val"}, batch_size)
    report = analysis.analyze(trace, tolerance=tolerance)
    threshold = report["selected"]["threshold"]
    runs = evaluate_live_runs(engine, test_x, test_y, steps, readout, {"no_dc": NO_EXIT, "dc": threshold}, batch_size)
    no_dc, with_dc = runs["no_dc"], runs["dc"]
    return {
        "method": method,
        "steps": steps,
        "readout": readout.to_dict(),
        "val_accuracy_vs_t": acc_curve,
        "trace": trace,
        "analysis": report,
        "no_dc": no_dc,
        "dc": with_dc,
        "energy": energy_report(engine, test_x, {"no_dc": no_dc, "dc": with_dc}, energy_opts or EnergyOptions()),
    }


def calibrate(model: nn.Module, images: Images, labels: torch.Tensor) -> dict:
    """Temperature scaling of the quantized ANN on a validation split (see dcsim.analysis.calibration)."""
    return calibration_report(ann_logits(model, images), labels)


def _sample_shape(images: Images) -> tuple[int, ...]:
    """[C, H, W] of one sample."""
    if isinstance(images, torch.Tensor):
        return tuple(images.shape[1:])
    split = images.split
    return tuple(split.image_shape) if hasattr(split, "image_shape") else tuple(split.images.shape[1:])
