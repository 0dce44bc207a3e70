"""The command line's parser: every command's flags as rows ``(flag, kind, default, help[, more keywords])``; kind:
a type, a list of choices, an action or None (a string); the default ``...`` makes the flag required."""

from __future__ import annotations

import argparse
from copy import copy
from pathlib import Path
from typing import Any

from ..analysis.energy import DEFAULT_PRESET, PRESETS
from ..data.sources import loader_name  # --loader: "stream", the old name of "disk", read as it for one release
from ..models import ARCHITECTURES
from ..sim.engine import PRECISIONS
from ..sim.network import STEMS
from ..workflows.options import steps_per_call
from . import handlers

ON, OFF, BOOL = "store_true", "store_false", argparse.BooleanOptionalAction
ONOFF, METHODS, SPLITS = ["on", "off"], ["qcfs", "qffs"], ["train", "val", "test"]


def _percentile(text: str) -> float:
    """``--threshold-percentile`` value: 'max' (100) or a percentile (checked to lie in (0, 100] in dcsim.cli.checks)."""
    try:
        return 100.0 if text == "max" else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes 'max' or a percentile in (0, 100], got {text!r}") from None


def _named(rows: list[tuple], *flags: str) -> list[tuple]:
    """The rows of ``flags``, in that order (a KeyError names a flag the rows lack)."""
    by_flag = {row[0]: row for row in rows}
    return [by_flag[f] for f in flags]


def _add(p: Any, rows: list[tuple]) -> None:
    """Add the flags of ``rows`` to the parser (or group) ``p``."""
    for flag, kind, default, help, *more in rows:
        kw: dict[str, Any] = {"help": help, **(more[0] if more else {})}
        if kind is not None:
            kw["choices" if isinstance(kind, list) else "action" if kind in (ON, OFF, BOOL) else "type"] = kind
        if default is not None:
            kw.update({"required": True} if default is ... else {"default": copy(default)})
        p.add_argument(*flag.split("|"), **kw)  # "--new|--old": an old name, for one release


# fmt: off
PREC, ARCHS, MANY, PJ = list(PRECISIONS), sorted(ARCHITECTURES), {"nargs": "+"}, {"metavar": "PJ"}
CHECKPOINT, OUT_FOLDER = ("checkpoint", Path, None, None), ("--out", Path, ..., "output folder")
TOLERANCE = ("--tolerance", float, 0.0, "accepted accuracy drop (below the baseline) when selecting th_c")
SELECT_ON_TEST = ("--select-on-test", ON, None, "accept a --trace of the test split (optimistic)")
UNMATCHED_TRACE = ("--unmatched-trace", ON, None, "accept a --trace that carries no checkpoint hash (an older "
                   "dcsim's), so cannot be matched to the checkpoint")
CHANNELS_LAST = ("--channels-last", ON, None, "engine in the channels_last layout (float rounding: a few spikes differ)")
GRAPHS = ("--graphs", ON, None, "step loop(s) as CUDA graphs (GPU; same results)")
SEMANTICS = ("--qffs-semantics", ["settle", "constant"], None, "QFFS only: 'settle' (default: image and biases "
             "drive the first Qp steps, then the net settles; holds accuracy past T = Qp) or 'constant' (every step)")
STEM = ("--qcfs-stem", list(STEMS), "spiking", "QCFS only: 'quantized': the first layer of activations (fed by the image's current) is computed once per sample as the ANN's quantizer, the layers after it spike; 'spiking' (default): all spike")
COMMON = [("--json", Path, None, "write the result as JSON to this file ('-': stdout)"),
    ("--device", None, None, "cpu or cuda (default: cuda when available)"),
    ("--batch-size", int, 256, "samples simulated together")]
DATA = [
    ("--dataset", ["digits", "cifar10", "imagefolder"], "digits", "digits: scikit-learn's bundled 8x8 digits; "
     "cifar10: python batches, class folders or .tar.gz at --data-root; imagefolder: train/ and val/ class folders"),
    ("--data-root", Path, None, "dataset location (cifar10, imagefolder)"),
    ("--val-size", int, None, "validation images drawn from train (default: digits 300, cifar10 5000, else 10000)"),
    ("--seed", int, 0, "seed of the validation split and of training"),
    ("--loader", ["auto", "memory", "disk"], "auto", "memory: whole splits in memory; disk: image folders read batch by batch, "
     "decoded in worker processes (bounded memory); auto: disk above 2 GiB decoded", {"type": loader_name}),
    ("--loader-workers", int, None, "split read from disk: DataLoader workers per rank (default: CPUs / ranks; 0: none)")]
