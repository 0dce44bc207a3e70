"""Training under torch.compile (``--compile``): the same LSQ quantizer and the same training as eager."""

import logging

import pytest
import torch

import dcsim
from dcsim import training
from dcsim.models.lsq import LSQActivation


@pytest.mark.parametrize("seed", [0, 1])
def test_lsq_activation_compiled_equals_eager(seed, caplog):
    gen = torch.Generator().manual_seed(seed)
    shape = (int(torch.randint(2, 9, (1,), generator=gen)), 3, *torch.randint(2, 7, (2,), generator=gen).tolist())
    x = torch.randn(shape, generator=gen) * 2
    eager, compiled = LSQActivation(2).train(), LSQActivation(2).train()
    run = torch.compile(compiled)
    with caplog.at_level(logging.WARNING, logger="torch"):
        for _ in range(3):  # the first call initialises the step (eagerly), the next ones do not
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = eager(xa), run(xb)
            ga = torch.autograd.grad(ya.pow(2).sum(), [xa, eager.step])
            gb = torch.autograd.grad(yb.pow(2).sum(), [xb, compiled.step])
            assert torch.equal(ya, yb)  # the same levels, bit for bit
            assert torch.equal(ga[0], gb[0])
            torch.testing.assert_close(gb[1], ga[1], rtol=1e-5, atol=0)  # a sum: reduction order may differ
            x = x * 1.5
    assert torch.equal(eager.step, compiled.step) and bool(compiled.initialized)
    assert not [r for r in caplog.records if "graph break" in r.getMessage().lower()]  # no noisy log in training


def test_compiled_training_matches_eager():
    s = dcsim.data.load_digits_splits(seed=0)
    tr, va = s["train"].subset(range(128)), s["val"].subset(range(64))
    cfg = training.TrainConfig(epochs=1, float_epochs=1, lr=0.05, batch_size=32, schedule="cosine", nesterov=True)
    weights = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        model = dcsim.models.small_cnn(num_classes=10, in_channels=1, width=4)
        history = training.train(
            model,
            tr.normalized(),
            tr.labels,
            va.normalized(),
            va.labels,
            cfg,
            progress=False,
            runtime=training.TrainRuntime(compile=compile_),
        )
        assert [e["phase"] for e in history["epochs"]] == ["float", "lsq"] and history["completed"]
        weights.append(model.state_dict())
    for name, value in weights[0].items():
        if value.is_floating_point():  # 8 optimisation steps: float rounding only (fused ops), no other change
            torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(weights[1][name], value), name
