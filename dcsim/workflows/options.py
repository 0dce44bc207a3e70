"""Typed options of the workflows (frozen dataclasses): what each command line flag sets, checked once.

Sizes are counts (images, steps, slots, epochs); times are minutes where named so. Field names are
the command line's flags with '_' for '-' (``batch_size`` is ``--batch-size``), so an error about a
field names the flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from ..analysis.energy import FIRST_LAYER, PRESETS
from ..checks import check_int, check_real
from ..sim.network import STEMS
from ..sim.semantics import Semantics

if TYPE_CHECKING:
    from ..training.loop import TrainConfig


def steps_per_call(text: str) -> int | None:
    """A ``--chunk`` value: an integer, or "auto" (None: planned per sample at batch 1, see dcsim.sim.chunking)."""
    return None if text == "auto" else int(text)


def _check_semantics(method: str, semantics: Semantics | None) -> None:
    """``--qffs-semantics`` is QFFS's alone."""
    if semantics is not None and method != "qffs":
        raise ValueError(f"--qffs-semantics applies to --method qffs only, got --method {method}")


def _check_stem(method: str | None, stem: str) -> None:
    """``--qcfs-stem``: one of STEMS, and 'quantized' for QCFS only (``method`` None: the report's two methods)."""
    if stem not in STEMS:
        raise ValueError(f"--qcfs-stem must be one of {', '.join(STEMS)}, got {stem!r}")
    if stem != "spiking" and method not in (None, "qcfs"):
        raise ValueError(f"--qcfs-stem applies to --method qcfs only, got --method {method}")


def method_stem(method: str, qcfs_stem: str) -> str:
    """The stem :func:`dcsim.convert` takes for ``method`` under ``--qcfs-stem qcfs_stem`` ("spiking" for QFFS)."""
    return qcfs_stem if method == "qcfs" else "spiking"


def _check_number_or_keyword(name: str, value: str, keywords: tuple[str, ...]) -> None:
    """``--tau`` / ``--alpha``: one of ``keywords`` or a number > 0."""
    if value not in keywords:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--{name} takes a number or a keyword, got {value!r}") from None
        check_real(number, f"--{name}", 0, None, low_allowed=False)


@dataclass(frozen=True)
class DataOptions:
    """Which data set and how it is read: ``dataset`` digits | cifar10 | imagefolder (``data_root`` for the
    last two), ``val_size`` validation images drawn from train (None: the data set's default), ``seed`` of
    that draw and of training, ``loader`` auto | memory | disk, ``loader_workers`` per rank (None: CPUs / ranks)."""

    dataset: str = "digits"
    data_root: Path | None = None
    val_size: int | None = None
    seed: int = 0
    loader: str = "auto"
    loader_workers: int | None = None

    def __post_init__(self) -> None:
        if self.dataset != "digits" and self.data_root is None:
            raise ValueError(f"--data-root is required for --dataset {self.dataset}")


@dataclass(frozen=True)
class TrainOptions:
    """Training into the checkpoint ``out`` (see ``dcsim train --help`` for each field; defaults: train's)."""

    out: Path
    arch: str = "small_cnn"
    width: int | None = None
    bits: int = 2
    epochs: int = 60
    float_epochs: int = 0
    lr: float = 0.01
    lr_decay: float = 0.95
    momentum: float = 0.9
    weight_decay: float = 2.5e-5
    train_batch_size: int = 32
    augment: bool = False
    schedule: str = "exponential"
    lsq_lr: float | None = None
    warmup_epochs: float = 0.0
    nesterov: bool = False
    label_smoothing: float = 0.0
    lsq_label_smoothing: float | None = None
    distill: float = 0.0
    clip_mix: float = 0.0
    clip_mix_epochs: int | None = None
    clip_mix_layers: int | None = None
    bn_reestimate: bool = False
    ema: float = 0.0
    lsq_seed: int | None = None
    optimizer: str = "sgd"
    crop_padding: int = 4
    cutout: int = 0
    train_precision: str = "auto"
    train_channels_last: bool | None = None
    compile: bool = False
    budget_minutes: float | None = None
    lsq_share: float = 0.4
    train_subset: int | None = None
    workdir: Path | None = None
    quiet: bool = False
    sync_bn: bool = False
    float_stage: Path | None = None

    def __post_init__(self) -> None:
        if self.cutout and not self.augment:
            raise ValueError(f"--cutout {self.cutout} applies to the augmented batches: give --augment (or --cutout 0)")
        if self.float_stage is not None and (self.budget_minutes is not None or self.float_epochs < 1):
            raise ValueError(
                f"--float-stage {self.float_stage}: stores or reads the float stage of a fixed --float-epochs >= 1 "
                "(not --budget-minutes, whose plan sets the epochs)"
            )
        if self.clip_mix_epochs is not None and self.budget_minutes is not None:
            raise ValueError(
                "--clip-mix-epochs counts the fixed --epochs of the LSQ stage (not --budget-minutes' plan)"
            )
        planned = {"float_epochs": 1, "epochs": 1} if self.budget_minutes is not None else {}  # a plan has both
        self.config(seed=0, **planned)  # the training configuration's own rules, before any work

    def config(self, seed: int, **planned: int) -> TrainConfig:
        """The training configuration: the fields named as TrainConfig's carry over as they are;
        ``planned``: the epochs of a budget plan (float_epochs, epochs) in place of the options'."""
        from ..training.loop import TrainConfig  # here: torch loads with the workflow, not with the parser

        shared = {f.name: getattr(self, f.name) for f in fields(TrainConfig) if hasattr(self, f.name)}
        return TrainConfig(**shared | {"batch_size": self.train_batch_size, "seed": seed} | planned)

    @property
    def working_folder(self) -> Path:
        """Per-epoch state for resuming: ``workdir``, default OUT.work/."""
        return self.workdir or self.out.with_suffix(".work")


