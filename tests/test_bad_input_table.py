"""Bad input across every command, as a table (issue 25): each case is one ``dcsim`` command line.

Every case checks:

- the exit code: 2 for bad usage (an unknown command, flag or choice, a bad flag value, flags that
  do not go together, an output path that cannot be written), 1 for a run-time error (a bad file,
  bad data, a trace or checkpoint that does not fit);
- that the message names the argument or the file;
- that there is no traceback (the command returns or exits, it does not raise) and that no message
  suggests loading unsafely (``weights_only=False``, ``allow_pickle=True``);
- that nothing is written and no stray file is left: the listing (names, sizes, modification times)
  of the case's folder, which is also the working directory, and of the shared inputs' folder is the
  same before and after.

Most cases fail in argument checking, before any model loads. The inputs they share (a trained digits
checkpoint from ``conftest.digits_checkpoint``, a small validation trace of it, another network of the
same architecture, damaged traces, a zoo folder, a tiny CIFAR-10 folder) are made once per module.
Each case's folder holds ``file`` (a text file), ``dir`` (an empty folder) and ``fifo`` (a named pipe).

A case where dcsim breaks the rule is marked ``xfail(strict=True)`` with the reason: a found bug,
kept visible rather than weakened (strict: the mark fails the suite once the bug is fixed).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dcsim.analysis import load_trace
from dcsim.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main
from dcsim.io import zoo
from dcsim.io.checkpoint import read_metadata, save_checkpoint
from dcsim.models import build_model

USAGE, ERROR = EXIT_USAGE, EXIT_ERROR

# ----------------------------------------------------------------------------- shared inputs


def _npz(path: Path, labels, pred, conf, meta) -> None:
    """A trace written by hand (as an edited or damaged file would be), bypassing dcsim's checks."""
    arrays = {"labels": labels, "pred": pred, "conf": conf}
    if meta is not None:
        arrays["meta"] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, digits_checkpoint, make_cifar_folder) -> dict[str, str]:
    """Placeholder -> path of every shared input (made once per module, never written by a case)."""
    d = tmp_path_factory.mktemp("bad-input-table")
    ckpt = d / "model.safetensors"
    shutil.copyfile(digits_checkpoint, ckpt)
    trace = d / "val.npz"
    argv = ["trace", ckpt, "--method", "qffs", "--steps", "3", "--tau", "1", "--val-size", "60"]
    assert main([str(a) for a in [*argv, "--device", "cpu", "--out", trace]]) == EXIT_OK

    meta = read_metadata(ckpt)  # another network: the same architecture and data, other weights
    torch.manual_seed(1)
    other = save_checkpoint(d / "other.safetensors", build_model(meta["architecture"], **meta["arch_kwargs"]), meta)
    zoo.export(ckpt, d / "zoo", zoo.shard_bytes(0.1))

    t = load_trace(trace)
    labels, pred, conf, good = t.labels, t.pred, t.conf, t.meta
    out_of_classes = labels.copy()
    out_of_classes[0] = 12
    traces = {
        "t_steps": (labels, pred, conf, good | {"steps": 8}),  # metadata says 8 steps, arrays hold 3
        "t_labels": (out_of_classes, pred, conf, {k: v for k, v in good.items() if k != "num_classes"}),
        "t_classes": (labels, pred, conf, good | {"num_classes": 3}),
        "t_test": (labels, pred, conf, good | {"split": "test"}),  # a trace of the test split
        "t_tau": (labels, pred, conf, good | {"tau": -1.0}),
        "t_alpha": (labels, pred, conf, good | {"alpha": "big"}),
        "t_readout": (labels, pred, conf, good | {"readout": "vibes"}),
        "t_nosteps": (labels, pred, conf, {k: v for k, v in good.items() if k != "steps"}),
        "t_hash": (labels, pred, conf, good | {"checkpoint_sha256": 42}),
        "t_nohash": (labels, pred, conf, {k: v for k, v in good.items() if k != "checkpoint_sha256"}),
        "t_nometa": (labels, pred, conf, None),
        "t_json": (labels, pred, conf, "{not json"),
        "t_nan": (labels, pred, np.full_like(conf, np.nan), good),
        "t_shape": (labels[:-1], pred, conf, good),
    }
    paths = {"ckpt": ckpt, "other": other, "trace": trace, "zoo": d / "zoo"}
    for name, arrays in traces.items():
        _npz(d / f"{name}.npz", *arrays)
        paths[name] = d / f"{name}.npz"
    np.save(d / "single.npy", conf)
    paths["t_single"] = (d / "single.npy").rename(d / "single.npz")
    (d / "empty").write_bytes(b"")
    paths["empty"] = d / "empty"
    torch.save({"conv1.weight": torch.zeros(2, 2)}, d / "wrong_keys.pth")
    paths["pth_keys"] = d / "wrong_keys.pth"
    torch.save({"opt": torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)}, d / "pickled.pth")
    paths["pth_pickle"] = d / "pickled.pth"  # needs pickle: torch.load(weights_only=True) refuses it
    paths["cifar"] = make_cifar_folder(d / "cifar", 2, 1)
    (d / "cifar_no_test" / "train").mkdir(parents=True)
    shutil.copytree(d / "cifar" / "train", d / "cifar_no_test" / "train", dirs_exist_ok=True)
    paths["cifar_no_test"] = d / "cifar_no_test"
    return {"in": str(d)} | {k: str(v) for k, v in paths.items()}


