"""Batch-norm re-estimation after the LSQ stage (TrainConfig.bn_reestimate, --bn-reestimate): every batch
norm's running mean and variance become the plain average of the batch statistics over one seeded pass of
the training split, through the kept network; nothing else changes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dcsim
from dcsim import training
from dcsim.training.device_batches import DeviceSplit
from dcsim.training.loop import reestimate_batch_norm


def _digits(train: int = 256, val: int = 100):
    s = dcsim.data.load_digits_splits(seed=0)
    return s["train"].subset(range(train)), s["val"].subset(range(val))


@pytest.mark.parametrize(("n", "batch"), [(96, 32), (100, 32), (20, 32), (64, 64)])
def test_the_statistics_are_the_average_of_the_batch_statistics(n: int, batch: int) -> None:
    """Against a direct computation: the seeded order, whole batches only (or the one partial batch when
    the split is smaller than a batch), the mean and unbiased variance of each batch, averaged."""
    gen = torch.Generator().manual_seed(n)
    images = torch.randn(n, 3, 5, 5, generator=gen) * 2 + 1
    split = DeviceSplit(images, torch.zeros(n, dtype=torch.int64), [0.0] * 3, [1.0] * 3, "cpu")
    conv = nn.Conv2d(3, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.BatchNorm2d(4, momentum=0.3), nn.ReLU())
    params = {k: v.clone() for k, v in model.named_parameters()}
    reestimate_batch_norm(model, split, batch, augment=None, seed=7, epoch=0)

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(8))
    rows = [perm[i : i + batch] for i in range(0, n - batch + 1, batch)] if n >= batch else [perm]
    with torch.no_grad():
        feats = [conv(images[r]) for r in rows]
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.transpose(0, 1).reshape(4, -1).var(dim=1, unbiased=True) for f in feats]).mean(0)
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == len(rows)
    assert bn.momentum == 0.3 and not model.training  # left as the training loop expects
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k


def test_training_with_it_changes_only_the_statistics() -> None:
    """The same run with and without: equal parameters, other running statistics, the validation accuracy
    before and after recorded, and the network returned is the re-estimated one."""
    tr, va = _digits()
    base = {"lr": 0.05, "batch_size": 64, "schedule": "cosine", "float_epochs": 1, "epochs": 2, "clip_mix": 0.5}

    def run(**kw):
        torch.manual_seed(0)
        model = dcsim.models.small_cnn(num_classes=10, in_channels=1, width=4)
        cfg = training.TrainConfig(**base, **kw)
        h = training.train(model, tr.normalized(), tr.labels, va.normalized(), va.labels, cfg, progress=False)
        return model, h

    plain, h_plain = run()
    fresh, h = run(bn_reestimate=True)
    assert "bn_reestimate" not in h_plain
    r = h["bn_reestimate"]
    assert r["val_before"] == h_plain["best_val_acc"] == h["best_val_acc"]
    val = DeviceSplit(va.normalized(), va.labels, [0.0], [1.0], "cpu")
    assert r["val_after"] == training.split_accuracy(fresh, val)
    for (k, a), b in zip(plain.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b), k
    means = [(k, v) for k, v in plain.state_dict().items() if k.endswith("running_mean")]
    assert means
    assert all(not torch.equal(v, fresh.state_dict()[k]) for k, v in means)


def test_it_needs_an_lsq_stage() -> None:
    with pytest.raises(ValueError, match="bn_reestimate needs epochs >= 1"):
        training.TrainConfig(epochs=0, float_epochs=2, bn_reestimate=True)
