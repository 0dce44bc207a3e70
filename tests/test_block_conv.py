"""Kernel 6, the block conv (dcsim.sim.ops.block_conv2d): a dense CPU conv summed in oneDNN's AVX-512 order. Against
its plain-PyTorch reference (the same order, exact where the products are: spike inputs), its portable loop
(every input), oneDNN itself on AVX-512 machines (every input), its sparse loop against its dense loops (the same
bits with the zero inputs' taps left out), and the engine's choice of it (dcsim.sim.block_conv)."""

import dataclasses

import pytest
import torch

import dcsim
from dcsim.sim import block_conv, ops, program, reference
from dcsim.sim.network import Conv, onednn_conv
from dyadic import dyadic_inputs, resnet

AVX512 = block_conv.avx512()

# (Cin, Cout, H, W, kernel, stride, padding): 3x3 direct convs of the zoo's kinds, strided, 1x1 (one partial from
# the bias), a 5x5, odd widths (column tails of the 8- and 16-column blocks), widths under 4 (4 blocks at once),
# image-fed convs of fewer than 16 channels (one partial), channels that 16 does not divide (a last, shorter partial:
# the 24-channel whitened stem's next conv), strided 1x1 kernels on sizes their stride does not divide (the direct
# kernel's order, not jit_1x1's)
GEOMETRIES = [
    (3, 16, 10, 12, 3, 1, 1),
    (1, 32, 9, 9, 3, 2, 1),
    (12, 16, 7, 7, 2, 1, 0),
    (16, 16, 9, 11, 3, 1, 1),
    (32, 48, 7, 5, 3, 2, 1),
    (16, 32, 8, 8, 1, 2, 0),
    (64, 64, 3, 3, 3, 1, 1),
    (48, 16, 5, 19, 3, 1, 0),
    (16, 16, 13, 13, 5, 2, 2),
    (64, 128, 4, 4, 3, 1, 1),
    (32, 64, 6, 7, 1, 1, 0),
    (24, 32, 9, 9, 3, 1, 1),
    (40, 16, 6, 5, 3, 2, 1),
    (24, 32, 7, 8, 1, 2, 0),
    (20, 16, 9, 9, 1, 3, 0),
]


def _case(geometry, seed: int, spikes: bool, bias: bool):
    cin, cout, h, w, k, s, p = geometry
    g = torch.Generator().manual_seed(seed)
    n = 1 + seed % 3
    x = (torch.rand(n, cin, h, w, generator=g) < 0.2).float() if spikes else torch.randn(n, cin, h, w, generator=g)
    weight = torch.randn(cout, cin, k, k, generator=g) * 0.2
    b = torch.randn(cout, generator=g) if bias else None
    return x, weight, b, (s, s), (p, p)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("simd", [True, False])
def test_block_conv_equals_its_reference_on_spikes(geometry, bias, simd):
    x, weight, b, stride, padding = _case(geometry, seed=sum(geometry) + bias, spikes=True, bias=bias)
    out = ops.block_conv2d(x, ops.pack_block_conv_weight(weight), b, stride, padding, simd=simd)
    assert torch.equal(out, reference.block_conv2d(x, weight, b, stride, padding))


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("bias", [False, True])
def test_simd_and_portable_loops_give_the_same_bits(geometry, bias):
    x, weight, b, stride, padding = _case(geometry, seed=7 + bias, spikes=False, bias=bias)
    packed = ops.pack_block_conv_weight(weight)
    fast = ops.block_conv2d(x, packed, b, stride, padding, simd=True)
    assert torch.equal(fast, ops.block_conv2d(x, packed, b, stride, padding, simd=False))
    torch.testing.assert_close(fast, torch.nn.functional.conv2d(x, weight, b, stride, padding), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not AVX512, reason="oneDNN sums in the block conv's order on AVX-512 CPUs only")
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("bias", [False, True])
def test_block_conv_gives_onednn_s_bits_on_avx512(geometry, bias):
    x, weight, b, stride, padding = _case(geometry, seed=11 + bias, spikes=False, bias=bias)
    assert _gives_onednn_s_bits(x, weight, b, stride, padding)


def _gives_onednn_s_bits(x, weight, b, stride, padding) -> bool:
    """Whether the block conv of x by weight and b equals oneDNN's conv of the same layer bit for bit."""
    node = Conv(name="c", inputs=(0,), weight=weight, bias=b, stride=stride, padding=padding)
    out = ops.block_conv2d(x, ops.pack_block_conv_weight(weight), b, stride, padding)
    return torch.equal(out, onednn_conv(node, x))


