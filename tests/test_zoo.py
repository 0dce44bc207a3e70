"""Zoo folders: a checkpoint as sha256-checked safetensors shards; missing/corrupt shards are clear errors."""

import json
from pathlib import Path

import pytest
import torch

from dcsim.cli import EXIT_ERROR, EXIT_OK, main
from dcsim.io import zoo
from dcsim.io.checkpoint import save_checkpoint
from dcsim.models import build_model


@pytest.fixture()
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", width=8)
    model.train()
    model(torch.randn(2, 3, 32, 32))  # BN statistics and LSQ steps
    meta = {
        "architecture": "resnet18",
        "arch_kwargs": {"num_classes": 10, "in_channels": 3, "bits": 2, "width": 8},
        "classes": [str(i) for i in range(10)],
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
        "dataset": "cifar10",
        "accuracy": {"test": 0.1},
    }
    return save_checkpoint(tmp_path / "m.safetensors", model.eval(), meta), model


def test_export_and_load_round_trip_in_small_shards(ckpt, tmp_path):
    path, model = ckpt
    folder = tmp_path / "zoo" / "r18"
    zoo.export(path, folder, max_shard_bytes=256 * 1024)  # the largest tensor (64x64x3x3 float32) is 144 KiB
    manifest = json.loads((folder / zoo.MANIFEST).read_text())
    assert len(manifest["shards"]) > 3
    assert all((folder / s["file"]).stat().st_size <= 256 * 1024 for s in manifest["shards"])
    assert zoo.is_zoo(folder) and not zoo.is_zoo(path)
    loaded, meta = zoo.load(folder)
    assert meta["arch_kwargs"]["width"] == 8
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_missing_corrupt_and_wrong_sha_are_errors(ckpt, tmp_path):
    path, _ = ckpt
    folder = tmp_path / "z"
    zoo.export(path, folder, max_shard_bytes=128 * 1024)
    shards = sorted(folder.glob("model-*.safetensors"))
    data = bytearray(shards[1].read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    shards[1].write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{shards[1].name}: sha256 .* differs"):
        zoo.load(folder)
    shards[1].write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match="truncated"):
        zoo.verify(folder)
    shards[1].unlink()
    with pytest.raises(FileNotFoundError, match=f"{shards[1].name}: shard .* is missing"):
        zoo.load(folder)
    (folder / zoo.MANIFEST).write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        zoo.load(folder)
    with pytest.raises(FileNotFoundError, match="no zoo manifest"):
        zoo.load(tmp_path)


def test_cli_exports_and_commands_accept_a_zoo_folder(ckpt, tmp_path):
    path, _ = ckpt
    folder = tmp_path / "cz"
    assert main(["zoo", str(path), "--out", str(folder), "--json", str(tmp_path / "z.json")]) == EXIT_OK
    assert json.loads((tmp_path / "z.json").read_text())["shards"][0]["sha256"]
    from dcsim.workflows.inputs import load_model as _load_model

    _model, meta = _load_model(folder)
    assert meta.architecture == "resnet18"
    manifest = json.loads((folder / zoo.MANIFEST).read_text())
    manifest["shards"][0]["sha256"] = "0" * 64
    (folder / zoo.MANIFEST).write_text(json.dumps(manifest))
    assert (
        main(
            [
                "trace",
                str(folder),
                "--dataset",
                "digits",
                "--method",
                "qcfs",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "t.npz"),
            ]
        )
        == EXIT_ERROR
    )


def test_committed_zoo_entries_load_with_their_checks():
    """The weights committed under zoo/ pass the sha256 and content-hash checks and rebuild their models."""
    root = Path(__file__).resolve().parent.parent / "zoo"
    entries = sorted(p for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []
    if not entries:
        pytest.skip("no zoo/ folder in this checkout")
    for entry in entries:
        model, meta = zoo.load(entry)
        assert meta["dataset"] == "cifar10" and meta["accuracy"]["test"] > 0.7, entry.name
        assert sum(p.numel() for p in model.parameters()) > 0
