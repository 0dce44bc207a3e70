"""Multi-process runs under torchrun (CPU, gloo, one thread per rank) against single-process runs.

Launches are shared: one 2-rank launch runs trace, eval, report, CLI training and the training
runs compared with one process (plus an interrupted run and its resume); one 3-rank launch covers
a split not divisible by the ranks and more ranks than samples; a simulated two-node run; and a
rank that fails alone. The cheap parts (errors, agreement checks) run without a launcher.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dcsim.cli import EXIT_ERROR, EXIT_OK, main
from dcsim.parallel import distributed
from marks import SLOW

WORKER = Path(__file__).with_name("dist_worker.py")
COMMON = ["--device", "cpu", "--batch-size", "64"]
TIMEOUT = 600


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun(*args: str, nproc: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={_port()}",
        *extra,
        *args,
    ]


def _launch(out: Path, commands: list[list[str]], nproc: int) -> None:
    argv = [str(WORKER), str(out)]
    for c in commands:
        argv += ["--", *c]
    proc = subprocess.run(_torchrun(*argv, nproc=nproc), env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((out / "done.json").read_text())["ranks"] == nproc


def _result(out: Path, i: int) -> dict:
    return json.loads((out / f"{i}.json").read_text())


def _same_trace(a: Path, b: Path) -> None:
    ta, tb = np.load(a), np.load(b)
    assert sorted(ta.files) == sorted(tb.files)
    for k in ta.files:
        assert np.array_equal(ta[k], tb[k]), k


def _no_time(d):
    """A result without its wall-time fields (the only ones allowed to differ between runs)."""
    if isinstance(d, dict):
        return {
            k: _no_time(v)
            for k, v in d.items()
            if k
            not in (
                "ms_per_inference",
                "time_saving",
                "time_to_step_saving",
                "plots",
                "ranks",
                "seconds",
                "train_seconds",
            )
        }
    if isinstance(d, list):
        return [_no_time(v) for v in d]
    return d


@pytest.fixture(scope="module")
def ckpt(digits_checkpoint):
    """The shared digits checkpoint; this process then computes on one thread, as each rank does."""
    torch.set_num_threads(1)
    return digits_checkpoint


def test_two_ranks_equal_one(ckpt, tmp_path):
    """trace, eval and report: identical; training: equal within float tolerance; resume; CLI train."""
    from dist_worker import fit
    from test_data_loader import _train_folder, train_argv

    d = tmp_path
    trace = ["trace", str(ckpt), "--method", "qcfs", "--steps", "6", *COMMON]
    disk_train = [*train_argv(_train_folder(d / "f"), "disk"), "--loader-workers", "0"]
    report = ["report", str(ckpt), "--qcfs-max-steps", "6", "--qffs-max-steps", "3", *COMMON]
    out = d / "out"
    out.mkdir()
    _launch(
        out,
        [
            [*trace, "--out", str(d / "t2.npz")],
            ["eval", str(ckpt), "--method", "qcfs", "--trace", str(d / "t2.npz"), *COMMON],
            [*report, "--out", str(d / "rep2")],
            ["fit", str(d / "fit2"), "-1"],
            ["fit", str(d / "fitR"), "5"],  # dies in the middle of the LSQ epoch ...
            ["fit", str(d / "fitR"), "-1"],  # ... and resumes from the state rank 0 wrote after the float epoch
            ["fit", str(d / "fitBN"), "-1", "bn"],  # batch norm over the global batch (GlobalBatchNorm2d on gloo)
            [
                "train",
                "--epochs",
                "1",
                "--width",
                "4",
                "--quiet",
                "--device",
                "cpu",
                "--sync-bn",
                "--out",
                str(d / "m2.safetensors"),
            ],
            ["stream", str(ckpt), "--method", "qcfs", "--trace", str(d / "t2.npz"), "--slots", "16", *COMMON],
            [*disk_train, "--out", str(d / "s2.safetensors")],
            [*disk_train, "--loader", "memory", "--out", str(d / "s2m.safetensors")],
        ],
        nproc=2,
    )
    assert main([*trace, "--out", str(d / "t1.npz")]) == EXIT_OK
    _same_trace(d / "t1.npz", d / "t2.npz")
    assert (
        main(
            ["eval", str(ckpt), "--method", "qcfs", "--trace", str(d / "t1.npz"), *COMMON, "--json", str(d / "e1.json")]
        )
        == EXIT_OK
    )
    assert _no_time(json.loads((d / "e1.json").read_text())) == _no_time(_result(out, 1))
    assert main([*report, "--out", str(d / "rep1"), "--json", str(d / "r1.json")]) == EXIT_OK
    one, two = json.loads((d / "r1.json").read_text()), _result(out, 2)
    assert _no_time(one["rows"]) == _no_time(two["rows"])
    assert one["results"][0]["analysis"]["selected"] == two["results"][0]["analysis"]["selected"]
    for method in ("qcfs", "qffs"):
        _same_trace(d / "rep1" / f"{method}_val_trace.npz", d / "rep2" / f"{method}_val_trace.npz")

    single = fit(d / "fit1", -1).state_dict()
    two_ranks = load_file(str(d / "fit2" / "weights.safetensors"))
    resumed = load_file(str(d / "fitR" / "weights.safetensors"))
    assert single.keys() == two_ranks.keys()
    for k, v in single.items():
        torch.testing.assert_close(two_ranks[k], v, rtol=1e-4, atol=1e-5, msg=k)
        assert torch.equal(resumed[k], two_ranks[k]), k  # resuming under 2 ranks changes nothing
    assert (d / "m2.safetensors").is_file() and not list(d.glob(".m2.safetensors.*"))
    # dcsim train --sync-bn under torchrun on the CPU: the small CNN's batch norms see the global batch
    one_cli = ["train", "--epochs", "1", "--width", "4", "--quiet", "--device", "cpu", "--sync-bn"]
    assert main([*one_cli, "--out", str(d / "m1.safetensors")]) == EXIT_OK
    m1, m2 = load_file(str(d / "m1.safetensors")), load_file(str(d / "m2.safetensors"))
    assert m1.keys() == m2.keys() and any("running_var" in k for k in m1)
    for k, v in m1.items():
        torch.testing.assert_close(m2[k], v, rtol=1e-4, atol=1e-5, msg=k)

    # with batch norm synchronized over the 2 ranks, training equals one process's on the whole batches
    single_bn = fit(d / "fit1bn", -1, bn=True).state_dict()
    two_bn = load_file(str(d / "fitBN" / "weights.safetensors"))
    assert single_bn.keys() == two_bn.keys() and any("running_var" in k for k in two_bn)
    for k, v in single_bn.items():
        torch.testing.assert_close(two_bn[k], v, rtol=1e-4, atol=1e-5, msg=k)

    # training from disk under 2 ranks (each rank decodes only its rows of every global batch) equals the
    # same 2-rank training from memory (batch norm sees each rank's rows, so one process differs)
    s2, s2m = load_file(str(d / "s2.safetensors")), load_file(str(d / "s2m.safetensors"))
    assert s2.keys() == s2m.keys()
    for k, v in s2m.items():
        assert torch.equal(s2[k], v), k

    # stream: each rank streams its share; the totals and the latency percentiles cover every sample of every rank
    streamed = _result(out, 8)
    assert len(streamed["ranks"]) == 2 and streamed["stream"]["samples"] == 360
    counts = [r["stream"]["latency_histogram"]["count"] for r in streamed["ranks"]]
    assert sum(counts) == 360 and all(c > 0 for c in counts)
    lat = streamed["stream"]["latency_ms"]
    slowest = max(r["stream"]["latency_ms"]["max"] for r in streamed["ranks"])
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] == slowest


@pytest.mark.slow
@SLOW  # the two-rank run above covers the parity; these edge cases take 35 s
def test_three_ranks_uneven_and_more_ranks_than_samples(ckpt, tmp_path):
    tiny = ["--val-size", "2", "--batch-size", "1", "--tau", "1"]
    t300 = ["trace", str(ckpt), "--method", "qffs", "--steps", "3", *COMMON]  # 5 batches of <= 64 on 3 ranks
    t2 = ["trace", str(ckpt), "--method", "qcfs", "--steps", "4", "--device", "cpu", *tiny]  # 2 samples on 3 ranks
    out = tmp_path / "out"
    out.mkdir()
    bn = tmp_path / "bn"
    bn.mkdir()
    _launch(
        out,
        [[*t300, "--out", str(tmp_path / "a3.npz")], [*t2, "--out", str(tmp_path / "b3.npz")], ["globalbn", str(bn)]],
        nproc=3,
    )
    _global_bn_equals_one_process(bn, ranks=3)
    assert main([*t300, "--out", str(tmp_path / "a1.npz")]) == EXIT_OK
    assert main([*t2, "--out", str(tmp_path / "b1.npz")]) == EXIT_OK
    _same_trace(tmp_path / "a1.npz", tmp_path / "a3.npz")
    _same_trace(tmp_path / "b1.npz", tmp_path / "b3.npz")
    assert np.load(tmp_path / "b3.npz")["pred"].shape == (2, 4)


def _global_bn_equals_one_process(d: Path, ranks: int) -> None:
    """GlobalBatchNorm2d on each rank's rows r, r + N, ... against nn.BatchNorm2d on the whole batch:
    output and input-gradient rows, weight/bias gradients summed over the ranks, running statistics."""
    from dist_worker import global_bn_case

    per_rank = [load_file(str(d / f"rank{r}.safetensors")) for r in range(ranks)]
    close = {"rtol": 1e-5, "atol": 1e-5}
    for n in (7, 2):
        x, grad, bn = global_bn_case(n)
        bn.train()
        assert n >= ranks or per_rank[-1][f"n{n}_y0"].shape[0] == 0  # a rank without rows takes part
        for step in range(2):
            xs = (x * (step + 1)).requires_grad_(True)
            y = bn(xs)
            bn.zero_grad()
            y.backward(grad)
            for r, got in enumerate(per_rank):
                torch.testing.assert_close(got[f"n{n}_y{step}"], y.detach()[r::ranks], **close)
                torch.testing.assert_close(got[f"n{n}_dx{step}"], xs.grad[r::ranks], **close)
            for name, ref in (("dw", bn.weight.grad), ("db", bn.bias.grad)):
                torch.testing.assert_close(sum(got[f"n{n}_{name}{step}"] for got in per_rank), ref, **close)
        for got in per_rank:
            torch.testing.assert_close(got[f"n{n}_running_mean"], bn.running_mean, **close)
            torch.testing.assert_close(got[f"n{n}_running_var"], bn.running_var, **close)


@pytest.mark.slow
@SLOW  # the two-rank run above covers the parity; these edge cases take 35 s
def test_two_nodes_on_localhost(ckpt, tmp_path):
    """Two ``torchrun --nnodes 2 --node-rank i`` launches meeting at one rendezvous address."""
    port = _port()
    args = ["-m", "dcsim", "trace", str(ckpt), "--method", "qcfs", "--steps", "5", *COMMON]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node-rank={i}",
                "--nproc-per-node=1",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                *args,
                "--out",
                str(tmp_path / "t2.npz"),
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-3000:] for o in outs]
    assert main([*args[2:], "--out", str(tmp_path / "t1.npz")]) == EXIT_OK
    _same_trace(tmp_path / "t1.npz", tmp_path / "t2.npz")


def test_a_failing_rank_ends_the_job_and_is_named(ckpt, tmp_path):
    """Rank 1 cannot read its checkpoint while rank 0 waits for it: the job ends, rank 1 is named, no trace."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(ckpt, tmp_path / "m0.safetensors")
    argv = [
        str(WORKER),
        str(out),
        "--",
        "trace",
        str(tmp_path / "m{rank}.safetensors"),
        "--method",
        "qcfs",
        "--steps",
        "3",
        *COMMON,
        "--out",
        str(tmp_path / "t.npz"),
    ]
    proc = subprocess.run(_torchrun(*argv, nproc=2), env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode != 0
    assert "m1.safetensors" in proc.stderr and "rank: 1" in proc.stderr
    assert not (tmp_path / "t.npz").exists() and not (out / "done.json").exists()


# ------------------------------------------------------------------ without a launcher


class _FakeWorld(distributed.World):
    """A World whose all_gather returns given per-rank objects (rank 0 first)."""

    def __init__(self, others: list) -> None:
        super().__init__(rank=0, size=1 + len(others))
        object.__setattr__(self, "others", others)

    def all_gather(self, obj):
        return [obj, *self.others]


def test_rank_mismatch_is_named():
    items = {"dcsim version": "0.1.0", "checkpoint digest": "aa", "val data fingerprint": "f"}
    distributed.check_agreement(_FakeWorld([dict(items), dict(items)]), items)
    with pytest.raises(ValueError, match=r"checkpoint digest: rank 0 has 'aa', rank 2 has 'bb'"):
        distributed.check_agreement(_FakeWorld([dict(items), items | {"checkpoint digest": "bb"}]), items)


def test_data_fingerprint_sees_content():
    from dcsim import data

    splits = data.load_digits_splits(seed=0)
    a, b = splits["val"], data.load_digits_splits(seed=0)["val"]
    assert distributed.data_fingerprint(a) == distributed.data_fingerprint(b)
    b.images[3, 0, 2, 2] += 0.5
    assert distributed.data_fingerprint(a) != distributed.data_fingerprint(b)


def test_rank_batches_cover_every_batch_once():
    for n, bs, size in [(300, 64, 1), (300, 64, 2), (300, 64, 3), (2, 1, 3), (0, 4, 2), (129, 64, 7)]:
        got = sorted(b for r in range(size) for b in distributed.rank_batches(n, bs, distributed.World(r, size)))
        assert got == list(range(-(-n // bs)))


def test_non_distributed_command_under_torchrun(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["demo", "--out", str(tmp_path / "d")]) == EXIT_ERROR
    assert "dcsim demo does not run distributed" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_more_ranks_than_gpus(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"4 ranks on this node but only 2 GPU"):
        distributed.resolve_device("cuda", local_rank=3, local_size=4)
    assert distributed.resolve_device("cuda", local_rank=1, local_size=2) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        distributed.resolve_device("cuda", local_rank=0, local_size=2)


def test_global_bn_without_a_group_is_batchnorm():
    """Outside a process group (one process) or in eval mode GlobalBatchNorm2d is nn.BatchNorm2d;
    conversion shares parameters and buffers, keeps the state dict keys, and is idempotent."""
    from dcsim.parallel.global_bn import GlobalBatchNorm2d, convert_global_batchnorm
    from dist_worker import global_bn_case

    x, _, bn = global_bn_case(7)
    model = torch.nn.Sequential(torch.nn.Conv2d(5, 5, 1), bn)
    keys = model.state_dict().keys()
    converted = convert_global_batchnorm(model, group=None)
    assert converted is model and isinstance(model[1], GlobalBatchNorm2d) and model.state_dict().keys() == keys
    assert model[1].weight is bn.weight and model[1].running_var is bn.running_var
    assert convert_global_batchnorm(model, group=None)[1] is model[1]
    ref = copy.deepcopy(bn)
    for mode in (True, False):
        model.train(mode)
        ref.train(mode)
        assert torch.equal(model[1](x), ref(x))
    assert torch.equal(bn.running_mean, ref.running_mean)
