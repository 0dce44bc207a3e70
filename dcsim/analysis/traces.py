"""Traces of full-length SNN runs and the Dynamic Confidence analysis on them (pure numpy).

A :class:`Trace` holds, for N samples run for all T steps: ``labels`` int64 [N], ``pred``
int64 [N, T] (argmax of the running output sum S_t, column t-1 for step t), ``conf`` float32
[N, T] (the stopping score at step t, in [0, 1]), optional ``sums`` float32 [N, T, K] and a
JSON-ready ``meta`` dict.

Exit rule (paper section 5.3, as in the engine): sample i stops at
``e_i(c) = first t in 1..T with conf[i, t-1] > c`` (strictly greater), else at T, and
predicts ``pred[i, e_i(c)-1]``. Steps are 1-based counts of time steps. Scores and
thresholds are compared in float32, as the engine's kernels do, so a threshold taken from
here behaves identically in a live run. Accuracies are fractions in [0, 1]; mean steps are
in [1, T]. Since scores are <= 1 and the rule is strict, threshold 1.0 is the baseline
(every sample runs T steps) and every front built here contains it.

The exact front uses the monotonicity noted in the paper's supplement S6: with the prefix
maximum M[i, t] = max(conf[i, :t]), e_i(c) is the first t with M[i, t] > c, so as c falls a
sample's exit only moves earlier, and only at its "record" steps (where M rises). All
thresholds are evaluated from one sort of these record values and cumulative sums of the
per-sample changes, never one pass per threshold.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..checks import check_threshold
from ..io.atomic import atomic_output, library_detail

__all__ = [
    "FrontPoint",
    "Trace",
    "accuracy_vs_t",
    "analyze",
    "baseline",
    "baseline_curve",
    "check_trace_for",
    "evaluate",
    "exit_histogram",
    "exit_steps",
    "front_exact",
    "front_grid",
    "identity_meta",
    "load_trace",
    "mean_confidence_vs_t",
    "oracle",
    "oracle_curves",
    "save_trace",
    "select_threshold",
]


# ----------------------------------------------------------------------------- trace


@dataclass(frozen=True, eq=False)
class Trace:
    """A full-length SNN run on a data split (N >= 1 samples, T >= 1 steps, K classes).

    labels: int64 [N] true classes; pred: int64 [N, T] prediction after step t in column t-1;
    conf: float32 [N, T] stopping score after step t, finite and in [0, 1]; sums: optional
    float32 [N, T, K] running output sums; meta: JSON-serializable dict (method, bits,
    readout, alpha, tau, steps, model, split, ...). Inputs are cast to these dtypes (integer
    arrays for labels/pred, real arrays for conf/sums); a bad field raises ``ValueError``
    naming it. ``eq=False``: traces compare by identity (arrays have no single truth value).
    """

    labels: np.ndarray
    pred: np.ndarray
    conf: np.ndarray
    sums: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = _integer_array("labels", self.labels)
        pred = _integer_array("pred", self.pred)
        conf = _real_array("conf", self.conf)
        if labels.ndim != 1 or labels.shape[0] < 1:
            raise ValueError(f"array 'labels' must have shape (N,) with N >= 1, got {labels.shape}")
        n = labels.shape[0]
        if pred.ndim != 2 or pred.shape[1] < 1:
            raise ValueError(f"array 'pred' must have shape (N, T) with T >= 1, got {pred.shape}")
        if pred.shape[0] != n:
            raise ValueError(f"array 'pred' has shape {pred.shape} but 'labels' has {labels.shape}")
        if conf.shape != pred.shape:
            raise ValueError(f"array 'conf' has shape {conf.shape} but 'pred' has {pred.shape}")
        if not np.isfinite(conf).all():
            raise ValueError("array 'conf' holds NaN or infinite values")
        if conf.min() < 0.0 or conf.max() > 1.0:
            raise ValueError(f"array 'conf' must lie in [0, 1], got values in [{conf.min()}, {conf.max()}]")
        if labels.min() < 0:
            raise ValueError(f"array 'labels' holds a negative class {labels.min()}")
        if pred.min() < 0:
            raise ValueError(f"array 'pred' holds a negative class {pred.min()}")
        sums = self.sums
        if sums is not None:
            sums = _real_array("sums", sums)
            if sums.ndim != 3 or sums.shape[:2] != pred.shape or sums.shape[2] < 1:
                raise ValueError(
                    f"array 'sums' has shape {sums.shape} but 'pred' has {pred.shape} (expected (N, T, K) with K >= 1)"
                )
            if pred.max() >= sums.shape[2]:
                raise ValueError(f"array 'pred' holds class {pred.max()} but 'sums' has only {sums.shape[2]} classes")
        if not isinstance(self.meta, dict):
            raise ValueError(f"field 'meta' must be a dict, got {type(self.meta).__name__}")
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as e:
            raise ValueError(f"field 'meta' is not JSON-serializable: {e}") from e
        _check_meta_against_arrays(self.meta, labels, pred, sums)
        for name, value in (("labels", labels), ("pred", pred), ("conf", conf), ("sums", sums)):
            object.__setattr__(self, name, value)

    @property
    def samples(self) -> int:
        """N, the number of samples."""
        return int(self.labels.shape[0])

    @property
    def steps(self) -> int:
        """T, the number of time steps recorded."""
        return int(self.pred.shape[1])


def _meta_int(meta: dict[str, Any], key: str) -> int | None:
    """meta[key] as an int >= 1, None when absent; a ValueError naming the field otherwise."""
    if key not in meta:
        return None
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"meta '{key}' must be an integer >= 1, got {value!r}")
    return value


def _check_meta_against_arrays(
    meta: dict[str, Any], labels: np.ndarray, pred: np.ndarray, sums: np.ndarray | None
) -> None:
    """The metadata's ``steps`` and ``num_classes`` (when present) must agree with the arrays."""
    steps = _meta_int(meta, "steps")
    if steps is not None and steps != pred.shape[1]:
        raise ValueError(
            f"meta 'steps' is {steps} but the arrays hold {pred.shape[1]} steps ('pred' and 'conf' "
            f"have shape {pred.shape}): the trace is inconsistent"
        )
    classes = _meta_int(meta, "num_classes")
    if classes is not None:
        for name, arr in (("labels", labels), ("pred", pred)):
            if arr.max() >= classes:
                raise ValueError(
                    f"array '{name}' holds class {arr.max()} but meta 'num_classes' is {classes} (classes 0..{classes - 1})"
                )
        if sums is not None and sums.shape[2] != classes:
            raise ValueError(f"array 'sums' has {sums.shape[2]} classes but meta 'num_classes' is {classes}")


