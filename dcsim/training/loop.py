"""Training: float pre-training, then LSQ fine-tuning, with checkpoints, resume and best-on-val.

The paper's recipe is the default: SGD with momentum 0.9, weight decay 2.5e-5, learning rate
0.01 decayed exponentially per epoch, batch 32. ``schedule="cosine"`` gives each stage its own
warm-up and cosine decay (the fast recipe of ``dcsim reproduce``). The whole split lives on the
training device (uint8 images stay uint8 there; see :mod:`dcsim.training.device_batches`), batches are
augmented there, and on a GPU the forward and backward passes run under bf16 autocast in the
channels_last layout (:class:`TrainRuntime`); the weights stay float32 and come back in the
standard layout, so conversion and simulation are float32 as before.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from ..checks import check_int
from ..data.disk import FolderSplit
from ..io.checkpoint import write_safetensors
from ..models.architectures import WhitenedCNN, init_whitening
from ..models.lsq import set_clip_mix, set_quantization
from .averaging import WeightAverage
from .device_batches import DeviceSplit, DiskSplit
from .muon import Muon, muon_groups

if TYPE_CHECKING:
    from ..parallel.distributed import DataParallel

Normalization = tuple[Sequence[float], Sequence[float]]
"""Per-channel (mean, std) of the images, in units of [0, 1] pixel intensity."""
Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
"""augment(x, generator) -> x: a batch transform on the device (e.g. :func:`dcsim.data.augment.random_crop_flip`)."""
SCHEDULES = ("exponential", "cosine", "linear")
OPTIMIZERS = ("sgd", "muon")
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters. ``float_epochs`` of float (ReLU) pre-training precede ``epochs`` of LSQ fine-tuning.

    schedule: "exponential": lr * lr_decay^epoch over both stages (per epoch); "cosine": each
    stage rises linearly from a tenth of its peak over ``warmup_epochs`` and then follows a
    half cosine to zero, per batch; "linear": the same warm-up, then a straight line to zero;
    the float stage peaks at ``lr``, the LSQ stage at ``lsq_lr`` (default lr / 10).
    nesterov: Nesterov momentum; label_smoothing: of the cross-entropy, in the float stage and (unless
    ``lsq_label_smoothing`` is set) the LSQ stage; ``lsq_label_smoothing`` 0 trains the LSQ stage on
    plain cross-entropy after a smoothed float stage, so that the converted network's softmax
    confidence (what Dynamic Confidence reads) is not the smoothed one.
    optimizer: "sgd" (every parameter at the scheduled lr, with ``momentum`` and ``weight_decay``)
    or "muon" (:mod:`dcsim.training.muon`, the fast recipe: conv filters at the scheduled lr with
    orthogonalized momentum, the other groups at fixed ratios of it; ``momentum`` and ``nesterov``
    do not apply, and ``weight_decay`` is the fraction by which biases and the head shrink per
    step at the stage's peak lr, falling with the schedule).
    distill: the LSQ stage's weight in [0, 1] of knowledge distillation from the float network as it
    ends the float stage (the teacher: a frozen copy, in eval mode): the loss is (1 - distill) x the
    cross-entropy + distill x KL(teacher's softmax || student's softmax), both per image. 0 (the
    default) trains on the cross-entropy alone. Needs ``float_epochs`` >= 1.
    clip_mix: in the LSQ stage, the chance in [0, 1) that an image takes, at each LSQ layer, the
    unrounded clip s * clamp(x / s, 0, Qp) in place of the quantizer (see
    :func:`dcsim.models.lsq.set_clip_mix`): the clipped network is what QCFS's rate code converges
    to over many steps, so a mix trains for QCFS at large T as well as the quantized network. The
    draws are seeded per epoch. 0 (the default): every image quantized.
    clip_mix_epochs: the mix covers only the last this many LSQ epochs (1 to ``epochs``), the earlier
    ones quantize every image; None (the default): every LSQ epoch. Needs ``clip_mix`` > 0.
    clip_mix_layers: the mix covers only the first this many LSQ layers (the model's module order, its
    forward order for dcsim's models), the later ones quantize every image; None (the default): every
    LSQ layer. Needs ``clip_mix`` > 0; more than the model has is refused before training.
    bn_reestimate: after the LSQ stage, set every batch norm's running mean and variance afresh from one
    pass over the training split through the chosen (best) network, quantized with no clip mix, under the
    training augmentation (see :func:`reestimate_batch_norm`): the running statistics of a mixed LSQ stage
    are those of a forward pass in which some images took the clip, not those of the quantized network
    that is kept. Needs ``epochs`` >= 1.
    ema: in [0, 1): the LSQ stage keeps an exponential moving average of the network's state with this
    decay per step (:class:`dcsim.training.averaging.WeightAverage`, from the state after its first step);
    then the average, not the network as trained, is validated after each LSQ epoch, competes for "best"
    and is kept ("val_acc"; the trained network's is "trained_val_acc"). 0 (the default): off.
    lsq_seed: seeds the LSQ stage afresh as it starts (its data order, augmentation, clip draws and any other
    draw from torch's generator) with this integer >= 0; None (the default): the LSQ stage continues the run's
    ``seed``. LSQ runs that differ only in it share a stored float stage, so they measure the spread between
    LSQ stages from one float network.
    """

    epochs: int = 60
    float_epochs: int = 0
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2.5e-5
    lr_decay: float = 0.95
    batch_size: int = 32
    seed: int = 0
    schedule: str = "exponential"
    lsq_lr: float | None = None
    warmup_epochs: float = 0.0
    nesterov: bool = False
    label_smoothing: float = 0.0
    lsq_label_smoothing: float | None = None
    optimizer: str = "sgd"
    distill: float = 0.0
    clip_mix: float = 0.0
    clip_mix_epochs: int | None = None
    clip_mix_layers: int | None = None
    bn_reestimate: bool = False
    ema: float = 0.0
    lsq_seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "float_epochs", "batch_size"):
            check_int(getattr(self, name), name, minimum=1 if name == "batch_size" else 0)
        if self.epochs + self.float_epochs < 1:
            raise ValueError("epochs + float_epochs must be >= 1")
        for name in ("lr", "lr_decay"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.lsq_lr is not None and not self.lsq_lr > 0:
            raise ValueError(f"lsq_lr must be > 0 (or None: lr / 10), got {self.lsq_lr!r}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError("momentum and weight_decay must be >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.warmup_epochs >= 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        for name in ("label_smoothing", "lsq_label_smoothing", "clip_mix"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
        if not 0 <= self.distill <= 1:
            raise ValueError(f"distill must lie in [0, 1], got {self.distill!r}")
        if self.clip_mix_epochs is not None:
            check_int(self.clip_mix_epochs, "clip_mix_epochs", minimum=1)
            if not self.clip_mix:
                raise ValueError("clip_mix_epochs needs clip_mix > 0")
            if self.clip_mix_epochs > self.epochs:
                raise ValueError(f"clip_mix_epochs ({self.clip_mix_epochs}) exceeds the LSQ epochs ({self.epochs})")
        if self.clip_mix_layers is not None:
            check_int(self.clip_mix_layers, "clip_mix_layers", minimum=1)
            if not self.clip_mix:
                raise ValueError("clip_mix_layers needs clip_mix > 0")
        if self.lsq_seed is not None:
            check_int(self.lsq_seed, "lsq_seed", minimum=0)
            if self.epochs < 1:
                raise ValueError("lsq_seed needs epochs >= 1: it seeds the LSQ stage")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must lie in [0, 1) (0: off), got {self.ema!r}")
        if self.ema and self.epochs < 1:
            raise ValueError("ema needs epochs >= 1: it averages the LSQ stage")
        if self.bn_reestimate and self.epochs < 1:
            raise ValueError("bn_reestimate needs epochs >= 1: it follows the LSQ stage")
        if self.distill and self.float_epochs < 1:
            raise ValueError("distill needs float_epochs >= 1: the teacher is the network the float stage trains")


LSQ_STAGE_FIELDS = (
    "epochs",
    "lsq_lr",
    "lsq_label_smoothing",
    "distill",
    "clip_mix",
    "clip_mix_epochs",
    "clip_mix_layers",
    "bn_reestimate",
    "ema",
    "lsq_seed",
)
"""The TrainConfig fields the float stage does not read: runs that differ only in these share a float stage."""


@dataclass(frozen=True)
class FloatStage:
    """A file holding the training state at the end of the float stage (the working folder's format), so that
    runs which differ only in their LSQ stage (:data:`LSQ_STAGE_FIELDS`) train the float stage once.

    When ``path`` exists and the run has no working-folder state of its own, training starts from it at the
    first LSQ epoch, exactly as if it had trained those float epochs itself (weights, momentum and the batch
    order's generator come from the file); otherwise the file is written when the float stage ends.
    ``setup``: what shapes the float stage besides the TrainConfig (architecture, data, augmentation,
    runtime), JSON-serialisable; stored in the file and compared when it is read.
    """

    path: Path
    setup: Mapping[str, Any] = field(default_factory=dict)


def learning_rate(config: TrainConfig, epoch: int, progress: float = 0.0) -> float:
    """The learning rate ``progress`` (in [0, 1)) of the way through ``epoch`` (0-based, float stage first)."""
    if config.schedule == "exponential":
        lr = config.lr
        for _ in range(epoch):  # multiplied epoch by epoch, as torch's ExponentialLR does (the same floats)
            lr *= config.lr_decay
        return lr
    peak = stage_peak(config, epoch)
    if epoch < config.float_epochs:
        position, length = epoch + progress, config.float_epochs
    else:
        position, length = epoch - config.float_epochs + progress, config.epochs
    warmup = min(config.warmup_epochs, length / 2)
    if position < warmup:
        return peak * (0.1 + 0.9 * position / warmup)
    fraction = (position - warmup) / (length - warmup)
    if config.schedule == "linear":
        return peak * (1 - fraction)
    return peak * 0.5 * (1 + math.cos(math.pi * fraction))


def stage_peak(config: TrainConfig, epoch: int) -> float:
    """The peak learning rate of the stage ``epoch`` (0-based) belongs to: ``lr`` for the float stage and
    for the exponential schedule, else ``lsq_lr`` (default lr / 10)."""
    if config.schedule == "exponential" or epoch < config.float_epochs:
        return config.lr
    return config.lsq_lr if config.lsq_lr is not None else config.lr / 10


def stage_label_smoothing(config: TrainConfig, epoch: int) -> float:
    """The label smoothing of the stage ``epoch`` (0-based) belongs to: ``label_smoothing`` for the
    float stage, ``lsq_label_smoothing`` (default: the same) for the LSQ stage."""
    if epoch < config.float_epochs or config.lsq_label_smoothing is None:
        return config.label_smoothing
    return config.lsq_label_smoothing


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of ``config.optimizer`` over ``model``'s parameters; every group carries
    ``lr_ratio`` and ``decays`` for :func:`set_learning_rate`."""
    if config.optimizer == "muon":
        return Muon(muon_groups(model, config.batch_size))
    opt = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    opt.param_groups[0].update(lr_ratio=1.0, decays=False)  # SGD's own weight decay, coupled to the lr
    return opt


def set_learning_rate(opt: torch.optim.Optimizer, config: TrainConfig, epoch: int, lr: float) -> None:
    """Set every group's lr to ``lr`` (the schedule's, see :func:`learning_rate`) times its ``lr_ratio``;
    groups that ``decays`` shrink by weight_decay * lr / stage peak per step (see :class:`TrainConfig`)."""
    peak = stage_peak(config, epoch)
    for group in opt.param_groups:
        group["lr"] = lr * group["lr_ratio"]
        if group["decays"]:
            group["weight_decay"] = config.weight_decay / (peak * group["lr_ratio"])


@dataclass(frozen=True)
class TrainRuntime:
    """How training runs (not what it computes). precision: "auto" (bf16 autocast on CUDA, float32
    elsewhere), "fp32" or "bf16"; channels_last: None = on CUDA, and with bf16 on the CPU (oneDNN's fast bf16 convs
    want that layout); compile: ``torch.compile`` the
    training forward pass (the first batches of each stage compile, 15-30 s on a CPU; then on the
    CPU a float epoch runs about 1.3x and an LSQ epoch about 2.5x faster: docs/training.md);
    loader_workers: DataLoader worker processes decoding a split read from disk (0: in this process)."""

    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    loader_workers: int = 0

    def __post_init__(self) -> None:
        if self.precision not in TRAIN_PRECISIONS:
            raise ValueError(f"precision must be one of {TRAIN_PRECISIONS}, got {self.precision!r}")
        check_int(self.loader_workers, "loader_workers", minimum=0)

    def resolve(self, device: torch.device) -> tuple[torch.dtype | None, bool]:
        """(autocast dtype or None, channels_last) on ``device``."""
        cuda = device.type == "cuda"
        bf16 = self.precision == "bf16" or (self.precision == "auto" and cuda)
        channels_last = (cuda or bf16) if self.channels_last is None else self.channels_last
        return (torch.bfloat16 if bf16 else None), channels_last


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits float32 [N, K] of ``model`` in eval mode for images float32 [N, ...] (on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    outs = [model(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy (fraction) of ``model`` on (images, labels)."""
    return int((predict_logits(model, images, batch_size).argmax(1) == labels.cpu()).sum()) / max(len(labels), 1)


@torch.no_grad()
def split_accuracy(model: nn.Module, split: DeviceSplit | DiskSplit, batch_size: int = 1024) -> float:
    """Top-1 accuracy (fraction) of ``model`` in eval mode, float32, on a :class:`DeviceSplit` or
    :class:`DiskSplit`."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=split.device)
    for x, y in split.eval_batches(batch_size):
        correct += (model(x).argmax(1) == y).sum()
    return int(correct) / max(len(split), 1)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of KL(softmax(teacher) || softmax(student)), in nats (0-dim float32).

    student, teacher: logits float [B, K]; the gradient flows into ``student`` only."""
    s = F.log_softmax(student.float(), dim=1)
    t = F.log_softmax(teacher.detach().float(), dim=1)
    return F.kl_div(s, t, reduction="sum", log_target=True)


def make_teacher(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` with its LSQ layers as ReLUs, in eval mode: the float stage's network."""
    teacher = copy.deepcopy(model)
    set_quantization(teacher, False)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


class _Stepper:
    """One optimisation step of a stage, with the runtime's autocast, layout and optional compilation."""

    def __init__(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        config: TrainConfig,
        runtime: TrainRuntime,
        device: torch.device,
        parallel: DataParallel | None = None,
        float_epochs_ahead: bool = False,
    ) -> None:
        """``float_epochs_ahead``: some epoch to run trains the LSQ layers as ReLUs, leaving their
        step sizes without gradients (DDP must then look for unused parameters)."""
        self.model, self.opt, self.config, self.device, self.parallel = model, opt, config, device, parallel
        self.dtype, _ = runtime.resolve(device)
        net = parallel.wrap(model, float_epochs_ahead) if parallel is not None else model
        self.compile = runtime.compile
        self.forward = torch.compile(net) if runtime.compile else net
        self.label_smoothing = config.label_smoothing  # the stage's: set per epoch
        self.teacher: Callable[[torch.Tensor], torch.Tensor] | None = None  # set by :meth:`distill_from`

    def distill_from(self, teacher: nn.Module) -> None:
        """Distil from ``teacher`` (see :func:`make_teacher`) in every step from now on."""
        self.teacher = torch.compile(teacher) if self.compile else teacher

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, rows: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Loss (0-dim), correct predictions (0-dim int64) and rows trained here, after the update; no
        host sync. x [b, ...], y [b]: the batch, or under ``parallel`` this rank's rows of a global
        batch of ``rows`` rows; the loss is then scaled so that the ranks' averaged gradient is the
        global batch's."""
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            out = self.forward(x)
            global_rows = len(y) if rows is None else rows
            if self.parallel is None:
                loss = F.cross_entropy(out.float(), y, label_smoothing=self.label_smoothing)
            else:
                loss = self.parallel.loss(out.float(), y, global_rows, label_smoothing=self.label_smoothing)
            if self.teacher is not None:
                with torch.no_grad():
                    target = self.teacher(x)
                ranks = 1 if self.parallel is None else self.parallel.world.size
                per_image = ranks / max(global_rows, 1)  # the ranks' terms sum to the global batch's mean
                kd = distillation_loss(out, target) * per_image
                loss = (1 - self.config.distill) * loss + self.config.distill * kd
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        self.opt.step()
        return loss.detach(), (out.detach().argmax(1) == y).sum(), len(y)


def _to_memory_format(model: nn.Module, memory_format: torch.memory_format) -> None:
    """``model.to(memory_format=...)``, in place: its 4-D parameters and buffers in that layout."""
    model.to(memory_format=memory_format)  # type: ignore[call-overload]  # torch's overloads of Module.to omit it


def _as_split(
    x: torch.Tensor | FolderSplit,
    y: torch.Tensor,
    normalization: Normalization | None,
    device: torch.device,
    channels_last: bool,
    workers: int = 0,
) -> DeviceSplit | DiskSplit:
    if isinstance(x, FolderSplit):  # read from disk batch by batch; it carries its own normalization and labels
        return DiskSplit(x, device, channels_last, workers)
    channels = x.shape[1] if isinstance(x, torch.Tensor) and x.dim() == 4 else 0
    mean, std = normalization if normalization is not None else ([0.0] * channels, [1.0] * channels)
    if x.dtype == torch.uint8 and normalization is None:
        raise ValueError("train: uint8 images need normalization=(mean, std)")
    return DeviceSplit(x, y, mean, std, device, channels_last=channels_last)


def measure_epoch_seconds(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_size: int,
    config: TrainConfig,
    runtime: TrainRuntime = TrainRuntime(),
    device: torch.device | str | None = None,
    normalization: Normalization | None = None,
    augment: Augment | None = None,
    batches: int = 6,
    warmup: int = 3,
) -> dict[str, Any]:
    """Seconds per float epoch and per LSQ epoch (training plus a validation pass of ``val_size`` images).

    Times ``batches`` optimisation steps in each mode after ``warmup`` untimed ones (cuDNN
    autotuning, compilation) on ``model`` itself with a throw-away optimizer, then restores the
    model's state (weights, BN statistics, LSQ steps). Returns {"float_s", "lsq_s", "batch_s": {...}}.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _, channels_last = runtime.resolve(device)
    model.to(device)
    if channels_last:
        _to_memory_format(model, torch.channels_last)
    saved = copy.deepcopy(model.state_dict())
    split = _as_split(train_x, train_y, normalization, device, channels_last)
    if not isinstance(split, DeviceSplit):
        raise ValueError(
            "measure_epoch_seconds times batches of a split held in memory, not a FolderSplit read from disk"
        )
    opt = make_optimizer(model, config)
    for group in opt.param_groups:
        group["lr"] = 0.0
    step = _Stepper(model, opt, config, runtime, device)
    gen = torch.Generator().manual_seed(config.seed)
    per_epoch = math.ceil(len(split) / config.batch_size)
    eval_batches = math.ceil(val_size / 1024)
    out: dict[str, Any] = {"batch_s": {}}
    try:
        for quantized in (False, True):
            set_quantization(model, quantized)
            times = []
            for _ in range(warmup + batches):
                idx = torch.randint(0, len(split), (config.batch_size,), generator=gen)
                model.train()
                _sync(device)
                t0 = time.perf_counter()
                x, y = split.batch(idx, augment, gen)
                step(x, y)
                _sync(device)
                times.append(time.perf_counter() - t0)
            batch_s = min(times[warmup:]) if batches else times[-1]
            with torch.no_grad():
                model.eval()
                x, _ = split.batch(torch.arange(min(1024, len(split))))
                _sync(device)
                t0 = time.perf_counter()
                model(x)
                _sync(device)
                eval_s = (time.perf_counter() - t0) * eval_batches
            name = "lsq" if quantized else "float"
            out["batch_s"][name] = batch_s
            out[f"{name}_s"] = batch_s * per_epoch + eval_s
    finally:
        model.load_state_dict(saved)
        set_quantization(model, True)
    return out


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def plan_epochs(
    seconds: dict[str, float], budget_s: float, lsq_share: float = 0.4, spent_s: float = 0.0
) -> tuple[int, int]:
    """(float_epochs, lsq_epochs) that fit ``budget_s`` seconds of training, ``lsq_share`` of it LSQ.

    seconds: {"float_s", "lsq_s"} per epoch (see :func:`measure_epoch_seconds`). ``spent_s``: seconds
    of the budget already used (the measurement), so ``budget_s - spent_s`` remain for training.
    Raises ValueError when the rest does not hold one epoch of each stage; the message states the
    whole budget given and the smallest whole budget that would hold them (rounded up, never 0).
    """
    if not 0 < lsq_share < 1:
        raise ValueError(f"lsq_share must lie in (0, 1), got {lsq_share!r}")
    if not budget_s > 0:
        raise ValueError(f"the training budget must be > 0 seconds, got {budget_s!r}")
    left = budget_s - spent_s
    float_epochs = int(max(left, 0.0) * (1 - lsq_share) // seconds["float_s"])
    lsq_epochs = int(max(left, 0.0) * lsq_share // seconds["lsq_s"])
    if float_epochs < 1 or lsq_epochs < 1:
        need_s = spent_s + max(seconds["float_s"] / (1 - lsq_share), seconds["lsq_s"] / lsq_share)
        need_min = max(math.ceil(need_s / 60 * 100) / 100, 0.01)  # rounded up to 0.01 minutes
        spent = f"measuring the epoch times took {spent_s:.0f} s, " if spent_s > 0 else ""
        raise ValueError(
            f"a training budget of {budget_s / 60:.2f} minutes is too small: {spent}one float epoch takes "
            f"~{_seconds(seconds['float_s'])} s and one LSQ epoch ~{_seconds(seconds['lsq_s'])} s here "
            f"({100 * lsq_share:.0f}% of the budget goes to LSQ); give at least {need_min:.2f} minutes"
        )
    return float_epochs, lsq_epochs


def budget_config(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_size: int,
    config: TrainConfig,
    budget_minutes: float,
    lsq_share: float = 0.4,
    runtime: TrainRuntime = TrainRuntime(),
    device: torch.device | str | None = None,
    normalization: Normalization | None = None,
    augment: Augment | None = None,
) -> tuple[TrainConfig, dict[str, Any]]:
    """``config`` with its float and LSQ epochs set to fill ``budget_minutes`` of training on this machine.

    Measures the epoch times (:func:`measure_epoch_seconds`; the measurement's own time comes
    out of the budget), then plans with :func:`plan_epochs`. Returns (config, plan), plan being
    {"budget_minutes", "lsq_share", "measured_s", "seconds_per_epoch": {"float", "lsq"},
    "float_epochs", "epochs", "expected_minutes"}. ValueError when the budget is too small.
    """
    if not budget_minutes > 0:
        raise ValueError(f"budget_minutes must be > 0, got {budget_minutes!r}")
    t0 = time.perf_counter()
    seconds = measure_epoch_seconds(model, train_x, train_y, val_size, config, runtime, device, normalization, augment)
    measured = time.perf_counter() - t0
    float_epochs, epochs = plan_epochs(seconds, 60 * budget_minutes, lsq_share, spent_s=measured)
    plan = {
        "budget_minutes": budget_minutes,
        "lsq_share": lsq_share,
        "measured_s": measured,
        "seconds_per_epoch": {"float": seconds["float_s"], "lsq": seconds["lsq_s"]},
        "float_epochs": float_epochs,
        "epochs": epochs,
        "expected_minutes": (measured + float_epochs * seconds["float_s"] + epochs * seconds["lsq_s"]) / 60,
    }
    return replace(config, float_epochs=float_epochs, epochs=epochs), plan


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(
    model: nn.Module,
    train_x: torch.Tensor | FolderSplit,
    train_y: torch.Tensor,
    val_x: torch.Tensor | FolderSplit,
    val_y: torch.Tensor,
    config: TrainConfig = TrainConfig(),
    augment: Augment | None = None,
    workdir: str | Path | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    *,
    normalization: Normalization | None = None,
    runtime: TrainRuntime = TrainRuntime(),
    time_limit_s: float | None = None,
    parallel: DataParallel | None = None,
    float_stage: FloatStage | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place and load the weights that were best on the validation split.

    Images: float32 [N, C, H, W] already normalized, or uint8 with ``normalization`` = (mean, std)
    per channel (intensities in [0, 1]); both stay on the device. Or a :class:`dcsim.data.FolderSplit`
    too large for memory (with its own labels), decoded batch by batch by ``runtime.loader_workers``
    worker processes and augmented by its "train" transform as decoded (augment must be None).
    augment(x, generator) -> x transforms an in-memory batch on the device before normalization
    (e.g. :func:`dcsim.data.augment.random_crop_flip`).
    Float epochs train with LSQ layers as ReLU; LSQ epochs quantize (steps initialised from the
    first quantized batch). Only LSQ epochs compete for "best" (the model is used quantized).
    With ``workdir``, the state after every epoch is written to workdir/last.safetensors
    (model, optimizer momentum, progress) and training resumes from it when present.
    With ``time_limit_s``, training stops after the first epoch that ends past the limit.
    Returns the history: {"epochs": [{"epoch", "phase", "loss", "train_acc", "val_acc", "lr",
    "seconds", "elapsed_s"}], "best_val_acc", "config", "completed", "planned_epochs"} (and
    "bn_reestimate": {"val_before", "val_after", "seconds"} with ``config.bn_reestimate``); "seconds"
    is the epoch's wall time (training and validation), "elapsed_s" the sum so far; a resumed run
    adds "resumed_at_epochs" (the epochs completed at each resume).
    parallel: training on several ranks (see dcsim.parallel.distributed.DataParallel): every rank draws the
    same global batches and trains on its rows of each; rank 0 alone writes the workdir state.
    float_stage: start from a stored float stage, or store this run's (see :class:`FloatStage`; needs
    ``config.float_epochs`` >= 1); the history then has "float_stage": {"path", "read"}.
    """
    if float_stage is not None and config.float_epochs < 1:
        raise ValueError(f"float stage file {float_stage.path}: needs float_epochs >= 1, got {config.float_epochs}")
    set_clip_mix(model, 0.0, config.clip_mix_layers)  # no mix until the LSQ stage; refuses too many layers
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _, channels_last = runtime.resolve(device)
    model.to(device)
    if channels_last:
        _to_memory_format(model, torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_split = _as_split(train_x, train_y, normalization, device, channels_last, runtime.loader_workers)
    val_split = _as_split(val_x, val_y, normalization, device, channels_last, runtime.loader_workers)
    if isinstance(train_split, DiskSplit) and augment is not None:
        raise ValueError(
            "train: a training split read from disk (FolderSplit) is augmented as it is decoded; pass "
            "augment=None (its transform 'eval' trains without augmentation)"
        )
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    opt = make_optimizer(model, config)
    ranks = 1 if parallel is None else parallel.world.size
    total = config.float_epochs + config.epochs
    history: dict[str, Any] = {
        "epochs": [],
        "best_val_acc": -1.0,
        "config": asdict(config),
        "planned_epochs": total,
        "completed": False,
    }
    best: dict[str, torch.Tensor] | None = None
    teacher: nn.Module | None = None
    average = WeightAverage(config.ema) if config.ema else None
    start = 0
    whiten_from_training_split(model, train_split)
    last = Path(workdir) / "last.safetensors" if workdir is not None else None
    if last is not None:
        last.parent.mkdir(parents=True, exist_ok=True)
    if last is not None and last.exists():
        start, history, best, teacher_state, averaged = _resume(last, model, opt, gen, config)
        if average is not None and averaged is not None:
            average.state = {k: v.to(device) for k, v in averaged.items()}
        if teacher_state is not None:
            teacher = make_teacher(model)
            teacher.load_state_dict(teacher_state)
        if progress:
            tqdm.write(f"resuming from {last} after epoch {start}/{total}")
    elif float_stage is not None and float_stage.path.exists():
        start, history, best, _, _ = _resume(float_stage.path, model, opt, gen, config, float_stage)
        history["float_stage"] = {"path": str(float_stage.path), "read": True}
        if progress:
            tqdm.write(f"the float stage ({start} epochs) from {float_stage.path}")
    if float_stage is not None:
        history.setdefault("float_stage", {"path": str(float_stage.path), "read": False})
    step = _Stepper(model, opt, config, runtime, device, parallel, float_epochs_ahead=start < config.float_epochs)
    drop_last = runtime.compile and len(train_split) >= config.batch_size  # fixed shapes: no recompilation
    t_start = time.perf_counter()
    elapsed0 = history["epochs"][-1]["elapsed_s"] if history["epochs"] else 0.0
    lsq_draws = config.seed if config.lsq_seed is None else config.lsq_seed  # seeds the LSQ stage's clip draws
    for epoch in range(start, total):
        t_epoch = time.perf_counter()
        quantized = epoch >= config.float_epochs
        set_quantization(model, quantized)
        averaging = average if quantized else None  # the LSQ stage's weight average, if any
        mixed = quantized and total - epoch <= (config.clip_mix_epochs or config.epochs)
        set_clip_mix(model, config.clip_mix if mixed else 0.0, config.clip_mix_layers)
        if epoch == config.float_epochs and config.lsq_seed is not None:  # the LSQ stage starts: seeded afresh
            gen.manual_seed(config.lsq_seed)
            torch.manual_seed(config.lsq_seed)
        if mixed and config.clip_mix:
            torch.manual_seed(lsq_draws * 10_000 + epoch)  # the clip draws: the same on resuming at any epoch
        step.label_smoothing = stage_label_smoothing(config, epoch)
        if quantized and config.distill and step.teacher is None:
            if teacher is None:  # the end of the float stage (a resumed run has its teacher)
                teacher = make_teacher(model)
            step.distill_from(teacher)
        model.train()
        perm = torch.randperm(len(train_split), generator=gen)
        n_batches = len(perm) // config.batch_size if drop_last else math.ceil(len(perm) / config.batch_size)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        bar = tqdm(
            range(n_batches),
            disable=None if progress else True,
            leave=False,
            desc=f"epoch {epoch + 1}/{total} ({'lsq' if quantized else 'float'})",
        )
        batches = train_split.epoch_batches(
            perm,
            config.batch_size,
            n_batches,
            epoch=epoch,
            augment=augment,
            generator=gen,
            local=None if parallel is None else parallel.local,
        )
        for b, (x, y, global_rows) in zip(bar, batches, strict=True):
            lr = learning_rate(config, epoch, b / n_batches)
            set_learning_rate(opt, config, epoch, lr)
            loss, hits, rows = step(x, y, global_rows)
            if averaging is not None:
                averaging.update(model)
            loss_sum += loss * global_rows / ranks
            correct += hits
            seen += rows
            if b % 50 == 49 or b == n_batches - 1:  # a host sync only now and then
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{int(correct) / seen:.3f}")
        totals: tuple[float, ...] = (float(loss_sum), int(correct), seen)
        if parallel is not None:
            totals = parallel.reduce(*totals)
        total_loss, total_correct, total_seen = totals
        val_acc = split_accuracy(model, val_split)
        trained_val_acc = val_acc
        if averaging is not None:
            with averaging.applied(model):
                val_acc = split_accuracy(model, val_split)
        seconds = time.perf_counter() - t_epoch
        record = {
            "epoch": epoch + 1,
            "phase": "lsq" if quantized else "float",
            "loss": total_loss / max(total_seen, 1),
            "train_acc": int(total_correct) / max(total_seen, 1),
            "val_acc": val_acc,
            "lr": lr,
            "seconds": seconds,
            "elapsed_s": elapsed0 + time.perf_counter() - t_start,
        }
        if averaging is not None:
            record["trained_val_acc"] = trained_val_acc
        history["epochs"].append(record)
        if quantized and val_acc > history["best_val_acc"]:
            history["best_val_acc"] = val_acc
            kept = model.state_dict() if averaging is None else averaging.state
            assert kept is not None  # the average has seen this epoch's updates
            best = {k: v.detach().clone() for k, v in kept.items()}
        if progress:
            tqdm.write(
                f"epoch {epoch + 1}/{total} {record['phase']}: loss {record['loss']:.4f} "
                f"train {record['train_acc']:.4f} val {val_acc:.4f}"
                + (f" (average; trained {trained_val_acc:.4f})" if averaging is not None else "")
                + f" ({seconds:.1f} s)"
            )
        if last is not None and (parallel is None or parallel.main):
            _checkpoint(
                last, model, opt, gen, history, best, teacher, average=None if average is None else average.state
            )
        if (
            float_stage is not None
            and epoch + 1 == config.float_epochs
            and not float_stage.path.exists()
            and (parallel is None or parallel.main)
        ):
            _checkpoint(float_stage.path, model, opt, gen, history, best, teacher, float_stage.setup)
        if time_limit_s is not None and time.perf_counter() - t_start > time_limit_s and epoch + 1 < total:
            history["stopped"] = f"time limit of {time_limit_s:.0f} s reached after epoch {epoch + 1} of {total}"
            break
    else:
        history["completed"] = True
    set_quantization(model, True)
    set_clip_mix(model, 0.0)
    if best is not None:
        model.load_state_dict(best)
    if config.bn_reestimate and best is not None and history["completed"]:
        t0 = time.perf_counter()
        reestimate_batch_norm(model, train_split, config.batch_size, augment=augment, seed=config.seed, epoch=total)
        history["bn_reestimate"] = {
            "val_before": history["best_val_acc"],
            "val_after": split_accuracy(model, val_split),
            "seconds": time.perf_counter() - t0,
        }
        if progress:
            r = history["bn_reestimate"]
            tqdm.write(
                f"batch norm re-estimated: val {r['val_before']:.4f} -> {r['val_after']:.4f} ({r['seconds']:.1f} s)"
            )
    _to_memory_format(model, torch.contiguous_format)
    model.eval()
    return history


def reestimate_batch_norm(
    model: nn.Module,
    split: DeviceSplit | DiskSplit,
    batch_size: int,
    *,
    augment: Augment | None,
    seed: int,
    epoch: int,
) -> None:
    """Set every batch norm's running mean and variance of ``model`` afresh: the plain average over one
    pass of ``split`` (seeded order, ``batch_size`` images a batch, the last partial batch dropped when there
    is a whole one) of each batch's statistics, through the network as it stands (its quantization and clip
    mix as set), under ``augment`` (a split read from disk: its own transform). No parameter changes; every rank
    of a parallel run makes the same whole pass, so all get the same statistics. Leaves ``model`` in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch weighs the same
    gen = torch.Generator().manual_seed(seed + 1)
    perm = torch.randperm(len(split), generator=gen)
    n_batches = len(perm) // batch_size if len(perm) >= batch_size else 1
    model.train()
    try:
        with torch.no_grad():
            for x, _, _ in split.epoch_batches(
                perm, batch_size, n_batches, epoch=epoch, augment=augment, generator=gen
            ):
                model(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()


def milestones(history: dict[str, Any], levels: Sequence[float]) -> list[dict[str, Any]]:
    """Epochs and minutes until the validation accuracy first reached each level, per stage.

    Returns [{"phase", "level", "epoch", "minutes"}] with epoch/minutes None where not reached
    (epoch counts from the start of training; minutes: training wall time including validation).
    """
    rows = []
    for phase in ("float", "lsq"):
        epochs = [e for e in history["epochs"] if e["phase"] == phase]
        for level in levels:
            hit = next((e for e in epochs if e["val_acc"] >= level), None)
            rows.append(
                {
                    "phase": phase,
                    "level": level,
                    "epoch": hit["epoch"] if hit else None,
                    "minutes": hit["elapsed_s"] / 60 if hit else None,
                }
            )
    return rows


def whiten_from_training_split(model: nn.Module, train_split: DeviceSplit | DiskSplit, images: int = 5000) -> None:
    """Set the patch-whitening layers of ``model`` not yet set (see :func:`dcsim.models.init_whitening`)
    from the first ``images`` images of the **training** split, normalized, without augmentation."""
    pending = [m for m in model.modules() if isinstance(m, WhitenedCNN) and not bool(m.whitening_set)]
    if pending:
        x, _ = next(iter(train_split.eval_batches(images)))
        for m in pending:
            init_whitening(m, x.contiguous())


def _parameters(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's parameters, group after group (the order of their momentum in a checkpoint)."""
    return [p for group in opt.param_groups for p in group["params"]]


def _checkpoint(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    history: dict[str, Any],
    best: dict[str, torch.Tensor] | None,
    teacher: nn.Module | None = None,
    float_setup: Mapping[str, Any] | None = None,
    *,
    average: dict[str, torch.Tensor] | None = None,
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if average is not None:
        tensors |= {f"ema.{k}": v for k, v in average.items()}
    if best is not None:
        tensors |= {f"best.{k}": v for k, v in best.items()}
    if teacher is not None:
        tensors |= {f"teacher.{k}": v for k, v in teacher.state_dict().items()}
    for i, p in enumerate(_parameters(opt)):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{i}"] = buf
    tensors["rng"] = gen.get_state()
    meta: dict[str, Any] = {"history": history}
    if float_setup is not None:
        meta["float_setup"] = _as_stored(float_setup)
    write_safetensors(
        path, {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"dcsim": json.dumps(meta)}
    )


WORKDIR_FILES = ("last.safetensors", "plan.json", ".lock")
"""What a training run keeps in its working folder (resume state, budget plan, the folder's lock)."""


def discard_workdir(folder: str | Path) -> None:
    """Remove a finished run's working folder: only the files a run writes there (WORKDIR_FILES), then
    the folder if that leaves it empty; anything else in it (the user's) is kept, with the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for name in WORKDIR_FILES:
        path = folder / name
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: files that are not a run's
        folder.rmdir()


def _stored_config(stored: dict[str, Any]) -> dict[str, Any]:
    """A config dict read from a file, with the fields it predates at their defaults."""
    return {f.name: f.default for f in fields(TrainConfig)} | stored


def _same_config(stored: dict[str, Any], config: TrainConfig) -> bool:
    """Whether a stored config is ``config``; fields it predates count as their defaults."""
    return _stored_config(stored) == asdict(config)


def _as_stored(setup: Mapping[str, Any]) -> dict[str, Any]:
    """``setup`` as a file's metadata holds it (tuples as lists, paths and other objects as strings)."""
    return dict(json.loads(json.dumps(dict(setup), default=str)))


def _float_stage_mismatch(meta: dict[str, Any], config: TrainConfig, stage: FloatStage) -> list[str]:
    """What differs between the float stage stored in ``meta`` and the one ``config`` and ``stage`` would train:
    "name: stored -> wanted" per field; empty when they are the same."""
    history = meta["history"]
    done = [e.get("phase") for e in history["epochs"]]
    if done != ["float"] * config.float_epochs:
        return [
            f"epochs: holds {len(done)} ({', '.join(sorted(set(map(str, done))))}), not the {config.float_epochs} float epochs"
        ]
    stored = _stored_config(history.get("config", {}))
    wanted = asdict(config)
    diffs = [
        f"{k}: {stored.get(k)!r} -> {v!r}"
        for k, v in wanted.items()
        if k not in LSQ_STAGE_FIELDS and stored.get(k) != v
    ]
    stored_setup = meta.get("float_setup", {})
    wanted_setup = _as_stored(stage.setup)
    keys = sorted(set(stored_setup) | set(wanted_setup))
    diffs += [
        f"{k}: {stored_setup.get(k)!r} -> {wanted_setup.get(k)!r}"
        for k in keys
        if stored_setup.get(k) != wanted_setup.get(k)
    ]
    return diffs


def _resume(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    config: TrainConfig,
    float_stage: FloatStage | None = None,
) -> tuple[
    int,
    dict[str, Any],
    dict[str, torch.Tensor] | None,
    dict[str, torch.Tensor] | None,
    dict[str, torch.Tensor] | None,
]:
    """(epochs done, history, best weights or None, the distillation teacher's weights or None, the weight
    average's state or None) from ``path``,
    with ``model``, the optimizer's momentum and ``gen`` restored in place. With ``float_stage`` the file is
    a stored float stage: its float-stage settings (not the LSQ stage's) must be ``config``'s and its setup
    ``float_stage.setup``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["dcsim"])
        tensors = load_file(str(path))
    except Exception as err:
        raise ValueError(f"{path}: cannot resume training from this file ({err}); delete it to start over") from err
    if float_stage is not None:
        diffs = _float_stage_mismatch(meta, config, float_stage)
        if diffs:
            raise ValueError(
                f"float stage file {path}: trained with other float-stage settings ({'; '.join(diffs)}); "
                "give the same settings or another file"
            )
    elif not _same_config(meta["history"].get("config", {}), config):
        raise ValueError(
            f"{path}: was written with a different training configuration; delete it or use the same settings"
        )
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    teacher = {k[8:]: v for k, v in tensors.items() if k.startswith("teacher.")} or None
    averaged = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")} or None
    for i, p in enumerate(_parameters(opt)):
        if f"momentum.{i}" in tensors:
            opt.state[p]["momentum_buffer"] = tensors[f"momentum.{i}"].to(p.device)
    gen.set_state(tensors["rng"])
    history = meta["history"]
    for e in history["epochs"]:  # files from before per-epoch timing
        e.setdefault("elapsed_s", 0.0)
    history["config"] = asdict(config)
    history.setdefault("planned_epochs", config.float_epochs + config.epochs)
    history["completed"] = False
    history["resumed_at_epochs"] = [*history.get("resumed_at_epochs", []), len(history["epochs"])]
    return len(history["epochs"]), history, best, teacher, averaged
