"""Property-based tests (hypothesis): native kernels against dcsim.sim.reference, the trace analysis
against brute force, and converted random small networks against their LSQ ANN.

Examples per property: the hypothesis profile of tests/conftest.py (``ci`` by default, ``long``
with DCSIM_HYPOTHESIS_PROFILE=long). Generated inputs reach the edges example tests skip: empty
and large shapes, channels_last, thresholds next to the membranes, +-0.0, denormals and huge
finite floats.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import assume, given, note
from hypothesis import strategies as st
from torch import nn

import dcsim
from dcsim import analysis
from dcsim.models.lsq import LSQActivation
from dcsim.sim import ops, reference
from dcsim.sim.readout import READOUT_KINDS

F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal
DENORMAL = float(np.nextafter(np.float32(0), np.float32(1)))  # smallest denormal

# ------------------------------------------------------------------------------- strategies


def _f32(v: float) -> float:
    return float(np.float32(v))


def edge_floats(th: float) -> st.SearchStrategy[float]:
    """float32 values concentrated at the edges that matter next to threshold th (for th = the largest
    float32, the value just above it is +inf, on purpose)."""
    with np.errstate(over="ignore"):
        above = _f32(np.nextafter(np.float32(th), np.float32(np.inf)))
    near = [
        th,
        above,
        _f32(np.nextafter(np.float32(th), np.float32(0))),
        th / 2,
        -th,
        0.0,
        -0.0,
        DENORMAL,
        -DENORMAL,
        F32_TINY,
        -F32_TINY,
        3 * DENORMAL,
    ]
    return st.one_of(
        st.sampled_from([_f32(v) for v in near]),
        st.floats(-min(4 * th, F32_MAX), min(4 * th, F32_MAX), allow_nan=False).map(_f32),
        st.floats(-F32_MAX, F32_MAX, width=32, allow_nan=False, allow_infinity=False),
    )


thresholds = st.one_of(
    st.sampled_from([1.0, 0.25, 3.0, DENORMAL, F32_TINY, F32_MAX, 1e30]),
    st.floats(_f32(1e-6), _f32(1e6), width=32),
)


@st.composite
def neuron_shapes(draw) -> tuple[tuple[int, ...], bool]:
    """(shape, channels_last): n in 0..5 and up to three more dims; sometimes one large row."""
    if draw(st.integers(0, 9)) == 0:
        return (
            draw(st.integers(1, 2)),
            draw(st.integers(ops.PARALLEL_MIN_ELEMENTS, 3 * ops.PARALLEL_MIN_ELEMENTS)),
        ), False
    n = draw(st.integers(0, 5))
    rest = tuple(draw(st.lists(st.integers(0, 7), max_size=3)))
    shape = (n, *rest)
    return shape, len(shape) == 4 and draw(st.booleans())


def _tensor(values: np.ndarray, shape: tuple, channels_last: bool) -> torch.Tensor:
    t = torch.from_numpy(values.astype(np.float32).reshape(shape))
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t.contiguous()


def _fill(draw, strategy: st.SearchStrategy[float], shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """A float32 array of ``shape``: a few drawn edge values scattered over random values."""
    size = math.prod(shape)
    arr = rng.standard_normal(size).astype(np.float32) * np.float32(draw(st.sampled_from([0.5, 2.0, 100.0])))
    picks = draw(st.lists(strategy, min_size=0, max_size=min(size, 16)))
    if size:
        arr[rng.integers(0, size, len(picks))] = np.asarray(picks, dtype=np.float32)
    return arr


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical floats (so 0.0 != -0.0), except that any NaN equals any NaN."""
    if a.shape != b.shape:
        return False
    a, b = a.contiguous(), b.contiguous()
    return bool(((a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())).all())


# ----------------------------------------------------------------------------- neuron step


