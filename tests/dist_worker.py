"""Run by torchrun in tests/test_distributed.py: several dcsim commands (and a training run) in one launch.

    python -m torch.distributed.run --nproc-per-node N tests/dist_worker.py OUT -- CMD ARGS... -- CMD ARGS...

Each ``--``-separated command runs as ``dcsim CMD ARGS`` on every rank in one process group;
``{rank}`` in an argument is replaced by the rank, and the JSON result of command i is written
by rank 0 to OUT/i.json. The pseudo-command ``fit DIR STOP`` trains :func:`tiny_lsq_net` on
the digits with DataParallel hooks into DIR (the workdir), raising after STOP batches of the
second epoch when STOP >= 0, and rank 0 writes DIR/weights.safetensors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn


def tiny_lsq_net() -> nn.Module:
    """A BN-free LSQ CNN for digits (1x8x8 -> 10): N ranks and one process see the same batches."""
    from dcsim.lsq import LSQActivation

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        LSQActivation(2),
        nn.Conv2d(6, 8, 3, padding=1, stride=2),
        LSQActivation(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )


class Stop(Exception):
    """Raised inside training to simulate a job that dies mid-epoch."""


def fit(workdir: Path, stop: int, parallel=None) -> nn.Module:
    """1 float + 1 LSQ epoch on digits (batch 64, lr 0.05); with stop >= 0, raise Stop after ``stop`` LSQ batches."""
    from dcsim import data, training

    splits = data.load_digits_splits(seed=0)
    model = tiny_lsq_net()
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

    from dcsim.cli import build_parser
    from dcsim.distributed import DataParallel, setup, teardown
    from dcsim.report import write_json

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
            if cmd[0] == "fit":
                try:
                    model = fit(Path(cmd[1]), int(cmd[2]), DataParallel(world))
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
