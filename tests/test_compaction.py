"""In-place compaction (kernel 3 on the CPU) and the cost model that decides when early exit compacts.

The cost model only chooses which rows keep computing, so every early-exit result (predictions,
exit steps, scores, spike counts, synaptic operations) must equal today's gather-at-every-exit path
bit for bit: on dyadic networks (exact arithmetic) and on the trained zoo networks with real-valued
inputs.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

import dcsim
from dcsim.io import zoo
from dcsim.models import build_model
from dcsim.sim import ops, reference
from dcsim.sim.compaction import CompactionCost
from dcsim.sim.engine import _fill_holes, _owned
from dyadic import dyadic_inputs, resnet, small, trace_of

ZOO = Path(__file__).resolve().parent.parent / "zoo"


def _state_like(n: int, g: torch.Generator) -> list[torch.Tensor]:
    """Tensors [n, ...] of several dtypes and layouts, like a BatchState's."""
    c, h, w = (int(v) for v in torch.randint(1, 6, (3,), generator=g))
    return [
        torch.randn(n, c, h, w, generator=g),
        torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last),
        torch.randint(-3, 4, (n, c, h, w), generator=g, dtype=torch.int32),
        torch.randint(0, 100, (n,), generator=g),
        torch.randint(0, 2, (n,), generator=g, dtype=torch.uint8),
        torch.rand(n, generator=g, dtype=torch.float64),
    ]


@pytest.mark.parametrize("seed", range(40))
def test_compact_rows_in_place_equals_reference_and_keeps_the_running_rows(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 40, (1,), generator=g))
    alive = torch.rand(n, generator=g) < float(torch.rand(1, generator=g))
    alive[int(torch.randint(0, n, (1,), generator=g))] = True
    keep, moved = _fill_holes(alive.tolist(), int(alive.sum()))
    assert sorted(keep) == torch.nonzero(alive).squeeze(1).tolist()
    assert moved == int((~alive[: int(alive.sum())]).sum())
    keep = torch.tensor(keep, dtype=torch.int64)
    ts = _state_like(n, g)
    native = ops.compact_rows_([t.clone() for t in ts], keep)
    ref = reference.compact_rows_([t.clone() for t in ts], keep)
    for a, b, t in zip(native, ref, ts, strict=True):
        assert torch.equal(a, b) and torch.equal(a, t[keep])
        assert a.stride() == t.stride()  # same memory layout (a prefix view)


def test_compact_rows_in_place_reuses_memory_and_checks_its_index():
    t = torch.arange(24.0).reshape(6, 4)
    ptr = t.data_ptr()
    (out,) = ops.compact_rows_([t], torch.tensor([0, 4, 2, 5]))
    assert out.data_ptr() == ptr and out[:, 0].tolist() == [0.0, 16.0, 8.0, 20.0]
    for bad in ([0, 1, 1], [1, 0], [0, 3, 3], [0, 9]):  # a kept row overwritten, a row used twice, out of range
        with pytest.raises(ValueError, match="index"):
            ops.compact_rows_([torch.zeros(6, 2)], torch.tensor(bad))


@pytest.mark.parametrize("seed", range(10))
def test_in_place_compaction_over_a_run_equals_the_reference_call_after_call(seed):
    g = torch.Generator().manual_seed(100 + seed)
    n = int(torch.randint(2, 40, (1,), generator=g))
    ts = _state_like(n, g)
    native, ref = ([t.clone() for t in ts] for _ in range(2))
    compact, compact_ref = ops.InPlaceCompaction(native), reference.InPlaceCompaction(ref)
    assert compact.row_bytes == compact_ref.row_bytes == sum(t.element_size() * t[0].numel() for t in ts)
    expected = [t.clone() for t in ts]
    alive = [True] * n
    while sum(alive) > 1:  # rows finish, at random, until one is left
        alive = [a and bool(torch.rand(1, generator=g) < 0.7) for a in alive]
        alive[int(torch.randint(0, len(alive), (1,), generator=g))] = True
        keep, _ = _fill_holes(alive, sum(alive))
        out, out_ref = compact(keep), compact_ref(keep)
        expected = [t[keep] for t in expected]
        for a, b, e, t in zip(out, out_ref, expected, ts, strict=True):
            assert torch.equal(a, e) and torch.equal(b, e)
            assert a.stride() == t.stride()  # a prefix view of the same layout
        alive = [True] * len(keep)
    assert compact.rows == 1
    with pytest.raises(ValueError, match="fill it from a row in \\[2, 1\\)"):
        compact([0, 1])  # more rows than the last call left


