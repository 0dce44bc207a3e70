"""The whitened CNN (``--arch whitened_cnn`` and ``whitened_cnn_analog``): whitening filters, their
source (the training split only), conversion exactness and engine agreement on dyadic versions."""

import dataclasses

import pytest
import torch

import dcsim
from dcsim.models import WhitenedCNN, init_whitening, whitened_cnn, whitened_cnn_analog
from dcsim.sim.network import Conv, Neuron
from dcsim.training import TrainConfig, train
from dyadic import dyadic_inputs, dyadic_network
from test_qffs_semantics import settled_levels

SHAPE = (3, 16, 16)  # 16 -> 15 (whitening) -> 7 -> 3 -> 1 pixels


def test_whitening_filters_decorrelate_the_patches():
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(3, 3, generator=gen)
    x = torch.einsum("dc,nchw->ndhw", mix, torch.randn(64, 3, 16, 16, generator=gen))  # correlated channels
    x = x + torch.roll(x, 1, dims=3)  # and correlated neighbours
    model = whitened_cnn(width=4)
    assert init_whitening(model, x) and bool(model.whitening_set)
    out = model.whiten(x).permute(1, 0, 2, 3).reshape(24, -1)
    half = out[:12] - out[:12].mean(1, keepdim=True)
    cov = half @ half.T / half.shape[1]
    torch.testing.assert_close(cov, torch.eye(12), atol=2e-2, rtol=0)  # eps 5e-4 shrinks unit variance a little
    torch.testing.assert_close(out[12:], -out[:12])  # each direction and its negation
    assert not model.whiten.weight.requires_grad


def test_the_analog_stem_whitens_without_negations_or_quantizer():
    """whitened_cnn_analog: 12 whitening filters (no negations, no bias), no quantizer after them;
    after conversion the whitening and the first conv are static and the first neuron follows the conv."""
    gen = torch.Generator().manual_seed(2)
    mix = torch.randn(3, 3, generator=gen)
    x = torch.einsum("dc,nchw->ndhw", mix, torch.randn(64, 3, 16, 16, generator=gen))
    model = whitened_cnn_analog(width=4)
    assert model.whiten.out_channels == 12 and model.whiten.bias is None
    assert isinstance(model.act0, torch.nn.Identity)
    assert init_whitening(model, x)
    out = model.whiten(x).permute(1, 0, 2, 3).reshape(12, -1)
    out = out - out.mean(1, keepdim=True)
    torch.testing.assert_close(out @ out.T / out.shape[1], torch.eye(12), atol=2e-2, rtol=0)
    # the same directions as whitened_cnn's first half
    quantized = whitened_cnn(width=4)
    init_whitening(quantized, x)
    torch.testing.assert_close(model.whiten.weight, quantized.whiten.weight[:12])
    model.train()
    model(x)
    model.eval()
    net = dcsim.convert(model, method="qcfs")
    kinds = [type(n) for n in net.nodes[1:4]]
    assert kinds == [Conv, Conv, Neuron] and net.static_nodes() == {0, 1, 2}
    quantizers = [m for m in model.modules() if isinstance(m, dcsim.models.lsq.LSQActivation)]
    assert sum(isinstance(n, Neuron) for n in net.nodes) == len(quantizers)


