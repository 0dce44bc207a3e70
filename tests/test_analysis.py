"""dcsim.analysis and dcsim.analysis.plots against plain brute-force evaluators (loops over thresholds and samples)."""

from __future__ import annotations

import json
import os
from itertools import pairwise

import numpy as np
import pytest

from dcsim import analysis as A
from dcsim.analysis import plots

MODES = ("uniform", "quarters", "increasing", "sparse")
CASES = [
    (n, t, mode, seed) for n in (1, 7, 200) for t in (1, 2, 13) for mode in MODES for seed in range(5 if n < 200 else 2)
]
CASE_IDS = [f"N{n}-T{t}-{mode}-s{seed}" for n, t, mode, seed in CASES]


def make_trace(n: int, t: int, mode: str, seed: int, k: int = 3) -> A.Trace:
    """Random trace; ties and never-confident rows by construction, exact 1.0 in 'quarters'/'sparse'."""
    rng = np.random.default_rng([n, t, MODES.index(mode), seed])
    labels = rng.integers(0, k, n)
    pred = np.where(rng.random((n, t)) < 0.6, labels[:, None], rng.integers(0, k, (n, t)))
    if mode == "uniform":
        conf = rng.random((n, t))
    elif mode == "quarters":
        conf = rng.integers(0, 5, (n, t)) / 4
    elif mode == "increasing":
        conf = np.sort(np.round(rng.random((n, t)), 2), axis=1)
    else:
        conf = rng.choice([0.0, 0.0, 0.0, 0.5, 1.0], size=(n, t))
    conf[rng.random(n) < 0.2] = 0.0
    return A.Trace(labels, pred, conf.astype(np.float32), meta={"mode": mode, "seed": seed})


# ----------------------------------------------------------------------------- brute force


def brute_exit(conf_row: list[float], c: float) -> int:
    """1-based exit step: first t with conf > c (both as float32 values), else T."""
    c32 = float(np.float32(c))
    for t, v in enumerate(conf_row):
        if v > c32:
            return t + 1
    return len(conf_row)


def brute_evaluate(trace: A.Trace, c: float) -> tuple[float, float]:
    conf, pred, labels = trace.conf.tolist(), trace.pred.tolist(), trace.labels.tolist()
    correct = steps = 0
    for i in range(len(labels)):
        e = brute_exit(conf[i], c)
        correct += pred[i][e - 1] == labels[i]
        steps += e
    return correct / len(labels), steps / len(labels)


def critical_thresholds(trace: A.Trace) -> list[float]:
    """0, 1, every distinct conf value and the float32 just below it: every outcome occurs at one of them."""
    vals = np.unique(trace.conf)
    below = np.nextafter(vals, np.float32(-1))
    out = np.concatenate([[0.0, 1.0], vals, below[below >= 0]])
    return sorted(set(out.astype(np.float64).tolist()))


def brute_select(trace: A.Trace, thresholds: list[float], tolerance: float) -> tuple[float, float]:
    base = brute_evaluate(trace, 1.0)[0]
    best = None
    for c in thresholds:
        acc, steps = brute_evaluate(trace, c)
        if acc >= base - tolerance and (best is None or (steps, -acc) < (best[1], -best[0])):
            best = (acc, steps)
    return best


def brute_oracle(trace: A.Trace, t_max: int) -> dict:
    """Oracles with max length t_max, plainly."""
    pred, labels = trace.pred.tolist(), trace.labels.tolist()
    n = len(labels)
    fc_ok = fc_steps = sc_ok = sc_steps = 0
    for i in range(n):
        ok = [pred[i][t] == labels[i] for t in range(t_max)]
        if any(ok):
            fc_ok += 1
            fc_steps += ok.index(True) + 1
        else:
            fc_steps += t_max
        if ok[-1]:
            sc_ok += 1
            start = t_max
            while start > 1 and ok[start - 2]:
                start -= 1
            sc_steps += start
        else:
            sc_steps += t_max
    return {
        "first_correct": {"accuracy": fc_ok / n, "mean_steps": fc_steps / n},
        "stays_correct": {"accuracy": sc_ok / n, "mean_steps": sc_steps / n},
    }