@dataclass(frozen=True)
class ModelOptions:
    """A checkpoint (file or zoo folder) and how it becomes convertible: ``threshold_percentile`` the percentile in
    (0, 100] for a float ReLU checkpoint's thresholds, from ``calibration_size`` training images."""

    checkpoint: Path
    threshold_percentile: float | None = None
    calibration_size: int = 1000


@dataclass(frozen=True)
class ReadoutOptions:
    """Method and readout: ``alpha`` 'paper' | 'official' | a number; ``tau`` 'auto' | a number > 0."""

    method: str
    readout: str = "max_softmax"
    alpha: str = "paper"
    tau: str = "auto"
    semantics: Semantics | None = None
    qcfs_stem: str = "spiking"

    def __post_init__(self) -> None:
        _check_semantics(self.method, self.semantics)
        _check_stem(self.method, self.qcfs_stem)
        _check_number_or_keyword("tau", self.tau, ("auto",))
        _check_number_or_keyword("alpha", self.alpha, ("paper", "official"))


@dataclass(frozen=True)
class EngineOptions:
    """Engine settings of eval and stream (see dcsim.Engine)."""

    precision: str = "fp32"
    spike_convs: bool = False
    channels_last: bool = False
    graphs: bool = False


@dataclass(frozen=True)
class EnergyOptions:
    """The energy estimate of eval and the report loop (see :mod:`dcsim.analysis.energy`): E = e_mac x MACs
    + e_ac x SOPs. ``energy_preset`` fp32 | fp16 | int32 | int8 (Horowitz's 45 nm energies per operation);
    ``e_mac`` / ``e_ac`` in pJ per multiply-accumulate / per accumulate override the preset's when given;
    ``first_layer_macs`` 'once' (the image-fed layers' MACs once per inference, as dcsim computes them) or
    'per-step' (at every step the image drives)."""

    energy_preset: str = "fp32"
    e_mac: float | None = None
    e_ac: float | None = None
    first_layer_macs: str = "once"

    def __post_init__(self) -> None:
        spelled = tuple(w.replace("_", "-") for w in FIRST_LAYER)  # the command line's spelling
        for name, words in (("energy_preset", tuple(PRESETS)), ("first_layer_macs", spelled)):
            if getattr(self, name) not in words:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be one of {', '.join(words)}, got {getattr(self, name)!r}")

    @property
    def first_layer(self) -> str:
        """``first_layer_macs`` in :func:`dcsim.analysis.energy.report`'s spelling ('once' | 'per_step')."""
        return self.first_layer_macs.replace("-", "_")


@dataclass(frozen=True)
class TraceOptions:
    """``dcsim trace``: T = ``steps`` on ``split`` into the .npz ``out`` (``sums``: also S_t [N, T, K])."""

    readout: ReadoutOptions
    steps: int
    out: Path
    split: str = "val"
    sums: bool = False
    batch_size: int = 256


@dataclass(frozen=True)
class AnalyzeOptions:
    """``dcsim analyze``: the front of ``trace`` on a grid of ``resolution``; plots into ``plots``."""

    trace: Path
    plots: Path
    resolution: float = 0.1
    tolerance: float = 0.0


