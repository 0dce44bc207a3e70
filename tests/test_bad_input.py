"""Bad input, second round (issue 25), at the library level: traces that identify their checkpoint and
are checked for consistency, sizes and files that are not what they say, stray files, budget message."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dcsim.analysis import Trace, load_trace, save_trace
from dcsim.cli import EXIT_ERROR, EXIT_OK, main
from dcsim.io import zoo
from dcsim.io.checkpoint import load_checkpoint, save_checkpoint
from dcsim.models import build_model

# The new API is imported inside the tests, so that each test fails on its own without its fix.


def stored_hash(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["dcsim"])["content_sha256"]


def load_trace_for(*args, **kwargs):
    from dcsim.analysis.selection import load_trace_for

    return load_trace_for(*args, **kwargs)


META = {
    "architecture": "small_cnn",
    "arch_kwargs": {"num_classes": 10, "in_channels": 1, "width": 4},
    "classes": [str(i) for i in range(10)],
    "normalization": {"mean": [0.0], "std": [1.0]},
    "dataset": "digits",
    "accuracy": {},
}


def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_model("small_cnn", num_classes=10, in_channels=1, width=4, bits=2)
    return save_checkpoint(path, model, META | {"seed": seed})


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two checkpoints of the same architecture (different weights) and a digits val trace of the first."""
    d = tmp_path_factory.mktemp("bad")
    a, b = _checkpoint(d / "a.safetensors", 1), _checkpoint(d / "b.safetensors", 2)
    trace = d / "a_val.npz"
    rc = main(["trace", str(a), "--method", "qffs", "--steps", "3", "--tau", "1", "--out", str(trace)])
    assert rc == EXIT_OK
    return a, b, trace


def _trace(meta: dict, n: int = 6, t: int = 4, label: int = 1) -> Trace:
    return Trace(
        labels=np.full(n, label),
        pred=np.full((n, t), label),
        conf=np.linspace(0, 1, n * t, dtype=np.float32).reshape(n, t),
        meta=meta,
    )


# ----------------------------------------------------------------------------- trace identity


def test_trace_records_its_checkpoint_split_steps_and_classes(two):
    a, _, trace = two
    meta = load_trace(trace).meta
    assert meta["checkpoint_sha256"] == stored_hash(a) and len(meta["checkpoint_sha256"]) == 64
    assert meta["trace_format"] == 2
    assert (meta["split"], meta["steps"], meta["num_classes"]) == ("val", 3, 10)


def test_trace_of_another_network_is_refused_naming_both_files(two, capsys):
    a, b, trace = two
    with pytest.raises(ValueError) as info:
        load_trace_for(trace, b)
    msg = str(info.value)
    assert str(trace) in msg and str(b) in msg and "another network" in msg
    load_trace_for(trace, a)  # its own network: accepted
    rc = main(["eval", str(b), "--method", "qffs", "--trace", str(trace)])
    err = capsys.readouterr().err
    assert rc != EXIT_OK and str(trace) in err and str(b) in err and "Traceback" not in err


def test_a_zoo_folder_has_its_checkpoints_identity(two, tmp_path):
    a, b, trace = two
    folder = tmp_path / "a_zoo"
    zoo.export(a, folder)
    assert zoo.model_identity(folder)[1] == stored_hash(a)
    load_trace_for(trace, folder)
    zoo.export(b, tmp_path / "b_zoo")
    with pytest.raises(ValueError, match="another network"):
        load_trace_for(trace, tmp_path / "b_zoo")


def test_eval_and_stream_with_the_right_trace_still_run(two, tmp_path):
    a, _, trace = two
    assert main(["eval", str(a), "--method", "qffs", "--trace", str(trace), "--split", "val"]) == EXIT_OK
    out = tmp_path / "s.json"
    assert main(["stream", str(a), "--method", "qffs", "--trace", str(trace), "--slots", "8", "--json", str(out)]) == 0


def test_steps_metadata_disagreeing_with_the_arrays_is_refused(tmp_path):
    with pytest.raises(ValueError, match="meta 'steps' is 8 but the arrays hold 4 steps"):
        _trace({"steps": 8}, t=4)
    path = tmp_path / "steps.npz"  # written by hand, as a damaged or edited file would be
    good = _trace({"steps": 4}, t=4)
    np.savez(path, labels=good.labels, pred=good.pred, conf=good.conf, meta=np.array(json.dumps({"steps": 8})))
    with pytest.raises(ValueError) as info:
        load_trace(path)
    assert str(path) in str(info.value) and "'steps' is 8" in str(info.value)