def sample(values: list, k: int, rng: np.random.Generator) -> list:
    """All values if few, else k random ones plus the first and last."""
    if len(values) <= k:
        return list(values)
    idx = set(rng.choice(len(values), k, replace=False).tolist()) | {0, len(values) - 1}
    return [values[i] for i in sorted(idx)]


# ----------------------------------------------------------------------------- exit rule, hand cases


def test_exit_steps_paper_example_and_strictness():
    conf = np.array([[0.1, 0.3, 0.5, 0.7, 0.9], [0.1, 0.6, 0.6, 0.6, 0.6], [0, 0, 0, 0, 0]], dtype=np.float32)
    assert A.exit_steps(conf, 0.6).tolist() == [4, 5, 5]  # 0.6 is not > 0.6
    assert A.exit_steps(conf, 0.5).tolist() == [4, 2, 5]
    assert A.exit_steps(conf, 0.0).tolist() == [1, 1, 5]
    assert A.exit_steps(np.ones((2, 3), np.float32), 1.0).tolist() == [3, 3]
    # float32 comparison, as in the engine: float32(0.1) is not > 0.1 once 0.1 is rounded to float32
    assert A.exit_steps(np.array([[np.float32(0.1), 0.2]], np.float32), 0.1).tolist() == [2]


def test_front_exact_hand_case():
    # sample 0: conf .25 .75, right only at t=2; sample 1: conf .5 .5, right only at t=1
    tr = A.Trace(np.array([1, 0]), np.array([[0, 1], [0, 2]]), np.array([[0.25, 0.75], [0.5, 0.5]], np.float32))
    assert [tuple(p) for p in A.front_exact(tr)] == [
        (0.0, 0.5, 1.0),
        (0.25, 1.0, 1.5),
        (0.5, 0.5, 2.0),
        (1.0, 0.5, 2.0),
    ]
    assert A.evaluate(tr, 0.3) == (1.0, 1.5)
    assert A.evaluate(tr, 0.6) == (0.5, 2.0)
    assert A.analyze(tr)["selected"] == {"threshold": 0.0, "accuracy": 0.5, "mean_steps": 1.0, "saving": 0.5}


# ----------------------------------------------------------------------------- fronts vs brute force


@pytest.mark.parametrize("n,t,mode,seed", CASES, ids=CASE_IDS)
def test_front_exact_vs_brute_force(n, t, mode, seed):
    tr = make_trace(n, t, mode, seed)
    rng = np.random.default_rng(seed)
    front = A.front_exact(tr)
    ths = [p.threshold for p in front]
    assert ths[0] == 0.0 and ths[-1] == 1.0 and ths == sorted(set(ths))
    assert front[-1].mean_steps == t and front[-1].accuracy == brute_evaluate(tr, 1.0)[0]
    steps = [p.mean_steps for p in front]
    assert all(a < b for a, b in pairwise(steps[:-1])) and steps[-2] <= steps[-1]
    assert (steps[-2] == steps[-1]) == (not ((tr.conf == 1.0) & (np.arange(t) < t - 1)).any())
    for p in sample(front, 40, rng):
        assert (p.accuracy, p.mean_steps) == brute_evaluate(tr, p.threshold), p
    # piecewise constancy: any c in [threshold_k, threshold_{k+1}) gives point k
    checks = sample(critical_thresholds(tr), 60, rng) + rng.random(30).tolist()
    for c in checks:
        k = int(np.searchsorted(np.array(ths, np.float32), np.float32(c), side="right")) - 1
        assert (front[k].accuracy, front[k].mean_steps) == brute_evaluate(tr, c), (c, front[k])


@pytest.mark.parametrize("n,t,mode,seed", CASES[::3], ids=CASE_IDS[::3])
@pytest.mark.parametrize("resolution", [0.1, 0.25, 0.3, 1.0, 0.01])
def test_front_grid_vs_brute_force(n, t, mode, seed, resolution):
    tr = make_trace(n, t, mode, seed)
    front = A.front_grid(tr, resolution)
    expected = [round(k * resolution, 10) for k in range(int(round(1 / resolution, 10)) + 1)]
    if expected[-1] != 1.0:
        expected.append(1.0)
    assert [p.threshold for p in front] == expected
    for p in sample(front, 25, np.random.default_rng(seed)):
        assert (p.accuracy, p.mean_steps) == brute_evaluate(tr, p.threshold), p