CLIP = [("--threshold-percentile|--normalize", _percentile, None, "float ReLU checkpoint (QCFS only): thresholds from the P-th percentile ('max' "
     "or 100: the maximum) of each layer's activations on training images (--normalize: its old name, one release)", {"metavar": "P"}),
    ("--calibration-size", int, 1000, "training images drawn (seeded by --seed) for --threshold-percentile")]
STEPS = [("--qffs-steps", int, None, "T for QFFS (default: as for QCFS)"),
    ("--qcfs-max-steps", int, 64, "largest T considered for QCFS"),
    ("--qffs-max-steps", int, 12, "largest T considered for QFFS")]
TAU = ("--tau", None, "auto", "temperature: 'auto' (fit on val) or a number > 0")
REPORT = [TAU, TOLERANCE, ("--qcfs-steps", int, None, "T for QCFS (default: the smallest reaching the ANN's val "
          "accuracy)"), *STEPS, SEMANTICS, STEM]
READOUT = [("--method", METHODS, ..., None), ("--readout", ["max_softmax", "entropy", "margin"], "max_softmax", None),
           ("--alpha", None, "paper", "'paper' (2^b-1 QFFS, T QCFS), 'official' (30, tau 1) or a number"), TAU,
           ("--split", SPLITS, "val", None), SEMANTICS, STEM]
ENERGY = [
    ("--energy-preset", None, DEFAULT_PRESET, "energy per MAC / per AC in pJ, 45 nm (Horowitz 2014, as SpikingJelly "
     "and syops use): " + ", ".join(f"{n} {m.e_mac:g}/{m.e_ac:g}" for n, m in PRESETS.items())
     + f" (default {DEFAULT_PRESET})", {"metavar": "{" + ",".join(PRESETS) + "}"}),
    ("--e-mac", float, None, "energy per multiply-accumulate in pJ (overrides the preset's)", PJ),
    ("--e-ac", float, None, "energy per accumulate (one SOP) in pJ (overrides the preset's)", PJ),
    ("--first-layer-macs", None, "once", "MACs of the image-fed layers: 'once' per inference (default; as dcsim "
     "computes them, as Spikformer-style papers count) or 'per-step' (each step the image drives; as Attention-SNN)",
     {"metavar": "{once,per-step}"})]
ENGINE = [
    ("--precision", PREC, "fp32", "conv/linear precision fp32, tf32 (GPU), bf16, fp16 (reduced; spikes may differ)"),
    ("--spike-convs", ON, None, "CPU: event-driven convs of spike maps (sum the weights of spiking inputs; float32)")]
HYPER = [("--arch", ARCHS, "small_cnn", None),  # defaults: train's
    ("--width", int, None, "base width: first conv's channels (default: small_cnn 32; resnet18, resnet50, vgg16 64)"),
    ("--bits", int, 2, "activation bits b (levels 0..2^b-1)"), ("--epochs", int, 60, "LSQ fine-tuning epochs"),
    ("--float-epochs", int, 0, "float (ReLU) pre-training epochs before LSQ"),
    ("--lr", float, 0.01, "learning rate (cosine schedule: the float stage's peak)"),
    ("--lr-decay", float, 0.95, "exponential schedule: decay of the learning rate per epoch"),
    ("--momentum", float, 0.9, None), ("--weight-decay", float, 2.5e-5, None), ("--train-batch-size", int, 32, None)]
