"""Run by torchrun in tests/test_distributed.py: several dcsim commands (and a training run) in one launch.

    python -m torch.distributed.run --nproc-per-node N tests/dist_worker.py OUT -- CMD ARGS... -- CMD ARGS...

Each ``--``-separated command runs as ``dcsim CMD ARGS`` on every rank in one process group;
``{rank}`` in an argument is replaced by the rank, and the JSON result of command i is written
by rank 0 to OUT/i.json. The pseudo-command ``fit DIR STOP`` trains :func:`tiny_lsq_net` on
the digits with DataParallel hooks into DIR (the workdir), raising after STOP batches of the
second epoch when STOP >= 0, and rank 0 writes DIR/weights.safetensors; ``fit DIR STOP bn``
trains the net with batch norms, synchronized over the ranks (``sync_batchnorm``). The
pseudo-command ``globalbn DIR`` runs :func:`global_bn_rows` and each rank writes
DIR/rank{r}.safetensors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn


def tiny_lsq_net(bn: bool = False) -> nn.Module:
    """An LSQ CNN for digits (1x8x8 -> 10), BN-free unless ``bn``: without batch norm (or with it
    synchronized over the ranks) N ranks and one process compute the same batches."""
    from dcsim.models.lsq import LSQActivation

    torch.manual_seed(0)
    norm = nn.BatchNorm2d if bn else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        norm(6),
        LSQActivation(2),
        nn.Conv2d(6, 8, 3, padding=1, stride=2),
        norm(8),
        LSQActivation(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )


def global_bn_case(n: int) -> tuple[torch.Tensor, torch.Tensor, nn.BatchNorm2d]:
    """A global batch x [n, 5, 3, 4], an upstream gradient of the same shape and a batch norm with
    non-trivial affine parameters and running statistics (seeded: every rank draws the same)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 5, 3, 4, generator=g) * 3 + torch.arange(5.0)[None, :, None, None]
    grad = torch.randn(n, 5, 3, 4, generator=g)
    bn = nn.BatchNorm2d(5, momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(5, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(5, generator=g))
        bn.running_mean.copy_(torch.randn(5, generator=g))
        bn.running_var.copy_(torch.rand(5, generator=g) + 0.5)
    return x, grad, bn


def global_bn_rows(rank: int, size: int) -> dict[str, torch.Tensor]:
    """Two training steps (inputs x, then 2x) of GlobalBatchNorm2d on this rank's rows rank,
    rank + size, ... of :func:`global_bn_case` for global batches of 7 and 2 rows (on 3 ranks the
    last rank then has none): its output rows, input gradient, weight/bias gradients (this rank's
    share) and running statistics after the steps, keyed ``n{rows}_{name}``."""
    import torch.distributed as dist

    from dcsim.parallel.global_bn import convert_global_batchnorm

    out: dict[str, torch.Tensor] = {}
    group = dist.new_group(backend="gloo")
    for n in (7, 2):
        x, grad, bn = global_bn_case(n)
        gbn = convert_global_batchnorm(bn, group).train()
        for step in range(2):
            xr = (x[rank::size] * (step + 1)).requires_grad_(True)
            y = gbn(xr)
            gbn.zero_grad()
            y.backward(grad[rank::size])
            assert xr.grad is not None and gbn.weight.grad is not None and gbn.bias.grad is not None
            out |= {
                f"n{n}_y{step}": y.detach(),
                f"n{n}_dx{step}": xr.grad,
                f"n{n}_dw{step}": gbn.weight.grad.clone(),
                f"n{n}_db{step}": gbn.bias.grad.clone(),
            }
        out |= {f"n{n}_running_mean": gbn.running_mean, f"n{n}_running_var": gbn.running_var}
    return out


class Stop(Exception):
    """Raised inside training to simulate a job that dies mid-epoch."""


def fit(workdir: Path, stop: int, parallel=None, bn: bool = False) -> nn.Module:
    """1 float + 1 LSQ epoch on digits (batch 64, lr 0.05); with stop >= 0, raise Stop after ``stop`` LSQ batches."""
    from dcsim import data, training

    splits = data.load_digits_splits(seed=0)
    model = tiny_lsq_net(bn)
    calls = {"n": 0}
    batches_per_epoch = -(-len(splits["train"]) // 64)

    def augment(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        calls["n"] += 1
        if stop >= 0 and calls["n"] > batches_per_epoch + stop:
            raise Stop()
        return xb

    config = training.TrainConfig(epochs=1, float_epochs=1, lr=0.05, batch_size=64)
    tr, va = splits["train"], splits["val"]
    training.train(
        model,
        tr.normalized(),
        tr.labels,
        va.normalized(),
        va.labels,
        config,
        augment=augment,
        workdir=workdir,
        device="cpu",
        progress=False,
        parallel=parallel,
    )
    return model


def main(argv: list[str]) -> None:
    from safetensors.torch import save_file

    from dcsim.analysis.tables import write_json
    from dcsim.cli import build_parser
    from dcsim.parallel.distributed import DataParallel, setup, teardown

    out = Path(argv[0])
    commands: list[list[str]] = []
    for a in argv[1:]:
        if a == "--":
            commands.append([])
        else:
            commands[-1].append(a)
    world = setup("trace", "cpu")
    try:
        for i, cmd in enumerate(commands):
            cmd = [a.replace("{rank}", str(world.rank)) for a in cmd]
            if cmd[0] == "globalbn":
                rows = global_bn_rows(world.rank, world.size)
                save_file(
                    {k: v.contiguous() for k, v in rows.items()}, str(Path(cmd[1]) / f"rank{world.rank}.safetensors")
                )
                continue
            if cmd[0] == "fit":
                bn = cmd[3:] == ["bn"]
                try:
                    model = fit(Path(cmd[1]), int(cmd[2]), DataParallel(world, sync_batchnorm=bn), bn)
                except Stop:
                    continue
                if world.main:
                    save_file(
                        {k: v.contiguous() for k, v in model.state_dict().items()},
                        str(Path(cmd[1]) / "weights.safetensors"),
                    )
                continue
            args = build_parser().parse_args(cmd)
            args.world = world
            result = args.func(args)
            if world.main:
                write_json(out / f"{i}.json", result)
    finally:
        teardown()
    if world.main:
        (out / "done.json").write_text(json.dumps({"ranks": world.size}))


if __name__ == "__main__":
    main(sys.argv[1:])
