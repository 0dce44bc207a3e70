"""The clip mix of the LSQ stage (TrainConfig.clip_mix, --clip-mix): in training an image takes, per LSQ
layer, the unrounded clip (QCFS's many-step limit) in place of the quantizer with the given chance; in
eval mode never; the draws are seeded per epoch, so a run resumed at any epoch ends where a whole run does."""

from __future__ import annotations

import pytest
import torch

import dcsim
from dcsim import training
from dcsim.models.lsq import LSQActivation, set_clip_mix


def _act(p: float) -> LSQActivation:
    act = LSQActivation(2)
    with torch.no_grad():
        act.step.fill_(0.5)
        act.initialized.fill_(True)
    set_clip_mix(act, p)
    return act


def test_each_training_row_is_either_quantized_or_clipped_at_about_the_chance() -> None:
    act = _act(0.3).train()
    x = torch.rand(2000, 3, 4, 4) * 2.5 - 0.3
    torch.manual_seed(0)
    y = act(x)
    q = 0.5 * torch.floor(torch.clamp(x / 0.5, 0, 3) + 0.5)
    c = 0.5 * torch.clamp(x / 0.5, 0, 3)
    quantized = (y == q).flatten(1).all(1)
    clipped = (y == c).flatten(1).all(1)
    assert bool((quantized | clipped).all())
    assert 0.25 < float((clipped & ~quantized).float().mean()) < 0.35  # 2000 seeded draws at 0.3


def test_eval_mode_and_zero_chance_never_clip() -> None:
    x = torch.rand(64, 8) * 2
    q = 0.5 * torch.floor(torch.clamp(x / 0.5, 0, 3) + 0.5)
    assert torch.equal(_act(0.9).eval()(x), q)
    assert torch.equal(_act(0.0).train()(x), q)


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_bad_chances_are_refused(p: float) -> None:
    with pytest.raises(ValueError, match="clip_mix must lie in"):
        set_clip_mix(LSQActivation(2), p)
    with pytest.raises(ValueError, match="clip_mix must lie in"):
        training.TrainConfig(clip_mix=p)


