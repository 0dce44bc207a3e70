"""The command line's parser: every command, its flags and their help (``dcsim CMD --help``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis.energy import DEFAULT_PRESET, PRESETS
from ..models import ARCHITECTURES
from ..sim.engine import PRECISIONS
from . import handlers


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        choices=["digits", "cifar10", "imagefolder"],
        default="digits",
        help="digits: scikit-learn's bundled 8x8 digits (no files needed); cifar10: the python batches, "
        "class folders or the .tar.gz at --data-root; imagefolder: ImageNet-style train/ and val/ class folders",
    )
    p.add_argument("--data-root", type=Path, help="dataset location (cifar10, imagefolder)")
    p.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="validation images drawn from train (default: digits 300, cifar10 5000, imagefolder 10000)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split and of training")
    p.add_argument(
        "--loader",
        choices=["auto", "memory", "stream"],
        default="auto",
        help="memory: whole splits in memory; stream: image folders decoded batch by batch in worker "
        "processes (bounded memory); auto: stream image folders above 2 GiB decoded",
    )
    p.add_argument(
        "--loader-workers",
        type=int,
        default=None,
        help="with a streamed split: DataLoader worker processes per rank (default: CPUs / ranks; 0: none)",
    )


def _percentile(text: str) -> float:
    """``--normalize`` value: 'max' (100) or a percentile in (0, 100]."""
    if text == "max":
        return 100.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--normalize takes 'max' or a percentile in (0, 100], got {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"--normalize: the percentile must be in (0, 100], got {value}")
    return value


def _add_normalize_args(p: argparse.ArgumentParser) -> None:
    """--normalize and --calibration-size (trace, eval, report, stream)."""
    p.add_argument(
        "--normalize",
        type=_percentile,
        metavar="P",
        help="float ReLU checkpoint: thresholds from the P-th percentile ('max' or 100: the maximum) of each "
        "layer's activations on training-split images (QCFS only)",
    )
    p.add_argument(
        "--calibration-size", type=int, default=1000, help="training images drawn (seeded by --seed) for --normalize"
    )


def _add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tau", default="auto", help="temperature: 'auto' (fit on val) or a number > 0")
    p.add_argument(
        "--tolerance", type=float, default=0.0, help="accepted accuracy drop below the baseline when selecting th_c"
    )
    p.add_argument(
        "--qcfs-steps", type=int, help="T for QCFS (default: the smallest T reaching the ANN's val accuracy)"
    )
    p.add_argument("--qffs-steps", type=int, help="T for QFFS (default: as for QCFS)")
    p.add_argument("--qcfs-max-steps", type=int, default=64, help="largest T considered for QCFS")
    p.add_argument("--qffs-max-steps", type=int, default=12, help="largest T considered for QFFS")
    _add_semantics_arg(p)


def _add_semantics_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--qffs-semantics",
        choices=["settle", "constant"],
        help="QFFS only: 'settle' (default: image and biases drive the first Qp steps, then the network "
        "settles; holds accuracy beyond T = Qp) or 'constant' (image and biases at every step)",
    )


def _add_energy_args(p: argparse.ArgumentParser) -> None:
    """The energy estimate (eval, report, reproduce, demo): --energy-preset, --e-mac, --e-ac, --first-layer-macs."""
    presets = ", ".join(f"{name} {m.e_mac:g}/{m.e_ac:g}" for name, m in PRESETS.items())
    p.add_argument(
        "--energy-preset",
        default=DEFAULT_PRESET,
        metavar="{" + ",".join(PRESETS) + "}",
        help=f"energy per MAC / per AC in pJ, 45 nm (Horowitz 2014, as SpikingJelly and syops use): {presets} "
        f"(default {DEFAULT_PRESET})",
    )
    p.add_argument(
        "--e-mac", type=float, metavar="PJ", help="energy per multiply-accumulate in pJ (overrides the preset's)"
    )
    p.add_argument(
        "--e-ac", type=float, metavar="PJ", help="energy per accumulate (one SOP) in pJ (overrides the preset's)"
    )
    p.add_argument(
        "--first-layer-macs",
        default="once",
        metavar="{once,per-step}",
        help="MACs of the image-fed layers: 'once' per inference (default; as dcsim computes the image current, "
        "and as Spikformer-style papers count) or 'per-step', at every step the image drives (as Attention-SNN counts)",
    )


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    """Engine options of eval and stream: --precision and --spike-convs."""
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="conv/linear precision: fp32 (default), tf32 (GPU), bf16, fp16 (reduced; spikes may differ)",
    )
    p.add_argument(
        "--spike-convs",
        action="store_true",
        help="CPU: event-driven convs of spike maps (sum only the weights of spiking inputs; float32)",
    )


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """Options of train and reproduce beyond the architecture and the basic schedule."""
    p.add_argument(
        "--augment",
        action="store_true",
        help="random crop (pad 4) and horizontal flip, in batches on the device; with a streamed split "
        "(--loader stream): random-resized crop and flip as each image is decoded",
    )
    p.add_argument(
        "--schedule",
        choices=["exponential", "cosine"],
        default="exponential",
        help="exponential: lr * lr-decay^epoch; cosine: per stage, warm-up then cosine to zero (per batch)",
    )
    p.add_argument("--lsq-lr", type=float, help="cosine: peak learning rate of the LSQ stage (default lr / 10)")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="cosine: linear warm-up of each stage, in epochs")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument(
        "--train-precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="training forward/backward: auto = bf16 autocast and channels_last on CUDA, float32 elsewhere",
    )
    p.add_argument(
        "--train-channels-last",
        action=argparse.BooleanOptionalAction,
        help="train in the channels_last layout (default: on CUDA and with bf16; faster for whitened_cnn on a CPU)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward pass (GPU, many epochs)")
    p.add_argument(
        "--budget-minutes",
        type=float,
        help="set the float and LSQ epochs to fill this much training time (measured on this machine)",
    )
    p.add_argument("--lsq-share", type=float, default=0.4, help="with --budget-minutes: the LSQ stage's share of it")
    p.add_argument("--train-subset", type=int, help="train on this many training images (seeded random pick)")
    p.add_argument("--workdir", type=Path, help="per-epoch state for resuming (default: OUT.work/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="under torchrun: batch norm over the global batch (SyncBatchNorm on CUDA, GlobalBatchNorm2d on the CPU)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcsim", description="Spiking networks from LSQ CNNs with Dynamic Confidence."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", type=Path, help="write the result as JSON to this file ('-': stdout)")
        p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
        p.add_argument("--batch-size", type=int, default=256, help="samples simulated together")
        return p

    p = command("train", "float pre-training and LSQ fine-tuning; writes a safetensors checkpoint")
    _add_data_args(p)
    p.add_argument("--arch", default="small_cnn", choices=sorted(ARCHITECTURES))
    p.add_argument(
        "--width",
        type=int,
        help="base width: channels of the first conv (default: small_cnn 32; "
        "resnet18, resnet50, vgg16 64, the paper's networks)",
    )
    p.add_argument("--bits", type=int, default=2, help="activation bits b (levels 0..2^b-1)")
    p.add_argument("--epochs", type=int, default=60, help="LSQ fine-tuning epochs")
    p.add_argument("--float-epochs", type=int, default=0, help="float (ReLU) pre-training epochs before LSQ")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--lr-decay", type=float, default=0.95, help="exponential decay of the learning rate per epoch")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=2.5e-5)
    p.add_argument("--train-batch-size", dest="train_batch_size", type=int, default=32)
    _add_train_args(p)
    p.add_argument("--out", type=Path, required=True, help="checkpoint path (.safetensors)")
    p.set_defaults(func=handlers.train)

    def readout_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--method", choices=["qcfs", "qffs"], required=True)
        p.add_argument("--readout", choices=["max_softmax", "entropy", "margin"], default="max_softmax")
        p.add_argument(
            "--alpha", default="paper", help="'paper' (2^b-1 QFFS, T QCFS), 'official' (30, tau 1) or a number"
        )
        p.add_argument("--tau", default="auto", help="temperature: 'auto' (fit on val) or a number > 0")
        p.add_argument("--split", choices=["train", "val", "test"], default="val")
        _add_semantics_arg(p)

    p = command("trace", "record a full-length run (prediction and score per sample and step) to .npz")
    p.add_argument("checkpoint", type=Path)
    _add_data_args(p)
    readout_args(p)
    p.add_argument("--steps", type=int, required=True, help="T")
    p.add_argument("--sums", action="store_true", help="also store the running sums S_t [N, T, K]")
    p.add_argument("--out", type=Path, required=True, help="trace file (.npz)")
    _add_normalize_args(p)
    p.set_defaults(func=handlers.trace)

    p = command("analyze", "Pareto front, selected threshold, oracle and plots from a trace")
    p.add_argument("trace", type=Path)
    p.add_argument("--resolution", type=float, default=0.1, help="grid of the front (the paper: 0.1)")
    p.add_argument("--tolerance", type=float, default=0.0, help="accepted accuracy drop when selecting th_c")
    p.add_argument("--plots", type=Path, help="folder for the PNG plots (default: beside --json)")
    p.set_defaults(func=handlers.analyze)

    p = command("eval", "live early exit on a split: accuracy, mean steps, saving, spikes, wall time")
    p.add_argument("checkpoint", type=Path)
    _add_data_args(p)
    readout_args(p)
    p.set_defaults(split="test")
    p.add_argument("--steps", type=int, help="T (taken from the trace with --trace)")
    p.add_argument("--threshold", type=float, help="th_c in [0, 1]; 1 disables early exit")
    p.add_argument("--trace", type=Path, help="validation trace to select th_c from")
    p.add_argument("--select-on-test", action="store_true", help="accept a --trace of the test split (optimistic)")
    p.add_argument("--tolerance", type=float, default=0.0)
    p.add_argument("--chunk", type=int, default=1, help="steps per conv call (faster at small batches; same results)")
    p.add_argument("--channels-last", action="store_true", help="run the engine in the channels_last layout")
    p.add_argument("--graphs", action="store_true", help="step loop as CUDA graphs (GPU; same results)")
    _add_engine_args(p)
    _add_energy_args(p)
    _add_normalize_args(p)
    p.set_defaults(func=handlers.eval)

    p = command("report", "QCFS and QFFS with and without Dynamic Confidence: Table-1 report and plots")
    p.add_argument("checkpoint", type=Path)
    _add_data_args(p)
    _add_report_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _add_energy_args(p)
    _add_normalize_args(p)
    p.set_defaults(func=handlers.report)

    p = command("bench", "standard benchmark set: engine vs official-style eager simulator vs ANN forward")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="small models only (small_cnn, resnet18; the default on a CPU: a few minutes)",
    )
    size.add_argument(
        "--full", action="store_true", help="resnet18, vgg16 and resnet50 (the default on a GPU; long on a CPU)"
    )
    p.add_argument("--models", nargs="+", choices=["small_cnn", "resnet18", "vgg16", "resnet50"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, nargs="+", default=[1], help="engine steps computed layer-major at a time")
    p.add_argument("--channels-last", action="store_true", help="run the engine in the channels_last layout")
    p.add_argument(
        "--graphs",
        nargs="+",
        choices=["on", "off"],
        help="engine step loop as CUDA graphs, eager, or both (default: on for cuda, off for cpu)",
    )
    p.add_argument(
        "--masked",
        action="store_true",
        help="with graphs: also time a masked fixed batch (no compaction) beside the bucketed one",
    )
    p.add_argument(
        "--precision",
        nargs="+",
        choices=list(PRECISIONS),
        default=["fp32"],
        help="engine conv/linear precisions to time (all but fp32 reduced; see dcsim.Engine)",
    )
    p.add_argument(
        "--spike-convs",
        nargs="+",
        choices=["on", "off"],
        help="event-driven convs of spike maps (float32, CPU), dense convs, or both (default: both on cpu)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="also time this trained network (checkpoint or zoo folder) on real "
        "test images of --dataset, beside a random-weight twin",
    )
    _add_data_args(p)
    p.add_argument(
        "--stream",
        type=int,
        metavar="SLOTS",
        help="also time streaming with SLOTS slots against static batches of SLOTS (per model and method)",
    )
    p.set_defaults(func=handlers.bench)

    p = command("stream", "continuous batching with early exit over a split (slots refilled as samples exit)")
    p.add_argument("checkpoint", type=Path)
    _add_data_args(p)
    p.add_argument("--method", choices=["qcfs", "qffs"], required=True)
    p.add_argument("--trace", type=Path, required=True, help="validation trace: T, readout and th_c come from it")
    p.add_argument("--select-on-test", action="store_true", help="accept a --trace of the test split (optimistic)")
    p.add_argument("--tolerance", type=float, default=0.0)
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--slots", type=int, default=64, help="S: samples in flight")
    _add_semantics_arg(p)
    p.add_argument("--compare", action="store_true", help="also time static batches of S with and without early exit")
    p.add_argument("--graphs", action="store_true", help="step loops as CUDA graphs (GPU; same results)")
    p.add_argument("--channels-last", action="store_true", help="run the engine in the channels_last layout")
    _add_engine_args(p)
    p.add_argument("--repeats", type=int, default=2, help="with --compare: interleaved rounds, best time of each")
    _add_normalize_args(p)
    p.set_defaults(func=handlers.stream)

    _add_import_parser(command("import", "import a checkpoint trained elsewhere as a dcsim checkpoint"))

    p = command("reproduce", "train, convert, calibrate, trace, select th_c, exit early and report in Table 1's layout")
    _add_data_args(p)
    p.add_argument("--arch", default="resnet18", choices=sorted(ARCHITECTURES))
    p.add_argument("--width", type=int, help="base width (default: the paper's network)")
    p.add_argument("--bits", type=int, default=2, help="activation bits b")
    p.add_argument("--float-epochs", type=int, default=30, help="float epochs (without --budget-minutes)")
    p.add_argument("--epochs", type=int, default=15, help="LSQ epochs (without --budget-minutes)")
    p.add_argument("--lr", type=float, default=0.2, help="peak learning rate of the float stage")
    p.add_argument("--lr-decay", type=float, default=0.95, help="with --schedule exponential: decay per epoch")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--train-batch-size", dest="train_batch_size", type=int, default=512)
    _add_train_args(p)
    p.set_defaults(augment=True, schedule="cosine", lsq_lr=0.02, warmup_epochs=1.0, nesterov=True)
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no crop/flip augmentation")
    p.add_argument(
        "--min-accuracy",
        type=float,
        default=0.5,
        help="below this 2-bit ANN test accuracy the model counts as untrained: no report",
    )
    p.add_argument("--max-test", type=int, help="evaluate on this many test images (seeded random pick)")
    p.add_argument("--tolerance", type=float, default=0.0, help="accepted accuracy drop when selecting th_c")
    p.add_argument("--qcfs-steps", type=int, help="T for QCFS (default: the paper's, else chosen on validation)")
    p.add_argument("--qffs-steps", type=int, help="T for QFFS (as for QCFS)")
    p.add_argument("--qcfs-max-steps", type=int, default=64, help="largest T considered when T is chosen")
    p.add_argument("--qffs-max-steps", type=int, default=12, help="largest T considered when T is chosen")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _add_energy_args(p)
    p.set_defaults(func=handlers.reproduce)

    p = command("zoo", "split a checkpoint into sha256-checked safetensors shards (a folder other commands accept)")
    p.add_argument("checkpoint", type=Path, help="checkpoint file, or a zoo folder to re-shard")
    p.add_argument("--out", type=Path, required=True, help="zoo folder (manifest.json and shards)")
    p.add_argument("--max-shard-mib", type=float, default=16.0, help="largest shard in MiB")
    p.set_defaults(func=handlers.zoo)

    p = command("demo", "the end-to-end demo on scikit-learn's digits (trains, converts, reports)")
    _add_report_args(p)
    p.add_argument("--out", type=Path, default=Path("dcsim-demo"), help="output folder")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--float-epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--train-batch-size", dest="train_batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    _add_energy_args(p)
    p.set_defaults(func=handlers.demo)
    return parser


def _add_import_parser(p: argparse.ArgumentParser) -> None:
    """Arguments of ``dcsim import``."""
    p.add_argument(
        "kind", choices=["official"], help="official: the Dynamic Confidence code's CIFAR-10 ResNet-18 state dict"
    )
    p.add_argument("file", type=Path, help="the .pth state dict (read with weights_only=True)")
    p.add_argument("--out", type=Path, required=True, help="dcsim checkpoint to write (.safetensors)")
    p.add_argument("--bits", type=int, default=2, help="activation bits (the official 'constraint'; not in the .pth)")
    p.add_argument("--classes", help="comma-separated class names in label order (default: CIFAR-10's)")
    p.set_defaults(func=handlers.import_)