TRAIN = [
    ("--augment", ON, None, "random crop (pad --crop-padding) and horizontal flip, in batches on the device; with a split "
     "read from disk (--loader disk): random-resized crop and flip as each image is decoded"),
    ("--schedule", ["exponential", "cosine", "linear"], "exponential",
     "lr * lr-decay^epoch, or per stage warm-up + cosine (or a straight line) to 0"),
    ("--lsq-lr", float, None, "cosine: the LSQ stage's peak lr (default lr / 10)"), ("--nesterov", ON, None, None),
    ("--warmup-epochs", float, 0.0, "cosine: warm-up per stage (epochs)"), ("--label-smoothing", float, 0.0, "both stages"),
    ("--lsq-label-smoothing", float, None, "the LSQ stage's (default: --label-smoothing; 0: plain cross-entropy: unsmoothed confidence)"),
    ("--distill", float, 0.0, "LSQ stage: weight in [0, 1] of distillation from the float stage's network (0: off)"),
    ("--clip-mix", float, 0.0, "LSQ stage: chance in [0, 1) an image takes the clip (QCFS's many-step limit), not the quantizer"),
    ("--clip-mix-epochs", int, None, "the clip mix only in the last N LSQ epochs (default: all)"), ("--clip-mix-layers", int, None, "the clip mix only at the first N LSQ layers (default: all)"), ("--bn-reestimate", ON,
     None, "after the LSQ stage: batch-norm statistics afresh from one augmented pass of the quantized network"), ("--ema", float, 0.0, "LSQ stage: decay per step of a moving average of the weights, validated and kept in their place (0: off)"), ("--lsq-seed", int, None, "seed the LSQ stage afresh as it starts (default: it continues --seed's draws)"),
    ("--train-precision", ["auto", "fp32", "bf16"], "auto", "auto: bf16 autocast + channels_last on CUDA, else fp32"),
    ("--train-channels-last", BOOL, None, "channels_last training (default: CUDA, bf16; faster: whitened_cnn, CPU)"),
    ("--compile", ON, None, "torch.compile the training forward pass (CPU: LSQ epochs ~2x faster; each stage compiles first)"),
    ("--budget-minutes", float, None, "set the float and LSQ epochs to fill this much training time (on this machine)"),
    ("--lsq-share", float, 0.4, "with --budget-minutes: the LSQ stage's share"), ("--train-subset", int, None, "N images, seeded pick"),
    ("--float-stage", Path, None, "the float stage's end state: read if the file exists (LSQ variants), else written"),
    ("--workdir", Path, None, "per-epoch state for resuming (default: OUT.work/)"), ("--quiet", ON, None, "no progress bars"),
    ("--sync-bn", ON, None, "under torchrun: global-batch norm (SyncBatchNorm on CUDA, GlobalBatchNorm2d on the CPU)"),
    ("--optimizer", ["sgd", "muon"], "sgd", "muon: the fast recipe, see docs/training.md (--weight-decay: per step)"),
    ("--crop-padding", int, 4, "with --augment: the random crop's padding in pixels (offsets 0..2*padding)"),
    ("--cutout", int, 0, "with --augment: zero a square of this many pixels a side at a random centre (0: off)")]
BENCH = [  # the first two exclude each other
    ("--quick", ON, None, "small models only (small_cnn, resnet18; the default on a CPU: a few minutes)"),
    ("--full", ON, None, "resnet18, vgg16 and resnet50 (the default on a GPU; long on a CPU)"),
    ("--models", ["small_cnn", "resnet18", "vgg16", "resnet50"], None, None, MANY),
    ("--repeats", int, 7, "rounds, interleaved; times are medians with min and max (default 7)"),
    ("--processes", int, 1, "run it all in P fresh processes, one after another; rows: medians over them"),
    ("--chunk", steps_per_call, [None], "steps per conv call (default auto: planned at batch 1)", MANY), CHANNELS_LAST,
    ("--graphs", ONOFF, None, "step loop as CUDA graphs, eager, or both (default: on for cuda, off for cpu)", MANY),
    ("--masked", ON, None, "with graphs: also time a masked fixed batch (no compaction) beside the bucketed one"),
    ("--precision", PREC, ["fp32"], "engine conv/linear precisions to time (all but fp32 reduced)", MANY),
    ("--spike-convs", ONOFF, None, "event-driven convs of spike maps (float32, CPU), dense, or both (default: both on cpu)", MANY),
    ("--batches", int, None, "batch sizes of every case (default: 1 and 32 on a CPU, 1 and 256 on a GPU)", MANY), ("--ideal", ON, None, "also time the full run cut at each exit step: an ideal early exit's saving beside the real one"),
    ("--checkpoint", Path, None, "also time this trained net (file, zoo) on --dataset test images, by a random twin"), STEM,
    *DATA, ("--stream", int, None, "also time SLOTS streaming slots vs static batches of SLOTS", {"metavar": "SLOTS"})]
