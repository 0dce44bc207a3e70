"""A sample's spikes and scores do not depend on how many rows it shares a conv or linear call with.

oneDNN's conv at a few rows on some geometries and MKL's matmul at 1-15 rows round differently from larger calls
(float32); on networks with many neurons near threshold that flipped spikes and exit steps by batch size, chunk
and compaction. dcsim.sim.network pads such calls with zero rows (CPU_MIN_ROWS), and the engine pads each conv
of few rows to what a per-geometry check finds its bits need (dcsim.sim.row_floor: one row on most geometries),
so each row gets its large-batch result. Fresh random inputs and shapes each run."""

import random

import pytest
import torch

from dcsim.conversion.convert import convert
from dcsim.models import build_model
from dcsim.sim import row_floor
from dcsim.sim.engine import Engine
from dcsim.sim.network import CPU_MIN_ROWS, Conv, Linear, onednn_conv
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


@pytest.mark.parametrize("channels_last", [False, True], ids=["default_layout", "channels_last"])
def test_engine_results_do_not_depend_on_batch_size_chunk_or_compaction(channels_last):
    """A random ResNet-18 (width 8) under QCFS, T = 27: without the padding its spikes and scores at batch 1
    differed from those at batch 48 (checked when the padding was added). In channels_last oneDNN rounds some
    of its 1-row convs otherwise (the 1-row check keeps those padded)."""
    model = build_model("resnet18", num_classes=10, width=8).train()
    with torch.no_grad():
        model(torch.randn(64, 3, 32, 32))  # batch-norm statistics and LSQ steps
    x = torch.randn(24, 3, 32, 32)
    net = convert(model.eval(), method="qcfs")
    engine = Engine(net, channels_last=channels_last)
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