def _random_geometry(g: torch.Generator):
    """A fresh conv geometry (Cin, Cout, H, W, kernel, stride, padding): any Cin, Cout a multiple of 16."""
    cin, cout = int(torch.randint(1, 70, (1,), generator=g)), 16 * int(torch.randint(1, 6, (1,), generator=g))
    k = int(torch.randint(1, 4, (1,), generator=g)) * 2 - 1
    s, p = int(torch.randint(1, 3, (1,), generator=g)), int(torch.randint(0, k // 2 + 1, (1,), generator=g))
    h, w = int(torch.randint(k, 16, (1,), generator=g)), int(torch.randint(k, 16, (1,), generator=g))
    return cin, cout, h, w, k, s, p


@pytest.mark.skipif(not AVX512, reason="oneDNN sums in the block conv's order on AVX-512 CPUs only")
@pytest.mark.parametrize("seed", range(16))
def test_block_conv_gives_onednn_s_bits_on_fresh_shapes(seed):
    """Fresh geometries (any Cin, strided 1x1 kernels on odd sizes among them), Gaussian inputs and weights, a bias:
    oneDNN's bits, where a sum in another order differs in most outputs."""
    g = torch.Generator().manual_seed(5000 + seed)
    cin, cout, h, w, k, s, p = _random_geometry(g)
    x = torch.randn(1 + seed % 3, cin, h, w, generator=g)
    weight, b = torch.randn(cout, cin, k, k, generator=g), torch.randn(cout, generator=g)
    assert _gives_onednn_s_bits(x, weight, b, (s, s), (p, p))


@pytest.mark.parametrize("seed", range(24))
def test_sparse_loop_gives_the_dense_loops_bits(seed):
    """Fresh shapes and densities (0 to 1 nonzero, Gaussian values, 1-3 rows, 1-2 threads), bias or none: the sparse
    loop leaves out the taps of zero inputs and gives the portable dense loop's bits."""
    g = torch.Generator().manual_seed(1000 + seed)
    cin, cout, h, w, k, s, p = _random_geometry(g)
    n = 1 + seed % 3
    density = float(torch.rand(1, generator=g)) if seed % 6 else 0.0
    x = (torch.rand(n, cin, h, w, generator=g) < density) * torch.randn(n, cin, h, w, generator=g)
    weight = torch.randn(cout, cin, k, k, generator=g)
    b = torch.randn(cout, generator=g) if seed % 2 else None
    packed = ops.pack_block_conv_weight(weight)
    dense = ops.block_conv2d(x, packed, b, (s, s), (p, p), simd=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 + seed % 2)
        sparse = ops.block_conv2d(x, packed, b, (s, s), (p, p), max_density=1.0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(sparse.view(torch.int32), dense.view(torch.int32))


def test_sparse_loop_keeps_a_negative_zero_bias_s_bits():
    """A 1x1 conv's sum starts at the bias: from -0, the dense loop's fma(w, 0, -0) gives +0 where w >= 0, which the
    sparse loop, leaving the tap out, would not; it runs the dense loop there (csrc/block_conv.h)."""
    x = torch.zeros(1, 16, 3, 3)
    x[0, 0, 0, 0] = 1.0
    weight = torch.ones(16, 16, 1, 1)
    b = torch.full((16,), -0.0)
    packed = ops.pack_block_conv_weight(weight)
    dense = ops.block_conv2d(x, packed, b, (1, 1), (0, 0), simd=False)
    sparse = ops.block_conv2d(x, packed, b, (1, 1), (0, 0), max_density=1.0)
    assert torch.equal(sparse.view(torch.int32), dense.view(torch.int32))
    assert torch.signbit(dense[0, 0, 1, 1]) == torch.signbit(torch.tensor(0.0))  # +0: the check can fail


@pytest.fixture
def always_faster(monkeypatch):
    """The block conv's dense loop counted as the fastest wherever it is exact: no test depends on a timing."""
    monkeypatch.setattr(block_conv, "_fastest", lambda calls, x_shape: "dense")


def test_the_engine_uses_block_convs_only_where_they_match_onednn(monkeypatch, always_faster):
    net, shape = resnet("qcfs", seed=3)
    node = next(n for n in net.nodes if isinstance(n, Conv) and n.weight.shape[1] == 64)
    x_shape = (2, 64, shape[1], shape[2])
    blocks = block_conv.BlockConvs()
    assert (blocks.call(node, x_shape) is not None) == AVX512
    assert list(blocks.chosen().values()) == ["dense" if AVX512 else None]
    # the sparse loop, where it is the fastest, offered with the dense loop and oneDNN
    offered: list[list[str]] = []
    monkeypatch.setattr(block_conv, "_fastest", lambda calls, x_shape: offered.append(list(calls)) or "sparse")
    blocks = block_conv.BlockConvs()
    assert (blocks.call(node, x_shape) is not None) == AVX512
    assert offered == ([["onednn", "dense", "sparse"]] if AVX512 else [])
    assert list(blocks.chosen().values()) == ["sparse" if AVX512 else None]
    # an image's conv (mostly nonzero): the sparse loop not offered
    offered.clear()
    block_conv.BlockConvs().call(node, x_shape, spikes=False)
    assert offered == ([["onednn", "dense"]] if AVX512 else [])
    # a weight whose zero-input products are not 0 (inf * 0 is NaN): neither loop is offered, oneDNN is kept
    offered.clear()
    inf = node.weight.clone().index_fill_(0, torch.tensor([3]), float("inf"))
    assert block_conv.BlockConvs().call(dataclasses.replace(node, weight=inf), x_shape) is None
    assert offered == []
    # larger calls: timed once per bucket of rows (on 16 rows up to 16, on 32 for any larger call), each call bound
    # to its own shape, with oneDNN's bits
    timed: list[int] = []
    monkeypatch.setattr(block_conv, "_fastest", lambda calls, x_shape: timed.append(x_shape[0]) or "sparse")
    blocks = block_conv.BlockConvs()
    gen = torch.Generator().manual_seed(5)
    for rows in (9, 16, 17, 100, 40):
        call = blocks.call(node, (rows, *x_shape[1:]))
        assert (call is not None) == AVX512
        if call is not None:
            x = torch.randn((rows, *x_shape[1:]), generator=gen) * (
                torch.rand((rows, *x_shape[1:]), generator=gen) < 0.2
            )
            assert torch.equal(call(x), onednn_conv(node, x)), rows
    assert timed == ([16, 32] if AVX512 else [])
    assert [block_conv.timed_rows(r) for r in (1, 8, 9, 16, 17, 32, 33, 10_000)] == [1, 8, 16, 16, 32, 32, 32, 32]
    # slower than oneDNN on the call's shape: oneDNN is kept
    monkeypatch.setattr(block_conv, "_fastest", lambda calls, x_shape: "onednn")
    assert block_conv.BlockConvs().call(node, x_shape) is None
    # a CPU without AVX-512 (oneDNN sums in blocks of 8 there): not even probed
    monkeypatch.setattr(block_conv, "avx512", lambda: False)
    monkeypatch.setattr(block_conv, "_fastest", lambda calls, x_shape: pytest.fail("probed without AVX-512"))
    assert block_conv.BlockConvs().call(node, x_shape) is None
    monkeypatch.setattr(block_conv, "avx512", lambda: AVX512)
    # a kernel that summed in another order (one partial over all channels) fails the check: oneDNN is kept
    monkeypatch.setattr(block_conv, "_fastest", lambda calls, x_shape: "dense")
    monkeypatch.setattr(ops, "block_conv_order", lambda kernel, stride, padding, cin, size: (cin, True))
    assert block_conv.BlockConvs().call(node, x_shape) is None
    # layers the kernel cannot run
    assert not block_conv.eligible(dataclasses.replace(node, groups=2, weight=node.weight[:, :32]), x_shape[1:])
    assert not block_conv.eligible(dataclasses.replace(node, weight=node.weight[:40]), x_shape[1:])
    assert not block_conv.eligible(dataclasses.replace(node, dilation=(2, 2)), x_shape[1:])


def test_programs_with_block_convs_give_the_general_path_s_results(always_faster):
    net, shape = resnet("qffs", seed=3)
    a, b = dcsim.Engine(net), dcsim.Engine(net)
    b._programmed = False
    x = dyadic_inputs(4, shape, seed=7) + 0.01 * torch.randn((4, *shape), generator=torch.Generator().manual_seed(8))
    readout = dcsim.Readout.paper("qffs", 2, 4, tau=0.5)
    ra = a.early_exit(x, 4, readout, 0.6, batch_size=1)
    rb = b.early_exit(x, 4, readout, 0.6, batch_size=1)
    for f in ("pred", "exit_step", "conf", "spikes"):
        assert torch.equal(getattr(ra, f), getattr(rb, f)), f
    assert any(a._block_convs.chosen().values()) == AVX512
    stem = net.nodes[1]  # the image-fed conv (1 channel in), once per sample
    assert isinstance(stem, Conv) and stem.weight.shape[1] == 1
    assert (a._block_conv(stem, x[:1].contiguous(), spikes=False) is not None) == AVX512


def test_the_general_path_s_block_convs_give_its_results(always_faster, monkeypatch):
    """Calls of more than program.MAX_ROWS rows run the engine's general path, which takes the block conv too."""
    net, shape = resnet("qcfs", seed=4)
    a, b = dcsim.Engine(net), dcsim.Engine(net)
    b._programmed = False  # no block convs
    monkeypatch.setattr(program, "MAX_ROWS", 2)  # every call of the run below takes the general path
    x = dyadic_inputs(6, shape, seed=9) + 0.01 * torch.randn((6, *shape), generator=torch.Generator().manual_seed(10))
    readout = dcsim.Readout.paper("qcfs", 2, 8)
    ra = a.early_exit(x, 8, readout, 0.6, batch_size=6, chunk=2)
    rb = b.early_exit(x, 8, readout, 0.6, batch_size=6, chunk=2)
    for f in ("pred", "exit_step", "conf", "spikes"):
        assert torch.equal(getattr(ra, f), getattr(rb, f)), f
    assert any(kind == "dense" for kind in a._block_convs.chosen().values()) == AVX512
    assert not a._programs  # no program ran: the block convs were the general path's


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.pack_block_conv_weight(torch.zeros(40, 16, 3, 3)), "blocks of 16"),
        (lambda: ops.pack_block_conv_weight(torch.zeros(16, 16, 3)), "weight must have shape"),
        (lambda: ops.pack_block_conv_weight(torch.zeros(16, 16, 3, 3, dtype=torch.float64)), "weight"),
        (lambda: ops.block_conv2d(torch.zeros(1, 16, 4, 4).double(), torch.zeros(1, 3, 3, 16, 1, 16), None, (1, 1), (1, 1)), "x"),
        (lambda: ops.block_conv2d(torch.zeros(1, 4, 4, 16).permute(0, 3, 1, 2), torch.zeros(1, 3, 3, 16, 1, 16), None, (1, 1), (1, 1)), "contiguous"),
        (lambda: ops.block_conv2d(torch.zeros(1, 16, 4, 4), torch.zeros(1, 3, 3, 8, 1, 16), None, (1, 1), (1, 1)), "packed"),
        (lambda: ops.block_conv2d(torch.zeros(1, 16, 4, 4), torch.zeros(1, 3, 3, 16, 16), None, (1, 1), (1, 1)), "packed"),
        (lambda: ops.block_conv2d(torch.zeros(1, 16, 4, 4), torch.zeros(2, 3, 3, 16, 1, 16), None, (1, 1), (1, 1)), "G ="),
        (lambda: ops.block_conv2d(torch.zeros(1, 16, 4, 4), torch.zeros(1, 3, 3, 16, 1, 16), torch.zeros(8), (1, 1), (1, 1)), "bias"),
        (lambda: ops.block_conv2d(torch.zeros(1, 16, 2, 2), torch.zeros(1, 3, 3, 16, 1, 16), None, (1, 1), (0, 0)), "does not fit"),
        (lambda: ops.block_conv2d(torch.zeros(1, 16, 4, 4), torch.zeros(1, 3, 3, 16, 1, 16), None, (0, 1), (1, 1)), "stride"),
        (lambda: ops.block_conv2d(torch.zeros(1, 16, 4, 4), torch.zeros(1, 3, 3, 16, 1, 16), None, (1, 1), (1, 1), max_density=1.5), "max_density"),
    ],
)  # fmt: skip
def test_bad_block_conv_arguments_are_named(call, match):
    with pytest.raises((ValueError, TypeError), match=match):  # a wrong dtype is a TypeError
        call()
