"""Chunk programs (dcsim.sim.program): a small CPU call of Engine.advance as prebound kernel calls gives the general
path's results bit for bit, on networks with float weights (not dyadic: the two paths must also take the same
conv calls), for both methods and both QFFS drive semantics, fresh and running state, counted SOPs, both
layouts and the chunk sizes of a batch-1 plan."""

import dataclasses
import types

import pytest
import torch

import dcsim
from dcsim.sim import ops, program
from dyadic import dyadic_inputs, resnet, small


def _float_weights(net: dcsim.SpikingNetwork, seed: int) -> dcsim.SpikingNetwork:
    """net with every conv/linear weight moved off the dyadic grid (relative noise 1e-3), so that sums round."""
    g = torch.Generator().manual_seed(seed)
    nodes = []
    for node in net.nodes:
        w = getattr(node, "weight", None)
        if w is not None:
            node = dataclasses.replace(node, weight=w * (1 + 1e-3 * torch.randn(w.shape, generator=g)))
        nodes.append(node)
    return dataclasses.replace(net, nodes=nodes)


def _engines(net: dcsim.SpikingNetwork, **kw) -> tuple[dcsim.Engine, dcsim.Engine]:
    programmed, general = dcsim.Engine(net, **kw), dcsim.Engine(net, **kw)
    assert programmed._programmed
    general._programmed = False
    return programmed, general


def _same_records(a, b) -> None:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert (x is None) == (y is None), f.name
        if x is not None:
            assert torch.equal(x, y), f.name


@pytest.mark.parametrize("build", [small, resnet], ids=["small_cnn", "resnet18"])
@pytest.mark.parametrize("method,drive", [("qcfs", None), ("qffs", "settle"), ("qffs", "constant")])
@pytest.mark.parametrize("n", [1, 3])
def test_programs_equal_the_general_path(build, method, drive, n):
    net, shape = build(method, seed=3)
    if drive == "constant":
        net = dataclasses.replace(net, drive_steps=None)
    net = _float_weights(net, seed=5)
    steps = 9
    a, b = _engines(net, count_ops=True)
    x = dyadic_inputs(n, shape, seed=7) + 0.01 * torch.randn((n, *shape), generator=torch.Generator().manual_seed(8))
    sa, sb = a.start(x, blank=True), b.start(x, blank=True)
    readout = dcsim.Readout.paper(method, 2, steps, tau=0.5)
    done = 0
    for k in (1, 3, 2, 1, 2):  # a plan's chunks; the second straddles the settle window's end (drive_steps 3)
        ra = a.advance(sa, k, steps, readout, 0.6, done=done)
        rb = b.advance(sb, k, steps, readout, 0.6, done=done)
        done += k
        _same_records(ra, rb)
        for p, q in zip(sa.tensors()[:-1], sb.tensors()[:-1], strict=True):  # all but the admission times
            assert torch.equal(p, q)
        assert not sa.blank
    assert a._programs and not b._programs
    straddled = any(0 < driven < k for k, _, driven, *_ in a._programs)  # a program of a partly driven chunk
    assert straddled == (drive == "settle")


@pytest.mark.parametrize("channels_last", [False, True])
def test_lone_early_exit_runs_programs_with_the_general_path_s_results(channels_last):
    net, shape = small("qffs", seed=3)
    net = _float_weights(net, seed=6)
    a, b = _engines(net, channels_last=channels_last)
    x = dyadic_inputs(6, shape, seed=9)
    readout = dcsim.Readout.paper("qffs", 2, 6, tau=0.5)
    for threshold in (0.3, 0.7, 1.0):
        ra = a.early_exit(x, 6, readout, threshold, batch_size=1)
        rb = b.early_exit(x, 6, readout, threshold, batch_size=1)
        for f in ("pred", "exit_step", "conf", "spikes"):
            assert torch.equal(getattr(ra, f), getattr(rb, f)), (f, threshold)
    assert a._programs


def test_large_calls_and_checked_engines_take_the_general_path():
    net, shape = small("qcfs", seed=3)
    engine = dcsim.Engine(net)
    readout = dcsim.Readout.paper("qcfs", 2, 4)
    state = engine.start(dyadic_inputs(program.MAX_ROWS + 1, shape, seed=1))
    engine.advance(state, 1, 4, readout)
    assert not engine._programs
    engine.kernel_checks = True
    engine.advance(engine.start(dyadic_inputs(1, shape, seed=1)), 1, 4, readout)
    assert not engine._programs
    engine.kernel_checks = False
    engine.advance(engine.start(dyadic_inputs(1, shape, seed=1)), 1, 4, readout)
    assert len(engine._programs) == 1
    for threshold in range(program.KEPT + 1):  # a sweep: the engine keeps at most KEPT programs
        engine.advance(engine.start(dyadic_inputs(1, shape, seed=1)), 1, 4, readout, threshold / 1e3)
    assert len(engine._programs) <= program.KEPT
    assert not dcsim.Engine(net, backend="reference")._programmed


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="lif"), "method must be one of"),
        (dict(th=0.0), "th must be"),
        (dict(u0=float("inf")), "u0 must be"),
        (dict(k=0), "k, n and m must be >= 1"),
    ],
)
def test_bound_kernels_check_their_scalars(kwargs, match):
    args = dict(method="qcfs", k=2, n=1, m=4, th=1.0, zmax=3) | kwargs
    with pytest.raises(ValueError, match=match):
        ops.bound_neuron_steps(**args)
    with pytest.raises(ValueError, match="readout must be one of"):
        ops.bound_output_step(1, 10, 4, readout=99, scale=1.0, threshold=0.5)
    with pytest.raises(ValueError, match="max_steps"):
        ops.bound_output_step(1, 10, 0, readout=0, scale=1.0, threshold=0.5)