def _random_conv(rng: random.Random) -> tuple[Conv, torch.Tensor]:
    """A conv node of a random shape and a batch of 17 inputs for it (spikes or Gaussian, either layout)."""
    k = rng.choice([1, 2, 3, 5, 7])
    stride, pad, groups = rng.choice([1, 2]), rng.choice([0, k // 2]), rng.choice([1, 1, 2])
    cin, cout = groups * rng.choice([2, 3, 8, 16, 48]), groups * rng.choice([4, 5, 16, 40])
    hw = rng.choice([s for s in (k, 4, 7, 8, 16, 32) if s + 2 * pad >= k])
    x = torch.randn(17, cin, hw, hw) if rng.random() < 0.3 else (torch.rand(17, cin, hw, hw) < 0.17).float() * 0.37
    w = torch.randn(cout, cin // groups, k, k) * 0.1
    if rng.random() < 0.5:
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    bias = torch.randn(cout) if rng.random() < 0.7 else None
    return Conv("c", (0,), w, bias, (stride, stride), (pad, pad), groups=groups), x


@pytest.mark.parametrize("threads", [1, 2])
def test_small_convs_give_the_large_batch_result(threads, torch_threads):
    """RowFloors on fresh random shapes (kernels 1-7, strides, padding, groups, layouts, threads): the rows of a
    call of 1-7 rows get their large-batch results, whether the geometry's calls run as they are or padded. On
    an AVX2 EPYC grouped 5x5 convs of few channels round otherwise at 1-5 rows; a fixed 2-row padding failed
    this test there."""
    rng = random.Random()
    torch_threads(threads)
    convs = row_floor.RowFloors()
    for _ in range(40):
        node, x = _random_conv(rng)
        full = node.apply(x)
        for r, n in ((0, 1), (1, 1), (2, 1), (3, 2), (5, 3), (8, 5), (10, 7)):
            rows = x[r : r + n]
            if r == 2 and not x.is_contiguous():  # channels_last: a 1-row view with sample stride C, as in the engine
                c, _, width = x.shape[1:]
                rows = torch.empty_strided(rows.shape, (c, 1, width * c, c)).copy_(rows)
            assert row_floor.applies(rows)
            out = convs(node, rows)
            assert torch.equal(out, full[r : r + n]), (
                node,
                n,
                tuple(node.weight.shape),
                tuple(x.shape),
                x.stride(),
            )
            assert out.is_contiguous(memory_format=torch.channels_last) == full.is_contiguous(
                memory_format=torch.channels_last
            )
    assert 1 in convs.floors().values()  # most shapes run as they are


def test_a_geometry_whose_small_calls_round_otherwise_is_padded_to_its_floor(monkeypatch):
    """Where oneDNN's calls of a few rows round otherwise than large ones, the check finds the fewest rows that
    do not and pads smaller calls up to them: the large-batch result. Which geometries do that depends on the
    CPU, so a stand-in kernel does it here on every CPU: the conv in float64 rounded to float32 (the same bits
    at any rows), off by one ulp in one output at fewer than 3 rows (floor 3). Then the library's own kernel on a
    geometry that rounds otherwise at 1-5 rows on an AVX2 EPYC (a grouped 5x5 conv of 4 channels)."""
    torch.manual_seed(0)
    node = Conv("c", (0,), torch.randn(8, 2, 5, 5) * 0.1, torch.randn(8), groups=2)
    x = torch.randn(17, 4, 7, 7)

    def off_by_one_ulp_under_3_rows(node: Conv, x: torch.Tensor) -> torch.Tensor:
        w, b = node.weight.double(), node.bias.double()
        y = torch.nn.functional.conv2d(x.double(), w, b, node.stride, node.padding, node.dilation, node.groups).float()
        if x.shape[0] < 3:
            first = y.view(-1)[:1]
            first.copy_(torch.nextafter(first, torch.full_like(first, float("inf"))))
        return y

    monkeypatch.setattr(row_floor, "onednn_conv", off_by_one_ulp_under_3_rows)
    assert row_floor.floor(node, x) == 3
    convs = row_floor.RowFloors()
    full = off_by_one_ulp_under_3_rows(node, x)
    for n in range(1, 8):
        assert torch.equal(convs(node, x[:n]), full[:n]), n
    assert list(convs.floors().values()) == [3]
    monkeypatch.undo()
    convs = row_floor.RowFloors()
    full = onednn_conv(node, x)
    for n in range(1, 8):
        assert torch.equal(convs(node, x[:n]), full[:n]), n


def test_a_row_view_with_another_sample_stride_gets_the_canonical_strides():
    """In channels_last the engine's 1-row step values are views whose sample stride is C (the zoo ResNet-18's
    1x1 stride-2 shortcuts): oneDNN read that as another geometry and rounded otherwise (on an AVX-512 Xeon).
    RowFloors gives the row the strides of a fresh channels_last tensor first: the large-batch result, in
    channels_last."""
    torch.manual_seed(0)
    w = (torch.randn(64, 32, 1, 1) * 0.1).contiguous(memory_format=torch.channels_last)
    node = Conv("c", (0,), w, torch.randn(64), (2, 2))
    x = torch.randn(17, 32, 16, 16).contiguous(memory_format=torch.channels_last)
    row = torch.empty_strided((1, 32, 16, 16), (32, 1, 16 * 32, 32)).copy_(x[:1])
    full = node.apply(x)
    assert row_floor.canonical(row).stride() == x[:1].stride()
    assert row_floor.canonical(x[:1]) is x[:1] or row_floor.canonical(x[:1]).stride() == x[:1].stride()
    out = row_floor.RowFloors()(node, row)
    assert torch.equal(out, full[:1]) and out.is_contiguous(memory_format=torch.channels_last)


def test_row_floors_take_only_small_float32_calls_on_the_cpu():
    x = torch.zeros(1, 3, 8, 8)
    assert row_floor.applies(x)
    assert row_floor.applies(torch.zeros(row_floor.CHECK_ROWS - 1, 3, 8, 8))
    assert not row_floor.applies(torch.zeros(row_floor.CHECK_ROWS, 3, 8, 8))
    assert not row_floor.applies(x.to(torch.bfloat16))
    assert not row_floor.applies(torch.zeros(1, 12))


def test_a_pointwise_conv_on_one_thread_gets_its_large_batch_result():
    """A 1x1, stride-1 conv on one thread: PyTorch computes it by another kernel under 16 rows, which rounded
    differently (before Conv went to oneDNN directly)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cin, cout, hw = random.choice([(64, 128, 8), (16, 32, 32), (48, 40, 4)])
        node = Conv("c", (0,), torch.randn(cout, cin, 1, 1) * 0.1, torch.randn(cout))
        x = torch.randn(33, cin, hw, hw)
        full = node.apply(x)
        for n in range(1, 17):
            assert torch.equal(node.apply(x[:n]), full[:n]), n
    finally:
        torch.set_num_threads(saved)
