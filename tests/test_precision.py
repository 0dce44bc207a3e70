"""Engine precisions: fp32 (default), tf32 (GPU only), bf16 / fp16 currents."""

import pytest
import torch
import torch.nn.functional as F

import dcsim
from dcsim.sim.engine import PRECISIONS
from dcsim.sim.network import Conv, Linear
from dcsim.workflows.benchmark import prepared_model
from marks import SLOW

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
REDUCED = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _random_net(method: str) -> dcsim.SpikingNetwork:
    model, _ = prepared_model("small_cnn")
    return dcsim.convert(model, method=method)


def _inputs(n: int, seed: int) -> torch.Tensor:
    return torch.randn((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", sorted(REDUCED))
def test_reduced_precision_rounds_every_current(precision, device):
    dtype = REDUCED[precision]
    engine = dcsim.Engine(_random_net("qcfs"), device=device, precision=precision)
    layers = [n for n in engine.net.nodes if isinstance(n, (Conv, Linear))]
    assert layers and all(n.weight.dtype == dtype and n.bias.dtype == dtype for n in layers)
    conv = next(n for n in layers if isinstance(n, Conv))
    x = torch.randn((3, conv.weight.shape[1], 9, 9), generator=torch.Generator().manual_seed(1)).to(device)
    got = engine._apply(conv, x)
    want = F.conv2d(x.to(dtype), conv.weight, conv.bias, conv.stride, conv.padding).float()
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(got, got.to(dtype).float())  # every current is a value of the reduced dtype


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=[pytest.mark.slow, SLOW]), *DEVICES[1:]])
@pytest.mark.parametrize("method,steps", [("qcfs", 8), ("qffs", 4)])
@pytest.mark.parametrize("precision", sorted(REDUCED))
def test_reduced_precision_runs_close_to_fp32(precision, method, steps, device):
    net = _random_net(method)
    x = _inputs(16, seed=2).to(device)  # on the CPU only with DCSIM_SLOW=1: bf16/fp16 convs are slow without AVX-512
    readout = dcsim.Readout.paper(method, net.bits, steps)
    ref = dcsim.Engine(net, device=device).simulate(x, steps, readout, record_sums=True)
    engine = dcsim.Engine(net, device=device, precision=precision)
    got = engine.simulate(x, steps, readout, record_sums=True)
    assert not torch.equal(got.sums, ref.sums)  # the reduced path did run
    assert (got.pred[:, -1] == ref.pred[:, -1]).float().mean() >= 0.75
    torch.testing.assert_close(got.sums, ref.sums, atol=0.1 * float(ref.sums.abs().max()), rtol=0)
    c = float(got.conf[:, steps // 2].median())
    # Early exit agrees with the trace (up to conv rounding at the smaller batches left after compaction).
    live = engine.early_exit(x, steps, readout, c, chunk=2)
    first = torch.argmax((got.conf > c).to(torch.uint8), dim=1) + 1
    want_steps = torch.where((got.conf > c).any(dim=1), first, torch.full_like(first, steps)).cpu()
    assert (live.exit_step == want_steps).float().mean() >= 0.9


def test_fp32_and_tf32_on_the_cpu_are_the_default():
    net = _random_net("qcfs")
    x = _inputs(8, seed=3)
    readout = dcsim.Readout.paper("qcfs", net.bits, 8)
    ref = dcsim.Engine(net).simulate(x, 8, readout, record_sums=True)
    for precision in ("fp32", "tf32"):
        got = dcsim.Engine(net, precision=precision).simulate(x, 8, readout, record_sums=True)
        assert torch.equal(got.sums, ref.sums) and torch.equal(got.spikes, ref.spikes)


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="precision must be one of"):
        dcsim.Engine(_random_net("qcfs"), precision="int8")
    assert set(PRECISIONS) == {"fp32", "tf32", "bf16", "fp16"}
