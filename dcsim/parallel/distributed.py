"""Multi-process runs on torch.distributed, launched by ``torchrun``.

``torchrun --nproc-per-node N -m dcsim trace|eval|report|stream|train ...`` starts N ranks; each
reads its rank from the environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), joins the
process group (NCCL on CUDA, gloo on the CPU) and uses the GPU ``cuda:LOCAL_RANK``.

- Loops over data are sharded at batch granularity: with batch size B, batch k holds samples
  kB .. (k+1)B - 1 and rank r runs batches r, r + N, r + 2N, ...; results are gathered in sample
  order on every rank. Every batch is the batch a single process would run, so results equal the
  single-process results bit for bit wherever a batch's result depends only on its contents
  (convs can depend on the batch size in the last bit; see the README's "Batch invariance").
  Ranks beyond the number of batches run nothing.
- At start, every rank's dcsim version, checkpoint digest and data fingerprint are compared;
  a mismatch is an error naming the rank and what differs.
- Rank 0 alone prints, shows progress bars and writes outputs, after the gather.
- Training (:class:`DataParallel`): DistributedDataParallel; each global batch is split across
  the ranks (rank r takes rows r, r + N, ...), so N ranks train on the single process's batches;
  LSQ step sizes are initialised from the whole global batch (all-reduced); optional batch norm
  over the global batch (PyTorch's SyncBatchNorm on CUDA, dcsim's GlobalBatchNorm2d on the CPU).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..checks import check_int
from ..data import Dataset, FolderSplit, split_batches
from .global_bn import convert_global_batchnorm

if TYPE_CHECKING:
    from ..models.lsq import LSQActivation

DISTRIBUTED_COMMANDS = ("train", "trace", "eval", "report", "stream")
"""Commands that run under torchrun; the others refuse to."""


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank in [0, size), local_rank on its node, and its device."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """True on rank 0, the rank that prints and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1 or dist.is_initialized()

    def all_gather(self, obj: object) -> list:
        """[obj of rank 0, ..., obj of rank size-1] on every rank (any picklable object)."""
        if not dist.is_initialized():
            return [obj]
        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


def launched() -> bool:
    """True when this process was started by torchrun (or another launcher that sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set (start the job with torchrun)")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def parse_device(name: str) -> torch.device:
    """``--device name`` as a device of type cpu or cuda (whether a GPU is present is not asked here)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    return device


def resolve_device(name: str | None, local_rank: int = 0, local_size: int = 1) -> torch.device:
    """The device of this rank for ``--device name`` (None: CUDA when available, else the CPU).

    Under a launcher a CUDA rank gets ``cuda:LOCAL_RANK``; more ranks on a node than GPUs is an error.
    """
    device = parse_device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available to PyTorch {torch.__version__}")
    if local_size == 1 and not launched():
        return device
    gpus = torch.cuda.device_count()
    if local_size > gpus:
        raise ValueError(
            f"--device {name or 'cuda'}: {local_size} ranks on this node but only {gpus} GPU(s); "
            f"start at most {gpus} processes per node (torchrun --nproc-per-node {gpus})"
        )
    if device.index is not None and device.index != local_rank:
        raise ValueError(f"--device {name}: under torchrun each rank uses cuda:LOCAL_RANK; give --device cuda")
    return torch.device("cuda", local_rank)


def setup(command: str, device: str | None) -> World:
    """This process's World: joins the process group when started by torchrun (once per process)."""
    if not launched():
        return World(device=resolve_device(device))
    if command not in DISTRIBUTED_COMMANDS:
        raise ValueError(
            f"dcsim {command} does not run distributed; start it without torchrun "
            f"(distributed commands: {', '.join(DISTRIBUTED_COMMANDS)})"
        )
    rank, size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK", 0)
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    dev = resolve_device(device, local_rank, local_size)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    return World(rank=rank, size=size, local_rank=local_rank, local_size=local_size, device=dev)