def _listing(root: Path) -> list[tuple]:
    """Every path under ``root`` with its kind and, for files, size and modification time (a folder's entries
    are listed themselves), except the decoded-image cache
    (``.dcsim-cache/``) the data loader keeps inside a data root by design (the first case reading the
    shared CIFAR folder makes it)."""
    out = []
    for p in sorted(root.rglob("*")):
        if ".dcsim-cache" in p.parts:
            continue
        st = p.lstat()
        folder = p.is_dir()
        out.append((str(p.relative_to(root)), folder, 0 if folder else st.st_size, 0 if folder else st.st_mtime_ns))
    return out


# ----------------------------------------------------------------------------- the table

BASE = {
    "train": "train --out {tmp}/m.safetensors --device cpu --epochs 1 --float-epochs 0 --width 4 --quiet "
    "--train-subset 64",
    "trace": "trace {ckpt} --method qffs --steps 3 --tau 1 --val-size 60 --out {tmp}/t.npz --device cpu",
    "analyze": "analyze {trace} --json {tmp}/a.json",
    "eval": "eval {ckpt} --method qffs --trace {trace} --device cpu --json {tmp}/e.json",
    "report": "report {ckpt} --out {tmp}/r --qcfs-steps 4 --qffs-steps 3 --tau 1 --device cpu",
    "stream": "stream {ckpt} --method qffs --trace {trace} --slots 8 --device cpu --json {tmp}/s.json",
    "bench": "bench --models small_cnn --repeats 1 --device cpu --json {tmp}/b.json",
    "reproduce": "reproduce --arch small_cnn --width 4 --epochs 1 --float-epochs 1 --max-test 50 --quiet "
    "--out {tmp}/rep --device cpu",
    "zoo": "zoo {ckpt} --out {tmp}/z",
    "import": "import official {tmp}/file --out {tmp}/m.safetensors",  # usage is checked before the file is read
    "demo": "demo --out {tmp}/d --epochs 1 --float-epochs 1 --quiet --device cpu",
}
"""A command line of each command that would run (quickly); a case adds to it (argparse: the last value wins)."""

CASES: list = []


def case(cid: str, argv: str, code: int, *names: str, bug: str | None = None, base: str | None = None) -> None:
    """Add a case: ``argv`` after ``BASE[base]`` (``base`` None: the first word of ``cid`` if a command, else
    ``argv`` alone); ``names``: strings the message must hold (with the placeholders); ``bug``: dcsim
    breaks the rule here (the case is a strict xfail with this reason)."""
    cmd = cid.split(":")[0]
    if base is None and cmd in BASE and not argv.startswith(cmd + " "):
        base = cmd
    full = f"{BASE[base]} {argv}" if base else argv
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    CASES.append(pytest.param(full.split(), code, names, marks=marks, id=cid))


# --- every command: batch size, --json, unknown flags
for cmd in BASE:
    case(f"{cmd}:batch-size-0", "--batch-size 0", USAGE, "--batch-size")
    case(f"{cmd}:batch-size-negative", "--batch-size -5", USAGE, "--batch-size")
    case(f"{cmd}:batch-size-nan", "--batch-size nan", USAGE, "--batch-size")
    case(f"{cmd}:batch-size-bool", "--batch-size True", USAGE, "--batch-size")
    case(f"{cmd}:json-is-a-folder", "--json {tmp}/dir", USAGE, "--json", "{tmp}/dir")
    case(f"{cmd}:json-under-a-file", "--json {tmp}/file/out.json", USAGE, "--json", "{tmp}/file")
    case(f"{cmd}:unknown-flag", "--frobnicate 3", USAGE, "--frobnicate")

