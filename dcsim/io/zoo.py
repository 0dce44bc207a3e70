"""Weights committed to the repository: a checkpoint split into safetensors shards with sha256 sums.

A zoo entry is a folder::

    zoo/<name>/manifest.json      {"format": "dcsim-zoo", "version": 1, "metadata": {checkpoint metadata},
                                   "shards": [{"file": "model-00001.safetensors", "sha256": "...",
                                               "bytes": N, "tensors": [...]}, ...]}
    zoo/<name>/model-00001.safetensors ...

Each shard is a plain safetensors file of at most ``max_shard_bytes`` (default 16 MiB; a tensor
larger than that gets a shard of its own) holding whole tensors. Loading checks every shard's
size and sha256 before reading it, so a missing, truncated or altered shard is a clear error
naming the file, and rebuilds the model as :func:`dcsim.io.checkpoint.load_checkpoint` does.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from .atomic import sha256_file, write_text_atomic
from .checkpoint import HASH_KEY, METADATA_KEY, load_checkpoint, read_metadata, stored_hash, write_safetensors

MANIFEST = "manifest.json"
FORMAT = "dcsim-zoo"
VERSION = 1
MAX_SHARD_BYTES = 16 * 2**20
_HEADER_ALLOWANCE = 64 * 1024
"""Bytes kept free in each shard for its safetensors header."""


def is_zoo(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a zoo manifest."""
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def shard_bytes(mib: float, flag: str = "--max-shard-mib") -> int:
    """``mib`` MiB as a shard size in bytes for :func:`export`; a ValueError naming ``flag`` unless it
    is a finite number large enough for a shard's header (more than 1/16 MiB)."""
    if isinstance(mib, bool) or not isinstance(mib, (int, float)) or not math.isfinite(mib):
        raise ValueError(f"{flag} must be a finite number of MiB, got {mib!r}")
    if mib * 2**20 <= _HEADER_ALLOWANCE:
        raise ValueError(
            f"{flag} must exceed {_HEADER_ALLOWANCE / 2**20:g} MiB (room for a shard's header), got {mib!r}"
        )
    return int(mib * 2**20)