@pytest.mark.parametrize("n,t,mode,seed", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("tolerance", [0.0, 0.05])
def test_selection_vs_brute_force(n, t, mode, seed, tolerance):
    tr = make_trace(n, t, mode, seed)
    grid = [round(0.1 * k, 10) for k in range(11)]
    rep = A.analyze(tr, tolerance=tolerance, exact=False)
    sel = rep["selected"]
    assert (sel["accuracy"], sel["mean_steps"]) == brute_select(tr, grid, tolerance)
    assert sel["saving"] == pytest.approx(1 - sel["mean_steps"] / t)
    if len(np.unique(tr.conf)) * n <= 3000:  # exhaustive brute force over every outcome
        rep = A.analyze(tr, tolerance=tolerance)
        sel = rep["selected"]
        assert (sel["accuracy"], sel["mean_steps"]) == brute_select(tr, critical_thresholds(tr), tolerance)
        assert brute_evaluate(tr, sel["threshold"]) == (sel["accuracy"], sel["mean_steps"])


def test_select_threshold_ties_and_errors():
    P = A.FrontPoint
    front = [
        P(0.0, 0.5, 1.0),
        P(0.2, 0.9, 3.0),
        P(0.3, 0.95, 3.0),
        P(0.4, 0.95, 3.0),
        P(0.6, 0.96, 5.0),
        P(1.0, 0.95, 8.0),
    ]
    assert A.select_threshold(front, 0.95) == P(0.4, 0.95, 3.0)  # tie on steps and accuracy -> higher threshold
    assert A.select_threshold(front, 0.96) == P(0.6, 0.96, 5.0)
    assert A.select_threshold(front, 0.96, tolerance=0.1) == P(0.4, 0.95, 3.0)  # tie on steps -> higher accuracy
    assert A.select_threshold(front, 0.96, tolerance=0.5) == P(0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="tolerance"):
        A.select_threshold(front, 0.9, tolerance=-0.01)
    with pytest.raises(ValueError, match="reaches accuracy"):
        A.select_threshold(front, 0.99)


# ----------------------------------------------------------------------------- oracle, curves, histogram


@pytest.mark.parametrize("n,t,mode,seed", CASES[::2], ids=CASE_IDS[::2])
def test_oracle_and_curves_vs_brute_force(n, t, mode, seed):
    tr = make_trace(n, t, mode, seed)
    assert A.oracle(tr) == brute_oracle(tr, t)
    curves = A.oracle_curves(tr)
    base = A.baseline_curve(tr)
    labels, pred, conf = tr.labels.tolist(), tr.pred.tolist(), tr.conf.tolist()
    for tt in range(1, t + 1):
        want = brute_oracle(tr, tt)
        for name in ("first_correct", "stays_correct"):
            got = {k: curves[name][k][tt - 1] for k in ("accuracy", "mean_steps")}
            assert got == pytest.approx(want[name], abs=1e-12), (name, tt)
        acc_t = sum(pred[i][tt - 1] == labels[i] for i in range(n)) / n
        assert base["accuracy"][tt - 1] == pytest.approx(acc_t, abs=1e-12)
        assert base["mean_steps"][tt - 1] == tt
        assert A.mean_confidence_vs_t(tr)[tt - 1] == pytest.approx(sum(conf[i][tt - 1] for i in range(n)) / n, abs=1e-6)
    np.testing.assert_array_equal(A.accuracy_vs_t(tr), base["accuracy"])
    assert A.baseline(tr) == {"accuracy": brute_evaluate(tr, 1.0)[0], "mean_steps": float(t)}
    for c in (0.0, 0.25, 0.5, 0.99, 1.0):
        hist = A.exit_histogram(tr, c)
        assert hist.shape == (t,) and hist.sum() == n
        want = [0] * t
        for i in range(n):
            want[brute_exit(conf[i], c) - 1] += 1
        assert hist.tolist() == want


def test_oracle_hand_case():
    # correct pattern per sample over T=4: 1 0 1 1 | 0 0 0 0 | 0 1 0 0
    tr = A.Trace(
        np.array([1, 1, 1]), np.array([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]]), np.zeros((3, 4), np.float32)
    )
    o = A.oracle(tr)
    assert o["first_correct"] == {"accuracy": 2 / 3, "mean_steps": (1 + 4 + 2) / 3}
    assert o["stays_correct"] == {"accuracy": 1 / 3, "mean_steps": (3 + 4 + 4) / 3}