for cmd in ("train", "trace", "eval", "report", "stream", "bench", "zoo"):
    case(f"{cmd}:device-unknown", "--device nonsense", USAGE, "--device", "nonsense")

# --- output paths: a folder where a file goes, a file where a folder goes, a path under a file
for cmd, out in (("train", "m.safetensors"), ("trace", "t.npz"), ("import", "m.safetensors")):
    case(f"{cmd}:out-is-a-folder", "--out {tmp}/dir", USAGE, "--out", "{tmp}/dir")
    case(f"{cmd}:out-under-a-file", f"--out {{tmp}}/file/{out}", USAGE, "--out", "{tmp}/file")
for cmd in ("report", "reproduce", "zoo", "demo"):
    case(f"{cmd}:out-is-a-file", "--out {tmp}/file", USAGE, "--out", "{tmp}/file")
    case(f"{cmd}:out-under-a-file", "--out {tmp}/file/sub", USAGE, "--out", "{tmp}/file")
case(
    "demo:default-out-is-a-file", "demo --epochs 1 --float-epochs 1 --quiet --device cpu", USAGE, "--out", "dcsim-demo"
)
case("analyze:plots-is-a-file", "--plots {tmp}/file", USAGE, "--plots", "{tmp}/file")
case("analyze:plots-under-a-file", "--plots {tmp}/file/plots", USAGE, "--plots", "{tmp}/file")
case("analyze:plots-under-a-fifo", "--plots {tmp}/fifo/plots", USAGE, "--plots", "{tmp}/fifo")
case("trace:out-is-a-fifo", "--out {tmp}/fifo", USAGE, "--out", "{tmp}/fifo")
for cmd in ("analyze", "trace", "zoo"):
    case(f"{cmd}:json-is-a-fifo", "--json {tmp}/fifo", USAGE, "--json", "{tmp}/fifo")
case("zoo:out-under-a-fifo", "--out {tmp}/fifo/z", USAGE, "--out", "{tmp}/fifo")
case("train:workdir-under-a-file", "--workdir {tmp}/file/work", USAGE, "--workdir", "{tmp}/file")
case("train:workdir-is-a-file", "--workdir {tmp}/file", USAGE, "--workdir", "{tmp}/file")
case("reproduce:workdir-under-a-file", "--workdir {tmp}/file/w", USAGE, "--workdir")

# --- unknown command, unknown choices, missing required arguments
case("cli:unknown-command", "frobnicate --json {tmp}/x.json", USAGE, "frobnicate")
case("cli:no-command", "--json {tmp}/x.json", USAGE, "command")
case("import:unknown-kind", "import unofficial {tmp}/file --out {tmp}/m.safetensors", USAGE, "unofficial")
for cmd in ("trace", "eval", "stream"):
    case(f"{cmd}:method-unknown", "--method qsnn", USAGE, "--method", "qsnn")
    case(f"{cmd}:split-unknown", "--split holdout", USAGE, "--split", "holdout")
    case(f"{cmd}:qffs-semantics-unknown", "--qffs-semantics wobble", USAGE, "--qffs-semantics", "wobble")
    case(f"{cmd}:qffs-semantics-with-qcfs", "--method qcfs --qffs-semantics constant", USAGE, "--qffs-semantics")
    case(f"{cmd}:qcfs-stem-unknown", "--qcfs-stem wobble", USAGE, "--qcfs-stem", "wobble")
    case(f"{cmd}:qcfs-stem-with-qffs", "--method qffs --qcfs-stem quantized", USAGE, "--qcfs-stem")
for cmd in ("train", "trace", "eval", "stream", "bench", "reproduce", "report"):
    case(f"{cmd}:dataset-unknown", "--dataset mnist", USAGE, "--dataset", "mnist")
    case(f"{cmd}:loader-unknown", "--loader tape", USAGE, "--loader", "tape")
    case(f"{cmd}:val-size-0", "--val-size 0", USAGE, "--val-size")
    case(f"{cmd}:loader-workers-negative", "--loader-workers -1", USAGE, "--loader-workers")
for cmd in ("trace", "eval"):
    case(f"{cmd}:readout-unknown", "--readout vibes", USAGE, "--readout", "vibes")
