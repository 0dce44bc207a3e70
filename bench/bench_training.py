"""Training step speed: float (ReLU) and LSQ 2-bit steps, uncompiled and under torch.compile (``--compile``), in
float32 and under bf16 autocast (``--train-precision bf16``).

Run: PYTHONPATH=. python -m pytest bench/bench_training.py -q --benchmark-only -o python_files='bench_*.py'
One optimisation step (forward, cross-entropy, backward, SGD with Nesterov momentum) of the whitened
CNN on one random batch, channels_last, the threads torch has. DCSIM_BENCH_WIDTH (64) and
DCSIM_BENCH_BATCH (500) set the network width and the batch; DCSIM_BENCH_ARCH (whitened_cnn) the architecture
(whitened_cnn_analog: the fast recipe's). Whether bf16 pays depends on the CPU (docs/training.md): time it here. All cases share one group so
pytest-benchmark prints them side by side; each compiles (and warms up) before it is timed; nothing
asserts on time. Images/s = batch / mean.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from dcsim.models import build_model
from dcsim.models.lsq import set_quantization

WIDTH = int(os.environ.get("DCSIM_BENCH_WIDTH", "64"))
BATCH = int(os.environ.get("DCSIM_BENCH_BATCH", "500"))
ARCH = os.environ.get("DCSIM_BENCH_ARCH", "whitened_cnn")
GROUP = f"training step, {ARCH} width {WIDTH}, batch {BATCH}"


def _step(quantized: bool, compiled: bool, bf16: bool) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,), generator=gen)
    torch.manual_seed(0)
    model = build_model(ARCH, width=WIDTH).to(memory_format=torch.channels_last).train()
    set_quantization(model, quantized)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, nesterov=True)
    forward = torch.compile(model) if compiled else model

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()

    for _ in range(2):  # step-size initialisation, compilation
        step()
    return step


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("compiled", [False, True], ids=["uncompiled", "compiled"])
@pytest.mark.parametrize("quantized", [False, True], ids=["float", "lsq"])
def test_training_step(benchmark, quantized: bool, compiled: bool, bf16: bool) -> None:
    benchmark.pedantic(_step(quantized, compiled, bf16), rounds=5, iterations=1)