@given(
    data=st.data(),
    method=st.sampled_from(["qcfs", "qffs"]),
    with_x2=st.booleans(),
    th=thresholds,
    steps=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_neuron_step_matches_reference(data, method, with_x2, th, steps, seed):
    (shape, channels_last) = data.draw(neuron_shapes())
    th = _f32(th)
    rng = np.random.default_rng(seed)
    zmax = data.draw(st.sampled_from([1, 3, 7, 2**15 - 1]))
    edges = edge_floats(th)
    u0 = _tensor(_fill(data.draw, edges, shape, rng), shape, channels_last)
    z0 = torch.from_numpy(rng.integers(0, zmax + 1, shape).astype(np.int32)) if method == "qffs" else None
    if z0 is not None and channels_last:
        z0 = z0.contiguous(memory_format=torch.channels_last)
    counts0 = torch.from_numpy(rng.integers(0, 1000, shape[:1]))
    # The same inputs for both: drawn once per step.
    xs = [_fill(data.draw, edges, shape, rng) for _ in range(steps)]
    x2s = [_fill(data.draw, edges, shape, rng) if with_x2 else None for _ in range(steps)]
    results = []
    for fn in (reference.neuron_step, ops.neuron_step):
        u = u0.clone(memory_format=torch.preserve_format)
        z = None if z0 is None else z0.clone(memory_format=torch.preserve_format)
        counts = counts0.clone()
        outs = []
        for x, x2 in zip(xs, x2s, strict=True):
            out = torch.full_like(u, 123.0)
            fn(
                method,
                _tensor(x, shape, channels_last),
                u,
                z,
                out,
                counts,
                th,
                zmax,
                x2=None if x2 is None else _tensor(x2, shape, channels_last),
            )
            outs.append(out.clone())
        results.append((outs, u, z, counts))
    (ref_outs, ref_u, ref_z, ref_counts), (got_outs, got_u, got_z, got_counts) = results
    note(f"shape {shape} channels_last {channels_last} th {th!r} zmax {zmax}")
    for t, (a, b) in enumerate(zip(got_outs, ref_outs, strict=True)):
        assert same_bits(a, b), f"out differs at step {t + 1}"
    assert same_bits(got_u, ref_u), "membrane differs"
    assert got_z is None or torch.equal(got_z, ref_z), "z differs"
    assert torch.equal(got_counts, ref_counts), "counts differ"


# ----------------------------------------------------------------------------- output step


@given(
    n=st.integers(0, 6),
    k=st.integers(1, 12),
    kind=st.sampled_from(sorted(READOUT_KINDS)),
    scale=st.sampled_from([0.01, 0.5, 1.0, 3.0, 40.0]),
    steps=st.integers(1, 3),
    max_steps=st.integers(1, 4),
    threshold=st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0, 1, width=32)),
    magnitude=st.sampled_from([1.0, 100.0, 1e6, 1e30]),
    ties=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_output_step_matches_reference(n, k, kind, scale, steps, max_steps, threshold, magnitude, ties, seed):
    rng = np.random.default_rng(seed)
    code = READOUT_KINDS[kind]

    def values(shape):
        v = rng.standard_normal(shape) * magnitude
        if ties:  # few distinct values: equal maxima, margins of exactly 0
            v = np.round(v / magnitude) * magnitude
        return torch.from_numpy(v.astype(np.float32))

    sums0, xs = values((n, k)), [values((n, k)) for _ in range(steps)]
    steps0 = torch.from_numpy(rng.integers(0, 3, n).astype(np.int32))
    runs = []
    for fn in (reference.output_step, ops.output_step):
        sums, st_ = sums0.clone(), steps0.clone()
        pred = torch.full((n,), -7, dtype=torch.int64)
        score = torch.full((n,), -1.0)
        exited = torch.full((n,), 9, dtype=torch.uint8)
        for x in xs:
            fn(x, sums, st_, max_steps, code, scale, threshold, pred, score, exited)
        runs.append((sums, st_, pred, score, exited))
    (r_sums, r_steps, r_pred, r_score, r_exit), (g_sums, g_steps, g_pred, g_score, g_exit) = runs
    assert same_bits(g_sums, r_sums) and torch.equal(g_steps, r_steps)
    assert torch.equal(g_pred, r_pred), (g_pred, r_pred, g_sums)
    assert not g_score.isnan().any(), f"NaN score from the kernel: {g_score} (sums {g_sums})"
    torch.testing.assert_close(g_score, r_score, rtol=0, atol=1e-5, equal_nan=True)
    assert ((g_score >= 0) & (g_score <= 1)).all(), g_score
    clear = (g_score - threshold).abs() >= 1e-5
    assert torch.equal(g_exit[clear], r_exit[clear])


# ----------------------------------------------------------------------------- compaction

DTYPES = [torch.float32, torch.int32, torch.int64, torch.uint8, torch.bool, torch.bfloat16, torch.float64]