for cmd in ("eval", "stream"):
    case(f"{cmd}:precision-unknown", "--precision fp8", USAGE, "--precision", "fp8")
    case(f"{cmd}:chunk-0" if cmd == "eval" else f"{cmd}:repeats-0", "--chunk 0" if cmd == "eval" else "--repeats 0",
         USAGE, "--chunk" if cmd == "eval" else "--repeats")  # fmt: skip
case("trace:method-missing", "trace {ckpt} --steps 3 --out {tmp}/t.npz", USAGE, "--method")
case("trace:steps-missing", "trace {ckpt} --method qcfs --out {tmp}/t.npz", USAGE, "--steps")
case("trace:out-missing", "trace {ckpt} --method qcfs --steps 3", USAGE, "--out")
case("train:arch-unknown", "--arch lenet", USAGE, "--arch", "lenet")
case("train:schedule-unknown", "--schedule step", USAGE, "--schedule", "step")
case("train:optimizer-unknown", "--optimizer adam", USAGE, "--optimizer", "adam")
case("train:crop-padding-negative", "--crop-padding -1", USAGE, "--crop-padding")
case("train:cutout-negative", "--augment --cutout -2", USAGE, "--cutout")
case("train:cutout-without-augment", "--cutout 4", USAGE, "--cutout", "--augment")
case("reproduce:cutout-with-no-augment", "--no-augment --cutout 4", USAGE, "--cutout", "--augment")
case("train:train-precision-unknown", "--train-precision fp8", USAGE, "--train-precision", "fp8")
case("reproduce:arch-unknown", "--arch lenet", USAGE, "--arch", "lenet")
case("bench:models-unknown", "--models lenet", USAGE, "--models", "lenet")
case("bench:graphs-unknown", "--graphs maybe", USAGE, "--graphs", "maybe")
case("bench:quick-and-full", "--quick --full", USAGE, "--quick", "--full")
case("zoo:out-missing", "zoo {ckpt}", USAGE, "--out")

# --- integer flags that count something (>= 1) or not (>= 0); NaN and booleans are no integers
case("trace:steps-0", "--steps 0", USAGE, "--steps")
case("trace:steps-negative", "--steps -4", USAGE, "--steps")
case("trace:steps-nan", "--steps nan", USAGE, "--steps")
case("trace:steps-inf", "--steps inf", USAGE, "--steps")
case("trace:steps-bool", "--steps true", USAGE, "--steps")
case("trace:steps-fraction", "--steps 2.5", USAGE, "--steps")
case("trace:calibration-size-0", "--calibration-size 0", USAGE, "--calibration-size")
case(
    "eval:steps-0-with-threshold", "eval {ckpt} --method qcfs --threshold 0.9 --steps 0 --device cpu", USAGE, "--steps"
)
case("stream:slots-0", "--slots 0", USAGE, "--slots")
case("stream:slots-negative", "--slots -8", USAGE, "--slots")
case("stream:slots-nan", "--slots nan", USAGE, "--slots")
case("stream:slots-bool", "--slots false", USAGE, "--slots")
case("eval:chunk-negative", "--chunk -2", USAGE, "--chunk")
case("bench:chunk-0", "--chunk 0", USAGE, "--chunk")
case("bench:chunk-second-0", "--chunk 1 0", USAGE, "--chunk")
case("bench:repeats-0", "--repeats 0", USAGE, "--repeats")
case("bench:repeats-negative", "--repeats -1", USAGE, "--repeats")
case("bench:stream-0", "--stream 0", USAGE, "--stream")
case("bench:batches-0", "--batches 0", USAGE, "--batches")
case("bench:batches-second-0", "--batches 1 0", USAGE, "--batches")
case("bench:qcfs-stem-unknown", "--qcfs-stem analog", USAGE, "--qcfs-stem", "analog")
for cmd in ("report", "demo", "reproduce"):
    case(f"{cmd}:qcfs-steps-0", "--qcfs-steps 0", USAGE, "--qcfs-steps")
    case(f"{cmd}:qffs-steps-negative", "--qffs-steps -2", USAGE, "--qffs-steps")
    case(f"{cmd}:qcfs-max-steps-0", "--qcfs-max-steps 0", USAGE, "--qcfs-max-steps")
    case(f"{cmd}:qffs-max-steps-0", "--qffs-max-steps 0", USAGE, "--qffs-max-steps")
