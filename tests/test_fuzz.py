"""Fuzzed files: mutated checkpoints and traces (corpus: tests/fuzz_files.py) loaded by dcsim.

Every mutation must end in dcsim's clear error naming the file (ValueError or
FileNotFoundError), or load correctly: a byte-level mutation only if the content is unchanged,
a structural one only as a valid object. Never another exception, a crash or a hang (10 s per
file). CI runs DCSIM_FUZZ_CASES (default 200) per file type; the full run uses 2000.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from dcsim import analysis
from dcsim.checkpoint import load_checkpoint, save_checkpoint
from dcsim.lsq import LSQActivation
from fuzz_files import BYTE_LEVEL, checkpoint_mutation, safetensors_header, trace_mutation

CASES = int(os.environ.get("DCSIM_FUZZ_CASES", "200"))
HANG_SECONDS = 10


def build(architecture: str, width: int = 3, classes: int = 4) -> nn.Module:
    if architecture != "fuzz":
        raise ValueError(f"unknown architecture {architecture!r}")
    if not (isinstance(width, int) and isinstance(classes, int) and 1 <= width <= 64 and 1 <= classes <= 64):
        raise ValueError(f"width and classes must be integers in 1..64, got {width!r}, {classes!r}")
    return nn.Sequential(nn.Conv2d(1, width, 3), nn.BatchNorm2d(width), LSQActivation(2), nn.Flatten(),
                         nn.Linear(width * 4 * 4, classes))


META = {"architecture": "fuzz", "arch_kwargs": {"width": 3, "classes": 4}, "classes": ["a", "b", "c", "d"],
        "normalization": {"mean": [0.5], "std": [0.25]}, "dataset": "synthetic", "accuracy": {"val": 0.5}}


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def _outcome(load, path, check_loaded) -> str:
    """'error', 'loaded', or raises AssertionError describing a failure."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = load(path)
    except (ValueError, FileNotFoundError) as err:
        assert str(path) in str(err), f"the error does not name the file: {err}"
        return "error"
    except Hang:
        raise AssertionError(f"loading took over {HANG_SECONDS} s") from None
    except Exception as err:  # an escape: not one of dcsim's clear errors
        raise AssertionError(f"{type(err).__name__} escaped: {err}") from err
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    check_loaded(obj)
    return "loaded"


def _fuzz(tmp_path, original: bytes, mutate, load, check_loaded, name: str):
    rng = np.random.default_rng(len(name))
    outcomes: Counter = Counter()
    failures = []
    slowest = 0.0
    for case in range(CASES):
        kind, blob = mutate(original, rng)
        path = tmp_path / f"{case:05d}-{name}"
        path.write_bytes(blob)
        t0 = time.perf_counter()
        try:
            # the lambda runs inside _outcome, in this iteration
            outcomes[(kind, _outcome(load, path, lambda obj: check_loaded(obj, kind, blob == original)))] += 1  # noqa: B023
        except AssertionError as err:
            failures.append(f"case {case} ({kind}): {err}")
        slowest = max(slowest, time.perf_counter() - t0)
        path.unlink()
    print(f"\nfuzz {name}: {CASES} mutations, {len(failures)} failures, slowest {slowest:.2f} s; "
          + ", ".join(f"{k}/{o}: {n}" for (k, o), n in sorted(outcomes.items())))
    assert not failures, "\n".join(failures[:20])


def test_fuzzed_checkpoints(tmp_path):
    torch.manual_seed(0)
    model = build("fuzz")
    model.train()
    model(torch.randn(8, 1, 6, 6))
    model.eval()
    good = save_checkpoint(tmp_path / "good.safetensors", model, META).read_bytes()
    want = model.state_dict()
    _, data_start = safetensors_header(good)
    assert data_start < len(good)

    def check_loaded(obj, kind, unchanged):
        loaded, meta = obj
        same = all(torch.equal(a, b) for a, b in zip(want.values(), loaded.state_dict().values(), strict=False)) and \
            list(want) == list(loaded.state_dict()) and {k: meta[k] for k in META} == META
        assert same, "a changed checkpoint loaded"

    _fuzz(tmp_path, good, checkpoint_mutation, lambda p: load_checkpoint(p, build), check_loaded, "model.safetensors")


def test_fuzzed_traces(tmp_path):
    rng = np.random.default_rng(1)
    n, t_len = 40, 6
    trace = analysis.Trace(labels=rng.integers(0, 3, n), pred=rng.integers(0, 3, (n, t_len)),
                           conf=rng.random((n, t_len), dtype=np.float32), meta={"method": "qcfs", "steps": t_len})
    path = analysis.save_trace(tmp_path / "good.npz", trace)
    good = path.read_bytes()
    arrays = {k: getattr(trace, k) for k in ("labels", "pred", "conf")} | {"meta": np.array('{"method": "qcfs", "steps": 6}')}

    def check_loaded(obj, kind, unchanged):
        assert isinstance(obj, analysis.Trace)
        if kind in BYTE_LEVEL:  # the zip CRCs must catch any changed byte of the arrays
            same = all(np.array_equal(getattr(obj, k), getattr(trace, k)) for k in ("labels", "pred", "conf"))
            assert same and obj.meta == trace.meta, "a damaged trace loaded with other values"

    _fuzz(tmp_path, good, lambda blob, r: trace_mutation(blob, arrays, r), analysis.load_trace, check_loaded, "trace.npz")


def test_clear_errors_for_truncated_trace_name_the_file(tmp_path):
    """load_trace wraps zipfile/numpy errors (BadZipFile, EOFError, OSError) in a ValueError naming the file."""
    trace = analysis.Trace(labels=np.zeros(3, dtype=np.int64), pred=np.zeros((3, 2), dtype=np.int64),
                           conf=np.zeros((3, 2), dtype=np.float32))
    good = analysis.save_trace(tmp_path / "t.npz", trace).read_bytes()
    bad = tmp_path / "bad.npz"
    for cut in (len(good) - 1, len(good) // 2, 30, 4):
        bad.write_bytes(good[:cut])
        with pytest.raises(ValueError, match=rf"trace {bad}: "):
            analysis.load_trace(bad)
