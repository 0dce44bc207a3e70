"""Import checkpoints of the official Dynamic Confidence code (its CIFAR-10 ResNet-18) as dcsim checkpoints.

The official ``.pth`` file is a state dict of its ResNet-18: stem ``conv1``/``bn1``/``activation1``,
``layer1``..``layer4`` of two BasicBlocks (``conv1``/``bn1``/``activation1``/``conv2``/``bn2``/
``activation2``, ``downsample.0`` conv 1x1 + ``downsample.1`` batch norm where stride or width
change), ``fc`` (with bias) and a top-level ``activation2`` applied to the logits in the ANN
evaluation only. Every ``LsqActivation`` stores ``scale`` [1]; its bit width (``constraint``)
is not in the file (the official code uses 2), so it is an argument here.

The mapping onto :func:`dcsim.models.resnet18` (same layers, same order):

    conv1, bn1, activation1.scale          -> stem.0, stem.1, stem.2.step
    layerL.i.{conv1,bn1,conv2,bn2}         -> layers.(2(L-1)+i).{conv1,bn1,conv2,bn2}
    layerL.i.activation{1,2}.scale         -> layers.(2(L-1)+i).act{1,2}.step
    layerL.i.downsample.{0,1}              -> layers.(2(L-1)+i).shortcut.{0,1}
    fc                                     -> fc
    activation2.scale (logits)             -> metadata "source"."logit_step" (not in the model)

What is preserved: every weight, batch-norm statistic and step size, bit for bit (as float32),
so dcsim's model computes the official network's fc output for 32x32 inputs (the official
``F.avg_pool2d(x, 4)`` on the final 4x4 maps is dcsim's global average pool), with one
documented difference: dcsim's LSQ rounds half up where the official ``torch.round`` rounds
half to even, so an activation exactly at a tie x/s = k + 0.5 with k even is one level higher
(the SNN, whose neurons start at th/2, rounds half up too). The logit quantizer
``activation2`` is dropped from the model, as in the official SNN, which integrates ``fc``'s
output; its step is kept in the metadata so the official ANN accuracy can be recomputed.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from ..io.atomic import library_detail
from ..io.checkpoint import save_checkpoint
from ..models import resnet18

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
OFFICIAL_MEAN = (0.4914, 0.4822, 0.4465)
OFFICIAL_STD = (0.2023, 0.1994, 0.2010)
"""The official code's CIFAR-10 input normalization (torchvision Normalize after ToTensor)."""

LOGIT_KEY = "activation2.scale"
"""The top-level logit quantizer's step in the official state dict (optional; kept in the metadata)."""
_OPTIONAL = re.compile(r"(^|\.)num_batches_tracked$")
"""Batch-norm step counters: not used in evaluation, copied when present, 0 when absent."""
_BLOCK = re.compile(r"^layers\.(\d+)\.(.+)$")
_SUB = {"act1.step": "activation1.scale", "act2.step": "activation2.scale"}


def official_name(dcsim_name: str) -> str | None:
    """The official state-dict key of dcsim resnet18's tensor ``dcsim_name`` (None: dcsim-only, e.g. ``initialized``)."""
    if dcsim_name.endswith(".initialized"):
        return None
    stem = {"stem.0.": "conv1.", "stem.1.": "bn1.", "stem.2.": "activation1."}
    for prefix, official in stem.items():
        if dcsim_name.startswith(prefix):
            rest = dcsim_name[len(prefix) :]
            return official + ("scale" if rest == "step" else rest)
    m = _BLOCK.match(dcsim_name)
    if m:
        k, rest = int(m.group(1)), m.group(2)
        rest = _SUB.get(rest, rest.replace("shortcut.", "downsample.", 1))
        return f"layer{k // 2 + 1}.{k % 2}.{rest}"
    return dcsim_name  # fc.weight, fc.bias


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of the ``.pth`` state dict at ``path``, read with ``torch.load(weights_only=True)``.

    Never unpickles arbitrary objects. Raises FileNotFoundError for a missing file and
    ValueError naming the file (and the key) when it cannot be read safely or holds anything
    but a flat mapping of names to tensors.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file; give the .pth file of a state dict")
    with path.open("rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save: a zip archive (or a legacy pickle)
        raise ValueError(
            f"{path}: not a PyTorch .pth file (torch.save writes a zip archive; this file starts with "
            f"{head!r}); give the state dict saved with torch.save(model.state_dict(), path)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: holds Python objects other than tensors (a whole pickled model, an optimizer or "
            f"another class: {library_detail(err)}); dcsim reads only state dicts of tensors and never "
            "runs code from a file: save model.state_dict() in the training code and import that"
        ) from None
    except (RuntimeError, EOFError, ValueError, AttributeError, OSError, KeyError, IndexError) as err:
        raise ValueError(f"{path}: a damaged or unreadable .pth file ({library_detail(err)})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: key {key!r} is not a string; a state dict maps names to tensors")
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; only a state dict "
                "of tensors can be imported (save model.state_dict())"
            )
    return dict(obj)