def _integer_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"array '{name}' must hold integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"array '{name}' holds values beyond int64")
    return arr.astype(np.int64, copy=False)


def _real_array(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"array '{name}' must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


_ARRAYS = ("labels", "pred", "conf")
_UNREADABLE = (
    ValueError,
    OSError,
    EOFError,
    KeyError,
    MemoryError,
    NotImplementedError,
    OverflowError,
    RuntimeError,
    TypeError,
    struct.error,
    SyntaxError,  # numpy parsing a damaged .npy header (ast.literal_eval)
    tokenize.TokenError,  # ... or tokenizing it
    zipfile.BadZipFile,
    zlib.error,
)
"""What numpy and zipfile raise for a damaged .npz: truncated, bad checksums or headers, absurd sizes."""


def _npz_detail(err: BaseException) -> str:
    """numpy's reason, except its advice to load with allow_pickle=True: dcsim says why it does not."""
    if "pickle" in str(err).lower():
        return (
            "it holds pickled Python objects, which dcsim never loads: a trace holds numeric arrays and a JSON string"
        )
    return library_detail(err)


def save_trace(path: str | os.PathLike[str], trace: Trace) -> Path:
    """Write ``trace`` to ``path`` as an uncompressed ``.npz``, atomically; returns the path.

    Keys: ``labels``, ``pred``, ``conf``, ``sums`` (only when present) and ``meta``, a 0-d
    unicode array holding the JSON of ``trace.meta``. The file is written exactly at ``path``
    (no suffix is added) via a temporary file in the same folder and ``os.replace``.
    """
    if not isinstance(trace, Trace):
        raise ValueError(f"trace must be a dcsim.analysis.Trace, got {type(trace).__name__}")
    arrays = {name: getattr(trace, name) for name in _ARRAYS}
    if trace.sums is not None:
        arrays["sums"] = trace.sums
    arrays["meta"] = np.array(json.dumps(trace.meta))
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def load_trace(path: str | os.PathLike[str]) -> Trace:
    """Read a trace written by :func:`save_trace` (no pickle).

    Raises ``FileNotFoundError`` naming ``path`` if it does not exist, and ``ValueError``
    starting with ``trace <path>:`` if it is not a file, not an ``.npz``, lacks an array,
    or holds arrays that fail :class:`Trace` validation (shapes, dtypes, NaN in conf).
    """
    where = f"trace {os.fspath(path)}"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: no such file")
    if not os.path.isfile(path):
        raise ValueError(f"{where}: not a file")
    try:
        npz = np.load(path, allow_pickle=False)
    except _UNREADABLE as e:
        raise ValueError(f"{where}: not a readable .npz file ({_npz_detail(e)})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{where}: not an .npz archive (a single array)")
    with npz:
        missing = [k for k in (*_ARRAYS, "meta") if k not in npz.files]
        if missing:
            raise ValueError(f"{where}: missing array {', '.join(repr(k) for k in missing)}")
        try:
            arrays = {k: npz[k] for k in npz.files if k in (*_ARRAYS, "sums", "meta")}
        except _UNREADABLE as e:  # a damaged member, or an object array (which would need pickle)
            raise ValueError(f"{where}: unreadable array data ({_npz_detail(e)})") from None
    meta = arrays.pop("meta")
    if meta.shape != () or meta.dtype.kind != "U":
        raise ValueError(f"{where}: array 'meta' must be a 0-d string holding JSON, got {meta.dtype} {meta.shape}")
    try:
        meta = json.loads(str(meta))
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: array 'meta' is not valid JSON ({e})") from e
    try:
        return Trace(meta=meta, **arrays)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


# ----------------------------------------------------------------------------- trace identity

TRACE_FORMAT = 2
"""Trace metadata ``trace_format``: 2 records ``checkpoint_sha256`` (the traced checkpoint's content
hash), ``num_classes``, ``split`` and ``steps``; traces without ``trace_format`` predate it."""


def identity_meta(checkpoint_sha256: str | None, num_classes: int) -> dict[str, Any]:
    """The metadata fields that tie a trace to the network it was recorded from (see
    :func:`check_trace_for`): merge them into the trace's meta when recording."""
    fields: dict[str, Any] = {"trace_format": TRACE_FORMAT, "num_classes": int(num_classes)}
    if checkpoint_sha256 is not None:
        fields["checkpoint_sha256"] = checkpoint_sha256
    return fields


def check_trace_for(
    trace: Trace,
    checkpoint_sha256: str | None,
    num_classes: int,
    *,
    trace_path: str | os.PathLike[str] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    allow_test_split: bool = False,
    allow_unmatched: bool = False,
) -> None:
    """Refuse ``trace`` for selecting th_c for the network with content hash ``checkpoint_sha256``
    and ``num_classes`` classes, with a ValueError naming the trace and checkpoint files, when:

    - the trace records another network's content hash (``meta['checkpoint_sha256']``);
    - its ``num_classes`` differs from the network's, or a label or prediction lies outside the
      network's classes;
    - it is a trace of the test split (``meta['split'] == 'test'``) and ``allow_test_split`` is
      False: selecting th_c on the split whose numbers are reported makes them optimistic.

    - the trace or the checkpoint carries no content hash (a trace written by an older dcsim, a
      format-1 checkpoint), so that the match cannot be checked, and ``allow_unmatched`` is False;
      with it, such a trace is accepted with a warning naming the file.
    """
    trace = _check_trace(trace)
    where = f"trace {os.fspath(trace_path)}" if trace_path is not None else "the trace"
    ckpt = f"checkpoint {os.fspath(checkpoint_path)}" if checkpoint_path is not None else "the checkpoint"
    meta = trace.meta
    traced = meta.get("checkpoint_sha256")
    if traced is not None and not isinstance(traced, str):
        raise ValueError(f"{where}: meta 'checkpoint_sha256' must be a hex string, got {traced!r}")
    if traced is None or checkpoint_sha256 is None:
        missing = where if traced is None else ckpt
        unchecked = (
            f"{missing} has no content hash (written by an older dcsim), so nothing shows that {where} "
            f"was recorded from {ckpt}"
        )
        if not allow_unmatched:
            raise ValueError(
                f"{unchecked}: a trace of another network would select a wrong th_c. Record the trace again "
                f"with `dcsim trace` (it then carries the hash), or pass --unmatched-trace to use it anyway"
            )
        import warnings

        warnings.warn(f"{unchecked}; used as asked (--unmatched-trace)", UserWarning, stacklevel=2)
    elif traced != checkpoint_sha256:
        raise ValueError(
            f"{where} was recorded from another network (checkpoint content hash {traced[:16]}...) than "
            f"{ckpt} (content hash {checkpoint_sha256[:16]}...): its T, tau and th_c do not apply; "
            f"record a trace of {ckpt} with `dcsim trace`"
        )
    recorded = meta.get("num_classes")
    if recorded is not None and recorded != num_classes:
        raise ValueError(f"{where} records {recorded} classes but {ckpt} has {num_classes}")
    for name, arr in (("label", trace.labels), ("prediction", trace.pred)):
        if int(arr.max()) >= num_classes:
            raise ValueError(
                f"{where}: {name} {int(arr.max())} lies outside the {num_classes} classes (0..{num_classes - 1}) "
                f"of {ckpt}: the trace is not of this network's data"
            )
    split = meta.get("split")
    if split == "test" and not allow_test_split:
        raise ValueError(
            f"{where} is a trace of the test split: selecting th_c on the split whose accuracy is reported "
            "makes that accuracy optimistic. Trace the validation split (`dcsim trace --split val`), or "
            "pass --select-on-test to select on the test split anyway"
        )


# ----------------------------------------------------------------------------- exit rule


class FrontPoint(NamedTuple):
    """One threshold's result: accuracy (fraction) and mean exit step (1-based steps)."""

    threshold: float
    accuracy: float
    mean_steps: float


def _check_tolerance(tolerance: float) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not tolerance >= 0.0:
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    return float(tolerance)


def _check_trace(trace: Trace) -> Trace:
    if not isinstance(trace, Trace):
        raise ValueError(f"trace must be a dcsim.analysis.Trace, got {type(trace).__name__}")
    return trace


def exit_steps(conf: np.ndarray, threshold: float) -> np.ndarray:
    """Exit step of every sample at ``threshold``: int64 [N], values in 1..T.

    conf: [N, T] scores (compared in float32); step t is the first with conf[i, t-1] >
    threshold, or T if there is none.
    """
    threshold = check_threshold(threshold)
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[1] < 1:
        raise ValueError(f"conf must have shape (N, T) with T >= 1, got {conf.shape}")
    passed = conf.astype(np.float32, copy=False) > np.float32(threshold)
    first = np.argmax(passed, axis=1) + 1
    steps: np.ndarray = np.where(passed.any(axis=1), first, conf.shape[1]).astype(np.int64)
    return steps


def evaluate(trace: Trace, threshold: float) -> tuple[float, float]:
    """(accuracy, mean_steps) of Dynamic Confidence at ``threshold`` on ``trace`` (one pass)."""
    e = exit_steps(_check_trace(trace).conf, threshold)
    p = np.take_along_axis(trace.pred, (e - 1)[:, None], axis=1)[:, 0]
    return int((p == trace.labels).sum()) / trace.samples, int(e.sum()) / trace.samples


# ----------------------------------------------------------------------------- fronts


class _Events(NamedTuple):
    """Per-sample exit changes, sorted by the score value at which they switch on.

    A change with value v applies to every threshold c < v (the sample's exit moves from
    its next record step, or T, to this record step). values: float32 [E] ascending;
    steps_cum, correct_cum: int64 [E + 1] prefix sums of the step and correctness changes.
    """

    values: np.ndarray
    steps_cum: np.ndarray
    correct_cum: np.ndarray


def _events(trace: Trace) -> _Events:
    conf, t_len = trace.conf, trace.steps
    prefix_max = np.maximum.accumulate(conf, axis=1)
    record = np.ones(conf.shape, dtype=bool)
    record[:, 1:] = prefix_max[:, 1:] > prefix_max[:, :-1]
    step = np.arange(1, t_len + 1, dtype=np.int64)
    # next_record[i, t-1]: the first record step after t, or T (the exit for thresholds in [M[i,t], next record value))
    at_record = np.where(record, step, t_len)
    after = np.minimum.accumulate(at_record[:, ::-1], axis=1)[:, ::-1]
    next_record = np.full(conf.shape, t_len, dtype=np.int64)
    next_record[:, :-1] = after[:, 1:]
    # a record at step T changes nothing; a record with value 0 never fires (0 > c is false for c >= 0)
    record[:, -1] = False
    record &= conf > 0
    rows, cols = np.nonzero(record)
    nxt = next_record[rows, cols]
    correct = trace.pred == trace.labels[:, None]
    d_steps = (cols + 1) - nxt
    d_correct = correct[rows, cols].astype(np.int64) - correct[rows, nxt - 1]
    values = conf[rows, cols]
    order = np.argsort(values)  # ties need no order: thresholds only split between distinct values
    zero = np.zeros(1, dtype=np.int64)
    return _Events(
        values[order],
        np.concatenate([zero, np.cumsum(d_steps[order])]),
        np.concatenate([zero, np.cumsum(d_correct[order])]),
    )


def _evaluate_many(trace: Trace, events: _Events, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, mean_steps) float64 [P] at each threshold (float64 [P] in [0, 1]), via the events."""
    c32 = thresholds.astype(np.float32)
    first_on = np.searchsorted(events.values, c32, side="right")  # events with value > c are [first_on:]
    n, t_len = trace.samples, trace.steps
    correct_t = int((trace.pred[:, -1] == trace.labels).sum())
    correct = correct_t + (events.correct_cum[-1] - events.correct_cum[first_on])
    total_steps = n * t_len + (events.steps_cum[-1] - events.steps_cum[first_on])
    return correct / n, total_steps / n


def _points(thresholds: np.ndarray, acc: np.ndarray, steps: np.ndarray) -> list[FrontPoint]:
    return list(map(FrontPoint._make, zip(thresholds.tolist(), acc.tolist(), steps.tolist(), strict=True)))


def _grid(resolution: float) -> np.ndarray:
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Real) or not 0.0 < resolution <= 1.0:
        raise ValueError(f"resolution must be a number in (0, 1], got {resolution!r}")
    k_max = math.floor(round(1.0 / resolution, 10))
    grid = np.round(np.arange(k_max + 1) * float(resolution), 10)
    return grid if grid[-1] == 1.0 else np.append(grid, 1.0)


def front_grid(trace: Trace, resolution: float = 0.1) -> list[FrontPoint]:
    """The front on the grid 0, r, 2r, ..., 1 (thresholds ``np.round(k*r, 10)``; 1.0 appended if missed).

    resolution r in (0, 1]. Each point is exactly :func:`evaluate` at its threshold; the
    cost is one sort of the trace's breakpoints whatever the resolution.
    """
    trace = _check_trace(trace)
    grid = _grid(resolution)
    return _points(grid, *_evaluate_many(trace, _events(trace), grid))


def front_exact(trace: Trace) -> list[FrontPoint]:
    """Every distinct (accuracy, mean_steps) the threshold can produce, ascending in threshold.

    Accuracy and mean steps are piecewise constant in c and change only at a sample's record
    score (a step where its running maximum of conf rises). Convention: the points are at
    c = 0.0, at every distinct record score in (0, 1), and at c = 1.0 (the baseline); each is
    exactly :func:`evaluate` at its threshold, and holds for every c in [threshold, next
    point's threshold). Mean steps strictly increase with the threshold, except that the point
    at 1.0 repeats the one before it when no sample has a score of exactly 1.0 before step T.
    """
    trace = _check_trace(trace)
    return _exact_points(trace, _events(trace))


def _exact_points(trace: Trace, events: _Events) -> list[FrontPoint]:
    inner = np.unique(events.values[events.values < 1.0]).astype(np.float64)
    thresholds = np.concatenate([[0.0], inner, [1.0]])
    return _points(thresholds, *_evaluate_many(trace, events, thresholds))


def select_threshold(front: list[FrontPoint], baseline_accuracy: float, tolerance: float = 0.0) -> FrontPoint:
    """The point with the lowest mean steps whose accuracy >= baseline_accuracy - tolerance.

    Ties: higher accuracy, then higher threshold. Raises ``ValueError`` if no point
    qualifies (never for fronts from this module with the trace's baseline, which contain
    threshold 1.0), or if tolerance < 0.
    """
    floor = baseline_accuracy - _check_tolerance(tolerance)
    eligible = [FrontPoint(*p) for p in front if p[1] >= floor]
    if not eligible:
        raise ValueError(f"no point of the front (of {len(front)}) reaches accuracy {floor}")
    return min(eligible, key=lambda p: (p.mean_steps, -p.accuracy, -p.threshold))


# ----------------------------------------------------------------------------- baseline, oracle, curves


def baseline(trace: Trace) -> dict[str, float]:
    """{accuracy, mean_steps} without early exit: prediction at T, mean steps = T."""
    trace = _check_trace(trace)
    return {
        "accuracy": int((trace.pred[:, -1] == trace.labels).sum()) / trace.samples,
        "mean_steps": float(trace.steps),
    }


def baseline_curve(trace: Trace) -> dict[str, np.ndarray]:
    """Accuracy of the prediction at T' and mean steps T', float64 [T] each, for T' = 1..T."""
    return {"accuracy": accuracy_vs_t(trace), "mean_steps": np.arange(1, trace.steps + 1, dtype=np.float64)}


def accuracy_vs_t(trace: Trace) -> np.ndarray:
    """float64 [T]: fraction of samples whose prediction after step t is correct (index t-1)."""
    trace = _check_trace(trace)
    acc: np.ndarray = (trace.pred == trace.labels[:, None]).mean(axis=0, dtype=np.float64)
    return acc


def mean_confidence_vs_t(trace: Trace) -> np.ndarray:
    """float64 [T]: mean stopping score after step t over the samples (index t-1)."""
    mean: np.ndarray = _check_trace(trace).conf.mean(axis=0, dtype=np.float64)
    return mean


def oracle_curves(trace: Trace) -> dict[str, dict[str, np.ndarray]]:
    """Oracle (label-aware) stopping with a maximum length T' = 1..T; float64 [T] arrays.

    ``first_correct``: stop at the first t <= T' whose prediction is correct, else at T'
    (wrong). ``stays_correct``: stop at the first t after which the prediction stays correct
    through T', else at T' (wrong); its accuracy equals the baseline's at T'. Returns
    {"first_correct": {"accuracy", "mean_steps"}, "stays_correct": {...}}, index T'-1.
    """
    trace = _check_trace(trace)
    n, t_len = trace.samples, trace.steps
    correct = trace.pred == trace.labels[:, None]
    step = np.arange(1, t_len + 1, dtype=np.int64)
    first = np.where(correct.any(axis=1), np.argmax(correct, axis=1) + 1, t_len + 1)
    reached = np.bincount(first, minlength=t_len + 2)[1 : t_len + 1]  # samples first correct at t
    fc_acc = np.cumsum(reached) / n
    fc_steps = np.minimum(first[:, None], step[None, :]).sum(axis=0) / n
    last_wrong = np.maximum.accumulate(np.where(correct, 0, step), axis=1)  # last wrong step <= T', 0 if none
    sc_steps = np.where(correct, last_wrong + 1, step).sum(axis=0) / n
    return {
        "first_correct": {"accuracy": fc_acc, "mean_steps": fc_steps},
        "stays_correct": {"accuracy": correct.mean(axis=0, dtype=np.float64), "mean_steps": sc_steps},
    }


def oracle(trace: Trace) -> dict[str, dict[str, float]]:
    """Oracle upper bounds at the full length T (see :func:`oracle_curves`).

    Returns {"first_correct": {"accuracy", "mean_steps"}, "stays_correct": {...}}.
    """
    return _at_full_length(oracle_curves(trace))


def _at_full_length(curves: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    return {name: {k: float(v[-1]) for k, v in c.items()} for name, c in curves.items()}


def exit_histogram(trace: Trace, threshold: float) -> np.ndarray:
    """int64 [T]: number of samples exiting at step t (index t-1) at ``threshold``; sums to N."""
    e = exit_steps(_check_trace(trace).conf, threshold)
    return np.bincount(e - 1, minlength=trace.steps).astype(np.int64)


# ----------------------------------------------------------------------------- report


def _point_dict(p: FrontPoint) -> dict[str, float]:
    return {"threshold": p.threshold, "accuracy": p.accuracy, "mean_steps": p.mean_steps}


def _curve_points(curve: dict[str, np.ndarray]) -> list[dict[str, float]]:
    return [
        {"max_steps": t + 1, "accuracy": float(a), "mean_steps": float(s)}
        for t, (a, s) in enumerate(zip(curve["accuracy"], curve["mean_steps"], strict=True))
    ]


def analyze(trace: Trace, resolution: float = 0.1, tolerance: float = 0.0, exact: bool = True) -> dict[str, Any]:
    """The whole Dynamic Confidence analysis of a trace as a JSON-ready dict (Python floats/ints).

    Keys: ``baseline`` {accuracy, mean_steps}; ``selected`` {threshold, accuracy, mean_steps,
    saving = 1 - mean_steps / T}, chosen by :func:`select_threshold` against the baseline
    accuracy from the exact front if ``exact`` else from the grid front; ``front`` (grid at
    ``resolution``) and ``front_exact`` (only if ``exact``): lists of {threshold, accuracy,
    mean_steps}; ``oracle`` {first_correct, stays_correct} at T; ``curves``:
    ``accuracy_vs_t`` and ``mean_confidence_vs_t`` ([T] floats, index t-1) and
    ``oracle_first_correct`` / ``oracle_stays_correct`` ([T] of {max_steps T', accuracy,
    mean_steps}); ``exit_histogram`` ([T] ints at the selected threshold); ``steps`` T;
    ``samples`` N; ``meta``.
    """
    trace = _check_trace(trace)
    _check_tolerance(tolerance)
    events = _events(trace)
    grid = _grid(resolution)
    front = _points(grid, *_evaluate_many(trace, events, grid))
    exact_front = _exact_points(trace, events) if exact else None
    base = baseline(trace)
    sel = select_threshold(front if exact_front is None else exact_front, base["accuracy"], tolerance)
    orc = oracle_curves(trace)
    report: dict[str, Any] = {
        "baseline": base,
        "selected": _point_dict(sel) | {"saving": 1.0 - sel.mean_steps / trace.steps},
        "front": [_point_dict(p) for p in front],
    }
    if exact_front is not None:
        report["front_exact"] = [_point_dict(p) for p in exact_front]
    return report | {
        "oracle": _at_full_length(orc),
        "curves": {
            "accuracy_vs_t": accuracy_vs_t(trace).tolist(),
            "mean_confidence_vs_t": mean_confidence_vs_t(trace).tolist(),
            "oracle_first_correct": _curve_points(orc["first_correct"]),
            "oracle_stays_correct": _curve_points(orc["stays_correct"]),
        },
        "exit_histogram": exit_histogram(trace, sel.threshold).tolist(),
        "steps": trace.steps,
        "samples": trace.samples,
        "meta": json.loads(json.dumps(trace.meta)),
    }
