"""Model checkpoints: safetensors weights plus JSON metadata, never pickle.

A checkpoint is one ``.safetensors`` file: every entry of the model's ``state_dict()`` (parameters
and buffers such as BatchNorm running statistics, CPU, contiguous) and, in the safetensors header's
string metadata under the key ``"dcsim"``, a JSON object describing how to rebuild the model:

    {"format_version": 2, "architecture": "resnet18",
     "arch_kwargs": {"num_classes": 10, "in_channels": 3, "bits": 2},
     "classes": [...], "normalization": {"mean": [...], "std": [...]},
     "dataset": "cifar10", "accuracy": {"val": 0.93, "test": 0.92}, ...any other JSON values}

The metadata JSON ends with ``"content_sha256"``: the SHA-256 of the JSON text without it and of
every tensor (name, dtype, shape and bytes, in name order; see :func:`content_hash`). safetensors
has no checksum of its own, so a flipped byte in the tensor data would otherwise load silently.
(One metadata entry, not two: safetensors writes its metadata map in no fixed order.)

Loading reads the header, rebuilds the module with ``build_model(architecture, **arch_kwargs)``,
requires the file's tensor names and shapes to equal the module's state_dict exactly and the
content hash to match (a format-1 checkpoint, from an older dcsim and without a hash, loads with
a warning).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as serialize
from torch import nn

from .atomic import atomic_output

FORMAT_VERSION = 2
"""2: the metadata carries the content hash (required); 1: no hash (loads with a warning)."""
METADATA_KEY = "dcsim"
HASH_KEY = "content_sha256"
REQUIRED_KEYS = ("architecture", "arch_kwargs", "classes", "normalization", "dataset", "accuracy")
_SHOWN = 5
"""How many missing / unexpected / mismatched tensors an error message lists."""


def content_hash(header: str, tensors: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 of a checkpoint's metadata JSON text and its tensors (CPU, contiguous).

    Each tensor contributes its name, dtype, shape and raw bytes, in sorted name order, so any
    change to a value, a dtype, a shape or the metadata changes the hash.
    """
    h = hashlib.sha256()
    h.update(header.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(b"\0" + json.dumps([name, str(t.dtype), list(t.shape)]).encode() + b"\0")
        if t.numel():
            h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_meta(meta: object, where: str) -> None:
    """Raise ValueError (prefixed with ``where``) unless ``meta`` has the required keys and types."""
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: the metadata must be a JSON object (dict), got {type(meta).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{where}: the metadata lacks {missing} (required: {list(REQUIRED_KEYS)})")
    if not isinstance(meta["architecture"], str) or not meta["architecture"]:
        raise ValueError(f"{where}: metadata 'architecture' must be a non-empty string, got {meta['architecture']!r}")
    kwargs = meta["arch_kwargs"]
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"{where}: metadata 'arch_kwargs' must be a dict with string keys, got {kwargs!r}")
    norm = meta["normalization"]
    if not isinstance(norm, dict) or not {"mean", "std"} <= set(norm):
        raise ValueError(f"{where}: metadata 'normalization' must be a dict with 'mean' and 'std', got {norm!r}")
    if not isinstance(meta["accuracy"], dict):
        raise ValueError(f"{where}: metadata 'accuracy' must be a dict, got {meta['accuracy']!r}")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict) -> Path:
    """Write ``model``'s state_dict and ``meta`` (plus ``format_version``) to the safetensors file ``path``.

    meta must hold REQUIRED_KEYS (see the module doc) and only JSON values (lists, not tuples, come
    back). The file is written to a temporary name beside ``path`` and renamed into place, so
    ``path`` is never left half-written; the parent folder is created if missing. Returns the path.
    """
    path = Path(path)
    if not isinstance(model, nn.Module):
        raise TypeError(f"save_checkpoint: model must be a torch.nn.Module, got {type(model).__name__}")
    _check_meta(meta, "save_checkpoint")
    full = {k: v for k, v in meta.items() if k != HASH_KEY} | {"format_version": FORMAT_VERSION}
    try:
        header = json.dumps(full)
    except (TypeError, ValueError) as err:
        raise ValueError(f"save_checkpoint: the metadata is not JSON-serializable ({err})") from err
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"save_checkpoint: state_dict entry {name!r} is a {type(value).__name__}, not a tensor; "
                "only tensors can be stored"
            )
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()  # copies: no shared storage
    hashed = json.dumps(full | {HASH_KEY: content_hash(header, tensors)})
    return write_safetensors(path, tensors, {METADATA_KEY: hashed})


