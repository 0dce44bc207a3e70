"""The command line end to end on the embedded digits data: train -> trace -> analyze -> eval -> stream -> report."""

import json
import subprocess
import sys

import pytest
import torch

import dcsim
from dcsim import training
from dcsim.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main
from dcsim.io.checkpoint import load_checkpoint
from dcsim.models import build_model


def test_train_writes_a_loadable_checkpoint(digits_checkpoint):
    info = json.loads(digits_checkpoint.with_suffix(".json").read_text())
    model, meta = load_checkpoint(digits_checkpoint, build_model)
    assert meta["architecture"] == "small_cnn" and meta["dataset"] == "digits" and len(meta["classes"]) == 10
    assert info["accuracy"]["val"] > 0.5
    splits = dcsim.data.load_digits_splits(seed=0)
    x, y = splits["val"].normalized(), splits["val"].labels
    assert abs(training.accuracy(model, x, y) - meta["accuracy"]["val"]) < 1e-9
    assert not digits_checkpoint.with_suffix(".work").exists()  # a finished run leaves no working folder


def test_trace_analyze_eval_stream(digits_checkpoint, tmp_path):
    trace = tmp_path / "val.npz"
    assert (
        main(
            [
                "trace",
                str(digits_checkpoint),
                "--method",
                "qffs",
                "--steps",
                "4",
                "--out",
                str(trace),
                "--json",
                str(tmp_path / "trace.json"),
            ]
        )
        == EXIT_OK
    )
    t = dcsim.analysis.load_trace(trace)
    assert t.pred.shape == (300, 4) and t.meta["method"] == "qffs" and t.meta["alpha"] == 3.0
    assert json.loads((tmp_path / "trace.json").read_text())["calibration"]["tau"] > 0

    assert main(["analyze", str(trace), "--json", str(tmp_path / "a.json")]) == EXIT_OK
    a = json.loads((tmp_path / "a.json").read_text())
    for key in ("baseline", "selected", "front", "oracle"):
        assert key in a
    assert set(a["selected"]) >= {"threshold", "accuracy", "mean_steps", "saving"}
    assert set(a["oracle"]) == {"first_correct", "stays_correct"}
    assert all((tmp_path / p.split("/")[-1]).stat().st_size > 0 for p in a["plots"])

    def eval_json(name: str, *flags: str) -> dict:
        """``dcsim eval`` with the th_c of the trace, and ``flags``: the JSON it writes to ``tmp_path / name``."""
        argv = ["eval", str(digits_checkpoint), "--method", "qffs", "--trace", str(trace), *flags]
        assert main([*argv, "--json", str(tmp_path / name)]) == EXIT_OK
        return json.loads((tmp_path / name).read_text())

    e = eval_json("e.json")
    assert e["steps"] == 4 and e["threshold"] == a["selected"]["threshold"] and 1 <= e["mean_steps"] <= 4
    assert e["samples"] == 360 and e["spikes_per_neuron"] > 0
    # the fixed-buffer (CUDA-graph) path, run eagerly on the CPU, with chunking: the same exits
    # (up to conv rounding at other batch sizes, which can move a sample whose membrane sits on a threshold)
    g = eval_json("g.json", "--graphs", "--chunk", "2")
    assert g["accuracy"] == pytest.approx(e["accuracy"], abs=2 / 360)
    assert g["mean_steps"] == pytest.approx(e["mean_steps"], abs=2 / 360 * 4)
    # bf16 currents: reduced precision, close to the float32 result on this small model
    h = eval_json("h.json", "--precision", "bf16")
    assert h["accuracy"] == pytest.approx(e["accuracy"], abs=0.05) and 1 <= h["mean_steps"] <= 4
    # event-driven convs: float32, the same exits up to summation-order rounding
    v = eval_json("v.json", "--spike-convs")
    assert v["accuracy"] == pytest.approx(e["accuracy"], abs=2 / 360)
    assert v["mean_steps"] == pytest.approx(e["mean_steps"], abs=2 / 360 * 4)

    assert (
        main(
            [
                "stream",
                str(digits_checkpoint),
                "--method",
                "qffs",
                "--trace",
                str(trace),
                "--slots",
                "16",
                "--compare",
                "--json",
                str(tmp_path / "s.json"),
            ]
        )
        == EXIT_OK
    )
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["stream"]["samples"] == 360
    assert s["stream"]["accuracy"] == pytest.approx(e["accuracy"], abs=1e-6)  # same exits, same predictions
    assert s["static_dc"]["mean_steps"] == pytest.approx(e["mean_steps"])