def test_a_run_resumed_mid_lsq_stage_equals_the_whole_run(tmp_path) -> None:
    s = dcsim.data.load_digits_splits(seed=0)
    tr, va = s["train"].subset(range(256)), s["val"].subset(range(100))
    cfg = training.TrainConfig(lr=0.05, batch_size=64, schedule="cosine", float_epochs=1, epochs=3, clip_mix=0.5)

    def run(**kw):
        torch.manual_seed(0)
        model = dcsim.models.small_cnn(num_classes=10, in_channels=1, width=4)
        h = training.train(model, tr.normalized(), tr.labels, va.normalized(), va.labels, cfg, progress=False, **kw)
        return model, h

    whole, _ = run()
    run(workdir=tmp_path, time_limit_s=0.0)  # stops after the float epoch
    run(workdir=tmp_path, time_limit_s=0.0)  # and after the first LSQ epoch
    resumed, h = run(workdir=tmp_path)
    assert h["resumed_at_epochs"] == [1, 2]
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    plain = training.TrainConfig(**{**cfg.__dict__, "clip_mix": 0.0})
    torch.manual_seed(0)
    other = dcsim.models.small_cnn(num_classes=10, in_channels=1, width=4)
    training.train(other, tr.normalized(), tr.labels, va.normalized(), va.labels, plain, progress=False)
    pairs = zip(whole.state_dict().values(), other.state_dict().values(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)  # the mix changed the training
    assert all(m.clip_mix == 0.0 for m in whole.modules() if isinstance(m, LSQActivation))  # left as found


def test_the_mix_in_the_last_epochs_only() -> None:
    """clip_mix_epochs = N: the LSQ epochs before the last N train as without the mix (the same losses, bit
    for bit), the last N with it, and N = epochs is the whole-stage mix."""
    s = dcsim.data.load_digits_splits(seed=0)
    tr, va = s["train"].subset(range(256)), s["val"].subset(range(100))
    base = {"lr": 0.05, "batch_size": 64, "schedule": "cosine", "float_epochs": 1, "epochs": 3}

    def losses(**kw) -> list[float]:
        torch.manual_seed(0)
        model = dcsim.models.small_cnn(num_classes=10, in_channels=1, width=4)
        cfg = training.TrainConfig(**base, **kw)
        h = training.train(model, tr.normalized(), tr.labels, va.normalized(), va.labels, cfg, progress=False)
        return [e["loss"] for e in h["epochs"]]

    plain, last2 = losses(), losses(clip_mix=0.5, clip_mix_epochs=2)
    assert last2[:2] == plain[:2]  # the float epoch and the first LSQ epoch: no mix
    assert last2[2] != plain[2] and last2[3] != plain[3]  # the last two: mixed
    assert losses(clip_mix=0.5, clip_mix_epochs=3) == losses(clip_mix=0.5)


def test_the_mix_at_the_first_layers_only() -> None:
    """clip_mix_layers = N: the first N LSQ layers (module order) take the mix, the later ones never clip;
    N = all layers is the whole mix, bit for bit; more layers than the model has is refused before training."""
    model = dcsim.models.small_cnn(num_classes=10, in_channels=1, width=4)
    layers = [m for m in model.modules() if isinstance(m, LSQActivation)]
    assert len(layers) >= 3
    assert set_clip_mix(model, 0.5, 2) == 2
    assert [m.clip_mix for m in layers] == [0.5, 0.5] + [0.0] * (len(layers) - 2)
    assert set_clip_mix(model, 0.5) == len(layers) and all(m.clip_mix == 0.5 for m in layers)
    with pytest.raises(ValueError, match=rf"clip_mix_layers must lie in \[1, {len(layers)}\].*got {len(layers) + 1}"):
        set_clip_mix(model, 0.5, len(layers) + 1)

    s = dcsim.data.load_digits_splits(seed=0)
    tr, va = s["train"].subset(range(256)), s["val"].subset(range(100))
    base = {"lr": 0.05, "batch_size": 64, "schedule": "cosine", "float_epochs": 1, "epochs": 2, "clip_mix": 0.5}

    def losses(**kw) -> list[float]:
        torch.manual_seed(0)
        net = dcsim.models.small_cnn(num_classes=10, in_channels=1, width=4)
        cfg = training.TrainConfig(**{**base, **kw})
        h = training.train(net, tr.normalized(), tr.labels, va.normalized(), va.labels, cfg, progress=False)
        assert all(m.clip_mix == 0.0 for m in net.modules() if isinstance(m, LSQActivation))  # left unmixed
        return [e["loss"] for e in h["epochs"]]

    whole, first = losses(), losses(clip_mix_layers=1)
    assert losses(clip_mix_layers=len(layers)) == whole
    assert first[0] == whole[0]  # the float epoch: no mix either way
    assert first[1] != whole[1] and first[1] != losses(clip_mix=0.0)[1]  # the LSQ epochs: another mix
    with pytest.raises(ValueError, match="clip_mix_layers must lie in"):
        losses(clip_mix_layers=len(layers) + 1)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"clip_mix": 0.5, "clip_mix_epochs": 0}, "clip_mix_epochs must be"),
     ({"clip_mix": 0.5, "clip_mix_epochs": 4}, r"clip_mix_epochs \(4\) exceeds the LSQ epochs \(3\)"),
     ({"clip_mix_epochs": 2}, "clip_mix_epochs needs clip_mix > 0"),
     ({"clip_mix": 0.5, "clip_mix_layers": 0}, "clip_mix_layers must be"),
     ({"clip_mix_layers": 1}, "clip_mix_layers needs clip_mix > 0")],
)  # fmt: skip
def test_bad_mix_epochs_are_refused(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        training.TrainConfig(epochs=3, **kw)
