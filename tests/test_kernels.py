"""Fused kernels (dcsim.sim.ops, native) against the plain-PyTorch reference (dcsim.sim.reference)
and against independent formulas written here.

Spikes, spike counts, z, predictions and step counters must be exactly equal; floats follow the
tolerances stated in the module constants below (design.md section 4).
"""

from __future__ import annotations

import math
import re
import zlib

import pytest
import torch
from torch import nn

import dcsim
from dcsim.models.lsq import LSQActivation
from dcsim.sim import ops, reference
from dcsim.sim.readout import READOUT_KINDS

MEMBRANE_ATOL = 0.0
"""Membranes: bit-identical. Kernel and reference do the same IEEE float32 operations in the
same order (x + x2, u + current, u - spike * th with spike in {-1, 0, 1}, so the product is
exact and an FMA contraction cannot change the result)."""

SCORE_ATOL = 1e-5
"""Readout scores: the kernel sums exp() sequentially with expf/logf, the reference uses torch's
vectorised exp and reductions (other summation order), so scores differ by a few ulp."""

EXIT_MARGIN = 1e-5
"""Where |score - threshold| < EXIT_MARGIN, a 1-ulp score difference may flip the exit flag;
such samples are excluded from the kernel-vs-reference exit comparison (and counted)."""

FORMULA_ATOL = 1e-5
"""Scores against the float64 formula computed in this file (float32 rounding in the kernel)."""

HAS_CUDA = torch.cuda.is_available() and "cuda" in dcsim.backends()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and dcsim built with CUDA")),
]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return float((a.double() - b.double()).abs().max())


def _assert_equal(name: str, got: torch.Tensor, want: torch.Tensor, ctx: str = "") -> None:
    got, want = got.cpu(), want.cpu()
    print(f"{name}: max |diff| = {_max_diff(got, want):.3g} {ctx}")
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)} {ctx}"
    if not torch.equal(got, want):
        bad = (got != want).nonzero()
        raise AssertionError(f"{name}: {bad.shape[0]} elements differ (first at {bad[0].tolist()}) {ctx}")


# --------------------------------------------------------------------------------- neuron step

NEURON_SHAPES = [
    (0,),
    (0, 4),
    (1,),
    (1, 1),
    (5, 1),
    (3, 0),
    (7, 13),
    (2, 3, 5, 7),
    (4, 16, 8, 8),
    (1, 3, 1, 1),
    (9, 1, 17),
]


def _neuron_cases():
    cases = [
        pytest.param(shape, seed, id=f"{'x'.join(map(str, shape))}-s{seed}")
        for shape in NEURON_SHAPES
        for seed in range(1 if shape[0] == 0 else 4)
    ]
    # Above ops.PARALLEL_MIN_ELEMENTS: the OpenMP path of the CPU kernel, which splits each
    # sample into blocks (one sample alone too) and sums their spike counts.
    assert ops.PARALLEL_MIN_ELEMENTS <= 3 * 200_003 and ops.PARALLEL_MIN_ELEMENTS <= 40_001
    for seed in range(2):
        cases.append(pytest.param((3, 200_003), seed, id=f"large-s{seed}"))
        cases.append(pytest.param((1, 40_001), seed, id=f"one-large-s{seed}"))
    return cases


def _neuron_inputs(method: str, shape: tuple, seed: int, with_x2: bool):
    g = torch.Generator().manual_seed(seed * 7919 + zlib.crc32(repr((method, shape, with_x2)).encode()) % 10007)
    th = float(torch.empty(()).uniform_(0.05, 5.0, generator=g))
    zmax = int(torch.randint(1, 8, (), generator=g))
    # Half of the neurons start at th/2 (the QCFS convention), the others anywhere in [-th, 2 th).
    u = torch.full(shape, th / 2, dtype=torch.float32)
    rnd = (torch.rand(shape, generator=g) * 3 - 1) * th
    mask = torch.rand(shape, generator=g) < 0.5
    u = torch.where(mask, rnd, u).contiguous()
    z = torch.randint(0, zmax + 1, shape, generator=g, dtype=torch.int32) if method == "qffs" else None
    n = shape[0]
    counts = torch.randint(0, 1000, (n,), generator=g, dtype=torch.int64)
    return g, th, zmax, u, z, counts