# ----------------------------------------------------------------------------- analyze


def _assert_plain_json(obj) -> None:
    if isinstance(obj, dict):
        assert all(isinstance(k, str) for k in obj)
        for v in obj.values():
            _assert_plain_json(v)
    elif isinstance(obj, list):
        for v in obj:
            _assert_plain_json(v)
    else:
        assert obj is None or type(obj) in (int, float, str, bool), type(obj)


def test_analyze_structure():
    tr = make_trace(200, 13, "increasing", 0)
    rep = A.analyze(tr, resolution=0.25)
    _assert_plain_json(rep)
    json.dumps(rep)
    assert set(rep) == {
        "baseline",
        "selected",
        "front",
        "front_exact",
        "oracle",
        "curves",
        "exit_histogram",
        "steps",
        "samples",
        "meta",
    }
    assert rep["steps"] == 13 and rep["samples"] == 200 and rep["meta"] == {"mode": "increasing", "seed": 0}
    assert [p["threshold"] for p in rep["front"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert rep["front_exact"] == [p._asdict() for p in A.front_exact(tr)]
    assert rep["baseline"] == A.baseline(tr)
    assert rep["oracle"] == A.oracle(tr)
    assert rep["exit_histogram"] == A.exit_histogram(tr, rep["selected"]["threshold"]).tolist()
    assert sum(rep["exit_histogram"]) == 200
    assert rep["selected"]["accuracy"] >= rep["baseline"]["accuracy"]
    assert len(rep["curves"]["oracle_first_correct"]) == 13
    assert rep["curves"]["oracle_stays_correct"][-1] == {"max_steps": 13, **rep["oracle"]["stays_correct"]}
    assert "front_exact" not in A.analyze(tr, exact=False)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", [-0.1, 1.1, float("nan"), "0.5", True, None])
def test_threshold_outside_unit_interval(bad):
    tr = make_trace(7, 2, "uniform", 0)
    for fn in (lambda: A.evaluate(tr, bad), lambda: A.exit_steps(tr.conf, bad), lambda: A.exit_histogram(tr, bad)):
        with pytest.raises(ValueError, match="threshold"):
            fn()


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), True])
def test_bad_resolution(bad):
    with pytest.raises(ValueError, match="resolution"):
        A.front_grid(make_trace(7, 2, "uniform", 0), bad)


def test_bad_tolerance():
    with pytest.raises(ValueError, match="tolerance"):
        A.analyze(make_trace(7, 2, "uniform", 0), tolerance=-0.01)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"labels": np.array([0, -1])}, "labels"),
        ({"labels": np.array([0.0, 1.0])}, "labels"),
        ({"labels": np.zeros(0, np.int64), "pred": np.zeros((0, 2), np.int64), "conf": np.zeros((0, 2))}, "labels"),
        ({"pred": np.array([[0, 1], [2, -3]])}, "pred"),
        ({"pred": np.zeros((2, 3), np.int64)}, "conf"),
        ({"pred": np.zeros((3, 2), np.int64)}, "pred"),
        ({"conf": np.array([[0.1, 1.5], [0, 0]])}, "conf"),
        ({"conf": np.array([[0.1, np.nan], [0, 0]])}, "conf"),
        ({"conf": np.zeros((2, 0)), "pred": np.zeros((2, 0), np.int64)}, "pred"),
        ({"sums": np.zeros((2, 3, 4))}, "sums"),
        ({"sums": np.zeros((2, 2, 1))}, "pred"),
        ({"meta": {"x": object()}}, "meta"),
        ({"meta": [1]}, "meta"),
    ],
)
def test_trace_validation(kwargs, field):
    args = {"labels": np.array([0, 1]), "pred": np.array([[0, 1], [1, 1]]), "conf": np.array([[0.1, 0.9], [0, 1]])}
    A.Trace(**args)  # the unmodified arguments are valid
    with pytest.raises(ValueError, match=field):
        A.Trace(**(args | kwargs))


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("with_sums", [False, True])
def test_save_load_round_trip(tmp_path, with_sums):
    tr = make_trace(7, 13, "uniform", 1)
    sums = np.random.default_rng(0).normal(size=(7, 13, 3)).astype(np.float32) if with_sums else None
    tr = A.Trace(tr.labels, tr.pred, tr.conf, sums, {"method": "qffs", "bits": 2, "tau": 1.5, "nested": [1, "a"]})
    path = tmp_path / "sub" / "val_trace.npz"
    assert A.save_trace(path, tr) == path
    assert sorted(os.listdir(path.parent)) == ["val_trace.npz"]
    back = A.load_trace(path)
    for name in ("labels", "pred", "conf"):
        arr = getattr(back, name)
        np.testing.assert_array_equal(arr, getattr(tr, name))
        assert arr.dtype == (np.float32 if name == "conf" else np.int64)
    assert back.meta == tr.meta
    if with_sums:
        np.testing.assert_array_equal(back.sums, sums)
    else:
        assert back.sums is None
    assert A.front_exact(back) == A.front_exact(tr)