@pytest.mark.parametrize("build", [whitened_cnn, whitened_cnn_analog])
def test_training_whitens_from_the_training_split_only(build):
    gen = torch.Generator().manual_seed(1)
    train_x = torch.randint(0, 256, (48, *SHAPE), dtype=torch.uint8, generator=gen)
    val_x = torch.randint(0, 128, (16, *SHAPE), dtype=torch.uint8, generator=gen)
    train_y, val_y = torch.arange(48) % 10, torch.arange(16) % 10
    norm = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    mean, std = (torch.tensor(v).reshape(1, 3, 1, 1) for v in norm)

    def expected(images: torch.Tensor) -> torch.Tensor:
        m = build(width=4)
        init_whitening(m, (images.float() / 255 - mean) / std)
        return m.whiten.weight

    torch.manual_seed(0)
    model = build(width=4)
    cfg = TrainConfig(epochs=1, float_epochs=0, lr=1e-9, batch_size=16)
    train(model, train_x, train_y, val_x, val_y, cfg, progress=False, normalization=norm, device="cpu")
    torch.testing.assert_close(model.whiten.weight, expected(train_x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model.whiten.weight, expected(val_x), atol=1e-2)
    assert not torch.allclose(model.whiten.weight, expected(torch.cat([train_x, val_x])), atol=1e-3)
    # set once: training the model again keeps its filters
    before = model.whiten.weight.clone()
    train(model, val_x, val_y, val_x, val_y, cfg, progress=False, normalization=norm, device="cpu")
    assert torch.equal(model.whiten.weight, before)


def test_checkpoint_without_the_flag_loads_as_whitened():
    model = whitened_cnn(width=4)
    state = {k: v for k, v in model.state_dict().items() if k != "whitening_set"}
    fresh = whitened_cnn(width=4)
    fresh.load_state_dict(state)
    assert bool(fresh.whitening_set)


def test_bad_widths_are_refused():
    with pytest.raises(ValueError, match="whitened_cnn"):
        whitened_cnn(width=0)
    with pytest.raises(ValueError, match="whitened_cnn_analog: width"):
        whitened_cnn_analog(width=0)
    with pytest.raises(ValueError, match="whitened_cnn"):
        WhitenedCNN(widths=())
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        init_whitening(whitened_cnn(width=4), torch.randn(4, 1, 8, 8))


def _dyadic(method: str, seed: int, build=whitened_cnn) -> dcsim.SpikingNetwork:
    torch.manual_seed(seed)
    model = build(width=4)
    init_whitening(model, torch.randn(32, *SHAPE))
    with torch.no_grad():  # filters on a grid whose products with dyadic inputs stay exact
        model.whiten.weight.copy_(torch.round(model.whiten.weight * 4) / 4)
    return dyadic_network(model, method, SHAPE, seed)


@pytest.mark.parametrize("build", [whitened_cnn, whitened_cnn_analog])
@pytest.mark.parametrize("seed", [3, 4])
def test_qffs_settle_converges_to_the_quantized_ann_exactly(seed, build):
    net = _dyadic("qffs", seed, build)
    x = dyadic_inputs(5, SHAPE, seed)
    levels, logits_total = settled_levels(net, x)
    steps = net.drive_steps + 3 * 3 * len(net.neurons)
    engine = dcsim.Engine(net)
    state = engine.start(x)
    readout = dcsim.Readout.paper("qffs", 2, steps)
    for _ in range(steps):
        engine.step(state, steps, readout)
    for i in net.neurons:
        assert torch.equal(state.z[i].contiguous(), levels[i]), net.nodes[i].name
    assert torch.equal(state.sums.double(), logits_total)


@pytest.mark.parametrize("build", [whitened_cnn, whitened_cnn_analog])
@pytest.mark.parametrize("method", ["qcfs", "qffs"])
def test_native_engine_equals_reference(method, build):
    net = _dyadic(method, 5, build)
    x = dyadic_inputs(6, SHAPE, 7)
    a = dcsim.Engine(net).simulate(x, 9, record_sums=True)
    b = dcsim.Engine(net, backend="reference").simulate(x, 9, record_sums=True)
    assert torch.equal(a.spikes, b.spikes) and torch.equal(a.pred, b.pred)
    assert torch.equal(a.sums, b.sums)
    assert int(a.spikes.sum()) > 0


def test_qcfs_matches_the_quantized_ann_on_a_trained_whitened_net():
    """T = Qp on one hidden layer is exact (see test_qffs_semantics); through all seven layers QCFS
    approaches the quantized ANN as T grows: most predictions agree at T = 64."""
    torch.manual_seed(0)
    model = whitened_cnn(width=4)
    x = torch.randn(32, *SHAPE)
    init_whitening(model, x)
    model.train()
    model(x)  # LSQ steps from data
    model.eval()
    net = dataclasses.replace(dcsim.convert(model, method="qcfs"))
    sim = dcsim.Engine(net).simulate(x, 64)
    with torch.no_grad():
        ann = model(x).argmax(1)
    assert float((sim.pred[:, -1] == ann).float().mean()) >= 0.75