@dataclass(frozen=True)
class EvalOptions:
    """``dcsim eval``: live early exit at ``threshold`` with T = ``steps``, or T, readout and th_c from ``trace``."""

    readout: ReadoutOptions
    steps: int | None = None
    threshold: float | None = None
    trace: Path | None = None
    tolerance: float = 0.0
    select_on_test: bool = False
    unmatched_trace: bool = False
    split: str = "test"
    batch_size: int = 256
    chunk: int | None = None
    engine: EngineOptions = field(default_factory=EngineOptions)
    energy: EnergyOptions = field(default_factory=EnergyOptions)

    def __post_init__(self) -> None:
        if (self.threshold is None) == (self.trace is None):
            raise ValueError("give exactly one of --threshold and --trace (a validation trace to select th_c from)")
        if self.threshold is not None and self.steps is None:
            raise ValueError("--steps is required with --threshold")
        for name in ("select_on_test", "unmatched_trace"):
            if getattr(self, name) and self.trace is None:
                raise ValueError(
                    f"--{name.replace('_', '-')} applies to a --trace (which selects th_c); none was given"
                )


@dataclass(frozen=True)
class StreamOptions:
    """``dcsim stream``: continuous batching with ``slots`` samples in flight; T, readout and th_c from ``trace``."""

    method: str
    trace: Path
    tolerance: float = 0.0
    select_on_test: bool = False
    unmatched_trace: bool = False
    split: str = "test"
    slots: int = 64
    semantics: Semantics | None = None
    qcfs_stem: str = "spiking"
    compare: bool = False
    repeats: int = 2
    engine: EngineOptions = field(default_factory=EngineOptions)

    def __post_init__(self) -> None:
        _check_semantics(self.method, self.semantics)
        _check_stem(self.method, self.qcfs_stem)


@dataclass(frozen=True)
class ReportOptions:
    """The report loop: QCFS and QFFS, T = ``*_steps`` (None: chosen on validation up to ``*_max_steps``)."""

    tau: str = "auto"
    tolerance: float = 0.0
    qcfs_steps: int | None = None
    qffs_steps: int | None = None
    qcfs_max_steps: int = 64
    qffs_max_steps: int = 12
    semantics: Semantics | None = None
    qcfs_stem: str = "spiking"
    batch_size: int = 256
    energy: EnergyOptions = field(default_factory=EnergyOptions)

    def __post_init__(self) -> None:
        _check_number_or_keyword("tau", self.tau, ("auto",))
        _check_stem(None, self.qcfs_stem)

    def stem(self, method: str) -> str:
        """The stem :func:`dcsim.convert` takes for ``method`` ("spiking" for QFFS)."""
        return method_stem(method, self.qcfs_stem)

    def steps(self, method: str) -> tuple[int | None, int]:
        """(fixed T or None, largest T considered) of ``method``."""
        if method == "qcfs":
            return self.qcfs_steps, self.qcfs_max_steps
        return self.qffs_steps, self.qffs_max_steps


@dataclass(frozen=True)
class BenchOptions:
    """``dcsim bench`` (see its --help): the standard set, optionally a trained ``checkpoint`` and streaming;
    ``processes`` > 1 runs it in that many fresh processes and reports each row's median over them. Every QCFS
    case is converted with ``qcfs_stem`` (see dcsim.convert); ``batches``: every case's batch sizes (empty: the
    standard set's, see dcsim.workflows.benchmark.standard_set); ``ideal``: also time the runs an ideal DC's saving
    needs (see dcsim.workflows.benchmark.ideal_saving)."""

    quick: bool = False
    full: bool = False
    models: tuple[str, ...] = ()
    repeats: int = 7
    chunk: tuple[int | None, ...] = (None,)
    channels_last: bool = False
    graphs: tuple[str, ...] = ()
    masked: bool = False
    precision: tuple[str, ...] = ("fp32",)
    spike_convs: tuple[str, ...] = ()
    checkpoint: Path | None = None
    stream: int | None = None
    processes: int = 1
    qcfs_stem: str = "spiking"
    batches: tuple[int, ...] = ()
    ideal: bool = False

    def __post_init__(self) -> None:
        _check_stem(None, self.qcfs_stem)
        for batch in self.batches:
            check_int(batch, "--batches", minimum=1)
        if not isinstance(self.processes, int) or self.processes < 1:
            raise ValueError(f"--processes {self.processes}: needs an integer >= 1")
        if self.processes > 1 and self.stream is not None:
            raise ValueError("--processes > 1 repeats the engine rows in fresh processes; run --stream without it")

    def stem(self, method: str) -> str:
        """The stem :func:`dcsim.convert` takes for ``method`` ("spiking" for QFFS)."""
        return method_stem(method, self.qcfs_stem)


@dataclass(frozen=True)
class ReproduceOptions:
    """``dcsim reproduce`` into the folder ``out``: training, then the report at ``min_accuracy`` or above."""

    out: Path
    train: TrainOptions
    report: ReportOptions
    min_accuracy: float = 0.5
    max_test: int | None = None