for cmd in ("train", "reproduce", "demo"):
    case(f"{cmd}:epochs-negative", "--epochs -1", USAGE, "--epochs")
    case(f"{cmd}:float-epochs-negative", "--float-epochs -1", USAGE, "--float-epochs")
    case(f"{cmd}:train-batch-size-0", "--train-batch-size 0", USAGE, "--train-batch-size")
    case(f"{cmd}:lr-0", "--lr 0", USAGE, "--lr")
    case(f"{cmd}:lr-nan", "--lr nan", USAGE, "--lr")
for cmd in ("train", "reproduce"):
    case(f"{cmd}:width-0", "--width 0", USAGE, "--width")
    case(f"{cmd}:bits-0", "--bits 0", USAGE, "--bits")
    case(f"{cmd}:train-subset-0", "--train-subset 0", USAGE, "--train-subset")
case("reproduce:max-test-0", "--max-test 0", USAGE, "--max-test")
case("import:bits-0", "--bits 0", USAGE, "--bits")
case("import:bits-negative", "--bits -2", USAGE, "--bits")
case("import:bits-nan", "--bits nan", USAGE, "--bits")

# --- real flags out of their range
case("train:lr-negative", "--lr -0.1", USAGE, "--lr")
case("train:lr-inf", "--lr inf", USAGE, "--lr")
case("train:lr-decay-0", "--lr-decay 0", USAGE, "--lr-decay")
case("train:momentum-above-1", "--momentum 1.5", USAGE, "--momentum")
case("train:weight-decay-negative", "--weight-decay -1e-4", USAGE, "--weight-decay")
case("train:label-smoothing-above-1", "--label-smoothing 1.5", USAGE, "--label-smoothing")
case("train:lsq-label-smoothing-negative", "--lsq-label-smoothing -0.1", USAGE, "--lsq-label-smoothing")
case("train:distill-above-1", "--distill 1.5", USAGE, "--distill")
case("reproduce:distill-negative", "--distill -0.5", USAGE, "--distill")
# rules between training flags (TrainConfig's), refused before a working folder is made
case("train:distill-without-float-stage", "--distill 0.5", USAGE, "distill needs float_epochs")
case("train:nesterov-without-momentum", "--nesterov --momentum 0", USAGE, "nesterov needs momentum")
case("train:lsq-share-0", "--lsq-share 0", USAGE, "--lsq-share")
case("train:lsq-share-above-1", "--lsq-share 1.5", USAGE, "--lsq-share")
case("train:lsq-lr-0", "--lsq-lr 0", USAGE, "--lsq-lr")
case("train:warmup-epochs-negative", "--warmup-epochs -1", USAGE, "--warmup-epochs")
case("train:budget-minutes-0", "--budget-minutes 0", USAGE, "--budget-minutes")
case("train:budget-minutes-negative", "--budget-minutes -1", USAGE, "--budget-minutes")
case("train:budget-minutes-nan", "--budget-minutes nan", USAGE, "--budget-minutes")
case("train:budget-minutes-inf", "--budget-minutes inf", USAGE, "--budget-minutes")
case("reproduce:budget-minutes-0", "--budget-minutes 0", USAGE, "--budget-minutes")
case("reproduce:min-accuracy-above-1", "--min-accuracy 2", USAGE, "--min-accuracy")
case("reproduce:tolerance-nan", "--tolerance nan", USAGE, "--tolerance")
case("zoo:max-shard-mib-nan", "--max-shard-mib nan", USAGE, "--max-shard-mib")
case("zoo:max-shard-mib-0", "--max-shard-mib 0", USAGE, "--max-shard-mib")
case("zoo:max-shard-mib-negative", "--max-shard-mib -1", USAGE, "--max-shard-mib")
case("zoo:max-shard-mib-inf", "--max-shard-mib inf", USAGE, "--max-shard-mib")
case("zoo:max-shard-mib-bool", "--max-shard-mib yes", USAGE, "--max-shard-mib")
case("zoo:max-shard-mib-below-header", "--max-shard-mib 0.01", USAGE, "--max-shard-mib")
case("analyze:tolerance-negative", "--tolerance -0.1", USAGE, "--tolerance")
case("analyze:tolerance-above-1", "--tolerance 1.5", USAGE, "--tolerance")
case("analyze:tolerance-nan", "--tolerance nan", USAGE, "--tolerance")
case("analyze:resolution-0", "--resolution 0", USAGE, "--resolution")
case("analyze:resolution-above-1", "--resolution 1.5", USAGE, "--resolution")
case("analyze:resolution-nan", "--resolution nan", USAGE, "--resolution")
case("eval:tolerance-above-1", "--tolerance 2", USAGE, "--tolerance")
case("stream:tolerance-above-1", "--tolerance 1.5", USAGE, "--tolerance")
case("report:tolerance-negative", "--tolerance -1", USAGE, "--tolerance")
case("demo:tolerance-inf", "--tolerance inf", USAGE, "--tolerance")
EVAL_TH = "eval {ckpt} --method qffs --tau 1 --steps 3 --device cpu --json {tmp}/e.json --threshold"
case("eval:threshold-above-1", f"{EVAL_TH} 1.5", USAGE, "--threshold")
case("eval:threshold-negative", f"{EVAL_TH} -0.1", USAGE, "--threshold")
case("eval:threshold-nan", f"{EVAL_TH} nan", USAGE, "--threshold")
case("eval:threshold-inf", f"{EVAL_TH} inf", USAGE, "--threshold")
case("eval:threshold-bool", f"{EVAL_TH} True", USAGE, "--threshold")
for cmd in ("trace", "eval", "report", "demo"):
    case(f"{cmd}:tau-0", "--tau 0", USAGE, "--tau")
    case(f"{cmd}:tau-nan", "--tau nan", USAGE, "--tau")
