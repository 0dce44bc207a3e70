"""The engine calls its native kernels without their tensors' checks (``Engine.kernel_checks`` off, the default):
its own tensors hold them by construction. These tests run the engine with the checks on, so a malformed
tensor (a wrong dtype, shape or layout) fails here instead of reaching native code, and check that the
switch changes no result. Fresh random networks and inputs each run."""

import pytest
import torch

from dcsim.conversion.convert import convert
from dcsim.models import build_model
from dcsim.sim import ops
from dcsim.sim.engine import Engine
from dcsim.sim.readout import Readout
from dcsim.workflows.benchmark import mid_threshold

pytestmark = pytest.mark.skipif("cpu" not in ops.backends(), reason="native kernels not built")

CONFIGS = [
    {},
    {"channels_last": True},
    {"spike_convs": True},
    {"count_ops": True},
]
FIELDS = ("pred", "exit_step", "conf", "spikes", "sops")


def _network(arch: str, method: str):
    model = build_model(arch, num_classes=10, width=8).train()
    with torch.no_grad():
        model(torch.randn(32, 3, 32, 32))  # batch-norm statistics and LSQ steps
    return convert(model.eval(), method=method)


def _equal(a, b, fields):
    for f in fields:
        x, y = getattr(a, f, None), getattr(b, f, None)
        assert (x is None and y is None) or torch.equal(x, y), f


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "channels_last", "spike_convs", "count_ops"])
@pytest.mark.parametrize(("arch", "method"), [("small_cnn", "qffs"), ("resnet18", "qcfs"), ("resnet18", "qffs")])
def test_every_kernel_call_of_the_engine_passes_the_checks_and_the_switch_changes_nothing(arch, method, config):
    net = _network(arch, method)
    steps = 4 if method == "qffs" else 9
    readout = Readout.paper(method, net.bits, steps)
    x = torch.randn(6, 3, 32, 32)
    checked, unchecked = Engine(net, **config), Engine(net, **config)
    checked.kernel_checks = True
    assert not unchecked.kernel_checks  # the default
    _equal(checked.simulate(x, steps, readout), unchecked.simulate(x, steps, readout), ("pred", "conf", "spikes"))
    th = mid_threshold(unchecked, x, steps, readout)
    for kwargs in ({}, {"batch_size": 1}, {"compact_fraction": 0.0}, {"batch_size": 3, "chunk": 2}):
        _equal(
            checked.early_exit(x, steps, readout, th, **kwargs),
            unchecked.early_exit(x, steps, readout, th, **kwargs),
            FIELDS,
        )


def test_the_checks_switch_keeps_the_scalar_checks_and_the_results():
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))))
    n, c, h = (int(v) for v in torch.randint(1, 9, (3,), generator=gen))
    x = torch.randn(n, c, h, h, generator=gen)
    outs = []
    for checked in (True, False):
        u = torch.zeros(n, c, h, h)
        z = torch.zeros(n, c, h, h, dtype=torch.int32)
        out = torch.empty(n, c, h, h)
        counts = torch.zeros(n, dtype=torch.int64)
        for _ in range(3):
            ops.neuron_step("qffs", x, u, z, out, counts, 0.5, 3, checked=checked)
        outs.append((u, z, out, counts))
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
    u, z, out, counts = outs[1]
    with pytest.raises(ValueError, match="th must be"):
        ops.neuron_step("qffs", x, u, z, out, counts, 0.0, 3, checked=False)
    with pytest.raises(ValueError, match="method must be"):
        ops.neuron_step("qxfs", x, u, z, out, counts, 0.5, 3, checked=False)
    with pytest.raises(ValueError, match=r"z \(the spike count\) is required"):
        ops.neuron_step("qffs", x, u, None, out, counts, 0.5, 3, checked=False)
    with pytest.raises(TypeError, match="x must have dtype"):  # checked (the default): the tensors too
        ops.neuron_step("qffs", x.double(), u, z, out, counts, 0.5, 3)
    sums, steps = torch.zeros(n, 10), torch.zeros(n, dtype=torch.int32)
    pred, score, exited = (torch.empty(n, dtype=d) for d in (torch.int64, torch.float32, torch.uint8))
    with pytest.raises(ValueError, match="max_steps must be"):
        ops.output_step(torch.randn(n, 10), sums, steps, 0, 0, 1.0, 0.5, pred, score, exited, checked=False)