def teardown() -> None:
    """Leave the process group, if joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------ agreement between ranks


def data_fingerprint(split: Dataset | FolderSplit) -> str:
    """sha256 over a split's size, classes, labels and content: its pixels (in memory) or the
    relative path and byte size of every file (read from disk batch by batch)."""
    h = hashlib.sha256()
    h.update(repr((split.name, len(split), list(split.classes), split.mean, split.std)).encode())
    h.update(split.labels.numpy().tobytes())
    if isinstance(split, Dataset):
        h.update(split.images.contiguous().numpy().tobytes())
    else:
        stamp = {rel: size for rel, size, _ in split.scan.stamp}
        for i in split.indices:
            rel = split.scan.files[int(i)]
            h.update(f"{rel}\0{stamp[rel]}\0".encode())
    return h.hexdigest()


def check_agreement(world: World, items: Mapping[str, object]) -> None:
    """Raise a ValueError when any rank's ``items`` (e.g. version, checkpoint digest, data
    fingerprint) differ from rank 0's, naming the first key and ranks that differ."""
    everyone = world.all_gather(items)
    for key, ref in everyone[0].items():
        for rank, other in enumerate(everyone[1:], start=1):
            if other.get(key) != ref:
                raise ValueError(f"ranks disagree on the {key}: rank 0 has {ref!r}, rank {rank} has {other.get(key)!r}")


# ------------------------------------------------------------------ sharded loops over data