def test_report(digits_checkpoint, tmp_path, run_cli):
    steps = ["--qcfs-max-steps", "12", "--qffs-max-steps", "5"]
    assert run_cli(["report", digits_checkpoint, "--out", tmp_path, *steps]).code == EXIT_OK
    md = (tmp_path / "report.md").read_text()
    for row in ("| QCFS |", "| QCFS + DC |", "| QFFS |", "| QFFS + DC |"):
        assert row in md
    rep = json.loads((tmp_path / "report.json").read_text())
    assert len(rep["rows"]) == 4 and all(r["mean_steps"] >= 1 for r in rep["rows"])
    assert all((tmp_path / f).exists() for f in ("qcfs_front.png", "qffs_exit_histogram.png", "qcfs_val_trace.npz"))


def test_errors_have_exit_codes(digits_checkpoint, tmp_path, run_cli):
    r = run_cli(["analyze", tmp_path / "missing.npz"])
    assert r.code == EXIT_ERROR and "missing.npz" in r.err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(digits_checkpoint.read_bytes()[:1000])
    eval_qcfs = ["eval", digits_checkpoint, "--method", "qcfs", "--steps", "4"]
    r = run_cli(["eval", bad, "--method", "qcfs", "--threshold", "0.5", "--steps", "4"])
    assert r.code == EXIT_ERROR and "bad.safetensors" in r.err
    r = run_cli([*eval_qcfs, "--threshold", "1.5"])
    assert r.code == EXIT_USAGE and "threshold" in r.err
    r = run_cli([*eval_qcfs, "--threshold", "0.5", "--device", "gpu0"])  # bad usage, refused before the work
    assert r.code == EXIT_USAGE and "--device" in r.err and "'gpu0'" in r.err
    if not torch.cuda.is_available():
        r = run_cli([*eval_qcfs, "--threshold", "0.5", "--device", "cuda"])
        assert r.code == EXIT_ERROR and "no CUDA GPU" in r.err
    r = run_cli([*eval_qcfs, "--threshold", "0.5", "--spike-convs", "--precision", "bf16"])
    assert r.code == EXIT_ERROR and "spike_convs" in r.err
    with pytest.raises(SystemExit) as exc:
        main(["trace", str(digits_checkpoint), "--method", "lif", "--steps", "3", "--out", "x.npz"])
    assert exc.value.code == 2


def test_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "dcsim.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in ("train", "trace", "analyze", "eval", "report", "demo", "bench", "stream"):
        assert cmd in out