case("trace:tau-negative", "--tau -1", USAGE, "--tau")
case("trace:tau-inf", "--tau inf", USAGE, "--tau")
case("trace:tau-word", "--tau hot", USAGE, "--tau", "hot")
case("trace:tau-bool", "--tau true", USAGE, "--tau")
case("trace:alpha-0", "--alpha 0", USAGE, "--alpha")
case("trace:alpha-negative", "--alpha -2", USAGE, "--alpha")
case("trace:alpha-nan", "--alpha nan", USAGE, "--alpha")
case("trace:alpha-word", "--alpha big", USAGE, "--alpha", "big")
case("eval:alpha-inf", "--alpha inf", USAGE, "--alpha")
case("trace:threshold-percentile-0", "--threshold-percentile 0", USAGE, "--threshold-percentile")
case("trace:threshold-percentile-above-100", "--threshold-percentile 101", USAGE, "--threshold-percentile")
case("trace:threshold-percentile-word", "--threshold-percentile most", USAGE, "--threshold-percentile")
case("report:normalize-nan", "--normalize nan", USAGE, "--threshold-percentile")  # the old name

# --- energy options (eval, report, reproduce, demo)
for cmd in ("eval", "report", "reproduce", "demo"):
    case(f"{cmd}:energy-preset-unknown", "--energy-preset fp64", USAGE, "--energy-preset", "fp64")
    case(f"{cmd}:e-mac-negative", "--e-mac -1", USAGE, "--e-mac")
    case(f"{cmd}:e-ac-nan", "--e-ac nan", USAGE, "--e-ac")
    case(f"{cmd}:first-layer-macs-unknown", "--first-layer-macs twice", USAGE, "--first-layer-macs", "twice")
case("eval:e-mac-nan", "--e-mac nan", USAGE, "--e-mac")
case("eval:e-mac-inf", "--e-mac inf", USAGE, "--e-mac")
case("eval:e-ac-negative", "--e-ac -0.5", USAGE, "--e-ac")
case("eval:e-mac-bool", "--e-mac false", USAGE, "--e-mac")

# --- flags that do not go together
EVAL = "eval {ckpt} --method qffs --device cpu --json {tmp}/e.json"
case("eval:threshold-and-trace", "--threshold 0.5 --steps 3", USAGE, "--threshold", "--trace")
case("eval:neither-threshold-nor-trace", f"{EVAL} --steps 3", USAGE, "--threshold", "--trace")
case("eval:threshold-without-steps", f"{EVAL} --threshold 0.5", USAGE, "--steps")
case("report:qffs-semantics-unknown", "--qffs-semantics wobble", USAGE, "--qffs-semantics")
case("report:qcfs-stem-unknown", "--qcfs-stem wobble", USAGE, "--qcfs-stem", "wobble")
case("reproduce:qcfs-stem-unknown", "--qcfs-stem wobble", USAGE, "--qcfs-stem", "wobble")
case(
    "trace:data-root-missing-for-cifar10",
    "--dataset cifar10",
    USAGE,
    "--data-root",
)

