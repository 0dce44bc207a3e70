"""Network level, on real data (scikit-learn's digits): a trained LSQ model converted to SNNs."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import dcsim
from dcsim import analysis, training
from dcsim.workflows.dynamic_confidence import record_trace


@pytest.fixture(scope="module")
def trained():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1300], perm[1300:]
    torch.manual_seed(0)
    model = dcsim.models.small_cnn(num_classes=10, in_channels=1, width=16)
    cfg = training.TrainConfig(epochs=6, float_epochs=3, lr=0.05, batch_size=32)
    training.train(model, x[tr], y[tr], x[te], y[te], cfg, progress=False)
    return model, x[te], y[te]


def test_snn_accuracy_approaches_quantized_ann(trained):
    model, x, y = trained
    ann = training.accuracy(model, x, y)
    assert ann > 0.9, f"the LSQ model did not train: {ann}"
    qcfs = dcsim.Engine(dcsim.convert(model, "qcfs")).simulate(x, 32)
    acc = (qcfs.pred == y[:, None]).float().mean(0)
    print("ANN", ann, "QCFS acc at T=1,2,4,8,16,32:", [round(float(acc[t - 1]), 4) for t in (1, 2, 4, 8, 16, 32)])
    assert acc[31] >= ann - 0.02
    assert acc[31] > acc[0]
    qffs = dcsim.Engine(dcsim.convert(model, "qffs")).simulate(x, 6)
    acc_f = (qffs.pred == y[:, None]).float().mean(0)
    print("QFFS acc at T=1..6:", [round(float(a), 4) for a in acc_f])
    assert acc_f.max() >= ann - 0.02
    assert acc_f[3] > acc_f[0]


def test_qffs_settle_holds_accuracy_beyond_T_equals_Qp(trained):
    """The faithful QFFS ("settle"): accuracy at T = 2 Qp within 1 point of T = Qp, and it converges
    to the quantized ANN's predictions; the "constant" semantics keeps the old behaviour (no bound)."""
    model, x, y = trained
    qp = 3
    sim = dcsim.Engine(dcsim.convert(model, "qffs")).simulate(x, 4 * qp)
    acc = (sim.pred == y[:, None]).float().mean(0)
    constant = dcsim.Engine(dcsim.convert(model, "qffs", semantics="constant")).simulate(x, 2 * qp)
    acc_c = (constant.pred == y[:, None]).float().mean(0)
    print("QFFS settle acc at T=1..12:", [round(float(a), 4) for a in acc])
    print("QFFS constant acc at T=1..6:", [round(float(a), 4) for a in acc_c])
    assert torch.equal(sim.pred[:, :qp], constant.pred[:, :qp]), "the semantics differ only after T = Qp"
    assert acc[2 * qp - 1] >= acc[qp - 1] - 0.01
    with torch.no_grad():
        ann_pred = model.eval()(x).argmax(1)
    assert float((sim.pred[:, -1] == ann_pred).float().mean()) >= 0.98


@pytest.mark.parametrize("method,steps", [("qcfs", 16), ("qffs", 5)])
def test_native_engine_equals_reference_per_step(trained, method, steps):
    model, x, _ = trained
    net = dcsim.convert(model, method)
    readout = dcsim.Readout.paper(method, 2, steps, tau=1.3)
    a = dcsim.Engine(net, backend="native").simulate(x, steps, readout, record_sums=True)
    b = dcsim.Engine(net, backend="reference").simulate(x, steps, readout, record_sums=True)
    assert torch.equal(a.pred, b.pred)
    assert torch.equal(a.spikes, b.spikes)
    assert torch.equal(a.sums, b.sums)
    torch.testing.assert_close(a.conf, b.conf, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method,steps", [("qcfs", 16), ("qffs", 5)])
def test_live_early_exit_agrees_with_trace_on_a_trained_model(trained, method, steps):
    """On real weights the only possible differences come from batch-size-dependent conv rounding."""
    model, x, y = trained
    engine = dcsim.Engine(dcsim.convert(model, method))
    readout = dcsim.Readout.paper(method, 2, steps)
    trace = record_trace(engine, x, y, steps, readout, {})
    c = analysis.analyze(trace)["selected"]["threshold"]
    live = engine.early_exit(x, steps, readout, c, batch_size=64)
    e = analysis.exit_steps(trace.conf, c)
    agree = (live.exit_step.numpy() == e) & (live.pred.numpy() == trace.pred[np.arange(len(y)), e - 1])
    print(f"{method}: th_c={c:.4f}, live/trace agreement {agree.mean():.4f}, mean steps {e.mean():.2f} of {steps}")
    assert agree.mean() >= 0.99