def test_labels_outside_the_models_classes_are_refused(two, tmp_path):
    a, _, _ = two
    with pytest.raises(ValueError, match="class 12 but meta 'num_classes' is 10"):
        _trace({"num_classes": 10}, label=12)
    path = save_trace(tmp_path / "labels.npz", _trace({"checkpoint_sha256": stored_hash(a), "split": "val"}, label=12))
    with pytest.raises(ValueError) as info:
        load_trace_for(path, a)
    msg = str(info.value)
    assert str(path) in msg and str(a) in msg and "label 12 lies outside the 10 classes" in msg
    other = save_trace(tmp_path / "k.npz", _trace({"checkpoint_sha256": stored_hash(a), "num_classes": 3}, label=1))
    with pytest.raises(ValueError, match="records 3 classes"):
        load_trace_for(other, a)


def test_a_test_split_trace_selects_th_c_only_when_asked_by_name(two, tmp_path, capsys):
    a, _, _ = two
    test_trace = tmp_path / "a_test.npz"
    rc = main(
        ["trace", str(a), "--method", "qffs", "--steps", "3", "--tau", "1", "--split", "test", "--out", str(test_trace)]
    )
    assert rc == EXIT_OK
    with pytest.raises(ValueError) as info:
        load_trace_for(test_trace, a)
    msg = str(info.value)
    assert str(test_trace) in msg and "test split" in msg and "optimistic" in msg and "--select-on-test" in msg
    load_trace_for(test_trace, a, allow_test_split=True)
    capsys.readouterr()
    assert main(["eval", str(a), "--method", "qffs", "--trace", str(test_trace)]) != EXIT_OK
    assert "test split" in capsys.readouterr().err
    assert main(["eval", str(a), "--method", "qffs", "--trace", str(test_trace), "--select-on-test"]) == 0


def test_a_trace_without_a_checkpoint_hash_is_refused_unless_asked_for_by_name(two, tmp_path, capsys):
    a, _, trace = two
    old = load_trace(trace)
    meta = {k: v for k, v in old.meta.items() if k not in ("checkpoint_sha256", "trace_format", "num_classes")}
    path = save_trace(tmp_path / "old.npz", Trace(old.labels, old.pred, old.conf, meta=meta))
    with pytest.raises(ValueError) as info:
        load_trace_for(path, a)
    msg = str(info.value)
    assert str(path) in msg and str(a) in msg and "no content hash" in msg and "--unmatched-trace" in msg
    with pytest.warns(UserWarning) as record:
        load_trace_for(path, a, allow_unmatched=True)
    assert any(str(path) in str(w.message) and "no content hash" in str(w.message) for w in record)
    capsys.readouterr()
    assert main(["eval", str(a), "--method", "qffs", "--trace", str(path)]) == EXIT_ERROR
    assert "--unmatched-trace" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="no content hash"):
        assert main(["eval", str(a), "--method", "qffs", "--trace", str(path), "--unmatched-trace"]) == EXIT_OK
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_trace_for(trace, a)  # a trace with the hash: no warning


def test_trace_metadata_errors_name_the_file(tmp_path):
    from dcsim.analysis.selection import trace_readout

    base = {"readout": "max_softmax", "alpha": 3.0, "tau": 1.0, "steps": 4}
    for bad in ({"tau": "x"}, {"alpha": 0}, {"alpha": float("nan")}, {"readout": "nope"}, {"readout": ["x"]}):
        path = save_trace(tmp_path / "m.npz", _trace(base | bad))
        with pytest.raises(ValueError) as info:
            trace_readout(load_trace(path), path)
        assert str(path) in str(info.value), bad
    path = save_trace(tmp_path / "missing.npz", _trace({"steps": 4}))
    with pytest.raises(ValueError, match=r"missing.npz: the metadata lacks \['readout', 'alpha', 'tau'\]"):
        trace_readout(load_trace(path), path)
    readout, steps = trace_readout(_trace(base), "x.npz")
    assert (readout.alpha, readout.tau, steps) == (3.0, 1.0, 4)


def test_check_trace_for_rejects_a_non_string_hash():
    from dcsim.analysis import check_trace_for

    with pytest.raises(ValueError, match="hex string"):
        check_trace_for(_trace({"checkpoint_sha256": 5}), "ab", 10)


# ----------------------------------------------------------------------------- sizes, files


def test_zero_batch_size_is_a_clear_error_also_sharded():
    from dcsim import data
    from dcsim.parallel.distributed import Sharded, World, map_batches, rank_batches

    split = data.load_digits_splits(seed=0)["val"]
    for call in (
        lambda: rank_batches(10, 0, World()),
        lambda: Sharded(split).map(0, lambda x: (x,)),
        lambda: map_batches(Sharded(split), 0, lambda x: (x,)),
        lambda: map_batches(torch.zeros(4, 1), 0, lambda x: (x,)),
    ):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
            call()