# --- input files that are not what they say: checkpoints
for cmd in ("trace", "eval", "report", "stream", "zoo"):
    b = BASE[cmd].split(" ", 2)[2]  # the base without the checkpoint
    case(f"{cmd}:checkpoint-missing", f"{cmd} {{tmp}}/missing.safetensors {b}", ERROR, "{tmp}/missing.safetensors")
    case(f"{cmd}:checkpoint-is-a-folder", f"{cmd} {{tmp}}/dir {b}", ERROR, "{tmp}/dir")
    case(f"{cmd}:checkpoint-is-text", f"{cmd} {{tmp}}/file {b}", ERROR, "{tmp}/file")
    case(f"{cmd}:checkpoint-is-a-fifo", f"{cmd} {{tmp}}/fifo {b}", ERROR, "{tmp}/fifo")
case("trace:checkpoint-empty", "trace {empty} --method qcfs --steps 3 --out {tmp}/t.npz", ERROR, "{empty}")
case("trace:checkpoint-is-a-trace", "trace {trace} --method qcfs --steps 3 --out {tmp}/t.npz", ERROR, "{trace}")
case("eval:checkpoint-is-a-pth", "eval {pth_keys} --method qcfs --threshold 1 --steps 3", ERROR, "{pth_keys}")
case("bench:checkpoint-is-text", "--checkpoint {tmp}/file", ERROR, "{tmp}/file")
case("bench:checkpoint-missing", "--checkpoint {tmp}/missing.safetensors", ERROR, "{tmp}/missing.safetensors")
case(
    "trace:threshold-percentile-of-a-quantized-checkpoint",
    "--method qcfs --threshold-percentile 99",
    ERROR,
    "{ckpt}",
    "--threshold-percentile",
)

# --- data roots
for cmd in ("train", "trace", "eval", "reproduce"):
    case(f"{cmd}:data-root-is-a-fifo", "--dataset cifar10 --data-root {tmp}/fifo", ERROR, "--data-root", "{tmp}/fifo")
case("train:data-root-is-text", "--dataset cifar10 --data-root {tmp}/file", ERROR, "{tmp}/file")
case("bench:data-root-is-a-fifo", "--checkpoint {ckpt} --dataset cifar10 --data-root {tmp}/fifo", ERROR, "{tmp}/fifo")
case("bench:batches-beyond-the-test-split", "--checkpoint {ckpt} --batches 1 100000", ERROR, "--batches", "100000")
case("trace:data-root-missing", "--dataset cifar10 --data-root {tmp}/nowhere", ERROR, "{tmp}/nowhere")
case("trace:data-root-is-text", "--dataset cifar10 --data-root {tmp}/file", ERROR, "{tmp}/file")
case("trace:data-root-empty-folder", "--dataset cifar10 --data-root {tmp}/dir", ERROR, "{tmp}/dir")
case("trace:data-root-without-test", "--dataset cifar10 --data-root {cifar_no_test}", ERROR, "{cifar_no_test}")
case("trace:imagefolder-without-val", "--dataset imagefolder --data-root {cifar}", ERROR, "{cifar}")
CIFAR = "--dataset cifar10 --data-root {cifar} --val-size 5"
case("trace:checkpoint-of-other-classes", CIFAR, ERROR, "{ckpt}")
case("eval:checkpoint-of-other-classes", CIFAR, ERROR, "{ckpt}")
case("stream:checkpoint-of-other-classes", CIFAR, ERROR, "{ckpt}")

# --- traces
for name in ("missing.npz", "dir", "file", "fifo"):
    case(
        f"analyze:trace-{name.split('.')[0]}", f"analyze {{tmp}}/{name} --json {{tmp}}/a.json", ERROR, f"{{tmp}}/{name}"
    )
    case(f"eval:trace-{name.split('.')[0]}", f"--trace {{tmp}}/{name}", ERROR, f"{{tmp}}/{name}")
    case(f"stream:trace-{name.split('.')[0]}", f"--trace {{tmp}}/{name}", ERROR, f"{{tmp}}/{name}")
for bad in ("t_steps", "t_nometa", "t_json", "t_nan", "t_shape", "t_single", "empty"):
    case(f"analyze:{bad}", f"analyze {{{bad}}} --json {{tmp}}/a.json", ERROR, f"{{{bad}}}")
for bad in ("t_steps", "t_labels", "t_classes", "t_tau", "t_alpha", "t_readout", "t_nosteps", "t_hash", "t_nometa"):
    case(f"eval:{bad}", f"--trace {{{bad}}}", ERROR, f"{{{bad}}}")