def test_building_a_program_is_kept_out_of_the_plan_s_call_times(monkeypatch):
    """The batch-1 plan times its calls; a call that builds a program (once per shape) is timed without the build.
    On a clock that only building moves (100 s a program), no time the plan keeps may show it."""
    from dcsim.sim import engine as engine_module

    net, shape = small("qcfs", seed=3)
    engine = dcsim.Engine(net)
    clock = [0.0]
    build = program.ChunkProgram.__init__

    def slow_build(self, *args, **kwargs):
        clock[0] += 100.0
        build(self, *args, **kwargs)

    monkeypatch.setattr(program.ChunkProgram, "__init__", slow_build)
    monkeypatch.setattr(engine_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    for threshold in (0.5, 0.6):  # the second run builds its own programs, in calls the plan times
        engine.early_exit(
            dyadic_inputs(6, shape, seed=1), 6, dcsim.Readout.paper("qcfs", 2, 6), threshold, batch_size=1
        )
    assert engine._building_seconds >= 200.0  # programs were built in both runs
    timed = [t for times in engine.chunk_planner._seconds.values() for t in times]  # every call time the plan keeps
    assert timed and max(timed) == 0.0


@pytest.mark.parametrize("build", [small, resnet], ids=["small_cnn", "resnet18"])
@pytest.mark.parametrize("method,drive", [("qcfs", None), ("qffs", "settle"), ("qffs", "constant")])
@pytest.mark.parametrize("n,threads", [(1, 1), (3, 1), (1, 2)])
def test_call_lists_equal_the_ops(build, method, drive, n, threads, torch_threads):
    """From its second run a program runs as native call lists (the Python layers between them); each run, on fresh
    and running state, partly driven chunks and counted SOPs included, gives the ops' results bit for bit, while the
    lists' buffers serve programs of several shapes in turn."""
    net, shape = build(method, seed=3)
    if drive == "constant":
        net = dataclasses.replace(net, drive_steps=None)
    net = _float_weights(net, seed=5)
    steps = 9
    listed, plain = dcsim.Engine(net, count_ops=True), dcsim.Engine(net, count_ops=True)
    plain.call_lists = False
    readout = dcsim.Readout.paper(method, 2, steps, tau=0.5)
    torch_threads(threads)
    for seed in range(3):  # every program runs again on new inputs
        x = dyadic_inputs(n, shape, seed=7 + seed)
        x = x + 0.01 * torch.randn((n, *shape), generator=torch.Generator().manual_seed(8 + seed))
        sa, sb = listed.start(x, blank=True), plain.start(x, blank=True)
        done = 0
        for k in (1, 3, 2, 1, 2):
            ra = listed.advance(sa, k, steps, readout, 0.6, done=done)
            rb = plain.advance(sb, k, steps, readout, 0.6, done=done)
            done += k
            _same_records(ra, rb)
            for p, q in zip(sa.tensors()[:-1], sb.tensors()[:-1], strict=True):
                assert torch.equal(p, q)
    lists = [p._listed for p in listed._programs.values() if p._listed is not None]
    assert lists and all(p._listed is None for p in plain._programs.values())
    buffers = listed.list_buffers()  # shared by the programs: each as large as the largest program needs it
    assert len(buffers) == max(len(lst.sizes) for lst in lists)
    assert [b.numel() for b in buffers] == [max(lst.sizes.get(i, 0) for lst in lists) for i in range(len(buffers))]
    if drive == "settle":  # a partly driven chunk gates its inputs step by step: its program runs its ops
        assert any(p._listed is None and p._runs > 1 for p in listed._programs.values())


def test_lone_early_exit_with_call_lists_gives_the_ops_results():
    net, shape = resnet("qcfs", seed=3)
    net = _float_weights(net, seed=6)
    listed, plain = dcsim.Engine(net), dcsim.Engine(net)
    plain.call_lists = False
    x = dyadic_inputs(8, shape, seed=2)
    readout = dcsim.Readout.paper("qcfs", 2, 8)
    for threshold in (0.3, 0.6, 1.0, 0.6):
        ra = listed.early_exit(x, 8, readout, threshold, batch_size=1)
        rb = plain.early_exit(x, 8, readout, threshold, batch_size=1)
        for f in ("pred", "exit_step", "conf", "spikes"):
            assert torch.equal(getattr(ra, f), getattr(rb, f)), (f, threshold)
    assert any(p._listed is not None for p in listed._programs.values())


def test_a_call_list_runs_its_kernels_on_the_table_s_addresses():
    """A listed kernel call computes what the direct call does, its pointers resolved against each run's table;
    a slot past the table is refused before any call runs."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    x = torch.randn(3, 16, 5, 5, generator=g)
    out = torch.full((3, 16, 1, 1), float("nan"))
    calls = ops.call_list()
    ops.list_global_avg_pool(calls, (3, 16, 5, 5), (0, 0), (-1, out.data_ptr()))
    ops.list_avg_pool_2x2(calls, (3, 16, 4, 4), (1, 4 * 16 * 16), (2, 0))  # x's second sample, from byte offset
    pooled = torch.empty(3, 16, 2, 2)
    x4 = torch.randn(4, 16, 4, 4, generator=g)
    assert len(calls) == 2
    ops.run_calls(calls, [x.data_ptr(), x4.data_ptr(), pooled.data_ptr()])
    assert torch.equal(out, ops.global_avg_pool(x))
    assert torch.equal(pooled, ops.avg_pool_2x2(x4[1:]))
    before = pooled.clone()
    x4.add_(1.0)
    with pytest.raises(IndexError, match="past the table of 2 addresses"):
        ops.run_calls(calls, [x.data_ptr(), x4.data_ptr()])
    assert torch.equal(pooled, before)  # no call ran


def test_run_until_repeats_a_list_until_its_flag_is_set():
    """ops.run_until runs a list again and again until the byte at its flag is nonzero after a run (here an output
    step's exit flag, set at max_steps), at most max_runs times; a flag or call past the table, or a flag of no
    address, is refused, no call made."""
    max_steps = int(torch.randint(2, 9, (1,)))
    x, sums = torch.randn(1, 10), torch.zeros(1, 10)
    steps = torch.zeros(1, dtype=torch.int32)
    pred, score, exited = torch.zeros(1, dtype=torch.int64), torch.zeros(1), torch.zeros(1, dtype=torch.uint8)
    call = ops.bound_output_step(1, 10, max_steps, 0, 1.0, 2.0)  # max softmax never passes 2: exits at max_steps
    calls = ops.call_list()
    call.list_into(calls, (-1, x.data_ptr()), (-1, sums.data_ptr()), (0, 0), (-1, pred.data_ptr()),
                   (-1, score.data_ptr()), (1, 0))  # fmt: skip
    table = [steps.data_ptr(), exited.data_ptr()]
    assert ops.run_until(calls, table, 1, (1, 0)) == 1 and int(steps) == 1 and not exited.item()
    assert ops.run_until(calls, table, 100, (1, 0)) == max_steps - 1
    assert int(steps) == max_steps and exited.item() == 1
    assert torch.allclose(sums, x * max_steps)
    with pytest.raises(IndexError, match="past the table of 2 addresses"):
        ops.run_until(calls, table, 5, (2, 0))
    with pytest.raises(IndexError, match="past the table of 1 addresses"):
        ops.run_until(calls, table[:1], 5, (0, 0))
    with pytest.raises(IndexError, match="the flag has no address"):
        ops.run_until(calls, table, 5, (-1, 0))
    assert int(steps) == max_steps  # no call ran


@pytest.mark.parametrize(
    "build,method",
    [(small, "qcfs"), (small, "qffs"), (resnet, "qffs")],  # QCFS stepping of a listed head: tests/test_chunking.py
    ids=["small_cnn-qcfs", "small_cnn-qffs", "resnet18-qffs"],
)
def test_a_lone_sample_stepped_until_its_exit_gets_the_ops_results(build, method):
    """Where a 1-step program is one call list (the classifier's linear and flatten listed too), the batch-1 plan
    may step a sample until its exit in one native call: the same exits, predictions, scores and spike counts as
    the ops' calls, over thresholds that end samples early, late and at T."""
    net, shape = build(method, seed=3)
    net = _float_weights(net, seed=6)
    listed, plain = dcsim.Engine(net, count_ops=True), dcsim.Engine(net, count_ops=True)
    plain.call_lists = False
    x = dyadic_inputs(8, shape, seed=4)
    readout = dcsim.Readout.paper(method, 2, 8, tau=0.5)
    for threshold in (0.3, 1.0, 0.6):
        ra = listed.early_exit(x, 8, readout, threshold, batch_size=1)
        rb = plain.early_exit(x, 8, readout, threshold, batch_size=1)
        for f in ("pred", "exit_step", "conf", "spikes", "sops"):
            assert torch.equal(getattr(ra, f), getattr(rb, f)), (f, threshold)
    stepping = any(p.can_step() for p in listed._programs.values())
    assert bool(listed.chunk_planner._step_seconds) == stepping  # stepped where (and only where) it can
    assert stepping or build is small  # the small CNN's tiny pools stay in Python: its programs cannot step
