"""Training: float pre-training, then LSQ fine-tuning, with checkpoints, resume and best-on-val.

The paper's recipe is the default: SGD with momentum 0.9, weight decay 2.5e-5, learning rate
0.01 decayed exponentially per epoch, batch 32. Data are in-memory tensors: images float32
[N, C, H, W] already normalized, labels int64 [N].
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .fileio import atomic_output
from .lsq import set_quantization

if TYPE_CHECKING:
    from .distributed import DataParallel


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters. ``float_epochs`` of float (ReLU) pre-training precede ``epochs`` of LSQ fine-tuning."""

    epochs: int = 60
    float_epochs: int = 0
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2.5e-5
    lr_decay: float = 0.95
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "float_epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "batch_size" else 0):
                raise ValueError(f"{name} must be a non-negative integer (batch_size >= 1), got {v!r}")
        if self.epochs + self.float_epochs < 1:
            raise ValueError("epochs + float_epochs must be >= 1")
        for name in ("lr", "lr_decay"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError("momentum and weight_decay must be >= 0")


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits float32 [N, K] of ``model`` in eval mode for images float32 [N, ...] (on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    outs = [model(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy (fraction) of ``model`` on (images, labels)."""
    return float((predict_logits(model, images, batch_size).argmax(1) == labels.cpu()).float().mean())


def train(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    config: TrainConfig = TrainConfig(),
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    workdir: str | Path | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    parallel: DataParallel | None = None,
) -> dict:
    """Train ``model`` in place and load the weights that were best on the validation split.

    Float epochs train with LSQ layers as ReLU; LSQ epochs quantize (steps initialised from the
    first quantized batch). Only LSQ epochs compete for "best" (the model is used quantized).
    With ``workdir``, the state after every epoch is written to workdir/last.safetensors
    (model, optimizer momentum, progress) and training resumes from it when present.
    Returns the history: {"epochs": [{"epoch", "phase", "loss", "train_acc", "val_acc"}], "best_val_acc"}.
    parallel: training on several ranks (see dcsim.distributed.DataParallel): every rank draws the
    same global batches and trains on its rows of each; rank 0 alone writes the workdir state.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    net = parallel.wrap(model) if parallel is not None else model
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.lr_decay)
    history: dict = {"epochs": [], "best_val_acc": -1.0, "config": asdict(config)}
    best: dict[str, torch.Tensor] | None = None
    start = 0
    last = Path(workdir) / "last.safetensors" if workdir is not None else None
    if last is not None:
        last.parent.mkdir(parents=True, exist_ok=True)
        if last.exists():
            start, history, best = _resume(last, model, opt, sched, gen, config)
    total = config.float_epochs + config.epochs
    for epoch in range(start, total):
        quantized = epoch >= config.float_epochs
        set_quantization(model, quantized)
        model.train()
        perm = torch.randperm(len(train_x), generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(range(0, len(perm), config.batch_size), disable=None if progress else True, leave=False,
                   desc=f"epoch {epoch + 1}/{total} ({'lsq' if quantized else 'float'})")
        for lo in bar:
            idx = perm[lo:lo + config.batch_size]
            xb = train_x[idx]
            if augment is not None:
                xb = augment(xb, gen)
            xb, yb = xb.to(device), train_y[idx].to(device)
            if parallel is not None:
                xb, yb = parallel.local(xb), parallel.local(yb)
            out = net(xb)
            loss = F.cross_entropy(out, yb) if parallel is None else parallel.loss(out, yb, len(idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx) / (1 if parallel is None else parallel.world.size)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(yb)
            bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.3f}", acc=f"{correct / max(seen, 1):.3f}")
        sched.step()
        if parallel is not None:
            loss_sum, correct, seen = parallel.reduce(loss_sum, correct, seen)
        val_acc = accuracy(model, val_x, val_y)
        history["epochs"].append({"epoch": epoch + 1, "phase": "lsq" if quantized else "float",
                                  "loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "val_acc": val_acc})
        if quantized and val_acc > history["best_val_acc"]:
            history["best_val_acc"] = val_acc
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{total} {'lsq' if quantized else 'float'}: "
                       f"loss {loss_sum / max(seen, 1):.4f} train {correct / max(seen, 1):.4f} val {val_acc:.4f}")
        if last is not None and (parallel is None or parallel.main):
            _checkpoint(last, model, opt, sched, gen, history, best)
    set_quantization(model, True)
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    return history


def _checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched, gen: torch.Generator,
                history: dict, best: dict[str, torch.Tensor] | None) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if best is not None:
        tensors |= {f"best.{k}": v for k, v in best.items()}
    for i, p in enumerate(opt.param_groups[0]["params"]):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{i}"] = buf
    tensors["rng"] = gen.get_state()
    meta = {"history": history, "scheduler": sched.state_dict()}
    with atomic_output(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata={"dcsim": json.dumps(meta)})


def _resume(path: Path, model: nn.Module, opt, sched, gen: torch.Generator, config: TrainConfig):
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["dcsim"])
        tensors = load_file(str(path))
    except Exception as err:
        raise ValueError(f"{path}: cannot resume training from this file ({err}); delete it to start over") from err
    if meta["history"].get("config") != asdict(config):
        raise ValueError(f"{path}: was written with a different training configuration; delete it or use the same settings")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    for i, p in enumerate(opt.param_groups[0]["params"]):
        if f"momentum.{i}" in tensors:
            opt.state[p]["momentum_buffer"] = tensors[f"momentum.{i}"].to(p.device)
    sched.load_state_dict(meta["scheduler"])
    for group, lr in zip(opt.param_groups, sched.get_last_lr()):
        group["lr"] = lr
    gen.set_state(tensors["rng"])
    history = meta["history"]
    return len(history["epochs"]), history, best
