"""A sample's spikes and scores do not depend on how many rows it shares a conv or linear call with.

oneDNN's conv at 1 row and MKL's matmul at 1-15 rows round differently from larger calls (float32); on
networks with many neurons near threshold that flipped spikes and exit steps by batch size, chunk and
compaction. dcsim.sim.network pads such calls with zero rows (CPU_MIN_ROWS), so each row gets its
large-batch result. Fresh random inputs and shapes each run."""

import pytest
import torch

from dcsim.conversion.convert import convert
from dcsim.models import build_model
from dcsim.sim.engine import Engine
from dcsim.sim.network import CPU_MIN_ROWS, Conv, Linear
from dcsim.sim.readout import Readout
from dcsim.workflows.benchmark import mid_threshold

# (Cin, Cout, H = W, stride): shapes of the zoo's architectures (small CNN, ResNet-18 w16, whitened CNN w96)
CONV_SHAPES = [(3, 16, 32, 1), (16, 32, 32, 2), (64, 128, 8, 2), (24, 96, 32, 1), (96, 384, 16, 1), (384, 384, 8, 1)]
ROWS = [1, 2, 3, 5, 17, 33]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("cin", "cout", "hw", "stride"), CONV_SHAPES)
def test_a_conv_row_gets_its_large_batch_result(cin, cout, hw, stride, channels_last):
    x = (torch.rand(64, cin, hw, hw) < 0.17).float() * torch.rand(1).item()  # spike maps, ~17% firing
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    node = Conv("c", (0,), torch.randn(cout, cin, 3, 3) * 0.1, torch.randn(cout), (stride, stride), (1, 1))
    full = node.apply(x)
    for n in ROWS:
        out = node.apply(x[:n])
        assert out.shape == full[:n].shape and torch.equal(out, full[:n]), n
        if channels_last:
            assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("fin", "fout"), [(128, 10), (512, 10), (384, 10), (512, 4096)])
def test_a_linear_row_gets_its_large_batch_result(fin, fout):
    x = torch.randn(64, fin)
    node = Linear("fc", (0,), torch.randn(fout, fin), torch.randn(fout))
    full = node.apply(x)
    for n in range(1, CPU_MIN_ROWS["linear"] + 3):
        assert torch.equal(node.apply(x[:n]), full[:n]), n


def test_engine_results_do_not_depend_on_batch_size_chunk_or_compaction():
    """A random ResNet-18 (width 8) under QCFS, T = 27: without the padding its spikes and scores at batch 1
    differed from those at batch 48 (checked when the padding was added)."""
    model = build_model("resnet18", num_classes=10, width=8).train()
    with torch.no_grad():
        model(torch.randn(64, 3, 32, 32))  # batch-norm statistics and LSQ steps
    x = torch.randn(24, 3, 32, 32)
    net = convert(model.eval(), method="qcfs")
    engine = Engine(net)
    readout = Readout.paper("qcfs", net.bits, 27)
    whole = engine.simulate(x, 27, readout)
    for kwargs in ({"batch_size": 1}, {"batch_size": 5, "chunk": 3}):
        run = engine.simulate(x, 27, readout, **kwargs)
        for f in ("pred", "conf", "spikes"):
            assert torch.equal(getattr(run, f), getattr(whole, f)), (kwargs, f)
    th = mid_threshold(engine, x, 27, readout)
    ref = engine.early_exit(x, 27, readout, th, compact_fraction=1.0)  # masked: every row runs in the full batch
    assert 1 < float(ref.exit_step.float().mean()) < 27
    for kwargs in ({}, {"compact_fraction": 0.0}, {"batch_size": 1}, {"batch_size": 6, "chunk": 4}):
        run = engine.early_exit(x, 27, readout, th, **kwargs)
        for f in ("pred", "exit_step", "conf", "spikes"):
            assert torch.equal(getattr(run, f), getattr(ref, f)), (kwargs, f)


def test_one_row_runs_two_steps_at_once_on_the_cpu():
    """At n = 1 the engine computes 2 steps per conv call instead of a padded 1-row call (same results, above)."""
    model = build_model("small_cnn", num_classes=10, width=4).eval()
    engine = Engine(convert(model, method="qffs"))
    assert [engine.steps_at_once(1, n) for n in (1, 2, 7)] == [2, 1, 1]
    assert [engine.steps_at_once(4, n) for n in (1, 3)] == [4, 4]
