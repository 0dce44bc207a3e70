"""The fast recipe's optimizer (dcsim.training.muon): updates, groups, initialisation, schedule, resume."""

import pytest
import torch
from torch import nn

import dcsim
from dcsim import training
from dcsim.models.architectures import whitened_cnn
from dcsim.training.muon import Muon, fast_recipe_init_, muon_groups, orthogonalize


@pytest.mark.parametrize("shape", [(8, 8), (16, 216), (256, 64), (3, 1000)])
def test_orthogonalize_brings_singular_values_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    u, sigma, vh = torch.linalg.svd(g, full_matrices=False)
    d = u.T @ orthogonalize(g) @ vh.T  # the same singular vectors: a diagonal
    assert torch.allclose(d, torch.diag(torch.diagonal(d)), atol=1e-4)
    out = torch.diagonal(d)
    big = sigma / g.norm() >= 0.02  # all but the smallest singular values land in [0.5, 1.5]
    assert big.sum() >= len(sigma) - 2 and ((out[big] > 0.5) & (out[big] < 1.5)).all(), (sigma, out)
    assert (out > 0).all()
    with pytest.raises(ValueError, match="matrix"):
        orthogonalize(torch.randn(2, 3, 4))


def test_plain_groups_are_torchs_nesterov_sgd():
    gen = torch.Generator().manual_seed(0)
    a = nn.Parameter(torch.randn(5, generator=gen))
    b = nn.Parameter(a.detach().clone())
    ours = Muon([{"params": [a], "lr": 0.3, "momentum": 0.85, "weight_decay": 0.01}])
    torchs = torch.optim.SGD([b], lr=0.3, momentum=0.85, weight_decay=0.01, nesterov=True)
    for _ in range(4):
        g = torch.randn(5, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        torchs.step()
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_filter_update_is_renormalised_orthogonal_and_scale_free():
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(16, 8, 3, 3, generator=gen)
    grads = [torch.randn(16, 8, 3, 3, generator=gen) for _ in range(3)]
    results = []
    for scale in (1.0, 1000.0):
        w = nn.Parameter(w0.clone())
        opt = Muon([{"params": [w], "lr": 0.1, "momentum": 0.6, "orthogonal": True}])
        for g in grads:
            w.grad = g * scale
            opt.step()
        results.append(w.detach().clone())
    assert torch.allclose(results[0], results[1], rtol=1e-4, atol=1e-5)  # gradients' scale does not matter
    w = nn.Parameter(w0.clone())
    opt = Muon([{"params": [w], "lr": 0.0, "orthogonal": True}])
    w.grad = grads[0]
    opt.step()
    assert w.norm().item() == pytest.approx(16**0.5, rel=1e-6)  # ||W|| = sqrt(out)
    w = nn.Parameter(w0.clone())
    opt = Muon([{"params": [w], "lr": 0.5, "momentum": 0.6, "orthogonal": True}])
    w.grad = grads[0]
    opt.step()
    step = (w0 * 16**0.5 / w0.norm() - w.detach()).reshape(16, -1) / 0.5  # first step: g + 0.6 g
    assert torch.allclose(step, orthogonalize(1.6 * grads[0].reshape(16, -1)), atol=1e-5)


def test_groups_cover_every_trained_parameter_once():
    model = whitened_cnn(width=8)
    groups = {g["name"]: g for g in muon_groups(model, batch_size=500)}
    assert set(groups) == {"filters", "biases", "head", "steps"}
    assert [id(p) for p in groups["head"]["params"]] == [id(model.fc.weight), id(model.fc.bias)]
    seen = [id(p) for g in groups.values() for p in g["params"]]
    assert len(seen) == len(set(seen))
    bn_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(seen) == trained - bn_weights
    assert id(model.whiten.weight) not in seen  # frozen whitening filters
    assert groups["filters"]["orthogonal"] and groups["biases"]["lr_ratio"] == pytest.approx(500 * 0.053 / 0.24)
    with pytest.raises(ValueError, match=r"embed\.weight"):
        muon_groups(nn.ModuleDict({"conv": nn.Conv2d(1, 2, 3), "embed": nn.Embedding(3, 4)}), batch_size=8)


def test_fast_recipe_init_is_identity_convs_and_a_small_head():
    torch.manual_seed(0)
    model = whitened_cnn(width=8)
    fast_recipe_init_(model)
    for conv in (model.groups[0], model.groups[7]):  # 24 -> 8 and 8 -> 32 channels
        x = torch.randn(2, conv.in_channels, 5, 5)
        k = min(conv.in_channels, conv.out_channels)
        assert torch.allclose(conv(x)[:, :k], x[:, :k])  # filter i passes input channel i
    assert model.fc.weight.std().item() == pytest.approx(1 / model.fc.in_features, rel=1e-5)
    assert all(m.momentum == 0.4 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_linear_schedule_and_decay_per_step():
    cfg = training.TrainConfig(epochs=2, float_epochs=4, lr=0.2, lsq_lr=0.05, schedule="linear", optimizer="muon",
                               weight_decay=0.002, batch_size=100)  # fmt: skip
    lr = training.learning_rate
    assert lr(cfg, 0, 0.0) == pytest.approx(0.2) and lr(cfg, 2, 0.0) == pytest.approx(0.1)
    assert lr(cfg, 4, 0.0) == pytest.approx(0.05) and lr(cfg, 5, 0.5) == pytest.approx(0.0125)
    opt = training.make_optimizer(whitened_cnn(width=8), cfg)
    training.set_learning_rate(opt, cfg, 5, lr(cfg, 5, 0.5))
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.0125 * g["lr_ratio"])
        shrink = g["lr"] * g["weight_decay"] if g["decays"] else 0.0
        assert shrink == pytest.approx(0.002 * 0.25 if g["decays"] else 0.0)  # a quarter of the way down
    with pytest.raises(ValueError, match="optimizer"):
        training.TrainConfig(optimizer="adam")


def test_muon_training_learns_and_resumes_bit_for_bit(tmp_path):
    s = dcsim.data.load_digits_splits(seed=0)
    tr, va = s["train"].subset(range(512)), s["val"].subset(range(200))
    cfg = training.TrainConfig(epochs=1, float_epochs=2, lr=0.24, lsq_lr=0.06, schedule="linear", optimizer="muon",
                               weight_decay=0.002, batch_size=128)  # fmt: skip

    def model():
        torch.manual_seed(0)
        m = dcsim.models.small_cnn(num_classes=10, in_channels=1, width=8)
        fast_recipe_init_(m)
        return m

    args = (tr.normalized(), tr.labels, va.normalized(), va.labels, cfg)
    whole = model()
    h = training.train(whole, *args, progress=False)
    assert h["completed"] and h["epochs"][-1]["val_acc"] > 0.5
    parts = model()
    first = training.train(parts, *args, workdir=tmp_path, progress=False, time_limit_s=0.0)
    assert not first["completed"]
    parts = model()
    second = training.train(parts, *args, workdir=tmp_path, progress=False)
    assert second["completed"] and second["resumed_at_epochs"] == [1]
    for (k, x), y in zip(whole.state_dict().items(), parts.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
