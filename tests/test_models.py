"""Model widths: the default is the paper's network; a base width scales every conv layer."""

import pytest
import torch

from dcsim.models import build_model


def _conv_channels(model: torch.nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("arch", ["resnet18", "vgg16"])
def test_default_width_is_the_paper_network(arch):
    default, explicit = build_model(arch), build_model(arch, width=64)
    assert _conv_channels(default) == _conv_channels(explicit)
    assert _conv_channels(default)[0] == 64 and max(_conv_channels(default)) == 512
    assert sum(p.numel() for p in default.parameters()) == sum(p.numel() for p in explicit.parameters())


@pytest.mark.parametrize("arch", ["resnet18", "vgg16"])
def test_base_width_scales_every_conv(arch):
    wide, narrow = build_model(arch), build_model(arch, width=16)
    assert [c // 4 for c in _conv_channels(wide)] == _conv_channels(narrow)
    torch.manual_seed(0)
    out = narrow.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("width", [0, -1, 2.5, True])
def test_bad_width_is_refused(width):
    with pytest.raises(ValueError, match="width"):
        build_model("resnet18", width=width)