def _run_steps(fn, method, xs, x2s, u, z, counts, th, zmax, device):
    """Run fn for every step; return list of (out, u, z, counts) snapshots on CPU."""
    u = u.clone().to(device)
    z = None if z is None else z.clone().to(device)
    counts = counts.clone().to(device)
    snaps = []
    for x, x2 in zip(xs, x2s, strict=True):
        out = torch.full_like(u, 123.0)  # garbage: the op must overwrite every element
        fn(method, x.to(device), u, z, out, counts, th, zmax, x2=None if x2 is None else x2.to(device))
        snaps.append((out.cpu(), u.cpu().clone(), None if z is None else z.cpu().clone(), counts.cpu().clone()))
    return snaps


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_x2", [False, True], ids=["x", "x+x2"])
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
@pytest.mark.parametrize("shape,seed", _neuron_cases())
def test_neuron_step_matches_reference(shape, seed, method, with_x2, device):
    steps = 6
    g, th, zmax, u, z, counts = _neuron_inputs(method, shape, seed, with_x2)
    if seed % 2:
        # Dyadic grid (multiples of th/8, th a short binary fraction): u hits th and 0 exactly,
        # so the >= th and < 0 boundaries of the spike rule are exercised.
        th = [0.5, 0.75, 1.5, 3.0][seed // 2 % 4]
        u = (torch.randint(-8, 17, shape, generator=g) * (th / 8)).float().contiguous()
        xs = [(torch.randint(-6, 9, shape, generator=g) * (th / 8)).float().contiguous() for _ in range(steps)]
        x2s = [
            (torch.randint(-4, 5, shape, generator=g) * (th / 8)).float().contiguous() if with_x2 else None
            for _ in range(steps)
        ]
    else:
        scale = float(torch.empty(()).uniform_(0.2, 1.5, generator=g))
        xs = [(torch.randn(shape, generator=g) * th * scale).contiguous() for _ in range(steps)]
        x2s = [(torch.randn(shape, generator=g) * th * 0.5).contiguous() if with_x2 else None for _ in range(steps)]
    got = _run_steps(ops.neuron_step, method, xs, x2s, u, z, counts, th, zmax, device)
    want = _run_steps(reference.neuron_step, method, xs, x2s, u, z, counts, th, zmax, "cpu")
    ctx = f"[{method} shape={shape} seed={seed} th={th:.4g} zmax={zmax} device={device}]"
    for t, ((o1, u1, z1, c1), (o2, u2, z2, c2)) in enumerate(zip(got, want, strict=True)):
        th32 = torch.tensor(th, dtype=torch.float32)
        _assert_equal(f"spikes (step {t + 1})", o1 / th32, o2 / th32, ctx)
        _assert_equal(f"out current (step {t + 1})", o1, o2, ctx)
        print(f"membrane (step {t + 1}): max |diff| = {_max_diff(u1, u2):.3g} {ctx}")
        torch.testing.assert_close(
            u1,
            u2,
            atol=MEMBRANE_ATOL,
            rtol=0,
            msg=lambda m: f"membrane step {t + 1} {ctx}: {m}",  # noqa: B023 -- called in this iteration
        )
        if method == "qffs":
            _assert_equal(f"z (step {t + 1})", z1, z2, ctx)
        _assert_equal(f"counts (step {t + 1})", c1, c2, ctx)
    # The run must not be trivial for the large/medium shapes: some neuron fired.
    if u.numel() >= 100:
        assert any(bool((o != 0).any()) for o, *_ in got), f"no spikes at all {ctx}"


FRESH_SHAPES = [(1,), (5, 1), (7, 13), (2, 3, 5, 7), (4, 16, 8, 8), (3, 200_003)]  # the last: the OpenMP path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_fanout", [False, True], ids=["", "sops"])
@pytest.mark.parametrize("with_x2", [False, True], ids=["x", "x+x2"])
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
@pytest.mark.parametrize("shape", FRESH_SHAPES, ids=["x".join(map(str, s)) for s in FRESH_SHAPES])
def test_neuron_step_fresh_takes_u0_and_never_reads_the_state(shape, method, with_x2, with_fanout, device):
    """u0 = v: the first step of a state that holds garbage (NaN membranes, random spike counts) is the
    step of a state filled with v and 0, bit for bit, in the native op and the reference; then the state
    holds what that step left, so the next steps (without u0) agree too."""
    g, th, zmax, _, _, counts = _neuron_inputs(method, shape, 0, with_x2)
    u0 = float(torch.empty(()).uniform_(-th, th, generator=g))
    fanout = torch.randint(0, 50, (1, *shape[1:]), generator=g, dtype=torch.int32) if with_fanout else None
    xs = [(torch.randn(shape, generator=g) * th).contiguous() for _ in range(3)]
    x2s = [(torch.randn(shape, generator=g) * th * 0.5).contiguous() if with_x2 else None for _ in range(3)]

    def run(fn, fresh: bool, dev: str):
        u = torch.full(shape, float("nan") if fresh else u0, device=dev)
        z = None
        if method == "qffs":
            z = (
                torch.randint(-5, 9, shape, generator=g, dtype=torch.int32).to(dev)
                if fresh
                else torch.zeros(shape, dtype=torch.int32, device=dev)
            )
        c = counts.clone().to(dev)
        sops = torch.zeros(shape[0], dtype=torch.int64, device=dev) if with_fanout else None
        f = None if fanout is None else fanout.to(dev)
        outs = []
        for t, (x, x2) in enumerate(zip(xs, x2s, strict=True)):
            out = torch.full_like(u, 123.0)
            fn(method, x.to(dev), u, z, out, c, th, zmax, x2=None if x2 is None else x2.to(dev), fanout=f, sops=sops,
               u0=u0 if fresh and t == 0 else None)  # fmt: skip
            outs.append([out.cpu(), u.cpu().clone(), None if z is None else z.cpu().clone(), c.cpu().clone()])
            outs[-1].append(None if sops is None else sops.cpu().clone())
        return outs

    want = run(reference.neuron_step, False, "cpu")
    for label, got in (
        ("native", run(ops.neuron_step, True, device)),
        ("reference", run(reference.neuron_step, True, "cpu")),
    ):
        for t, (a, b) in enumerate(zip(got, want, strict=True)):
            for name, p, q in zip(("out", "u", "z", "counts", "sops"), a, b, strict=True):
                if q is not None:
                    _assert_equal(f"{label} {name} (step {t + 1})", p, q, f"[{method} {shape} {device}]")
    if math.prod(shape) >= 100:
        assert any(bool((o[0] != 0).any()) for o in want), "no spikes at all"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
@pytest.mark.parametrize("shape", [(0,), (0, 4), (0, 2, 3, 3)])
def test_neuron_step_empty_batch_is_a_no_op(shape, method, device):
    """n = 0 on the native op alone: nothing to do, nothing written."""
    x = torch.ones(shape, device=device)
    u = torch.zeros(shape, device=device)
    z = torch.zeros(shape, dtype=torch.int32, device=device) if method == "qffs" else None
    out = torch.zeros(shape, device=device)
    counts = torch.zeros(0, dtype=torch.int64, device=device)
    ops.neuron_step(method, x, u, z, out, counts, 1.0, 3, x2=x)
    assert u.shape == shape and out.shape == shape and counts.shape == (0,)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and dcsim built with CUDA")
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_neuron_step_cuda_many_rows(method):
    """More rows than gridDim.y allows (65535): the CUDA launcher splits rows in chunks."""
    shape = (70_001, 3)
    g, th, zmax, u, z, counts = _neuron_inputs(method, shape, 0, True)
    xs = [torch.randn(shape, generator=g) * th for _ in range(3)]
    x2s = [torch.randn(shape, generator=g) * th for _ in range(3)]
    got = _run_steps(ops.neuron_step, method, xs, x2s, u, z, counts, th, zmax, "cuda")
    want = _run_steps(reference.neuron_step, method, xs, x2s, u, z, counts, th, zmax, "cpu")
    for (o1, u1, z1, c1), (o2, u2, z2, c2) in zip(got, want, strict=True):
        _assert_equal("out", o1, o2)
        torch.testing.assert_close(u1, u2, atol=MEMBRANE_ATOL, rtol=0)
        _assert_equal("counts", c1, c2)
        if z1 is not None:
            _assert_equal("z", z1, z2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_neuron_step_semantics_long_run(method, seed, device):
    """50 steps of random (also negative) currents: spike values, the QFFS cap, the count,
    and the spike rule itself checked element by element against the membrane before the step."""
    g = torch.Generator().manual_seed(1000 + seed)
    shape = (4, 3, 5, 5)
    th = float(torch.empty(()).uniform_(0.1, 3.0, generator=g)) if seed % 2 == 0 else [0.5, 1.5, 3.0][seed // 2]
    zmax = int(torch.randint(1, 8, (), generator=g))
    u = torch.full(shape, th / 2, device=device)
    boundary_hits = 0
    z = torch.zeros(shape, dtype=torch.int32, device=device) if method == "qffs" else None
    counts = torch.zeros(shape[0], dtype=torch.int64, device=device)
    th32 = torch.tensor(th, dtype=torch.float32)
    seen = set()
    for t in range(50):
        if seed % 2:  # multiples of th/4: the membrane lands exactly on th and on 0
            x = (torch.randint(-5, 6, shape, generator=g) * (th32 / 4)).to(device)
        else:
            x = (torch.randn(shape, generator=g) * th * 0.8 + th * 0.1 * math.sin(t / 5)).to(device)
        u_before = u.cpu().clone()
        z_before = None if z is None else z.cpu().clone()
        c_before = counts.cpu().clone()
        out = torch.empty_like(u)
        ops.neuron_step(method, x, u, z, out, counts, th, zmax)
        spikes = out.cpu() / th32
        values = set(torch.unique(spikes).tolist())
        seen |= values
        allowed = {0.0, 1.0} if method == "qcfs" else {-1.0, 0.0, 1.0}
        assert values <= allowed, f"step {t + 1}: spike values {values} not in {allowed}"
        pre = u_before + x.cpu()  # the membrane after integration, before firing (same float op)
        boundary_hits += int(((pre == th32) | (pre == 0)).sum())
        if method == "qcfs":
            expect = (pre >= th32).to(torch.float32)
        else:
            zc = z.cpu()
            assert int(zc.min()) >= 0 and int(zc.max()) <= zmax, f"step {t + 1}: z outside [0, {zmax}]"
            pos = (pre >= th32) & (z_before < zmax)
            neg = (pre < 0) & (z_before > 0) & ~pos
            expect = pos.to(torch.float32) - neg.to(torch.float32)
            _assert_equal(f"z update (step {t + 1})", zc, z_before + expect.to(torch.int32))
        _assert_equal(f"spike rule (step {t + 1})", spikes, expect)
        _assert_equal(f"soft reset (step {t + 1})", u.cpu(), pre - expect * th32)
        fired = (spikes != 0).reshape(shape[0], -1).sum(1)
        _assert_equal(f"count increment (step {t + 1})", counts.cpu() - c_before, fired)
    if seed % 2:
        assert boundary_hits > 0, "the dyadic run must hit u == th or u == 0"
    # The random run must have exercised every kind of spike.
    assert seen == ({0.0, 1.0} if method == "qcfs" else {-1.0, 0.0, 1.0}), seen


# -------------------------------------------------------------------- exactness property


def _lsq_levels(v: torch.Tensor, s: float, qp: int) -> torch.Tensor:
    st = torch.tensor(s, dtype=torch.float32)
    return st * torch.floor(torch.clamp(v / st, 0, qp) + 0.5)


EXACT_BACKENDS = [
    pytest.param("native", "cpu", id="native-cpu"),
    pytest.param("reference", "cpu", id="reference-cpu"),
    pytest.param("native", "cuda", id="native-cuda", marks=DEVICES[1].marks),
]


@pytest.mark.parametrize("backend,device", EXACT_BACKENDS)
@pytest.mark.parametrize("s", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_exactness_T_equals_Qp(method, bits, s, backend, device):
    """Constant input v, u0 = th/2, T = Qp steps: mean output == LSQ activation, ties included."""
    fn = ops.neuron_step if backend == "native" else reference.neuron_step
    qp = 2**bits - 1
    th = qp * s
    # Multiples of s/8 from -2 Qp s to 2 Qp s (dyadic: every sum below is exact in float32).
    v = torch.arange(-16 * qp, 16 * qp + 1, dtype=torch.float32) * (s / 8)
    x = v.reshape(1, -1).contiguous()
    xd = x.to(device)
    u = torch.full_like(xd, th / 2)
    z = torch.zeros(x.shape, dtype=torch.int32, device=device) if method == "qffs" else None
    counts = torch.zeros(1, dtype=torch.int64, device=device)
    total = torch.zeros_like(xd)
    for _ in range(qp):
        out = torch.empty_like(xd)
        fn(method, xd, u, z, out, counts, th, qp)
        total += out
    mean = (total.cpu() / qp)[0]  # on the CPU: CUDA divides by a scalar as a multiply by its (rounded) reciprocal
    counts = counts.cpu()
    expect = _lsq_levels(v, s, qp)
    assert bool((v / s == torch.floor(v / s) + 0.5).any()), "grid must contain half-step ties"
    _assert_equal("mean current vs s*floor(clip(v/s,0,Qp)+0.5)", mean, expect, f"[{method} bits={bits} s={s}]")
    # Spike count == the quantization level (sum over neurons).
    assert int(counts) == int((expect / s).sum()), (int(counts), int((expect / s).sum()))
    # And identical to the LSQActivation module itself (eval mode, step = s).
    act = LSQActivation(bits).eval()
    with torch.no_grad():
        act.step.fill_(s)
        y = act(x)[0]
    _assert_equal("mean current vs LSQActivation", mean, y, f"[{method} bits={bits} s={s}]")


# -------------------------------------------------------------------------- output step


def _output_cases():
    return [
        pytest.param(k, n, seed, id=f"K{k}-n{n}-s{seed}")
        for k in (1, 2, 10, 1000)
        for n in (0, 1, 5, 300)
        for seed in range(2)
    ]


def _output_state(n, k, g):
    steps = torch.randint(0, 4, (n,), generator=g, dtype=torch.int32)
    return dict(
        sums=(torch.randn(n, k, generator=g) * 2).contiguous(),
        steps=steps,
        pred=torch.full((n,), -7, dtype=torch.int64),
        score=torch.full((n,), -1.0),
        exited=torch.full((n,), 9, dtype=torch.uint8),
    )


def _run_output(fn, xs, state, max_steps, code, scale, threshold, device):
    st = {k: v.clone().to(device) for k, v in state.items()}
    snaps = []
    for x in xs:
        fn(
            x.to(device),
            st["sums"],
            st["steps"],
            max_steps,
            code,
            scale,
            threshold,
            st["pred"],
            st["score"],
            st["exited"],
        )
        snaps.append({k: v.cpu().clone() for k, v in st.items()})
    return snaps


def _formula(sums: torch.Tensor, kind: str, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent float64 readout: (score, argmax)."""
    s64 = sums.double()
    n, k = s64.shape
    pred = torch.argmax(s64, dim=1) if n else torch.zeros(0, dtype=torch.int64)
    if k == 1:
        return torch.ones(n, dtype=torch.float64), pred
    p = torch.softmax(s64 * scale, dim=1)
    if kind == "max_softmax":
        return p.max(dim=1).values, pred
    if kind == "margin":
        top = p.topk(2, dim=1).values
        return top[:, 0] - top[:, 1], pred
    h = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(dim=1)
    return 1.0 - h / math.log(k), pred


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", sorted(READOUT_KINDS))
@pytest.mark.parametrize("k,n,seed", _output_cases())
def test_output_step_matches_reference_and_formula(k, n, seed, kind, device):
    g = torch.Generator().manual_seed(seed * 1009 + k * 31 + n)
    code = READOUT_KINDS[kind]
    scale = float(torch.empty(()).uniform_(0.05, 2.0, generator=g))
    threshold = float(torch.empty(()).uniform_(0.05, 0.95, generator=g))
    max_steps = 6
    state = _output_state(n, k, g)
    n_steps = 5
    if seed == 1:  # small integers: many ties in the argmax
        xs = [torch.randint(-2, 3, (n, k), generator=g).float() for _ in range(n_steps)]
        state["sums"] = torch.zeros(n, k)
    else:
        xs = [torch.randn(n, k, generator=g) * 1.5 for _ in range(n_steps)]
    got = _run_output(ops.output_step, xs, state, max_steps, code, scale, threshold, device)
    want = _run_output(reference.output_step, xs, state, max_steps, code, scale, threshold, "cpu")
    ctx = f"[{kind} K={k} n={n} seed={seed} scale={scale:.3g} thr={threshold:.3g} device={device}]"
    excluded = 0
    for t, (a, b) in enumerate(zip(got, want, strict=True)):
        _assert_equal(f"sums (step {t + 1})", a["sums"], b["sums"], ctx)
        _assert_equal(f"steps (step {t + 1})", a["steps"], b["steps"], ctx)
        _assert_equal(f"pred (step {t + 1})", a["pred"], b["pred"], ctx)
        print(f"score (step {t + 1}): max |diff| = {_max_diff(a['score'], b['score']):.3g} {ctx}")
        torch.testing.assert_close(
            a["score"],
            b["score"],
            atol=SCORE_ATOL,
            rtol=0,
            msg=lambda m: f"score step {t + 1} {ctx}: {m}",  # noqa: B023 -- called now
        )
        near = (b["score"] - threshold).abs() < EXIT_MARGIN
        excluded += int(near.sum())
        _assert_equal(
            f"exited (step {t + 1}, {int(near.sum())} near-threshold excluded)",
            a["exited"][~near],
            b["exited"][~near],
            ctx,
        )
        # The kernel's exit flag is consistent with its own score, exactly.
        own = ((a["score"] > threshold) | (a["steps"] >= max_steps)).to(torch.uint8)
        _assert_equal(f"exited vs own score (step {t + 1})", a["exited"], own, ctx)
        # Independent float64 semantics.
        f_score, f_pred = _formula(a["sums"], kind, scale)
        _assert_equal(f"pred vs torch.argmax (step {t + 1})", a["pred"], f_pred, ctx)
        print(f"score vs float64 formula (step {t + 1}): max |diff| = {_max_diff(a['score'], f_score):.3g} {ctx}")
        torch.testing.assert_close(
            a["score"].double(),
            f_score,
            atol=FORMULA_ATOL,
            rtol=0,
            msg=lambda m: f"formula step {t + 1} {ctx}: {m}",  # noqa: B023 -- called now
        )
        assert bool(((a["score"] >= 0) & (a["score"] <= 1)).all()), f"score outside [0, 1] {ctx}"
        if k == 1:
            assert bool((a["score"] == 1.0).all()) and bool((a["pred"] == 0).all()), ctx
    assert excluded <= max(1, n * n_steps // 100), f"too many near-threshold exits excluded: {excluded} {ctx}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", sorted(READOUT_KINDS))
def test_output_step_max_steps_forces_exit(kind, device):
    n, k, T = 17, 10, 4
    g = torch.Generator().manual_seed(5)
    state = _output_state(n, k, g)
    state["steps"].zero_()
    xs = [torch.randn(n, k, generator=g) for _ in range(T)]
    for fn, dev in ((ops.output_step, device), (reference.output_step, "cpu")):
        snaps = _run_output(fn, xs, state, T, READOUT_KINDS[kind], 1.0, dcsim.sim.engine.NEVER, dev)
        for t, snap in enumerate(snaps, start=1):
            assert bool((snap["steps"] == t).all()), f"{fn.__module__}: steps {snap['steps'].tolist()} at t={t}"
            want = 1 if t >= T else 0
            assert bool((snap["exited"] == want).all()), f"{fn.__module__}: exited at t={t}: {snap['exited'].tolist()}"


@pytest.mark.parametrize("kind", sorted(READOUT_KINDS))
def test_output_step_ties_choose_first_index(kind):
    sums = torch.zeros(4, 5)
    x = torch.tensor(
        [
            [1.0, 3.0, 3.0, 0.0, 3.0],
            [2.0, 2.0, 2.0, 2.0, 2.0],
            [-1.0, -5.0, -1.0, -1.0, -2.0],
            [0.0, 0.0, 0.0, 0.0, 7.0],
        ]
    )
    st = dict(
        steps=torch.zeros(4, dtype=torch.int32),
        pred=torch.zeros(4, dtype=torch.int64),
        score=torch.zeros(4),
        exited=torch.zeros(4, dtype=torch.uint8),
    )
    ops.output_step(x, sums, st["steps"], 10, READOUT_KINDS[kind], 1.0, 0.5, st["pred"], st["score"], st["exited"])
    assert st["pred"].tolist() == [1, 0, 0, 4] == torch.argmax(x, dim=1).tolist()
    if kind == "margin":  # tied top-2 -> margin 0
        assert st["score"][:3].tolist() == [0.0, 0.0, 0.0]
    if kind == "entropy":  # uniform distribution -> entropy score 0
        assert abs(float(st["score"][1])) < 1e-6
    if kind == "max_softmax":
        assert abs(float(st["score"][1]) - 0.2) < 1e-6


# ---------------------------------------------------------------------------- gather rows

DTYPES = [torch.float32, torch.int32, torch.int64, torch.uint8]


def _make_tensors(n_in: int, count: int, g: torch.Generator, device) -> list[torch.Tensor]:
    tensors = []
    tails = [(), (1,), (3, 2), (5,), (7,), (0,), (2, 3, 3)]  # (7,) uint8 -> rows not a multiple of 4 bytes
    for i in range(count):
        dtype = DTYPES[i % len(DTYPES)]
        tail = tails[(i // len(DTYPES) + i) % len(tails)]
        shape = (n_in, *tail)
        if dtype.is_floating_point:
            t = torch.randn(shape, generator=g)
        else:
            t = torch.randint(0, 250, shape, generator=g).to(dtype)
        tensors.append(t.to(device))
    return tensors


def _indices(n_in: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    keep = torch.rand(n_in, generator=g) < 0.5
    return {
        "empty": torch.zeros(0, dtype=torch.int64),
        "full": torch.arange(n_in),
        "subset": torch.nonzero(keep).squeeze(1),
        "repeat-unsorted": torch.randint(0, n_in, (n_in + 3,), generator=g)
        if n_in
        else torch.zeros(0, dtype=torch.int64),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("count", [1, 5, 32, 33, 70])
@pytest.mark.parametrize("n_in", [0, 1, 9, 257])
def test_gather_rows(n_in, count, device):
    g = torch.Generator().manual_seed(n_in * 100 + count)
    tensors = _make_tensors(n_in, count, g, device)
    for name, index in _indices(n_in, g).items():
        got = ops.gather_rows(tensors, index.to(device))
        want = reference.gather_rows([t.cpu() for t in tensors], index)
        assert len(got) == len(tensors)
        for i, (a, b, src) in enumerate(zip(got, want, tensors, strict=True)):
            ctx = f"[tensor {i} {src.dtype} {tuple(src.shape)} index={name} n_in={n_in}]"
            assert a.dtype == src.dtype and a.device == src.device, ctx
            _assert_equal("gathered rows", a, b, ctx)
            _assert_equal("gathered rows vs index_select", a, src.cpu().index_select(0, index), ctx)


def test_gather_rows_empty_list():
    assert ops.gather_rows([], torch.zeros(0, dtype=torch.int64)) == []


@pytest.mark.parametrize("bad", [[5], [-1], [0, 2, 5]])
def test_gather_rows_index_out_of_range(bad):
    tensors = [torch.arange(10.0).reshape(5, 2), torch.arange(5)]
    with pytest.raises(IndexError, match="index"):
        ops.gather_rows(tensors, torch.tensor(bad, dtype=torch.int64))


# ------------------------------------------------------------------------------ bad input


def _assert_names(case: str, msg: str, argname: str) -> None:
    """The message names the argument as a word (``x`` does not match inside ``x2``)."""
    assert re.search(rf"(?<![\w\[]){re.escape(argname)}(?!\w)", msg), f"{case}: {msg!r} does not name {argname!r}"


def _neuron_args(shape=(2, 3), method="qffs"):
    return dict(
        method=method,
        x=torch.zeros(shape),
        u=torch.zeros(shape),
        z=torch.zeros(shape, dtype=torch.int32),
        out=torch.zeros(shape),
        counts=torch.zeros(shape[0], dtype=torch.int64),
        th=1.0,
        zmax=3,
    )


def _noncontig(shape, dtype=torch.float32):
    t = torch.zeros((shape[1], shape[0]), dtype=dtype).t()
    assert not t.is_contiguous() and tuple(t.shape) == tuple(shape)
    return t


NEURON_BAD = [
    ("u float64", {"u": torch.zeros(2, 3, dtype=torch.float64)}, TypeError, "u"),
    ("x float64", {"x": torch.zeros(2, 3, dtype=torch.float64)}, TypeError, "x"),
    ("z int64", {"z": torch.zeros(2, 3, dtype=torch.int64)}, TypeError, "z"),
    ("counts int32", {"counts": torch.zeros(2, dtype=torch.int32)}, TypeError, "counts"),
    ("out int32", {"out": torch.zeros(2, 3, dtype=torch.int32)}, TypeError, "out"),
    ("x shape", {"x": torch.zeros(2, 4)}, ValueError, "x"),
    ("out shape", {"out": torch.zeros(3, 3)}, ValueError, "out"),
    ("z shape", {"z": torch.zeros(2, 2, dtype=torch.int32)}, ValueError, "z"),
    ("x2 shape", {"x2": torch.zeros(2, 1)}, ValueError, "x2"),
    ("x2 float64", {"x2": torch.zeros(2, 3, dtype=torch.float64)}, TypeError, "x2"),
    ("counts shape", {"counts": torch.zeros(3, dtype=torch.int64)}, ValueError, "counts"),
    ("u 0-dim", {"u": torch.zeros(())}, ValueError, "u"),
    ("x non-contiguous", {"x": _noncontig((2, 3))}, ValueError, "x"),
    ("u non-contiguous", {"u": _noncontig((2, 3))}, ValueError, "u"),
    ("z non-contiguous", {"z": _noncontig((2, 3), torch.int32)}, ValueError, "z"),
    ("x on meta", {"x": torch.zeros(2, 3, device="meta")}, ValueError, "x"),
    ("counts on meta", {"counts": torch.zeros(2, dtype=torch.int64, device="meta")}, ValueError, "counts"),
    ("th zero", {"th": 0.0}, ValueError, "th"),
    ("th negative", {"th": -1.0}, ValueError, "th"),
    ("th nan", {"th": float("nan")}, ValueError, "th"),
    ("u0 nan", {"u0": float("nan")}, ValueError, "u0"),
    ("u0 infinite", {"u0": float("inf")}, ValueError, "u0"),
    ("unknown method", {"method": "lif"}, ValueError, "method"),
    ("qffs without z", {"z": None}, ValueError, "z"),
]


@pytest.mark.parametrize("case,change,exc,argname", NEURON_BAD, ids=[c[0] for c in NEURON_BAD])
def test_neuron_step_bad_input(case, change, exc, argname):
    args = _neuron_args() | change
    with pytest.raises(exc) as info:
        ops.neuron_step(**args)
    _assert_names(case, str(info.value), argname)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and dcsim built with CUDA")
@pytest.mark.parametrize("arg", ["x", "out", "z", "counts", "x2"])
def test_neuron_step_mixed_cuda_cpu(arg):
    args = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in _neuron_args().items()}
    args["x2"] = torch.zeros(2, 3, device="cuda")
    args[arg] = args[arg].cpu()
    with pytest.raises(ValueError) as info:
        ops.neuron_step(**args)
    _assert_names(arg, str(info.value), arg)


def test_neuron_step_all_on_meta_rejected():
    shape = (2, 3)
    args = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in _neuron_args(shape).items()}
    with pytest.raises(ValueError, match="meta"):
        ops.neuron_step(**args)


def test_neuron_step_rejects_infinite_threshold():
    for th in (float("inf"), 1e39):
        args = _neuron_args() | {"th": th}
        with pytest.raises(ValueError, match="th"):
            ops.neuron_step(**args)


def test_neuron_step_non_tensor_u():
    args = _neuron_args() | {"u": [0.0, 0.0]}
    with pytest.raises(TypeError, match="u"):
        ops.neuron_step(**args)


def _output_args(n=3, k=4):
    return dict(
        x=torch.zeros(n, k),
        sums=torch.zeros(n, k),
        steps=torch.zeros(n, dtype=torch.int32),
        max_steps=5,
        readout=0,
        scale=1.0,
        threshold=0.5,
        pred=torch.zeros(n, dtype=torch.int64),
        score=torch.zeros(n),
        exited=torch.zeros(n, dtype=torch.uint8),
    )


OUTPUT_BAD = [
    ("sums 1-D", {"sums": torch.zeros(3)}, ValueError, "sums"),
    ("sums K=0", {"sums": torch.zeros(3, 0)}, ValueError, "sums"),
    ("sums float64", {"sums": torch.zeros(3, 4, dtype=torch.float64)}, TypeError, "sums"),
    ("x shape", {"x": torch.zeros(3, 5)}, ValueError, "x"),
    ("x float64", {"x": torch.zeros(3, 4, dtype=torch.float64)}, TypeError, "x"),
    ("steps int64", {"steps": torch.zeros(3, dtype=torch.int64)}, TypeError, "steps"),
    ("steps shape", {"steps": torch.zeros(2, dtype=torch.int32)}, ValueError, "steps"),
    ("pred int32", {"pred": torch.zeros(3, dtype=torch.int32)}, TypeError, "pred"),
    ("score float64", {"score": torch.zeros(3, dtype=torch.float64)}, TypeError, "score"),
    ("exited bool", {"exited": torch.zeros(3, dtype=torch.bool)}, TypeError, "exited"),
    ("x non-contiguous", {"x": _noncontig((3, 4))}, ValueError, "x"),
    ("pred on meta", {"pred": torch.zeros(3, dtype=torch.int64, device="meta")}, ValueError, "pred"),
]


@pytest.mark.parametrize("case,change,exc,argname", OUTPUT_BAD, ids=[c[0] for c in OUTPUT_BAD])
def test_output_step_bad_input(case, change, exc, argname):
    with pytest.raises(exc) as info:
        ops.output_step(**(_output_args() | change))
    _assert_names(case, str(info.value), argname)


GATHER_BAD = [
    ("index int32", [torch.zeros(4, 2)], torch.zeros(2, dtype=torch.int32), TypeError, "index"),
    ("index 2-D", [torch.zeros(4, 2)], torch.zeros(1, 2, dtype=torch.int64), ValueError, "index"),
    ("rows differ", [torch.zeros(4, 2), torch.zeros(5)], torch.zeros(2, dtype=torch.int64), ValueError, "tensors[1]"),
    ("0-dim tensor", [torch.zeros(4, 2), torch.zeros(())], torch.zeros(2, dtype=torch.int64), ValueError, "tensors[1]"),
    (
        "non-contiguous",
        [torch.zeros(4, 2), _noncontig((4, 3))],
        torch.zeros(2, dtype=torch.int64),
        ValueError,
        "tensors[1]",
    ),
    (
        "device mismatch",
        [torch.zeros(4, 2), torch.zeros(4, device="meta")],
        torch.zeros(2, dtype=torch.int64),
        ValueError,
        "tensors[1]",
    ),
    ("index on meta", [torch.zeros(4, 2)], torch.zeros(2, dtype=torch.int64, device="meta"), ValueError, "index"),
]


@pytest.mark.parametrize("case,tensors,index,exc,argname", GATHER_BAD, ids=[c[0] for c in GATHER_BAD])
def test_gather_rows_bad_input(case, tensors, index, exc, argname):
    with pytest.raises(exc) as info:
        ops.gather_rows(tensors, index)
    _assert_names(case, str(info.value), argname)


def test_backends_contains_cpu():
    b = dcsim.backends()
    assert "cpu" in b, b
    assert set(b) <= {"cpu", "cuda"}


# ------------------------------------------------------- non-finite input (engine level)


def _tiny_engine() -> dcsim.Engine:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), LSQActivation(2), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with torch.no_grad():
        model[1].step.fill_(0.5)
    return dcsim.Engine(dcsim.convert(model.eval()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_engine_rejects_non_finite_input(bad):
    engine = _tiny_engine()
    x = torch.randn(3, 1, 6, 6)
    engine.simulate(x, steps=2)  # finite input works
    x[1, 0, 2, 3] = bad
    with pytest.raises(ValueError, match="NaN"):
        engine.simulate(x, steps=2)


@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_neuron_step_channels_last_matches_reference(method):
    g = torch.Generator().manual_seed(7)
    cl = torch.channels_last
    shape = (3, 5, 4, 6)
    x = torch.randn(shape, generator=g).contiguous(memory_format=cl)
    u = torch.rand(shape, generator=g).contiguous(memory_format=cl)
    z = (
        torch.randint(0, 3, shape, generator=g, dtype=torch.int32).contiguous(memory_format=cl)
        if method == "qffs"
        else None
    )
    ref = [t.clone() if t is not None else None for t in (u, z)]
    out, ref_out = torch.empty_like(u), torch.empty(shape)
    counts, ref_counts = torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)
    ops.neuron_step(method, x, u, z, out, counts, 0.7, 2)
    reference.neuron_step(
        method,
        x.contiguous(),
        ref[0].contiguous(),
        None if z is None else ref[1].contiguous(),
        ref_out,
        ref_counts,
        0.7,
        2,
    )
    assert torch.equal(out.contiguous(), ref_out) and torch.equal(counts, ref_counts)
    with pytest.raises(ValueError, match="layout"):
        ops.neuron_step(method, x.contiguous(), u, z, out, counts, 0.7, 2)


def test_gather_rows_keeps_channels_last():
    t = torch.randn(5, 3, 4, 2).contiguous(memory_format=torch.channels_last)
    index = torch.tensor([4, 0, 2])
    (o,) = ops.gather_rows([t], index)
    assert o.is_contiguous(memory_format=torch.channels_last) and torch.equal(o, t[index])
