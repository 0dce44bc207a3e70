"""End-to-end benchmarks per inference: dcsim's engine vs the official-style eager simulator
(batch 1, host sync every step) and vs the quantized ANN's forward pass at the same batch.
On a GPU the engine replays its step loop as CUDA graphs; on the CPU it runs both with dense convs
and with event-driven convs of the spike maps (spike_convs).

Run: pytest bench -o python_files='bench_*.py' --benchmark-only
Ratios land in extra_info: speedup_vs_reference (eager time / ours), ratio_to_ann_per_step
(one SNN step / one ANN forward), time_saving_over_step_saving (early exit).
Set DCSIM_BENCH_FULL=1 for VGG-16 and ResNet-50 as well (slow on a CPU).
"""

import os

import pytest
import torch

from dcsim.workflows.benchmark import bench_case

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
MODELS = ["resnet18", "vgg16", "resnet50"] if os.environ.get("DCSIM_BENCH_FULL") else ["small_cnn", "resnet18"]
LARGE = 256 if DEVICE.type == "cuda" else 32
SPIKE_CONVS = [False, True] if DEVICE.type == "cpu" else [False]  # event-driven convs are CPU-only


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
@pytest.mark.parametrize("batch", [1, LARGE])
@pytest.mark.parametrize("spike_convs", SPIKE_CONVS, ids=lambda on: "spikeconv" if on else "dense")
def test_end_to_end(benchmark, model, method, batch, spike_convs):
    if model == "resnet50" and DEVICE.type == "cpu" and batch > 1:
        batch = 4
    benchmark.group = f"{model} {method} batch {batch}"
    rows = benchmark.pedantic(
        bench_case,
        args=(model, method, batch, DEVICE),
        rounds=1,
        kwargs={"repeats": 2, "graphs": DEVICE.type == "cuda", "spike_convs": spike_convs},
    )
    for row in rows:
        for key in (
            "ms_per_inference",
            "ms_per_step",
            "speedup_vs_reference",
            "ratio_to_ann_per_step",
            "time_saving_over_step_saving",
            "mean_steps",
        ):
            if row.get(key) is not None:
                benchmark.extra_info[f"{row['mode']}.{key}"] = row[key]
    assert rows[1]["mean_steps"] <= rows[0]["mean_steps"]