def _source(checkpoint: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(the checkpoint's metadata text with its content hash, its tensors) of a file or a zoo folder."""
    if is_zoo(checkpoint):
        manifest = verify(checkpoint)
        text = manifest.get("metadata_text")
        if not isinstance(text, str):
            raise ValueError(f"{checkpoint / MANIFEST}: 'metadata_text' is missing or not a string")
        load(checkpoint)  # the whole entry checked as a checkpoint (content hash, shapes) before re-sharding
        tensors: dict[str, torch.Tensor] = {}
        for s in manifest["shards"]:
            tensors |= load_file(str(checkpoint / s["file"]))
        return text, tensors
    read_metadata(checkpoint)  # checks the file; the raw text below keeps its content hash
    with safe_open(str(checkpoint), framework="pt") as f:
        text = f.metadata()[METADATA_KEY]
    return text, load_file(str(checkpoint))


def _listed(folder: Path) -> set[str]:
    """The shard names an existing, readable manifest in ``folder`` lists (none when there is none)."""
    try:
        return {s["file"] for s in read_manifest(folder)["shards"]}
    except (FileNotFoundError, ValueError, OSError):
        return set()


def export(checkpoint: str | os.PathLike, folder: str | os.PathLike, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Split the checkpoint (a file, or a zoo folder to re-shard) into shards of at most
    ``max_shard_bytes`` in ``folder``; returns the manifest path.

    Tensors are packed first-fit, largest first (a tensor over the limit gets a shard of its own); the
    manifest is written last, so a folder without one is not a zoo entry. Over an earlier export, its
    shards are replaced, and those its manifest listed that the new one does not are removed (no other
    file in the folder is touched).
    """
    if (
        isinstance(max_shard_bytes, bool)
        or not isinstance(max_shard_bytes, int)
        or max_shard_bytes <= _HEADER_ALLOWANCE
    ):
        raise ValueError(f"max_shard_bytes must be an integer over {_HEADER_ALLOWANCE}, got {max_shard_bytes!r}")
    checkpoint = Path(checkpoint)
    meta_text, tensors = _source(checkpoint)
    meta = json.loads(meta_text)
    meta.pop(HASH_KEY, None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    old = _listed(folder)
    groups: list[list[str]] = []  # first fit, largest tensors first: few shards
    sizes: list[int] = []
    room = max_shard_bytes - _HEADER_ALLOWANCE
    nbytes = {n: t.numel() * t.element_size() for n, t in tensors.items()}
    for name in sorted(tensors, key=lambda n: (-nbytes[n], n)):
        i = next((i for i, used in enumerate(sizes) if used + nbytes[name] <= room), None)
        if i is None:
            groups.append([])
            sizes.append(0)
            i = len(groups) - 1
        groups[i].append(name)
        sizes[i] += nbytes[name]
    shards = []
    for i, names in enumerate(groups, 1):
        path = folder / f"model-{i:05d}.safetensors"
        write_safetensors(path, {n: tensors[n].contiguous() for n in names})
        shards.append({"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "tensors": names})
    manifest = {"format": FORMAT, "version": VERSION, "metadata": meta, "metadata_text": meta_text, "shards": shards}
    written = write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    for name in sorted(old - {s["file"] for s in shards} - {MANIFEST}):  # the earlier export's, no longer listed
        stale = folder / name
        if stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)
    return written


def read_manifest(folder: str | os.PathLike) -> dict:
    """The zoo manifest of ``folder``, checked for its format (ValueError naming the file otherwise)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no zoo manifest (a zoo entry is a folder with {MANIFEST} and its shards)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise ValueError(
            f"{path}: zoo version {manifest.get('version')!r} is not supported (this dcsim reads {VERSION})"
        )
    shards = manifest.get("shards")
    if (
        not isinstance(shards, list)
        or not shards
        or not all(isinstance(s, dict) and {"file", "sha256", "bytes"} <= set(s) for s in shards)
    ):
        raise ValueError(f"{path}: 'shards' must be a non-empty list of {{file, sha256, bytes}}")
    for s in shards:
        if Path(s["file"]).name != s["file"]:
            raise ValueError(f"{path}: shard name {s['file']!r} must be a plain file name in the folder")
    return manifest


def model_identity(path: str | os.PathLike) -> tuple[dict, str | None]:
    """(metadata, stored content hash or None) of a checkpoint file or a zoo folder, without reading
    the tensors. The hash identifies the network's weights and metadata (see
    :func:`dcsim.io.checkpoint.content_hash`); a zoo folder carries its checkpoint's hash, so a file and
    its export have the same identity. None: a format-1 checkpoint, written without a hash."""
    if is_zoo(path):
        manifest = read_manifest(path)
        where = Path(path) / MANIFEST
        text = manifest.get("metadata_text")
        try:
            full = json.loads(text) if isinstance(text, str) else None
        except json.JSONDecodeError:
            full = None
        if not isinstance(full, dict) or not isinstance(manifest.get("metadata"), dict):
            raise ValueError(f"{where}: 'metadata_text' (the checkpoint's metadata with its content hash) is damaged")
        digest = full.get(HASH_KEY)
        return manifest["metadata"], digest if isinstance(digest, str) else None
    return read_metadata(path), stored_hash(path)


def verify(folder: str | os.PathLike) -> dict:
    """Check every shard's presence, size and sha256 against the manifest; returns the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for s in manifest["shards"]:
        path = folder / s["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard listed in {folder / MANIFEST} is missing")
        if path.stat().st_size != s["bytes"]:
            raise ValueError(
                f"{path}: {path.stat().st_size} bytes, the manifest says {s['bytes']} (truncated or replaced)"
            )
        digest = sha256_file(path)
        if digest != s["sha256"]:
            raise ValueError(f"{path}: sha256 {digest} differs from the manifest's {s['sha256']} (corrupt or altered)")
    return manifest


def load(folder: str | os.PathLike, build_model: Callable[..., nn.Module] | None = None) -> tuple[nn.Module, dict]:
    """Verify the shards of the zoo entry ``folder`` and rebuild its model: (model in eval mode on the CPU, metadata)."""
    if build_model is None:
        from ..models import build_model as default_build_model

        build_model = default_build_model
    folder = Path(folder)
    manifest = verify(folder)
    tensors: dict[str, torch.Tensor] = {}
    for s in manifest["shards"]:
        part = load_file(str(folder / s["file"]))
        overlap = set(part) & set(tensors)
        if overlap:
            raise ValueError(f"{folder / s['file']}: tensors {sorted(overlap)[:3]} appear in more than one shard")
        tensors |= part
    with tempfile.TemporaryDirectory(prefix="dcsim-zoo-") as tmp:  # one checkpoint file, checked as any other
        merged = Path(tmp) / "model.safetensors"
        text = manifest.get("metadata_text")
        if not isinstance(text, str):
            raise ValueError(
                f"{folder / MANIFEST}: 'metadata_text' (the checkpoint's metadata with its content hash) "
                "is missing or not a string"
            )
        write_safetensors(merged, tensors, {METADATA_KEY: text})
        try:
            return load_checkpoint(merged, build_model)
        except ValueError as err:
            raise ValueError(str(err).replace(str(merged), str(folder))) from None
