"""Kernel 1 over k steps in one call (dcsim.sim.ops.neuron_steps, CPU) against k calls of the one-step kernel and
against its plain-PyTorch twin (dcsim.sim.reference.neuron_steps): every output equal, bit for bit, on fresh
random shapes and inputs (the one-step kernel's own equality with the reference is tests/test_kernels.py's)."""

from __future__ import annotations

import random

import pytest
import torch

from dcsim.sim import ops, reference


def _case(seed: int, method: str, k: int, per_step_x: bool, x2_kind: str, fanout: bool, fresh: bool, cl: bool):
    """Random shape and tensors for one call: (args, kwargs) of neuron_steps, inputs only (fresh copies per run)."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    n = rng.randint(1, 5)
    shape = (n, rng.randint(1, 9), rng.randint(1, 7), rng.randint(1, 7)) if cl else (n, rng.randint(1, 300))
    th = rng.choice([0.25, 0.5, 1.0, rng.uniform(0.1, 2.0)])

    def layout(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if cl and t.dim() == 4 else t.contiguous()

    def current(steps: bool) -> torch.Tensor:
        if not steps:
            return layout(torch.randn(shape, generator=g) * th)
        flat = layout(torch.randn((k * n, *shape[1:]), generator=g) * th)
        return flat.view(k, *shape)  # [k, n, ...]: each step's slice in the layout, steps n * m elements apart

    x = current(per_step_x)
    x2 = None if x2_kind == "none" else current(x2_kind == "steps")
    u = layout(torch.randn(shape, generator=g) * th)
    z = layout(torch.randint(0, 3, shape, generator=g, dtype=torch.int32)) if method == "qffs" else None
    counts = torch.randint(0, 100, (n,), generator=g)
    fan = layout(torch.randint(0, 40, (1, *shape[1:]), generator=g, dtype=torch.int32)) if fanout else None
    sops = torch.randint(0, 100, (n,), generator=g) if fanout else None
    out = layout(torch.full((k * n, *shape[1:]), 123.0)).view(k, *shape)
    zmax = rng.randint(1, 4)
    u0 = rng.uniform(-th, th) if fresh else None
    return method, x, x2, u, z, out, counts, th, zmax, fan, sops, u0


def _run(kind: str, case, record: bool):
    """One run of a case on copies of its tensors; returns every tensor it writes."""
    method, x, x2, u, z, out, counts, th, zmax, fan, sops, u0 = case
    u, out, counts = u.clone(memory_format=torch.preserve_format), out.clone(), counts.clone()
    z = None if z is None else z.clone(memory_format=torch.preserve_format)
    sops = None if sops is None else sops.clone()
    k, n = out.shape[0], u.shape[0]
    counts_out = torch.full((k, n), -1, dtype=torch.int64) if record else None
    sops_out = torch.full((k, n), -1, dtype=torch.int64) if record and sops is not None else None
    if kind == "one step at a time":
        for t in range(k):
            ops.neuron_step(method, x[t] if x.dim() > u.dim() else x, u, z, out[t], counts, th, zmax,
                            x2=None if x2 is None else x2[t] if x2.dim() > u.dim() else x2, fanout=fan, sops=sops,
                            u0=u0 if t == 0 else None)  # fmt: skip
            if counts_out is not None:
                counts_out[t] = counts
            if sops_out is not None and sops is not None:
                sops_out[t] = sops
    else:
        fn = ops.neuron_steps if kind == "native" else reference.neuron_steps
        fn(method, x, u, z, out, counts, th, zmax, x2=x2, fanout=fan, sops=sops, u0=u0, counts_out=counts_out,
           sops_out=sops_out)  # fmt: skip
    return {"out": out, "u": u, "z": z, "counts": counts, "sops": sops, "counts_out": counts_out, "sops_out": sops_out}


@pytest.mark.parametrize("method", ["qcfs", "qffs"])
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("per_step_x", [True, False], ids=["x per step", "one x"])
@pytest.mark.parametrize("x2_kind", ["none", "steps", "one"])
@pytest.mark.parametrize("seed", range(3))
def test_k_steps_in_one_call_equal_k_calls_and_the_reference(method, k, per_step_x, x2_kind, seed):
    for fanout, fresh, cl, record in (
        (False, False, False, True),
        (True, True, True, True),
        (True, False, False, False),
    ):
        case = _case(seed * 7 + k, method, k, per_step_x, x2_kind, fanout, fresh, cl)
        want = _run("one step at a time", case, record)
        for kind in ("native", "reference"):
            got = _run(kind, case, record)
            for name, value in want.items():
                if value is None:
                    assert got[name] is None, name
                else:
                    assert torch.equal(got[name], value), (kind, name, fanout, fresh, cl)
        assert bool((want["out"] != 123.0).all()), "every step's output written"
        if record:
            assert torch.equal(want["counts_out"][-1], want["counts"])


def test_neuron_steps_checks_its_tensors():
    x = torch.randn(3, 2, 8)
    u, out, counts = torch.zeros(2, 8), torch.zeros(3, 2, 8), torch.zeros(2, dtype=torch.int64)
    ops.neuron_steps("qcfs", x, u, None, out, counts, 1.0, 1, counts_out=torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="out must have shape"):
        ops.neuron_steps("qcfs", x, u, None, out[0], counts, 1.0, 1)
    with pytest.raises(ValueError, match="x must hold k = 3 steps"):
        ops.neuron_steps("qcfs", x[:2], u, None, out, counts, 1.0, 1)
    with pytest.raises(ValueError, match="x must hold k = 3 steps 16 elements apart"):
        ops.neuron_steps("qcfs", torch.randn(2, 3, 8).transpose(0, 1), u, None, out, counts, 1.0, 1)
    with pytest.raises(ValueError, match="counts_out"):
        ops.neuron_steps("qcfs", x, u, None, out, counts, 1.0, 1, counts_out=torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="sops_out needs sops"):
        ops.neuron_steps("qcfs", x, u, None, out, counts, 1.0, 1, sops_out=torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="z"):
        ops.neuron_steps("qffs", x, u, None, out, counts, 1.0, 1)
    with pytest.raises(ValueError, match="runs on the CPU"):
        ops.neuron_steps("qcfs", x, u.to("meta"), None, out, counts, 1.0, 1)


def test_neuron_steps_of_no_rows_write_nothing():
    u, counts = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    out = torch.zeros(3, 0, 4)
    ops.neuron_steps("qffs", torch.ones(3, 0, 4), u, torch.zeros(0, 4, dtype=torch.int32), out, counts, 1.0, 2,
                     counts_out=torch.zeros(3, 0, dtype=torch.int64))  # fmt: skip
    assert out.shape == (3, 0, 4)