for bad in ("t_steps", "t_labels", "t_tau", "t_readout"):
    case(f"stream:{bad}", f"--trace {{{bad}}}", ERROR, f"{{{bad}}}")
for cmd in ("eval", "stream"):
    b = BASE[cmd].split(" ", 2)[2]
    case(f"{cmd}:trace-of-another-network", f"{cmd} {{other}} {b}", ERROR, "{other}", "{trace}")
    case(f"{cmd}:trace-of-the-test-split", "--trace {t_test}", ERROR, "{t_test}", "--select-on-test")
    case(f"{cmd}:trace-without-a-checkpoint-hash", "--trace {t_nohash}", ERROR, "{t_nohash}", "--unmatched-trace")
case("eval:unmatched-trace-without-trace", "eval {ckpt} --method qffs --steps 3 --threshold 0.5 --unmatched-trace",
     USAGE, "--unmatched-trace", "--trace")  # fmt: skip
case("eval:select-on-test-without-trace", "eval {ckpt} --method qffs --steps 3 --threshold 0.5 --select-on-test",
     USAGE, "--select-on-test", "--trace")  # fmt: skip
case("eval:trace-of-another-method", "--method qcfs", ERROR, "{trace}", "qffs")

# --- import official: files that are not an official state dict
for name in ("missing.pth", "dir", "file", "fifo"):
    case(f"import:{name.split('.')[0]}", f"import official {{tmp}}/{name} --out {{tmp}}/m.safetensors", ERROR,
         f"{{tmp}}/{name}")  # fmt: skip
for src in ("empty", "ckpt", "trace", "pth_keys", "pth_pickle"):
    case(f"import:{src}", f"import official {{{src}}} --out {{tmp}}/m.safetensors", ERROR, f"{{{src}}}")

# --- zoo folders
case("zoo:zoo-missing-shard", "zoo {tmp}/zoo --out {tmp}/z", ERROR, "{tmp}/zoo/model-00001.safetensors")
case("trace:zoo-missing-shard", "trace {tmp}/zoo --method qcfs --steps 3 --out {tmp}/t.npz", ERROR, "{tmp}/zoo")
case("eval:zoo-missing-manifest-entry", "eval {tmp}/zoo --method qcfs --threshold 1 --steps 3", ERROR, "{tmp}/zoo")

MAKE = {
    "default-out-is-a-file": lambda tmp, i: (tmp / "dcsim-demo").write_text("a file where the demo's folder goes\n"),
    "zoo-missing-shard": lambda tmp, i: (
        shutil.copytree(i["zoo"], tmp / "zoo"),
        (tmp / "zoo" / "model-00001.safetensors").unlink(),
    ),
    "zoo-missing-manifest-entry": lambda tmp, i: (
        shutil.copytree(i["zoo"], tmp / "zoo"),
        (tmp / "zoo" / "manifest.json").write_text(
            json.dumps(json.loads((tmp / "zoo" / "manifest.json").read_text()) | {"shards": []})
        ),
    ),
}
"""Inputs one case makes in its own folder (by the id after the command), before the listing."""


def test_table_is_large_and_ids_unique():
    ids = [p.id for p in CASES]
    assert len(ids) >= 150 and len(set(ids)) == len(ids)


@pytest.mark.parametrize(("argv", "code", "names"), CASES)
def test_bad_input(argv, code, names, inputs, tmp_path, monkeypatch, capsys, request):
    (tmp_path / "file").write_text("not a checkpoint, a trace or a folder\n")
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    make = MAKE.get(request.node.callspec.id.split(":", 1)[1])
    if make:
        make(tmp_path, inputs)
    monkeypatch.chdir(tmp_path)
    subs = inputs | {"tmp": str(tmp_path)}
    args = [a.format(**subs) for a in argv]
    before = _listing(tmp_path), _listing(Path(inputs["in"]))
    capsys.readouterr()
    try:
        rc = main(args)
    except SystemExit as exit:  # argparse: unknown flags and choices, bad types
        rc = exit.code
    out, err = capsys.readouterr()
    assert rc == code, f"exit {rc}, expected {code}: {err}"
    for name in names:
        assert name.format(**subs) in err, f"{name.format(**subs)!r} not named in: {err}"
    assert "Traceback" not in err + out
    assert "weights_only=False" not in err and "allow_pickle=True" not in err
    assert (_listing(tmp_path), _listing(Path(inputs["in"]))) == before, "a file was written or left"