@given(n_in=st.integers(0, 7), n_out=st.integers(0, 9), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_gather_rows_matches_index_select(n_in, n_out, data, seed):
    assume(n_in > 0 or n_out == 0)
    g = torch.Generator().manual_seed(seed % 2**63)
    tensors = []
    for _ in range(data.draw(st.integers(1, 12))):  # more than one native launch group sometimes
        rest = tuple(data.draw(st.lists(st.integers(0, 5), max_size=3)))
        dtype = data.draw(st.sampled_from(DTYPES))
        t = torch.randint(0, 200, (n_in, *rest), generator=g).to(dtype)
        if len(rest) == 3 and data.draw(st.booleans()):
            t = t.contiguous(memory_format=torch.channels_last)
        tensors.append(t)
    index = torch.randint(0, max(n_in, 1), (n_out,), generator=g)
    got = ops.gather_rows(tensors, index)
    for t, o in zip(tensors, got, strict=True):
        want = t.index_select(0, index)
        assert o.shape == want.shape and o.dtype == want.dtype and torch.equal(o, want)
        assert (
            o.stride() == want.stride()
            or o.numel() == 0
            or (t.dim() == 4 and o.is_contiguous(memory_format=torch.channels_last))
            or o.is_contiguous()
        )


# ----------------------------------------------------------------------------- event-driven conv


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    return dict(
        n=draw(st.integers(0, 3)),
        cin=draw(st.integers(1, 20)),
        h=h,
        w=w,
        cout=draw(st.sampled_from([1, 5, 16, 63, 64, 65, 80, 130])),
        kh=kh,
        kw=kw,
        stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        padding=(ph, pw),
    )


@given(
    case=conv_cases(),
    rate=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    with_bias=st.booleans(),
    simd=st.booleans(),
    signed_zero=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_spike_conv_matches_dense_conv(case, rate, with_bias, simd, signed_zero, seed):
    """Dyadic spikes and weights: every sum exact in float32, so the event-driven conv equals a dense one."""
    g = torch.Generator().manual_seed(seed % 2**63)
    n, cin, h, w, cout, kh, kw = (case[k] for k in ("n", "cin", "h", "w", "cout", "kh", "kw"))
    fired = torch.rand((n, cin, h, w), generator=g) < rate
    x = fired * (torch.randint(-2, 3, (n, cin, h, w), generator=g) * 0.5)
    if signed_zero:  # -0.0 is "no spike" too
        x = torch.where(x == 0, torch.tensor(-0.0), x)
    x = x.float().contiguous(memory_format=torch.channels_last)
    weight = (torch.randint(-64, 65, (cout, cin, kh, kw), generator=g) / 64).float()
    bias = (torch.randint(-64, 65, (cout,), generator=g) / 64).float() if with_bias else None
    got = ops.spike_conv2d(x, ops.pack_spike_conv_weight(weight), bias, case["stride"], case["padding"], simd=simd)
    want = F.conv2d(x, weight, bias, case["stride"], case["padding"])
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want)


# ----------------------------------------------------------------------------- trace analysis


@st.composite
def traces(draw) -> analysis.Trace:
    """Small traces with tied scores, scores of exactly 0 and 1, and never-confident samples."""
    n, t_len, k = draw(st.integers(1, 12)), draw(st.integers(1, 8)), draw(st.integers(2, 4))
    levels = draw(
        st.lists(
            st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 1.0]) | st.floats(0, 1, width=32), min_size=1, max_size=5
        )
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    conf = rng.choice(np.asarray(levels, dtype=np.float32), size=(n, t_len))
    never = rng.random(n) < 0.2
    conf[never] = 0.0
    labels = rng.integers(0, k, n)
    pred = rng.integers(0, k, (n, t_len))
    return analysis.Trace(labels=labels, pred=pred, conf=conf, meta={})


def brute_exit(trace: analysis.Trace, c: float) -> tuple[float, float]:
    """(accuracy, mean steps) at threshold c by the exit rule, one sample and one step at a time."""
    correct = steps = 0
    c32 = np.float32(c)
    for i in range(trace.samples):
        e = next((t for t in range(1, trace.steps + 1) if np.float32(trace.conf[i, t - 1]) > c32), trace.steps)
        correct += int(trace.pred[i, e - 1] == trace.labels[i])
        steps += e
    return correct / trace.samples, steps / trace.samples


def candidate_thresholds(trace: analysis.Trace) -> list[float]:
    """Every threshold at which the outcome can differ: 0, 1, each score and its float32 neighbours."""
    out = {0.0, 1.0}
    for v in np.unique(trace.conf):
        for u in (v, np.nextafter(v, np.float32(0)), np.nextafter(v, np.float32(1))):
            if 0 <= u <= 1:
                out.add(float(u))
    return sorted(out)


@given(trace=traces())
def test_exit_rule_and_fronts_match_brute_force(trace):
    candidates = candidate_thresholds(trace)
    brute = {c: brute_exit(trace, c) for c in candidates}
    for c in candidates:
        assert analysis.evaluate(trace, c) == brute[c]
    exact = analysis.front_exact(trace)
    assert exact[0].threshold == 0.0 and exact[-1].threshold == 1.0
    assert [p.threshold for p in exact] == sorted({p.threshold for p in exact})
    for p in exact:
        assert (p.accuracy, p.mean_steps) == brute_exit(trace, p.threshold)
    # every threshold's outcome is the outcome of the front point at or below it (piecewise constant)
    ths = [p.threshold for p in exact]
    for c in candidates:
        p = exact[np.searchsorted(ths, c, side="right") - 1]
        assert (p.accuracy, p.mean_steps) == brute[c], (c, p)
    for p in analysis.front_grid(trace, 0.05):
        assert (p.accuracy, p.mean_steps) == brute_exit(trace, p.threshold)
    # selection: the fewest mean steps among thresholds at the baseline accuracy or above
    base = analysis.baseline(trace)["accuracy"]
    assert base == brute[1.0][0]
    for tol in (0.0, 0.1):
        sel = analysis.select_threshold(exact, base, tol)
        ok = [brute[c] for c in candidates if brute[c][0] >= base - tol]
        assert sel.mean_steps == min(s for _, s in ok)
        assert sel.accuracy == max(a for a, s in ok if s == sel.mean_steps)