def test_training_resumes_after_interruption_to_the_same_weights(tmp_path):
    splits = dcsim.data.load_digits_splits(seed=0)
    (xtr, ytr), (xva, yva) = [(splits[s].normalized(), splits[s].labels) for s in ("train", "val")]
    cfg = training.TrainConfig(epochs=2, float_epochs=1, lr=0.05, batch_size=64)

    def fresh():
        torch.manual_seed(0)
        return dcsim.models.small_cnn(num_classes=10, in_channels=1, width=8)

    reference = fresh()
    training.train(reference, xtr, ytr, xva, yva, cfg, progress=False)

    calls = {"n": 0}

    def crash_in_second_epoch(x, gen):
        calls["n"] += 1
        if calls["n"] == len(range(0, len(xtr), 64)) + 3:
            raise KeyboardInterrupt
        return x

    model = fresh()
    with pytest.raises(KeyboardInterrupt):
        training.train(model, xtr, ytr, xva, yva, cfg, augment=crash_in_second_epoch, workdir=tmp_path, progress=False)
    resumed = fresh()
    history = training.train(resumed, xtr, ytr, xva, yva, cfg, augment=lambda x, g: x, workdir=tmp_path, progress=False)
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    assert history["resumed_at_epochs"] == [1]
    for (k, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_train_refuses_a_working_folder_another_run_holds(tmp_path, run_cli):
    out = tmp_path / "m.safetensors"
    args = ["train", "--epochs", "1", "--width", "4", "--quiet", "--device", "cpu", "--out", str(out)]
    other = subprocess.Popen(  # another process holds OUT.work/ (as a running train does)
        [
            sys.executable,
            "-c",
            "import sys, time; from dcsim.io.atomic import exclusive_folder\n"
            "with exclusive_folder(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
            str(out.with_suffix(".work")),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "held"
        r = run_cli(args)
        assert r.code == EXIT_ERROR
        assert f"m.work: another dcsim run (pid {other.pid}) is using this folder" in r.err
        assert not out.exists()
    finally:
        other.kill()
        other.wait()
    assert main(args) == EXIT_OK  # the lock ends with its process, however it ends
    assert out.is_file()
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    r = run_cli([*args[:-1], tmp_path / "n.safetensors", "--workdir", blocked])
    assert r.code == EXIT_USAGE and f"--workdir {blocked}: a file, not a folder" in r.err  # checked before the work
    assert not (tmp_path / "n.safetensors").exists()


# bf16 rows only where the CPU has oneDNN's bf16 path (AVX-512 BF16): elsewhere bf16 convs fall back
# to slow reference kernels and this small bench would take ten minutes instead of seconds
BF16_FAST = torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_bench_rows_and_stream(tmp_path):
    out = tmp_path / "b.json"
    precisions = ["fp32", "bf16"] if BF16_FAST else ["fp32"]
    argv = ["bench", "--quick", "--models", "small_cnn", "--repeats", "1", "--graphs", "off", "--precision"]
    assert main([*argv, *precisions, "--stream", "4", "--json", str(out)]) == EXIT_OK
    b = json.loads(out.read_text())
    assert not b["errors"]
    # 2 methods x 2 batches x (fp32 dense, fp32 spike convs[, bf16 dense]) x 2 modes (the graph engine on the CPU:
    # tests/test_graphs.py)
    variants = ("", "+bf16", "+spikeconv") if BF16_FAST else ("", "+spikeconv")
    assert len(b["rows"]) == 8 * len(variants)
    assert {r["engine"] for r in b["rows"]} == {f"no-graphs{p}" for p in variants}
    for full, early in zip(b["rows"][::2], b["rows"][1::2], strict=True):
        assert (full["mode"], early["mode"]) == ("full", "early_exit")
        assert early["mean_steps"] < full["mean_steps"] == full["steps"]
        assert full["ms_per_inference"] > 0 and ("speedup_vs_reference" in full) == (full["batch"] == 1)
    assert [(r["method"], r["engine"]) for r in b["stream_rows"]] == [("qcfs", "no-graphs"), ("qffs", "no-graphs")]
    for r in b["stream_rows"]:
        assert 0 < r["occupancy"] <= 1 and r["stream_throughput"] > 0 and r["ratio_vs_static_no_dc"] > 0


def test_qffs_semantics_option(digits_checkpoint, tmp_path, run_cli):
    trace = tmp_path / "constant.npz"
    qffs = ["--method", "qffs", "--trace", trace]
    r = run_cli(
        ["trace", digits_checkpoint, "--method", "qcfs", "--steps", "4", "--qffs-semantics", "settle", "--out", trace]
    )
    assert r.code == EXIT_USAGE and "--qffs-semantics applies to --method qffs only" in r.err
    bogus = [
        "trace",
        digits_checkpoint,
        "--method",
        "qffs",
        "--steps",
        "4",
        "--qffs-semantics",
        "bogus",
        "--out",
        trace,
    ]
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in bogus])
    assert exc.value.code == 2
    constant = ["--qffs-semantics", "constant"]
    r = run_cli(["trace", digits_checkpoint, "--method", "qffs", "--steps", "6", *constant, "--out", trace])
    assert r.code == EXIT_OK and dcsim.analysis.load_trace(trace).meta["semantics"] == "constant"
    r = run_cli(["eval", digits_checkpoint, *qffs])
    assert r.code == EXIT_ERROR and "recorded with the 'constant' QFFS semantics" in r.err
    assert run_cli(["eval", digits_checkpoint, *qffs, *constant, "--json", tmp_path / "e.json"]).code == EXIT_OK
    assert json.loads((tmp_path / "e.json").read_text())["steps"] == 6


@pytest.mark.parametrize("completed", [True, False])
def test_working_folder_is_removed_only_after_a_completed_run(tmp_path, monkeypatch, completed):
    from dcsim.parallel.distributed import World
    from dcsim.workflows import train as train_workflow
    from dcsim.workflows.options import DataOptions, TrainOptions

    opts = TrainOptions(out=tmp_path / "m.safetensors")

    def fake_train(opts, data, world, splits):
        (opts.working_folder / "last.safetensors").write_bytes(b"state")
        return {"completed": completed}

    monkeypatch.setattr(train_workflow, "_train", fake_train)
    train_workflow.train_checkpoint(opts, DataOptions(), World(), splits={"train": None})
    assert opts.working_folder.exists() is not completed  # a stopped run keeps its state, to resume