def test_in_place_compaction_refuses_what_it_cannot_compact():
    for bad, match in (
        ([], "at least one tensor"),
        ([torch.zeros(3, 2), torch.zeros(4, 2)], "tensors\\[1\\] must have 3 rows"),
        ([torch.zeros(3, 4)[:, ::2]], "contiguous"),
        ([torch.zeros(3, 2), 5], "tensors\\[1\\] must be a torch.Tensor"),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            ops.InPlaceCompaction(bad)


def test_owned_copies_the_values_that_share_memory_with_the_inputs_or_an_earlier_value():
    x = torch.randn(4, 3)
    own = torch.randn(4, 5)
    values = {0: x, 1: own, 2: own.view(4, 5, 1), 3: x[:, :2], 4: torch.randn(4, 2)}
    out = _owned(values, x)
    assert out[1] is own and out[4] is values[4]  # owned already: kept
    storages = [v.untyped_storage().data_ptr() for v in out.values()]
    assert x.untyped_storage().data_ptr() not in storages and len(set(storages)) == len(storages)
    assert all(torch.equal(out[i], v) for i, v in values.items())


def test_cost_model_compacts_only_when_the_saved_steps_outweigh_the_move():
    cost = CompactionCost(bytes_per_second=1e9)
    # 10 of 100 rows done, 5 steps left at 0.1 s per step: keeping them costs 0.05 s
    assert cost.pays(10, 100, 5, 0.1, moved_bytes=10**7)  # moving 10 MB: 0.01 s
    assert not cost.pays(10, 100, 5, 0.1, moved_bytes=10**8)  # 0.1 s
    assert not cost.pays(10, 100, 0, 0.1, moved_bytes=1)  # no step left
    assert not cost.pays(0, 100, 5, 0.1, moved_bytes=0)
    cost.observe(1 << 24, 0.004)
    assert cost.bytes_per_second == pytest.approx((1 << 24) / 0.004)
    cost.observe(100, 1.0)  # too small a move to measure a speed
    assert cost.bytes_per_second == pytest.approx((1 << 24) / 0.004)


def _same(a: dcsim.ExitResult, b: dcsim.ExitResult) -> None:
    assert torch.equal(a.pred, b.pred)
    assert torch.equal(a.exit_step, b.exit_step)
    assert torch.equal(a.conf, b.conf)
    assert torch.equal(a.spikes, b.spikes)
    assert a.sops is not None and b.sops is not None and torch.equal(a.sops, b.sops)  # counted up to each exit


@pytest.mark.parametrize("method,steps", [("qcfs", 12), ("qffs", 5)])
@pytest.mark.parametrize("speed", [None, float("inf"), 1.0])  # measured; always compact; never compact
@pytest.mark.parametrize(
    ("net_kind", "backend"),  # the backends' kernels are the same code to compaction: the ResNet runs the native one
    [("small", "native"), ("small", "reference"), ("resnet", "native")],
)
def test_cost_model_early_exit_equals_compaction_at_every_exit(backend, method, steps, speed, net_kind):
    make = small if net_kind == "small" else resnet
    net, shape = make(method, seed=3 if net_kind == "resnet" else 21)  # the dyadic ResNet the other tests build
    engine = dcsim.Engine(net, backend=backend, channels_last=net_kind == "resnet", count_ops=True)
    if speed is not None:
        engine._compaction = CompactionCost(bytes_per_second=speed)
    x = dyadic_inputs(23, shape, seed=22)
    x0 = x.clone()
    readout = dcsim.Readout.paper(method, 2, steps)
    trace = trace_of(engine, x, steps, readout)
    for c in np.quantile(trace.conf, [0.1, 0.5, 0.9]).tolist():
        for batch_size in (6, None):  # (a batch of 1 never compacts: its run ends when its row does)
            new = engine.early_exit(x, steps, readout, c, batch_size=batch_size)
            old = engine.early_exit(x, steps, readout, c, batch_size=batch_size, compact_fraction=0.0)
            _same(new, old)
    assert torch.equal(x, x0)  # in-place compaction never touches the caller's inputs


@pytest.mark.parametrize("folder", ["cifar10-small-cnn-2bit", "cifar10-resnet18w16-2bit"])
@pytest.mark.parametrize("method,steps", [("qcfs", 27), ("qffs", 4)])
def test_cost_model_equals_todays_path_on_a_zoo_network(folder, method, steps):
    if not (ZOO / folder).is_dir():
        pytest.skip(f"zoo/{folder} is not in this checkout")
    model, _ = zoo.load(ZOO / folder, build_model)
    engine = dcsim.Engine(dcsim.convert(model.eval(), method=method), count_ops=True)
    x = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(24))
    readout = dcsim.Readout.paper(method, 2, steps)
    sim = engine.simulate(x, steps, readout)
    c = float(sim.conf[:, steps // 2 - 1].median())  # about half the samples stop by T/2
    for batch_size in (1, 5, None):
        for speed in (None, float("inf")):
            engine._compaction = CompactionCost() if speed is None else CompactionCost(bytes_per_second=speed)
            new = engine.early_exit(x, steps, readout, c, batch_size=batch_size)
            old = engine.early_exit(x, steps, readout, c, batch_size=batch_size, compact_fraction=0.0)
            _same(new, old)
            assert bool((new.exit_step < steps).any())