@given(trace=traces())
def test_oracles_match_brute_force(trace):
    curves = analysis.oracle_curves(trace)
    correct = trace.pred == trace.labels[:, None]
    for t_max in range(1, trace.steps + 1):
        fc_acc = fc_steps = sc_steps = 0
        for i in range(trace.samples):
            first = next((t for t in range(1, t_max + 1) if correct[i, t - 1]), None)
            fc_acc += first is not None
            fc_steps += first if first is not None else t_max
            stay = next((t for t in range(1, t_max + 1) if correct[i, t - 1 : t_max].all()), None)
            sc_steps += stay if stay is not None else t_max
        n = trace.samples
        assert curves["first_correct"]["accuracy"][t_max - 1] == fc_acc / n
        assert curves["first_correct"]["mean_steps"][t_max - 1] == fc_steps / n
        assert curves["stays_correct"]["mean_steps"][t_max - 1] == sc_steps / n
        assert curves["stays_correct"]["accuracy"][t_max - 1] == correct[:, t_max - 1].mean()


# ----------------------------------------------------------------------------- conversion


class _Residual(nn.Module):
    """LSQ(a(x) + b(x)) with two linear branches (the converter fuses the sum into the neuron)."""

    def __init__(self, a: nn.Module, b: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.a, self.b, self.act = a, b, act

    def forward(self, x):
        return self.act(self.a(x) + self.b(x))


@st.composite
def one_neuron_layer_nets(draw):
    """Random (model, input shape, bits, step): linear layers, one LSQ layer (plain or residual), linear layers."""
    bits = draw(st.integers(1, 4))
    step = draw(st.sampled_from([0.125, 0.25, 0.5, 1.0]))
    pool = draw(st.sampled_from(["none", "avg", "adaptive"]))
    # an adaptive pool averages size**2 values: a power of two keeps the sums exact (6x6 = 36 does not)
    cin, size = draw(st.integers(1, 3)), draw(st.sampled_from([4, 8] if pool == "adaptive" else [4, 6, 8]))
    shape = (cin, size, size)
    mid = draw(st.integers(1, 6))
    act = LSQActivation(bits)
    conv = nn.Conv2d(cin, mid, 3, padding=1, bias=draw(st.booleans()))
    if draw(st.booleans()):
        hidden: nn.Module = _Residual(conv, nn.Conv2d(cin, mid, 1, bias=draw(st.booleans())), act)
    else:
        hidden = nn.Sequential(conv, act)
    layers: list[nn.Module] = []
    if draw(st.booleans()):  # a linear prefix: a 1x1 conv before the hidden layer
        layers.append(nn.Conv2d(cin, cin, 1))
    layers.append(hidden)
    if pool == "avg":
        layers.append(nn.AvgPool2d(2))
        size //= 2
    elif pool == "adaptive":
        layers.append(nn.AdaptiveAvgPool2d(1))
        size = 1
    layers += [nn.Flatten(), nn.Linear(mid * size * size, draw(st.integers(1, 5)))]
    model = nn.Sequential(*layers).eval()
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randint(-16, 17, m.weight.shape, generator=g) / 16)
                if m.bias is not None:
                    m.bias.copy_(torch.randint(-16, 17, m.bias.shape, generator=g) / 16)
        act.step.fill_(step)
        act.initialized.fill_(True)
    return model, shape, bits, step


@given(net=one_neuron_layer_nets(), method=st.sampled_from(["qcfs", "qffs"]), seed=st.integers(0, 2**31))
def test_converted_net_equals_lsq_ann_at_T_equals_Qp(net, method, seed):
    """One spiking layer, u0 = th/2, constant input for T = Qp steps: spike counts equal the ANN's
    quantization levels and the output sum S_T equals Qp times the ANN's logits (dyadic: exact)."""
    model, shape, bits, _step = net
    qp = 2**bits - 1
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-32, 33, (3, *shape), generator=g) / 16
    with torch.no_grad():
        logits = model(x)
    snn = dcsim.convert(model, method=method, u0_fraction=0.5)
    sim = dcsim.Engine(snn).simulate(x, steps=qp, record_sums=True)
    torch.testing.assert_close(sim.sums[:, -1], qp * logits, rtol=0, atol=0)
