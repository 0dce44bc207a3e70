"""Checkpoints (dcsim.io.checkpoint): safetensors + JSON metadata round trip, exact tensor/shape checks,
and clear errors for truncated, foreign (pickle), tampered and missing files."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dcsim.io.checkpoint import (
    FORMAT_VERSION,
    HASH_KEY,
    METADATA_KEY,
    CheckpointMeta,
    content_hash,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)


def build(
    architecture: str, num_classes: int = 5, in_channels: int = 3, width: int = 4, extra: bool = False
) -> nn.Module:
    """conv -> bn -> relu -> flatten -> linear on 8x8 inputs; ``extra`` appends a second linear layer."""
    if architecture != "tiny":
        raise ValueError(f"unknown architecture {architecture!r}")
    layers = [
        nn.Conv2d(in_channels, width, 3),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(width * 36, num_classes),
    ]
    if extra:
        layers.append(nn.Linear(num_classes, num_classes))
    return nn.Sequential(*layers)


META = {
    "architecture": "tiny",
    "arch_kwargs": {"num_classes": 5, "in_channels": 3, "width": 4},
    "classes": ["a", "b", "c", "d", "e"],
    "normalization": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]},
    "dataset": "synthetic",
    "accuracy": {"val": 0.5, "test": 0.25},
    "seed": 3,
}


def _trained() -> nn.Module:
    """A model whose parameters and BatchNorm buffers all differ from a fresh one."""
    torch.manual_seed(0)
    model = build("tiny", **META["arch_kwargs"])
    model.train()
    for _ in range(3):
        model(torch.randn(16, 3, 8, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


def _save(tmp_path, meta=None):
    model = _trained()
    path = save_checkpoint(tmp_path / "sub" / "model.safetensors", model, META if meta is None else meta)
    return model, path


def test_round_trip(tmp_path):
    model, path = _save(tmp_path)
    assert path.is_file() and os.listdir(path.parent) == ["model.safetensors"]  # no temporary file left behind
    loaded, meta = load_checkpoint(path, build)
    assert not loaded.training
    assert meta == META | {"format_version": FORMAT_VERSION}
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert list(sd) == list(sd2) and "1.running_mean" in sd and "1.num_batches_tracked" in sd
    for k in sd:
        assert sd[k].dtype == sd2[k].dtype and torch.equal(sd[k], sd2[k]), k
    assert int(sd2["1.num_batches_tracked"]) == 3
    x = torch.randn(7, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert read_metadata(path) == meta


def test_overwrite_is_atomic_and_replaces(tmp_path):
    _, path = _save(tmp_path)
    other = build("tiny", **META["arch_kwargs"])
    save_checkpoint(path, other, META | {"seed": 9})
    loaded, meta = load_checkpoint(path, build)
    assert meta["seed"] == 9 and torch.equal(loaded[0].weight, other[0].weight)
    assert os.listdir(path.parent) == ["model.safetensors"]


def test_save_validates_metadata(tmp_path):
    model = build("tiny")
    bad = {k: v for k, v in META.items() if k != "classes"}
    with pytest.raises(ValueError, match=r"lacks \['classes'\]"):
        save_checkpoint(tmp_path / "m.safetensors", model, bad)
    with pytest.raises(ValueError, match="arch_kwargs"):
        save_checkpoint(tmp_path / "m.safetensors", model, META | {"arch_kwargs": [1, 2]})
    with pytest.raises(ValueError, match="normalization"):
        save_checkpoint(tmp_path / "m.safetensors", model, META | {"normalization": {"mean": [0.5]}})
    with pytest.raises(ValueError, match="JSON-serializable"):
        save_checkpoint(tmp_path / "m.safetensors", model, META | {"extra": object()})
    with pytest.raises(TypeError, match=r"nn\.Module"):
        save_checkpoint(tmp_path / "m.safetensors", {"w": torch.zeros(1)}, META)
    assert not any(tmp_path.iterdir())


def test_truncated_file(tmp_path):
    _, path = _save(tmp_path)
    blob = path.read_bytes()
    for cut in (len(blob) - 10, 100, 4, 0):
        path.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match=rf"{path}: not a valid safetensors checkpoint"):
            load_checkpoint(path, build)
        with pytest.raises(ValueError, match=str(path)):
            read_metadata(path)


def _rewrite(path, meta_text: str | None, tensors: dict | None = None) -> None:
    """Rewrite ``path`` with new header metadata and, for a JSON object, a matching content hash
    (as a tamperer would)."""
    tensors = load_file(str(path)) if tensors is None else tensors
    try:
        meta = json.loads(meta_text) if meta_text is not None else None
    except json.JSONDecodeError:
        meta = None
    if isinstance(meta, dict):
        meta_text = json.dumps(meta | {HASH_KEY: content_hash(json.dumps(meta), tensors)})
    save_file(tensors, str(path), metadata=None if meta_text is None else {METADATA_KEY: meta_text})


def test_tampered_metadata_names_the_mismatched_tensor(tmp_path):
    _, path = _save(tmp_path)
    meta = read_metadata(path)
    _rewrite(path, json.dumps(meta | {"arch_kwargs": {**meta["arch_kwargs"], "num_classes": 7}}))
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors: .*shape mismatch: 4\.bias \(file \[5\], model \[7\]\), "
        r"4\.weight \(file \[5, 144\], model \[7, 144\]\)",
    ):
        load_checkpoint(path, build)
    _rewrite(path, json.dumps(meta | {"arch_kwargs": {**meta["arch_kwargs"], "width": 6}}))
    with pytest.raises(ValueError, match=r"shape mismatch: 0\.bias .*1\.running_mean .* and \d+ more"):
        load_checkpoint(path, build)
    # found by fuzzing through the CLI: a huge width used to be built (and allocated) before the comparison
    _rewrite(path, json.dumps(meta | {"arch_kwargs": {**meta["arch_kwargs"], "width": 2**40}}))
    with pytest.raises(
        ValueError, match=r"model\.safetensors: .*shape mismatch: 0\.bias \(file \[\d+\], model \[1099511627776\]\)"
    ):
        load_checkpoint(path, build)
    _rewrite(path, json.dumps(meta | {"arch_kwargs": {**meta["arch_kwargs"], "extra": True}}))
    with pytest.raises(ValueError, match=r"missing from the file: 5\.bias, 5\.weight"):
        load_checkpoint(path, build)
    _rewrite(path, json.dumps(meta | {"arch_kwargs": {**meta["arch_kwargs"], "depth": 3}}))
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot build architecture 'tiny'.*depth"):
        load_checkpoint(path, build)
    _rewrite(path, json.dumps(meta | {"architecture": "resnet"}))
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot build architecture 'resnet'"):
        load_checkpoint(path, build)


def test_unexpected_tensors_are_named(tmp_path):
    _, path = _save(tmp_path)
    tensors = load_file(str(path))
    tensors["9.weight"] = torch.zeros(2)
    _rewrite(path, json.dumps(read_metadata(path)), tensors)
    with pytest.raises(ValueError, match=r"unexpected in the file: 9\.weight"):
        load_checkpoint(path, build)


@pytest.mark.parametrize(
    "meta_text, match",
    [
        (None, "no 'dcsim' metadata"),
        ("{not json", "not valid JSON"),
        ('["a list"]', "must be a JSON object"),
        ('{"architecture": "tiny"}', r"lacks \['arch_kwargs'"),
    ],
)
def test_bad_metadata(tmp_path, meta_text, match):
    _, path = _save(tmp_path)
    _rewrite(path, meta_text)
    with pytest.raises(ValueError, match=rf"{path}: .*{match}"):
        load_checkpoint(path, build)


def test_newer_format_is_refused(tmp_path):
    _, path = _save(tmp_path)
    _rewrite(path, json.dumps(read_metadata(path) | {"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match="format_version"):
        read_metadata(path)


class _Payload:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_renamed_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    for protocol in (2, 4, 5):
        path.write_bytes(pickle.dumps({"state": _Payload(marker)}, protocol=protocol))
        with pytest.raises(ValueError, match=r"evil\.safetensors: not a valid safetensors checkpoint"):
            load_checkpoint(path, build)
    torch.save(_trained().state_dict(), path)  # torch's own zip+pickle format
    with pytest.raises(ValueError, match=r"evil\.safetensors: not a valid safetensors checkpoint"):
        load_checkpoint(path, build)
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        load_checkpoint(tmp_path / "nope.safetensors", build)
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="not a file"):
        read_metadata(tmp_path)


def _flip(path, offset: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x10
    path.write_bytes(bytes(blob))


def test_corrupted_tensor_bytes_are_refused(tmp_path):
    """A flipped bit anywhere in the tensor data (past the header) fails the content hash, naming the file."""
    _, path = _save(tmp_path)
    blob = path.read_bytes()
    data_start = 8 + int.from_bytes(blob[:8], "little")
    gen = torch.Generator().manual_seed(5)
    for offset in torch.randint(data_start, len(blob), (10,), generator=gen).tolist():
        path.write_bytes(blob)
        _flip(path, offset)
        with pytest.raises(ValueError, match=rf"{path}: the checkpoint is corrupted: its content hash"):
            load_checkpoint(path, build)


def test_changed_metadata_without_new_hash_is_refused(tmp_path):
    _, path = _save(tmp_path)
    tensors = load_file(str(path))
    meta = read_metadata(path)
    old_hash = content_hash(json.dumps(meta), tensors)
    forged = json.dumps(meta | {"accuracy": {"val": 0.99, "test": 0.99}, HASH_KEY: old_hash})
    save_file(tensors, str(path), metadata={METADATA_KEY: forged})
    with pytest.raises(ValueError, match=rf"{path}: the checkpoint is corrupted"):
        load_checkpoint(path, build)


def test_checkpoint_without_hash_loads_with_a_warning(tmp_path):
    model, path = _save(tmp_path)
    legacy = json.dumps(read_metadata(path) | {"format_version": 1})  # as dcsim wrote before the hash
    save_file(load_file(str(path)), str(path), metadata={METADATA_KEY: legacy})
    with pytest.warns(UserWarning, match=rf"{path}: the checkpoint has no content hash"):
        loaded, _ = load_checkpoint(path, build)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_content_hash_covers_values_dtypes_shapes_and_metadata():
    t = {"a": torch.arange(6, dtype=torch.float32), "b": torch.ones(2, 3, dtype=torch.bfloat16)}
    base = content_hash("{}", t)
    assert content_hash("{}", {k: v.clone() for k, v in t.items()}) == base
    assert content_hash("{} ", t) != base
    assert content_hash("{}", t | {"a": t["a"].reshape(2, 3)}) != base
    assert content_hash("{}", t | {"a": t["a"].view(torch.int32)}) != base
    bumped = t["a"].clone()
    bumped[3] = torch.nextafter(bumped[3], torch.tensor(10.0))
    assert content_hash("{}", t | {"a": bumped}) != base
    assert content_hash("{}", {"b": t["b"], "a": t["a"]}) == base


def test_checkpoint_bytes_are_deterministic(tmp_path):
    model = _trained()
    a = save_checkpoint(tmp_path / "a.safetensors", model, META).read_bytes()
    assert save_checkpoint(tmp_path / "b.safetensors", model, META).read_bytes() == a
    assert HASH_KEY not in read_metadata(tmp_path / "a.safetensors")


def test_current_format_without_hash_is_refused(tmp_path):
    """A damaged hash entry (here removed) cannot turn a current checkpoint into an unverified one."""
    _, path = _save(tmp_path)
    assert FORMAT_VERSION >= 2
    save_file(load_file(str(path)), str(path), metadata={METADATA_KEY: json.dumps(read_metadata(path))})
    with pytest.raises(ValueError, match=rf"{path}: the metadata lacks '{HASH_KEY}'"):
        load_checkpoint(path, build)


def test_typed_metadata_round_trips_every_key(tmp_path):
    _, path = _save(tmp_path, META | {"activations": "float_relu", "data_root": None, "ranks": 2})
    stored = read_metadata(path)
    meta = CheckpointMeta.from_dict(stored)
    assert (meta.architecture, meta.dataset, meta.seed, meta.format_version) == ("tiny", "synthetic", 3, FORMAT_VERSION)
    assert meta.arch_kwargs == META["arch_kwargs"] and meta.classes == META["classes"]
    assert meta.activations == "float_relu" and meta.training is None
    assert meta.extra == {"data_root": None, "ranks": 2}  # unknown keys kept as they were
    assert meta.to_dict() == stored
    assert CheckpointMeta.from_dict(stored | {"seed": None}).to_dict() == stored | {"seed": None}  # a null stays
    with pytest.raises(ValueError, match=r"here: the metadata lacks \['classes'\]"):
        CheckpointMeta.from_dict({k: v for k, v in stored.items() if k != "classes"}, "here")
