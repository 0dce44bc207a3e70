"""Streaming (continuous batching) against static batches, at equal accuracy.

A small CNN is trained on digits (seconds), T and th_c are chosen on the validation split,
then the test split runs through (a) the streaming engine with S slots, (b) static batches of
S with early exit and compaction, (c) static batches of S without early exit. The throughput
ratios land in extra_info. For the CIFAR-10 model use `dcsim stream ... --compare`.
"""

import time

import pytest
import torch

import dcsim
from dcsim import analysis, training
from dcsim.sim.continuous import StreamStats, stream
from dcsim.workflows.dynamic_confidence import record_trace

STEPS = 16
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GRAPHS = DEVICE.type == "cuda"  # on a GPU, every loop replays CUDA graphs


@pytest.fixture(scope="module")
def setup():
    splits = dcsim.data.load_digits_splits(seed=0)
    (xtr, ytr), (xva, yva), (xte, yte) = [(s.normalized(), s.labels) for s in splits.values()]
    torch.manual_seed(0)
    model = dcsim.models.small_cnn(num_classes=10, in_channels=1, width=16)
    training.train(model, xtr, ytr, xva, yva, training.TrainConfig(epochs=6, float_epochs=3, lr=0.05), progress=False)
    engine = dcsim.Engine(dcsim.convert(model, "qcfs"), device=DEVICE)
    readout = dcsim.Readout.paper("qcfs", 2, STEPS)
    th = analysis.analyze(record_trace(engine, xva, yva, STEPS, readout, {}))["selected"]["threshold"]
    x = xte.repeat(4, 1, 1, 1).to(DEVICE)  # 1440 samples
    return engine, readout, th, x, yte.repeat(4)


@pytest.mark.parametrize("slots", [16, 64])
def test_stream_vs_static(benchmark, setup, slots):
    engine, readout, th, x, y = setup

    def run_stream():
        return list(stream(engine, iter(x), slots, STEPS, readout, th, StreamStats(slots), graphs=GRAPHS))

    results = benchmark.pedantic(run_stream, rounds=3, warmup_rounds=1)
    t_stream = benchmark.stats.stats.min
    acc_stream = sum(r.pred == int(y[r.id]) for r in results) / len(y)

    def timed(threshold):
        t0 = time.perf_counter()
        res = engine.early_exit(x, STEPS, readout, threshold, batch_size=slots, graphs=GRAPHS)  # CPU results: synced
        return time.perf_counter() - t0, float((res.pred == y).float().mean())

    timed(th), timed(1.0)  # warm-up (captures the graphs on a GPU)
    t_dc, acc_dc = min(timed(th) for _ in range(3))
    t_full, acc_full = min(timed(1.0) for _ in range(3))
    benchmark.extra_info.update(
        {
            "samples": len(y),
            "threshold": th,
            "accuracy_stream": acc_stream,
            "accuracy_static_dc": acc_dc,
            "accuracy_static_no_dc": acc_full,
            "throughput_stream": len(y) / t_stream,
            "ratio_vs_static_no_dc": t_full / t_stream,
            "ratio_vs_static_dc": t_dc / t_stream,
        }
    )
    assert abs(acc_stream - acc_dc) < 0.01