def test_save_is_atomic(tmp_path, monkeypatch):
    tr = make_trace(7, 2, "uniform", 0)
    path = tmp_path / "t.npz"
    A.save_trace(path, tr)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK half written")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        A.save_trace(path, make_trace(7, 13, "uniform", 1))
    assert os.listdir(tmp_path) == ["t.npz"] and path.read_bytes() == before


def _write_npz(path, **arrays):
    arrays.setdefault("labels", np.array([0, 1, 2, 0, 1]))
    arrays.setdefault("pred", np.zeros((5, 4), np.int64))
    arrays.setdefault("conf", np.full((5, 4), 0.5, np.float32))
    arrays.setdefault("meta", np.array("{}"))
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_load_errors(tmp_path):
    A.load_trace(_write_npz(tmp_path / "ok.npz"))  # the helper's defaults are valid
    with pytest.raises(ValueError, match=r"x\.npz: missing array 'conf'"):
        A.load_trace(_write_npz(tmp_path / "x.npz", conf=None))
    with pytest.raises(ValueError, match=r"x\.npz: array 'conf' has shape \(5, 3\) but 'pred' has \(5, 4\)"):
        A.load_trace(_write_npz(tmp_path / "x.npz", conf=np.zeros((5, 3), np.float32)))
    with pytest.raises(ValueError, match=r"nan\.npz: array 'conf' holds NaN"):
        A.load_trace(_write_npz(tmp_path / "nan.npz", conf=np.full((5, 4), np.nan, np.float32)))
    with pytest.raises(ValueError, match=r"m\.npz: array 'meta' is not valid JSON"):
        A.load_trace(_write_npz(tmp_path / "m.npz", meta=np.array("{oops")))
    with pytest.raises(ValueError, match=r"o\.npz"):
        A.load_trace(_write_npz(tmp_path / "o.npz", labels=np.array([0, 1, 2, 0, "a"], dtype=object)))
    with pytest.raises(FileNotFoundError, match=r"absent\.npz"):
        A.load_trace(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="not a file"):
        A.load_trace(tmp_path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=r"junk\.npz"):
        A.load_trace(tmp_path / "junk.npz")


# ----------------------------------------------------------------------------- plots


def test_plots_write_png(tmp_path):
    tr = make_trace(200, 13, "increasing", 0)
    tr = A.Trace(tr.labels, tr.pred, tr.conf, meta={"model": "runs/vgg16.safetensors", "method": "qcfs", "bits": 2})
    rep = json.loads(json.dumps(A.analyze(tr, tolerance=0.02)))  # plots take the JSON form too
    for fn in (plots.plot_front, plots.plot_exit_histogram, plots.plot_accuracy_confidence):
        out = fn(rep, tmp_path / "p" / f"{fn.__name__}.png")
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert sorted(os.listdir(tmp_path / "p")) == [
        "plot_accuracy_confidence.png",
        "plot_exit_histogram.png",
        "plot_front.png",
    ]
    rep_grid = A.analyze(tr, resolution=0.01, exact=False)
    assert plots.plot_front(rep_grid, tmp_path / "grid.png").stat().st_size > 5000
    del rep["curves"]
    with pytest.raises(ValueError, match="curves"):
        plots.plot_front(rep, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