def _describe(keys: list[str], shown: int = 5) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def map_state_dict(
    state: dict[str, torch.Tensor], num_classes: int = 10, bits: int = 2, where: str = "state dict"
) -> tuple[dict[str, torch.Tensor], float | None]:
    """(dcsim resnet18 state dict, logit step or None) from an official ResNet-18 state dict.

    Every expected key must be present with the expected shape (``scale``: one element, > 0);
    any other key is an error. Raises ValueError naming ``where`` and the missing, unexpected
    and misshapen keys.
    """
    target = resnet18(num_classes=num_classes, in_channels=3, bits=bits).state_dict()
    expected: dict[str, str] = {}  # official name -> dcsim name
    for k in target:
        name = official_name(k)
        if name is not None:
            expected[name] = k
    given = set(state) - {LOGIT_KEY}
    missing = sorted(k for k in set(expected) - given if not _OPTIONAL.search(k))
    unexpected = sorted(given - set(expected))
    misshapen = []
    for name in sorted(given & set(expected)):
        want, got = tuple(target[expected[name]].shape), tuple(state[name].shape)
        scale = name.endswith(".scale")
        if (scale and state[name].numel() != 1) or (not scale and got != want):
            misshapen.append(f"{name} (file {list(got)}, expected {list(want) if not scale else [1]})")
    if LOGIT_KEY in state and state[LOGIT_KEY].numel() != 1:
        misshapen.append(f"{LOGIT_KEY} (file {list(state[LOGIT_KEY].shape)}, expected [1])")
    if missing or unexpected or misshapen:
        parts = [
            f"{label}: {_describe(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", misshapen))
            if keys
        ]
        raise ValueError(f"{where}: not an official CIFAR-10 ResNet-18 with {num_classes} classes; " + "; ".join(parts))
    out: dict[str, torch.Tensor] = {}
    for k, value in target.items():
        name = official_name(k)
        if name is None:  # LSQActivation.initialized: the steps are set
            out[k] = torch.ones_like(value)
        elif name not in state:  # optional num_batches_tracked
            out[k] = torch.zeros_like(value)
        else:
            out[k] = state[name].detach().to("cpu", value.dtype).reshape(value.shape).clone()
            if name.endswith(".scale") and not float(out[k]) > 0:
                raise ValueError(f"{where}: {name} = {float(out[k])} must be > 0 (an LSQ step size)")
    logit_step = float(state[LOGIT_KEY].reshape(())) if LOGIT_KEY in state else None
    return out, logit_step


def import_official(
    path: str | os.PathLike,
    out: str | os.PathLike,
    bits: int = 2,
    classes: tuple[str, ...] | list[str] = CIFAR10_CLASSES,
    mean: tuple[float, ...] = OFFICIAL_MEAN,
    std: tuple[float, ...] = OFFICIAL_STD,
) -> Path:
    """Convert the official ResNet-18 ``.pth`` at ``path`` into the dcsim checkpoint ``out`` (.safetensors).

    bits: the activations' bit width (the official ``constraint``; not stored in its file).
    classes: class names in label order (CIFAR-10's by default). mean, std: the input
    normalization the model was trained with (the official code's by default); dcsim applies
    the checkpoint's normalization to the data. The file is written atomically; returns ``out``.
    """
    path = Path(path)
    state = read_state_dict(path)
    mapped, logit_step = map_state_dict(state, num_classes=len(classes), bits=bits, where=str(path))
    model = resnet18(num_classes=len(classes), in_channels=3, bits=bits)
    model.load_state_dict(mapped, strict=True)
    meta = {
        "architecture": "resnet18",
        "arch_kwargs": {"num_classes": len(classes), "in_channels": 3, "bits": bits},
        "classes": list(classes),
        "normalization": {"mean": list(mean), "std": list(std)},
        "dataset": "cifar10",
        "accuracy": {},
        "source": {"kind": "official", "file": path.name, "rounding": "half_even", "logit_step": logit_step},
    }
    return save_checkpoint(out, model.eval(), meta)