def test_nan_or_tiny_shard_size_names_its_flag(two, tmp_path, capsys):
    a, _, _ = two
    for bad in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="--max-shard-mib"):
            zoo.shard_bytes(bad)
        rc = main(["zoo", str(a), "--out", str(tmp_path / "z"), "--max-shard-mib", str(bad)])
        err = capsys.readouterr().err
        assert rc != EXIT_OK and "--max-shard-mib" in err and "Traceback" not in err, err
    assert not (tmp_path / "z").exists()
    assert zoo.shard_bytes(16) == 16 * 2**20


def test_a_fifo_or_a_file_as_data_root_is_refused_before_reading(tmp_path):
    import signal

    from dcsim import data

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    text = tmp_path / "notes.txt"
    text.write_text("hello")

    def hung(*_):  # a read of the FIFO would wait forever: the alarm turns that into a failure
        raise TimeoutError("open_splits waited on the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    messages = []
    try:
        for dataset, root in (("cifar10", fifo), ("imagefolder", fifo), ("imagefolder", text)):
            signal.alarm(20)
            with pytest.raises(ValueError) as info:
                data.open_splits(dataset, root)
            signal.alarm(0)
            messages.append(str(info.value))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert all("--data-root" in m for m in messages), messages
    assert "FIFO" in messages[0] and "FIFO" in messages[1] and str(fifo) in messages[0]
    assert "must be a folder, but it is a regular file" in messages[2] and str(text) in messages[2]


# ----------------------------------------------------------------------------- stray files


def test_reexporting_a_zoo_folder_removes_only_the_shards_its_old_manifest_listed(tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, width=32, bits=2)
    ckpt = save_checkpoint(
        tmp_path / "m.safetensors", model, META | {"arch_kwargs": META["arch_kwargs"] | {"width": 32}}
    )
    folder = tmp_path / "zoo"
    zoo.export(ckpt, folder, max_shard_bytes=65536 + 20000)
    many = {s["file"] for s in zoo.read_manifest(folder)["shards"]}
    assert len(many) > 2
    (folder / "model-09999.safetensors").write_text("the user's, not listed")
    (folder / "README").write_text("kept")
    zoo.export(ckpt, folder)
    assert {p.name for p in folder.iterdir()} == {
        "manifest.json",
        "model-00001.safetensors",
        "model-09999.safetensors",
        "README",
    }
    zoo.load(folder)


def test_dcsim_zoo_accepts_a_zoo_folder(tmp_path):
    torch.manual_seed(0)
    ckpt = _checkpoint(tmp_path / "m.safetensors", 3)
    assert main(["zoo", str(ckpt), "--out", str(tmp_path / "z1")]) == EXIT_OK
    assert main(["zoo", str(tmp_path / "z1"), "--out", str(tmp_path / "z2"), "--max-shard-mib", "0.07"]) == EXIT_OK
    assert zoo.model_identity(tmp_path / "z2")[1] == stored_hash(ckpt)
    m1, meta1 = load_checkpoint(ckpt, build_model)
    m2, meta2 = zoo.load(tmp_path / "z2")
    assert meta1 == meta2
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m1.state_dict().items())


FORKED_KILLS = r"""
import json, os, random, re, signal, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[3])
from alternating_writes import KINDS, Writer, version

folder, trials = Path(sys.argv[1]), int(sys.argv[2])
write = Writer().write

rng = random.Random(7)
problems, transient = [], 0
for kind in KINDS:
    sub = folder / kind
    sub.mkdir()
    path = sub / f"out.{kind}"
    for trial in range(trials):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer: rewrite the file in a loop until killed
            os.close(r)
            for i in range(10**9):
                write(kind, path, i % 2)
                if i == 1:
                    os.write(w, b"x")
        os.close(w)
        os.read(r, 1)
        os.close(r)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        try:
            ok = version(kind, path) in (0, 1)
        except Exception as e:
            ok = f"{type(e).__name__}: {e}"
        # right after the kill: at most the killed writer's own temporary name (a kill in the instant
        # between naming its finished file and renaming it), never safetensors' .tmpXXXXXX
        left = sorted(p.name for p in sub.iterdir() if p.name != path.name)
        own = re.compile(rf"\.{re.escape(path.name)}\.{pid}-[0-9a-f]+\.tmp")
        if ok is not True or len(left) > 1 or not all(own.fullmatch(n) for n in left):
            problems.append([kind, trial, "after the kill", left, str(ok)])
        transient += len(left)
        write(kind, path, 0)  # the next save: nothing but the file remains
        left = sorted(p.name for p in sub.iterdir() if p.name != path.name)
        if left:
            problems.append([kind, trial, "after the next save", left])
print(json.dumps({"problems": problems, "transient": transient}))
"""


