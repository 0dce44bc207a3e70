"""dcsim bench --checkpoint: a given network on real images beside its random-weight twin, with spike rates."""

import json

import torch

from dcsim.cli import EXIT_OK, main
from dcsim.data import load_digits_splits
from dcsim.io.checkpoint import save_checkpoint
from dcsim.models import build_model


def test_bench_checkpoint_rows(tmp_path, checkpoint_meta):
    splits = load_digits_splits(seed=0)
    torch.manual_seed(1)
    model = build_model(checkpoint_meta["architecture"], **checkpoint_meta["arch_kwargs"]).train()
    model(splits["train"].normalized()[:64])  # BN statistics and LSQ steps from real images
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model.eval(), checkpoint_meta)
    out = tmp_path / "b.json"
    argv = f"bench --quick --models small_cnn --repeats 1 --spike-convs off --checkpoint {ckpt} --json {out}"
    assert main(argv.split()) == EXIT_OK
    rows = json.loads(out.read_text())["rows"]
    by = {}
    for r in rows:
        by.setdefault((r["model"], r["weights"]), []).append(r)
    assert set(by) == {("small_cnn", "random"), ("small_cnn 4 trained", "trained"), ("small_cnn 4 random", "random")}
    assert all(len(v) == 8 for v in by.values())  # 2 methods x 2 batches x 2 modes
    assert all(0 < r["spikes_per_neuron_step"] < 1 for r in rows)
