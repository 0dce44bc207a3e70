"""Fuzzed files (corpus: tests/fuzz_files.py): mutated checkpoints and traces loaded by the library
and given to ``dcsim eval``; mutated CIFAR-10 batch folders and .tar.gz archives given to ``dcsim train``.

Library loads must end in dcsim's clear error naming the file (ValueError or FileNotFoundError),
or load correctly: a byte-level mutation only if the content is unchanged, a structural one only
as a valid object. CLI runs must exit 1 with an error naming a file of the case, or 0 with a valid
result. Never another exception, a crash, a hang (10 s per file), a write outside the case's
folder or code from the file run. CI runs DCSIM_FUZZ_CASES (default 200) library loads and
DCSIM_FUZZ_CLI_CASES (default 40) CLI runs per file type; the full run uses 2000 of each.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dcsim import analysis
from dcsim.io.checkpoint import load_checkpoint, save_checkpoint
from dcsim.models import build_model
from dcsim.models.lsq import LSQActivation
from fuzz_files import (
    BYTE_LEVEL,
    archive_mutation,
    checkpoint_mutation,
    cifar_archive,
    cifar_batch_files,
    cifar_mutation,
    safetensors_header,
    tar_of,
    trace_mutation,
)

CASES = int(os.environ.get("DCSIM_FUZZ_CASES", "200"))
CLI_CASES = int(os.environ.get("DCSIM_FUZZ_CLI_CASES", "40"))
"""Cases run through the CLI (``dcsim eval`` for checkpoints and traces, ``dcsim train`` for CIFAR-10 batch
folders and archives); the full run uses 2000."""
HANG_SECONDS = 10


def build(architecture: str, width: int = 3, classes: int = 4) -> nn.Module:
    if architecture != "fuzz":
        raise ValueError(f"unknown architecture {architecture!r}")
    if not (isinstance(width, int) and isinstance(classes, int) and 1 <= width <= 64 and 1 <= classes <= 64):
        raise ValueError(f"width and classes must be integers in 1..64, got {width!r}, {classes!r}")
    return nn.Sequential(
        nn.Conv2d(1, width, 3), nn.BatchNorm2d(width), LSQActivation(2), nn.Flatten(), nn.Linear(width * 4 * 4, classes)
    )


META = {
    "architecture": "fuzz",
    "arch_kwargs": {"width": 3, "classes": 4},
    "classes": ["a", "b", "c", "d"],
    "normalization": {"mean": [0.5], "std": [0.25]},
    "dataset": "synthetic",
    "accuracy": {"val": 0.5},
}


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
    print(
        f"\nfuzz {name}: {CASES} mutations, {len(failures)} failures, slowest {slowest:.2f} s; "
        + ", ".join(f"{k}/{o}: {n}" for (k, o), n in sorted(outcomes.items()))
    )
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
        same = (
            all(torch.equal(a, b) for a, b in zip(want.values(), loaded.state_dict().values(), strict=False))
            and list(want) == list(loaded.state_dict())
            and {k: meta[k] for k in META} == META
        )
        assert same, "a changed checkpoint loaded"

    _fuzz(tmp_path, good, checkpoint_mutation, lambda p: load_checkpoint(p, build), check_loaded, "model.safetensors")


def test_fuzzed_traces(tmp_path):
    rng = np.random.default_rng(1)
    n, t_len = 40, 6
    trace = analysis.Trace(
        labels=rng.integers(0, 3, n),
        pred=rng.integers(0, 3, (n, t_len)),
        conf=rng.random((n, t_len), dtype=np.float32),
        meta={"method": "qcfs", "steps": t_len},
    )
    path = analysis.save_trace(tmp_path / "good.npz", trace)
    good = path.read_bytes()
    arrays = {k: getattr(trace, k) for k in ("labels", "pred", "conf")} | {
        "meta": np.array('{"method": "qcfs", "steps": 6}')
    }

    def check_loaded(obj, kind, unchanged):
        assert isinstance(obj, analysis.Trace)
        if kind in BYTE_LEVEL:  # the zip CRCs must catch any changed byte of the arrays
            same = all(np.array_equal(getattr(obj, k), getattr(trace, k)) for k in ("labels", "pred", "conf"))
            assert same and obj.meta == trace.meta, "a damaged trace loaded with other values"

    _fuzz(
        tmp_path, good, lambda blob, r: trace_mutation(blob, arrays, r), analysis.load_trace, check_loaded, "trace.npz"
    )


def test_clear_errors_for_truncated_trace_name_the_file(tmp_path):
    """load_trace wraps zipfile/numpy errors (BadZipFile, EOFError, OSError) in a ValueError naming the file."""
    trace = analysis.Trace(
        labels=np.zeros(3, dtype=np.int64),
        pred=np.zeros((3, 2), dtype=np.int64),
        conf=np.zeros((3, 2), dtype=np.float32),
    )
    good = analysis.save_trace(tmp_path / "t.npz", trace).read_bytes()
    bad = tmp_path / "bad.npz"
    for cut in (len(good) - 1, len(good) // 2, 30, 4):
        bad.write_bytes(good[:cut])
        with pytest.raises(ValueError, match=rf"trace {bad}: "):
            analysis.load_trace(bad)


# ------------------------------------------------------------------ CIFAR-10 batch folders and archives, via the CLI


def _train_argv(root: Path, out: Path) -> list[str]:
    return [
        "train", "--dataset", "cifar10", "--data-root", str(root), "--val-size", "3", "--epochs", "0",
        "--float-epochs", "1", "--width", "1", "--train-batch-size", "16", "--device", "cpu", "--quiet",
        "--out", str(out),
    ]  # fmt: skip


def _valid_checkpoint(out: Path, kind: str) -> None:
    _, meta = load_checkpoint(out, build_model)
    assert meta["classes"] and all(isinstance(c, str) for c in meta["classes"]), "odd classes loaded"


def _without_times(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("ms_per_inference", "seconds")}


def _valid_eval(reference: dict):
    """A check of ``dcsim eval``'s JSON: a plausible result, and for byte-level damage that loaded (the
    file's content must then be unchanged) exactly the unmutated files' result."""

    def check(out: Path, kind: str) -> None:
        result = json.loads(out.read_text())
        assert 0.0 <= result["accuracy"] <= 1.0 and result["samples"] == 360, "odd evaluation"
        if kind in BYTE_LEVEL:
            assert _without_times(result) == _without_times(reference), "damaged bytes loaded with another result"

    return check


def _fuzz_cli(tmp_path, capsys, monkeypatch, name: str, make_case, valid) -> None:
    """Run the CLI on CLI_CASES mutated inputs; make_case(case_dir, rng, outside, marker) writes one into
    case_dir and returns (kind, argv, out): the command line and the file it writes on success.
    Each must exit 0 with an ``out`` that ``valid(out, kind)`` accepts, or 1 with an error naming a path inside the
    case folder and no ``out``, within HANG_SECONDS, writing nothing outside the case folder and
    running no code from the file."""
    from dcsim.cli import EXIT_ERROR, EXIT_OK, main

    rng = np.random.default_rng(len(name) + 100)
    outside, cache = tmp_path / "outside", tmp_path / "cache"
    outside.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    marker = str(outside / "code-ran")
    before = set(tmp_path.iterdir())
    outcomes: Counter = Counter()
    failures, slowest = [], 0.0
    for case in range(CLI_CASES):
        case_dir = tmp_path / f"case{case:05d}"
        case_dir.mkdir()
        kind, argv, out = make_case(case_dir, rng, str(outside), marker)
        t0 = time.perf_counter()
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(HANG_SECONDS)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                code = main(argv)
            err = capsys.readouterr().err
            if code == EXIT_OK:
                valid(out, kind)
                outcomes[(kind, "loaded")] += 1
            else:
                assert code == EXIT_ERROR, f"exit code {code}"
                assert str(case_dir) in err, f"the error names no file of the case: {err.strip()[-300:]}"
                assert not out.exists(), "an error left its output"
                outcomes[(kind, "error")] += 1
        except Hang:
            failures.append(f"case {case} ({kind}): over {HANG_SECONDS} s")
        except AssertionError as e:
            failures.append(f"case {case} ({kind}): {e}")
        except Exception as e:  # escaped the CLI's error handling
            failures.append(f"case {case} ({kind}): {type(e).__name__} escaped: {e}")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        slowest = max(slowest, time.perf_counter() - t0)
        if Path(marker).exists():
            failures.append(f"case {case} ({kind}): code from the file ran")
        escaped = sorted(p.name for p in set(tmp_path.iterdir()) - before - {case_dir})
        escaped += [p.name for p in outside.iterdir()]
        if escaped or (cache.exists() and any(cache.iterdir())):
            failures.append(f"case {case} ({kind}): wrote outside its folder: {escaped}")
        shutil.rmtree(case_dir)
    print(
        f"\nfuzz {name} (CLI): {CLI_CASES} mutations, {len(failures)} failures, slowest {slowest:.2f} s; "
        + ", ".join(f"{k}/{o}: {n}" for (k, o), n in sorted(outcomes.items()))
    )
    assert not failures, "\n".join(failures[:20])


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory, digits_checkpoint):
    """(checkpoint, its validation trace, the eval JSON of both) of the shared digits model, traced with the CLI."""
    from dcsim.cli import EXIT_OK, main

    d = tmp_path_factory.mktemp("fuzz-model")
    ckpt, trace = digits_checkpoint, d / "val.npz"
    assert main(["trace", str(ckpt), "--method", "qcfs", "--steps", "3", "--out", str(trace), "--device", "cpu"]) == 0
    assert main(_eval_argv(ckpt, trace, d / "eval.json")) == EXIT_OK
    return ckpt, trace, json.loads((d / "eval.json").read_text())


def _eval_argv(ckpt: Path, trace: Path, out: Path) -> list[str]:
    return ["eval", str(ckpt), "--method", "qcfs", "--trace", str(trace), "--device", "cpu", "--json", str(out)]


def test_fuzzed_checkpoints_through_the_cli(tmp_path, capsys, monkeypatch, digits_model):
    ckpt, trace, reference = digits_model
    good = ckpt.read_bytes()

    def make_case(case_dir, rng, outside, marker):
        kind, blob = checkpoint_mutation(good, rng)
        (case_dir / "model.safetensors").write_bytes(blob)
        out = case_dir / "eval.json"
        return kind, _eval_argv(case_dir / "model.safetensors", trace, out), out

    _fuzz_cli(tmp_path, capsys, monkeypatch, "model.safetensors", make_case, _valid_eval(reference))


def test_fuzzed_traces_through_the_cli(tmp_path, capsys, monkeypatch, digits_model):
    ckpt, trace, reference = digits_model
    good = trace.read_bytes()
    with np.load(trace) as z:
        arrays = {k: z[k] for k in z.files}

    def make_case(case_dir, rng, outside, marker):
        kind, blob = trace_mutation(good, arrays, rng)
        (case_dir / "val.npz").write_bytes(blob)
        out = case_dir / "eval.json"
        return kind, _eval_argv(ckpt, case_dir / "val.npz", out), out

    _fuzz_cli(tmp_path, capsys, monkeypatch, "trace.npz", make_case, _valid_eval(reference))


def test_fuzzed_cifar_batches_through_the_cli(tmp_path, capsys, monkeypatch):
    files = cifar_batch_files()

    def make_case(case_dir, rng, outside, marker):
        kind, mutated = cifar_mutation(files, rng, marker)
        folder = case_dir / "cifar-10-batches-py"
        folder.mkdir()
        for fname, blob in mutated.items():
            (folder / fname).write_bytes(blob)
        out = case_dir / "out.safetensors"
        return kind, _train_argv(folder, out), out

    _fuzz_cli(tmp_path, capsys, monkeypatch, "cifar-10-batches-py", make_case, _valid_checkpoint)


def test_fuzzed_cifar_archives_through_the_cli(tmp_path, capsys, monkeypatch):
    files = cifar_batch_files()

    def make_case(case_dir, rng, outside, marker):
        kind, blob = archive_mutation(files, rng, outside, marker)
        archive = case_dir / "cifar-10-python.tar.gz"
        archive.write_bytes(blob)
        out = case_dir / "out.safetensors"
        return kind, _train_argv(archive, out), out

    _fuzz_cli(tmp_path, capsys, monkeypatch, "cifar-10-python.tar.gz", make_case, _valid_checkpoint)


def test_the_cli_fuzz_corpus_is_valid_before_mutation(tmp_path, capsys):
    """The unmutated folder and archive train (so the fuzz cases above start from a loadable input)."""
    from dcsim.cli import EXIT_OK, main

    files = cifar_batch_files()
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for fname, blob in files.items():
        (folder / fname).write_bytes(blob)
    assert main(_train_argv(folder, tmp_path / "a.safetensors")) == EXIT_OK
    (tmp_path / "arch").mkdir()
    archive = tmp_path / "arch" / "c.tar.gz"
    archive.write_bytes(tar_of(cifar_archive(files)))
    assert main(_train_argv(archive, tmp_path / "b.safetensors")) == EXIT_OK


def test_an_unclosed_npy_header_is_a_clear_error(tmp_path):
    """Found by fuzzing through the CLI: numpy tokenizes an .npy header whose dict is never closed and
    raised tokenize.TokenError, which escaped load_trace (a large member is read before its CRC is)."""
    n = 4000
    trace = analysis.Trace(
        labels=np.zeros(n, dtype=np.int64),
        pred=np.zeros((n, 2), dtype=np.int64),
        conf=np.zeros((n, 2), dtype=np.float32),
    )
    good = analysis.save_trace(tmp_path / "t.npz", trace).read_bytes()
    end = good.index(b"}", good.index(b"{'descr'"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good[:end] + b" " + good[end + 1 :])
    with pytest.raises(ValueError, match=rf"trace {bad}: unreadable array data \(TokenError"):
        analysis.load_trace(bad)