def rank_batches(samples: int, batch_size: int, world: World) -> list[int]:
    """The batch ids rank ``world.rank`` runs: r, r + N, ... below ceil(samples / batch_size)."""
    check_int(batch_size, "batch_size")
    return list(range(world.rank, -(-samples // batch_size), world.size))


@dataclass
class Sharded:
    """A split whose loops run sharded over the ranks; outputs are gathered in sample order.

    split: an in-memory Dataset or a FolderSplit read from disk; world: this rank; workers: DataLoader
    processes for a split read from disk (None: default); progress: a bar on rank 0.
    """

    split: Dataset | FolderSplit
    world: World = World()
    workers: int | None = None
    progress: bool = True

    @property
    def labels(self) -> torch.Tensor:
        """int64 [N]: every sample's label (known without decoding)."""
        return self.split.labels

    def __len__(self) -> int:
        return len(self.split)

    def map(
        self, batch_size: int, fn: Callable[[torch.Tensor], Sequence[torch.Tensor]], desc: str = "batches"
    ) -> tuple[torch.Tensor, ...]:
        """fn(x) on every batch x (normalized float32 [b, C, H, W]) of this rank, gathered on every rank.

        fn returns a tuple of CPU-movable tensors, each [b, ...]; the result concatenates each
        across all batches in sample order (tensors [N, ...]).
        """
        ids = rank_batches(len(self.split), batch_size, self.world)
        bar = tqdm(
            total=len(ids),
            desc=desc,
            unit="batch",
            leave=False,
            disable=True if not (self.progress and self.world.main) else None,
        )
        local = []
        with bar:
            for b, x, _ in split_batches(self.split, batch_size, ids, workers=self.workers):
                local.append((b, tuple(t.detach().cpu() for t in fn(x))))
                bar.update(1)
        parts = sorted((p for rank_parts in self.world.all_gather(local) for p in rank_parts), key=lambda p: p[0])
        if not parts:
            raise ValueError(f"{self.split.name}: the split is empty")
        return tuple(torch.cat(ts) for ts in zip(*(p[1] for p in parts), strict=True))


def map_batches(
    images: torch.Tensor | Sharded,
    batch_size: int,
    fn: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    desc: str = "batches",
) -> tuple[torch.Tensor, ...]:
    """fn over batches of ``batch_size`` of images (a tensor [N, ...] or a Sharded split), concatenated in order.

    fn(x) returns a tuple of tensors [b, ...]; the result holds each concatenated over the batches ([N, ...], CPU).
    """
    check_int(batch_size, "batch_size")
    if isinstance(images, Sharded):
        return images.map(batch_size, fn, desc=desc)
    outs = [
        tuple(t.detach().cpu() for t in fn(images[lo : lo + batch_size])) for lo in range(0, len(images), batch_size)
    ]
    if not outs:
        raise ValueError("no images: the split is empty")
    return tuple(torch.cat(ts) for ts in zip(*outs, strict=True))


# ------------------------------------------------------------------ training


class _LSQGlobalInit:
    """Forward pre-hook on an LSQActivation: initialise its step from the whole global batch.

    Computes sum |x| and the element count on this rank, all-reduces both, and sets
    s = 2 * mean(|x|) / sqrt(Qp) as LSQ does on one process, before the layer's own forward.
    """

    def __call__(self, module: LSQActivation, inputs: tuple[torch.Tensor, ...]) -> None:
        if not (module.training and module.quantize) or not module.needs_init:
            return
        x = inputs[0].detach()
        stats = torch.stack(
            [x.abs().sum(dtype=torch.float64), torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)]
        )
        if dist.is_initialized():
            dist.all_reduce(stats)
        with torch.no_grad():
            mean = (stats[0] / stats[1].clamp_min(1)).to(module.step.dtype)
            module.step.copy_((2 * mean / module.qp**0.5).clamp_min(1e-8))
            module.initialized.fill_(True)


class DataParallel:
    """Training hooks for :func:`dcsim.training.train` on several ranks.

    wrap(model, unused_parameters): DistributedDataParallel around the model (with
    ``sync_batchnorm``, after converting its batch norms to ``nn.SyncBatchNorm`` on CUDA, to
    :class:`dcsim.parallel.global_bn.GlobalBatchNorm2d` elsewhere), with LSQ step sizes initialised from
    the global batch; local(t): this rank's rows r, r + N, ... of a global batch t [B, ...];
    loss(logits, labels, global_rows): the sum cross-entropy scaled so that DDP's gradient
    average equals the gradient of the global batch's mean loss; reduce(*numbers): sums over the
    ranks; main: whether this rank writes.
    """

    def __init__(self, world: World, sync_batchnorm: bool = False) -> None:
        self.world = world
        self.sync_batchnorm = sync_batchnorm
        self._bn_group: dist.ProcessGroup | None = None

    @property
    def main(self) -> bool:
        return self.world.main

    def wrap(self, model: nn.Module, unused_parameters: bool = False) -> nn.Module:
        """``unused_parameters``: some forward pass leaves parameters without gradients (LSQ step
        sizes in float epochs); DDP then searches the graph for them after every forward pass,
        which costs a traversal of the graph, so it is off otherwise."""
        from ..models.lsq import LSQActivation

        for m in model.modules():
            if isinstance(m, LSQActivation):
                m.register_forward_pre_hook(_LSQGlobalInit())
        if not dist.is_initialized():
            return model
        if self.sync_batchnorm and self.world.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif self.sync_batchnorm:  # PyTorch's SyncBatchNorm runs on GPUs only
            if self._bn_group is None:  # its own group: its collectives never interleave with DDP's
                self._bn_group = dist.new_group(backend="gloo")
            model = convert_global_batchnorm(model, self._bn_group)
        ids = [self.world.device.index] if self.world.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused_parameters)

    def local(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.world.rank :: self.world.size]

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, global_rows: int, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        ce = torch.nn.functional.cross_entropy(logits, labels, reduction="sum", label_smoothing=label_smoothing)
        return ce * (self.world.size / max(global_rows, 1))

    def reduce(self, *numbers: float) -> tuple[float, ...]:
        if not dist.is_initialized():
            return numbers
        t = torch.tensor(numbers, dtype=torch.float64, device=self.world.device)
        dist.all_reduce(t)
        return tuple(t.tolist())


def write_if_main(world: World, path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call write(path) on rank 0 only, then wait for it on every rank."""
    if world.main:
        write(Path(path))
    if dist.is_initialized():
        dist.barrier()


def local_share(
    split: Dataset | FolderSplit, world: World, workers: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous share of a split, normalized in memory: (float32 [n_r, C, H, W], int64 labels [n_r])."""
    n = len(split)
    part = split.subset(np.arange(n * world.rank // world.size, n * (world.rank + 1) // world.size))
    shape = tuple(split.images.shape[1:]) if isinstance(split, Dataset) else split.image_shape
    xs = [x for _, x, _ in split_batches(part, 1024, workers=workers)]
    return (torch.cat(xs) if xs else torch.empty((0, *shape))), part.labels