def write_safetensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` (CPU, contiguous) as the safetensors file ``path`` through
    :func:`dcsim.io.atomic.atomic_output`, so a write killed mid-way leaves neither a half-written
    file nor a temporary one. (safetensors' own ``save_file`` writes through a ``.tmpXXXXXX`` file
    of its own beside the target, which a killed process leaves behind.)"""
    data = serialize(tensors, metadata=metadata)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def _open_error(path: Path, err: Exception) -> ValueError:
    return ValueError(
        f"{path}: not a valid safetensors checkpoint ({type(err).__name__}: {err}); "
        "dcsim checkpoints are .safetensors files written by save_checkpoint"
    )


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")


def read_metadata(path: str | os.PathLike) -> dict:
    """The checkpoint's metadata dict (with ``format_version``, without the content hash), without
    reading (or verifying) the tensors.

    Raises FileNotFoundError for a missing file, ValueError naming the file when it is not a
    safetensors file (truncated, another format), has no dcsim metadata, or the metadata is not
    valid JSON, lacks required keys or comes from a newer format.
    """
    return _read_header(Path(path))[0]


def _read_header(path: Path) -> tuple[dict, str | None]:
    """(metadata without the hash, the stored content hash or None) of the checkpoint at path."""
    _check_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata()
    except Exception as err:  # safetensors raises SafetensorError, OSError, ... for anything not a valid file
        raise _open_error(path, err) from None
    if not header or METADATA_KEY not in header:
        raise ValueError(f"{path}: no '{METADATA_KEY}' metadata in the safetensors header: not a dcsim checkpoint")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the '{METADATA_KEY}' metadata is not valid JSON ({err})") from None
    _check_meta(meta, str(path))
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format_version {version!r} is not supported (this dcsim reads 1.."
            f"{FORMAT_VERSION}; a newer dcsim may have written it)"
        )
    stored = meta.pop(HASH_KEY, None)
    if stored is not None and not isinstance(stored, str):
        raise ValueError(f"{path}: metadata '{HASH_KEY}' must be a hex string, got {stored!r}")
    if stored is None and version >= 2:
        raise ValueError(
            f"{path}: the metadata lacks '{HASH_KEY}', which format_version {version} requires: "
            "the checkpoint is damaged"
        )
    return meta, stored


def stored_hash(path: str | os.PathLike) -> str | None:
    """The content hash (hex SHA-256, see :func:`content_hash`) stored in the checkpoint file at
    ``path``, without reading the tensors; None for a format-1 checkpoint (written without one).
    Errors as :func:`read_metadata`."""
    return _read_header(Path(path))[1]


def _describe(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def load_checkpoint(path: str | os.PathLike, build_model: Callable[..., nn.Module]) -> tuple[nn.Module, dict]:
    """Rebuild the model saved at ``path``: returns (model in eval mode on the CPU, metadata dict).

    build_model(architecture, **arch_kwargs) makes the module (e.g. dcsim.models.build_model). The
    file's tensor names and shapes must equal the module's state_dict exactly, else a ValueError
    names the file and the missing, unexpected and shape-mismatched tensors (the first few of each).
    The content hash is checked before anything is built, and the shapes are compared on a model
    built on the meta device, so metadata asking for a huge model fails without allocating it.
    """
    path = Path(path)
    meta, stored_hash = _read_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 -- safe_open has keys(), no __iter__
    except Exception as err:  # as in read_metadata
        raise _open_error(path, err) from None
    if stored_hash is None:
        warnings.warn(
            f"{path}: the checkpoint has no content hash ('{HASH_KEY}', written by an older dcsim); "
            "its tensors cannot be verified. Save it again to add one.",
            UserWarning,
            stacklevel=2,
        )
    elif stored_hash != content_hash(json.dumps(meta), tensors):
        raise ValueError(
            f"{path}: the checkpoint is corrupted: its content hash does not match the stored "
            f"'{HASH_KEY}' (a changed byte in the tensors or metadata); re-create or re-copy the file"
        )

    def build(device: str) -> nn.Module:
        try:
            with torch.device(device):
                model = build_model(meta["architecture"], **meta["arch_kwargs"])
        except (TypeError, ValueError, KeyError, RuntimeError, MemoryError, OverflowError) as err:
            raise ValueError(
                f"{path}: cannot build architecture {meta['architecture']!r} with {meta['arch_kwargs']}: {err}"
            ) from err
        if not isinstance(model, nn.Module):
            raise ValueError(f"{path}: build_model returned a {type(model).__name__}, not a torch.nn.Module")
        return model

    # First on the meta device (no memory): metadata asking for a huge model is refused before any allocation.
    model = build("meta")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in tensors.items()}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mismatched = [
        f"{k} (file {list(stored[k])}, model {list(expected[k])})"
        for k in sorted(set(stored) & set(expected))
        if stored[k] != expected[k]
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{label}: {_describe(items)}"
            for label, items in (
                ("missing from the file", missing),
                ("unexpected in the file", unexpected),
                ("shape mismatch", mismatched),
            )
            if items
        ]
        raise ValueError(
            f"{path}: the tensors do not fit architecture {meta['architecture']!r} with "
            f"{meta['arch_kwargs']}; " + "; ".join(parts)
        )
    model = build("cpu")
    model.load_state_dict(tensors, strict=True)
    return model.eval(), meta


@dataclass(frozen=True)
class CheckpointMeta:
    """A checkpoint's metadata, typed: the REQUIRED_KEYS, the optional keys dcsim itself writes and reads,
    and every other key as it was (``extra``). The file format is the metadata dict: ``to_dict`` gives
    it back, ``CheckpointMeta.from_dict(meta).to_dict() == meta`` for any metadata a checkpoint holds.

    architecture, arch_kwargs: ``build_model(architecture, **arch_kwargs)`` rebuilds the module;
    classes: the class names in label order; normalization: {"mean": [...], "std": [...]} per channel
    of the [0, 1] images; dataset: its name; accuracy: {split: accuracy}; format_version: set by
    :func:`save_checkpoint`; seed: the data seed of training; activations: "float_relu" for a float
    ReLU model (unset: LSQ-quantized); train_config, training: the training configuration and history;
    val_size: the validation images training held out (drawn with ``seed``; unset in older checkpoints).
    An optional key stored as null stays in ``extra``, so it comes back as it was.
    """

    architecture: str
    arch_kwargs: dict[str, Any]
    classes: list[str]
    normalization: dict[str, list[float]]
    dataset: str
    accuracy: dict[str, float]
    format_version: int | None = None
    seed: int | None = None
    activations: str | None = None
    train_config: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    val_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, meta: dict[str, Any], where: str = "checkpoint metadata") -> CheckpointMeta:
        """The typed form of a metadata dict; a ValueError prefixed with ``where`` if it lacks a required key
        or one has the wrong type."""
        _check_meta(meta, where)
        typed = {k: v for k, v in meta.items() if k in _TYPED_KEYS and (k in REQUIRED_KEYS or v is not None)}
        return cls(**typed, extra={k: v for k, v in meta.items() if k not in typed})

    def to_dict(self) -> dict[str, Any]:
        """The metadata dict (the optional keys that are set, then ``extra``), as a checkpoint stores it."""
        typed = {k: getattr(self, k) for k in _TYPED_KEYS}
        return {k: v for k, v in typed.items() if k in REQUIRED_KEYS or v is not None} | self.extra


_TYPED_KEYS = tuple(f.name for f in fields(CheckpointMeta) if f.name != "extra")
"""The metadata keys that are fields of CheckpointMeta."""