COMMANDS: dict[str, tuple[str, dict[str, Any], list[tuple]]] = {  # name: (help, defaults, flags)
    "train": ("float pre-training and LSQ fine-tuning; writes a safetensors checkpoint", {},
        [*DATA, *HYPER, *TRAIN, ("--out", Path, ..., "checkpoint path (.safetensors)")]),
    "trace": ("record a full-length run (prediction and score per sample and step) to .npz", {},
        [CHECKPOINT, *DATA, *READOUT, ("--steps", int, ..., "T"), ("--sums", ON, None, "also store the running sums "
         "S_t [N, T, K]"), ("--out", Path, ..., "trace file (.npz)"), *CLIP]),
    "analyze": ("Pareto front, selected threshold, oracle and plots from a trace", {},
        [("trace", Path, None, None), ("--resolution", float, 0.1, "grid of the front (the paper: 0.1)"), TOLERANCE,
         ("--plots", Path, None, "folder for the PNG plots (default: beside --json)")]),
    "eval": ("live early exit on a split: accuracy, mean steps, saving, spikes, wall time", {"split": "test"},
        [CHECKPOINT, *DATA, *READOUT, ("--steps", int, None, "T (taken from the trace with --trace)"),
         ("--threshold", float, None, "th_c in [0, 1]; 1 disables early exit"),
         ("--trace", Path, None, "validation trace to select th_c from"), SELECT_ON_TEST, UNMATCHED_TRACE, TOLERANCE,
         ("--chunk", steps_per_call, "auto", "steps per conv call; auto: planned at batch 1 (same results)"), CHANNELS_LAST, GRAPHS,
         *ENGINE, *ENERGY, *CLIP]),
    "report": ("QCFS and QFFS with and without Dynamic Confidence: Table-1 report and plots", {},
        [CHECKPOINT, *DATA, *REPORT, OUT_FOLDER, *ENERGY, *CLIP]),
    "bench": ("standard benchmark set: engine vs official-style eager simulator vs ANN forward", {}, BENCH),
    "stream": ("continuous batching with early exit over a split (slots refilled as samples exit)", {"split": "test"},
        [CHECKPOINT, *DATA, *_named(READOUT, "--method"),
         ("--trace", Path, ..., "validation trace: T, readout and th_c come from it"),
         SELECT_ON_TEST, UNMATCHED_TRACE, TOLERANCE, *_named(READOUT, "--split"), ("--slots", int, 64, "S: samples in flight"), SEMANTICS, STEM,
         ("--compare", ON, None, "also time static batches of S with and without early exit"), GRAPHS, CHANNELS_LAST,
         *ENGINE, ("--repeats", int, 2, "with --compare: interleaved rounds, best time of each"), *CLIP]),
    "import": ("import a checkpoint trained elsewhere as a dcsim checkpoint", {},
        [("kind", ["official"], None, "official: the Dynamic Confidence code's CIFAR-10 ResNet-18 state dict"),
         ("file", Path, None, "the .pth state dict (read with weights_only=True)"),
         ("--out", Path, ..., "dcsim checkpoint to write (.safetensors)"),
         ("--bits", int, 2, "activation bits (the official 'constraint'; not in the .pth)"),
         ("--classes", None, None, "comma-separated class names in label order (default: CIFAR-10's)")]),
    "reproduce": ("train, convert, calibrate, trace, select th_c, exit early and report in Table 1's layout",
        {"arch": "resnet18", "float_epochs": 30, "epochs": 15, "lr": 0.2, "weight_decay": 5e-4, "train_batch_size": 512,
         "augment": True, "schedule": "cosine", "lsq_lr": 0.02, "warmup_epochs": 1.0, "nesterov": True},
        [*DATA, *_named(HYPER, "--arch", "--width", "--bits", "--float-epochs", "--epochs", "--lr", "--lr-decay",
                        "--momentum", "--weight-decay", "--train-batch-size"), *TRAIN,
         ("--no-augment", OFF, None, "no crop/flip augmentation", {"dest": "augment"}),
         ("--min-accuracy", float, 0.5, "below this 2-bit ANN test accuracy the model counts as untrained: no report"),
         ("--max-test", int, None, "evaluate on this many test images (seeded random pick)"), TOLERANCE,
         ("--qcfs-steps", int, None, "T for QCFS (default: the paper's, else chosen on validation)"), *STEPS, STEM,
         OUT_FOLDER, *ENERGY]),
    "zoo": ("split a checkpoint into sha256-checked safetensors shards (a folder other commands accept)", {},
        [("checkpoint", Path, None, "checkpoint file, or a zoo folder to re-shard"),
         ("--out", Path, ..., "zoo folder (manifest.json and shards)"),
         ("--max-shard-mib", float, 16.0, "largest shard in MiB")]),
    "demo": ("the end-to-end demo on scikit-learn's digits (trains, converts, reports)",
        {"epochs": 8, "float_epochs": 4, "lr": 0.05},
        [*REPORT, ("--out", Path, Path("dcsim-demo"), "output folder"),
         *_named(HYPER, "--epochs", "--float-epochs", "--lr", "--train-batch-size"), *_named(DATA, "--seed"),
         *_named(TRAIN, "--quiet"), *ENERGY]),
}
# fmt: on


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("dcsim", description="Spiking networks from LSQ CNNs with Dynamic Confidence.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help, defaults, rows) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        _add(p, COMMON)
        if name == "bench":  # --quick and --full
            _add(p.add_mutually_exclusive_group(), rows[:2])
        _add(p, rows[2:] if name == "bench" else rows)
        p.set_defaults(func=getattr(handlers, "import_" if name == "import" else name), **defaults)
    return parser
