"""The LSQ stage's moving average of the weights (TrainConfig.ema, --ema): the average's arithmetic against a
direct computation, its swap in and out, the config's checks and the training curve's lines (runs that keep it:
tests/test_training.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dcsim import training
from dcsim.training.averaging import WeightAverage


def test_the_average_against_a_direct_sum() -> None:
    """avg_n = d^(n-1) w_1 + sum_{i >= 2} (1 - d) d^(n-i) w_i for float entries; the batch counter is the last."""
    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    decay = 0.7
    avg = WeightAverage(decay)
    states = []
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
            model[1].running_mean.copy_(torch.randn(3, generator=gen))
            model[1].num_batches_tracked += 1
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        avg.update(model)
    n = len(states)
    for k, v in avg.state.items():
        if v.is_floating_point():
            direct = decay ** (n - 1) * states[0][k] + sum(
                (1 - decay) * decay ** (n - i) * states[i - 1][k] for i in range(2, n + 1)
            )
            torch.testing.assert_close(v, direct, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(v, states[-1][k]), k


def test_applied_swaps_in_and_back_even_on_error() -> None:
    model = nn.Linear(3, 2)
    avg = WeightAverage(0.5)
    with pytest.raises(RuntimeError, match="no update"), avg.applied(model):
        pass
    avg.update(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    own = model.weight.clone()
    with pytest.raises(KeyError), avg.applied(model):
        assert torch.equal(model.weight, avg.state["weight"])
        raise KeyError("inside")
    assert torch.equal(model.weight, own)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_bad_decay_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match="ema must lie in"):
        training.TrainConfig(epochs=1, ema=decay)


def test_it_needs_an_lsq_stage() -> None:
    with pytest.raises(ValueError, match="ema needs epochs >= 1"):
        training.TrainConfig(epochs=0, float_epochs=2, ema=0.9)


def test_the_training_curve_shows_the_network_as_trained_beside_the_average() -> None:
    from dcsim.analysis.plots import training_series

    epochs = [
        {"phase": "float", "val_acc": 0.5, "elapsed_s": 60.0},
        {"phase": "lsq", "val_acc": 0.7, "trained_val_acc": 0.6, "elapsed_s": 120.0},
        {"phase": "lsq", "val_acc": 0.8, "trained_val_acc": 0.75, "elapsed_s": 180.0},
    ]
    lines = training_series(epochs)
    assert [(label, style) for label, _, _, style in lines] == [
        ("float stage (validation)", "o-"),
        ("lsq stage (the weight average, validation)", "o-"),
        ("lsq stage (network as trained, validation)", "o--"),
    ]
    assert lines[1][1:3] == ([2.0, 3.0], [70.0, 80.0]) and lines[2][2] == [60.0, 75.0]
    plain = training_series([{k: v for k, v in e.items() if k != "trained_val_acc"} for e in epochs])
    assert [label for label, *_ in plain] == ["float stage (validation)", "lsq stage (validation)"]