def test_kill_during_save_20_times_leaves_no_stray_file(tmp_path):
    """The suite's kill-during-save cases (trace, checkpoint, report), each killed 20 times at a random
    moment: the file always loads complete; the folder holds nothing else but, at most, the killed
    writer's own temporary name (only a kill in the instant between naming the finished file and
    renaming it leaves one; never safetensors' .tmpXXXXXX), which the next save removes."""
    out = subprocess.run(
        [sys.executable, "-c", FORKED_KILLS, str(tmp_path), "20", str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1])["problems"] == []


def test_demo_leaves_no_work_folder_and_its_traces_name_the_model(tmp_path):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--float-epochs",
        "1",
        "--qcfs-steps",
        "2",
        "--qffs-steps",
        "2",
        "--tau",
        "1",
        "--quiet",
    ]
    assert main(args) == EXIT_OK
    assert not (out / "model.work").exists()
    assert (out / "model.safetensors").is_file() and (out / "report.md").is_file()
    digest = stored_hash(out / "model.safetensors")
    for method in ("qcfs", "qffs"):
        assert load_trace(out / f"{method}_val_trace.npz").meta["checkpoint_sha256"] == digest
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_discard_workdir_keeps_files_that_are_not_a_runs(tmp_path):
    from dcsim.training.loop import discard_workdir

    work = tmp_path / "w"
    work.mkdir()
    for name in ("last.safetensors", "plan.json", ".lock", "mine.txt"):
        (work / name).write_text("x")
    discard_workdir(work)
    assert [p.name for p in work.iterdir()] == ["mine.txt"]
    (work / "mine.txt").unlink()
    discard_workdir(work)
    assert not work.exists()
    discard_workdir(tmp_path / "absent")


# ----------------------------------------------------------------------------- budget message


def test_budget_refusal_states_the_whole_budget_and_a_positive_minimum():
    from dcsim import training

    seconds = {"float_s": 0.5, "lsq_s": 0.6}
    with pytest.raises(ValueError) as info:
        training.plan_epochs(seconds, 0.5 * 60, 0.4, spent_s=31.8)  # the measurement ate the budget
    msg = str(info.value)
    assert "budget of 0.50 minutes" in msg and "measuring the epoch times took 32 s" in msg
    need = float(msg.rsplit("give at least ", 1)[1].split()[0])
    assert need > 0.5 and math.isclose(need, math.ceil((31.8 + 1.5) / 60 * 100) / 100)
    assert "-0." not in msg
    with pytest.raises(ValueError) as info:
        training.plan_epochs({"float_s": 0.01, "lsq_s": 0.01}, 0.005, 0.4)
    assert "give at least 0.01 minutes" in str(info.value)
    with pytest.raises(ValueError, match="must be > 0"):
        training.plan_epochs(seconds, -1.8, 0.4)
    fe, le = training.plan_epochs(seconds, 60.0, 0.4, spent_s=10.0)
    assert (fe, le) == (int(50 * 0.6 // 0.5), int(50 * 0.4 // 0.6))
    assert training.plan_epochs({"float_s": 10.0, "lsq_s": 20.0}, 500, 0.4) == (30, 10)


def test_trace_identity_of_a_file(two):
    from dcsim.analysis.selection import trace_identity

    a, _, _ = two
    assert trace_identity(a) == {"trace_format": 2, "num_classes": 10, "checkpoint_sha256": stored_hash(a)}


def test_output_paths_that_cannot_be_files_are_clear_errors(tmp_path):
    from dcsim.io.atomic import check_writable, write_text_atomic

    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    for bad, words in (("dir", "is a folder"), ("file/out.json", "lies under a file"), ("fifo", "not a regular")):
        with pytest.raises(ValueError) as info:
            check_writable(tmp_path / bad, "--json")
        assert f"--json {tmp_path / bad}" in str(info.value) and words in str(info.value), info.value
        with pytest.raises(ValueError, match=words):
            write_text_atomic(tmp_path / bad, "{}")
        with pytest.raises(ValueError, match=words):
            save_trace(tmp_path / bad, _trace({}))
    assert check_writable(tmp_path / "new" / "x.json") == tmp_path / "new" / "x.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "fifo", "file", "new"]
