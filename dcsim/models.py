"""CNNs with LSQ-quantized hidden activations and a full-precision output layer.

All models use average pooling (no max-pool) so they convert to spiking networks:
``small_cnn`` (fast, for tests and demos), ``vgg16`` (32x32 inputs; its fully connected
hidden layers are quantized too), ``resnet18`` (CIFAR: 3x3 stem, no max-pool) and
``resnet50`` (ImageNet: the 3x3/2 max-pool replaced by average pooling).
Inputs are float32 [N, C, H, W]; outputs are logits float32 [N, num_classes].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .lsq import LSQActivation


def _conv_bn_act(cin: int, cout: int, bits: int, kernel: int = 3, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        LSQActivation(bits),
    ]


def small_cnn(num_classes: int = 10, in_channels: int = 3, bits: int = 2, width: int = 32) -> nn.Sequential:
    """Three conv blocks (width, 2*width, 4*width), two 2x2 average pools, global pooling, linear."""
    w = width
    return nn.Sequential(
        *_conv_bn_act(in_channels, w, bits),
        *_conv_bn_act(w, 2 * w, bits),
        nn.AvgPool2d(2),
        *_conv_bn_act(2 * w, 4 * w, bits),
        nn.AvgPool2d(2),
        *_conv_bn_act(4 * w, 4 * w, bits),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, num_classes),
    )


VGG16_CFG = (64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A", 512, 512, 512, "A")


def _check_width(width: int, what: str) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"{what}: width must be a positive integer, got {width!r}")


def vgg16(
    num_classes: int = 10,
    in_channels: int = 3,
    bits: int = 2,
    hidden: int = 4096,
    dropout: float = 0.5,
    width: int = 64,
) -> nn.Sequential:
    """VGG-16 for 32x32 inputs with average pooling; fc hidden layers quantized (spiking after conversion).

    width: channels of the first conv block (the paper's 64); later blocks scale with it (2x, 4x, 8x).
    """
    _check_width(width, "vgg16")
    layers: list[nn.Module] = []
    cin = in_channels
    for v in VGG16_CFG:
        if isinstance(v, str):  # "A"
            layers.append(nn.AvgPool2d(2))
        else:
            layers += _conv_bn_act(cin, v * width // 64, bits)
            cin = v * width // 64
    layers += [
        nn.Flatten(),
        nn.Linear(cin, hidden),
        LSQActivation(bits),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        LSQActivation(bits),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block; the residual current is added before the post-add quantizer."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, bits: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = LSQActivation(bits)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)
        self.act2 = LSQActivation(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.bn1(self.conv1(x)))
        out: torch.Tensor = self.act2(self.bn2(self.conv2(h)) + self.shortcut(x))
        return out


class Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1, 3x3, 1x1), residual added before the post-add quantizer."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, bits: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = LSQActivation(bits)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = LSQActivation(bits)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)
        self.act3 = LSQActivation(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.bn1(self.conv1(x)))
        h = self.act2(self.bn2(self.conv2(h)))
        out: torch.Tensor = self.act3(self.bn3(self.conv3(h)) + self.shortcut(x))
        return out


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """ResNet with LSQ activations. ``stem``: "cifar" (3x3 conv) or "imagenet" (7x7/2 conv, 3x3/2 avg-pool).

    base_width: channels of the stem and the first stage (the standard 64); stage i has base_width * 2^i.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, ...],
        num_classes: int,
        in_channels: int,
        bits: int,
        stem: str,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        _check_width(base_width, "ResNet")
        if stem == "cifar":
            self.stem = nn.Sequential(*_conv_bn_act(in_channels, base_width, bits))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, base_width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(base_width),
                LSQActivation(bits),
                nn.AvgPool2d(3, 2, 1),
            )
        stages = []
        cin = base_width
        for i, blocks in enumerate(layers):
            width = base_width * 2**i
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                stages.append(block(cin, width, stride, bits))
                cin = width * block.expansion
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))
        return out


def resnet18(num_classes: int = 10, in_channels: int = 3, bits: int = 2, width: int = 64) -> ResNet:
    """ResNet-18 for CIFAR (3x3 stem, no max-pool); ``width``: base width (64 standard; 16 is ~1/16 of the FLOPs)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, bits, stem="cifar", base_width=width)


def resnet50(num_classes: int = 1000, in_channels: int = 3, bits: int = 2, width: int = 64) -> ResNet:
    """ResNet-50 for ImageNet (7x7/2 stem, max-pool replaced by 3x3/2 average pooling); ``width``: base width."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, bits, stem="imagenet", base_width=width)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": small_cnn,
    "vgg16": vgg16,
    "resnet18": resnet18,
    "resnet50": resnet50,
}


def build_model(architecture: str, **kwargs: Any) -> nn.Module:
    """Build a model by name (see ARCHITECTURES) with keyword arguments such as num_classes, bits."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](**kwargs)
