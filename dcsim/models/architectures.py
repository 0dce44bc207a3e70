"""CNNs with LSQ-quantized hidden activations and a full-precision output layer.

All models use average pooling (no max-pool) so they convert to spiking networks:
``small_cnn`` (fast, for tests and demos), ``vgg16`` (32x32 inputs; its fully connected
hidden layers are quantized too), ``resnet18`` (CIFAR: 3x3 stem, no max-pool) and
``resnet50`` (ImageNet: the 3x3/2 max-pool replaced by average pooling) and ``whitened_cnn``
(a fast CIFAR-10 trainer's shape: patch-whitening first conv, three conv groups).
Inputs are float32 [N, C, H, W]; outputs are logits float32 [N, num_classes].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int
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
    check_int(width, f"{what}: width")


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


class WhitenedCNN(nn.Module):
    """A fast CIFAR trainer's network made convertible: a fixed 2x2 patch-whitening conv, then conv groups.

    Designed after the published fast CIFAR-10 trainers (a whitening first layer initialised from
    the training images' patch covariance, three groups of two 3x3 convs, batch norm), with LSQ
    activations as the only non-linearity and average pooling, so every layer converts:

    ``whiten`` (2x2, no padding, 2 * in_channels * 4 filters: each whitened patch direction and its
    negation, so the rectifying quantizer keeps both signs; bias) -> LSQ, then per group of width
    c: conv3x3 -> BN -> LSQ -> 2x2 average pool -> conv3x3 -> BN -> LSQ; global average pooling,
    linear. ``widths``: the three groups' channels ((64, 256, 256) as airbench94).
    Inputs float32 [N, C, 32, 32] (normalized); 32 -> 31 (whitening) -> 15 -> 7 -> 3 pixels.
    The whitening weights are frozen (``requires_grad`` False); :func:`init_whitening` sets them
    (training does so from the training split) and marks the buffer ``whitening_set``.

    ``quantize_whitening=False`` (the ``whitened_cnn_analog`` architecture): no quantizer after the
    whitening, which then has in_channels * 4 filters (the directions only; the first conv takes
    both signs) and no bias. The first conv sees the whitened image at full precision, as the
    first layer of most low-bit networks does; after conversion the whitening and the first conv
    are static (computed once per sample from the analog input) and the first spiking layer is the
    first conv's neuron.
    """

    whitening_set: torch.Tensor  # buffer: the whitening filters have been computed from data

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        bits: int = 2,
        widths: tuple[int, ...] = (64, 256, 256),
        quantize_whitening: bool = True,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if not widths:
            raise ValueError("whitened_cnn: widths must name at least one group")
        for w in widths:
            _check_width(w, "whitened_cnn")
        patches = (2 if quantize_whitening else 1) * in_channels * 4
        self.whiten = nn.Conv2d(in_channels, patches, 2, bias=quantize_whitening)
        self.whiten.weight.requires_grad_(False)
        self.register_buffer("whitening_set", torch.tensor(False))
        self.act0: nn.Module = LSQActivation(bits) if quantize_whitening else nn.Identity()
        layers: list[nn.Module] = []
        cin = patches
        for c in widths:
            layers += [*_conv_bn_act(cin, c, bits), nn.AvgPool2d(2), *_conv_bn_act(c, c, bits)]
            cin = c
        self.groups = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # weights saved without the flag (the first whitened_cnn checkpoints) carry trained filters
        state_dict.setdefault(prefix + "whitening_set", torch.tensor(True))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.flatten(self.pool(self.groups(self.act0(self.whiten(x))))))
        return out


@torch.no_grad()
def init_whitening(model: nn.Module, images: torch.Tensor, eps: float = 5e-4, max_images: int = 5000) -> bool:
    """Set ``model.whiten`` (if it has one) from the patch covariance of ``images``; True if set.

    images: float32 [N, C, H, W], normalized as the model sees them: the **training** split only
    (the first ``max_images``). The filters are the eigenvectors V of the covariance of all 2x2
    patches scaled by 1/sqrt(eigenvalue + eps), stacked with their negations ([V; -V]) where the
    layer has twice as many filters as patch dimensions (a quantizer follows it), V alone otherwise;
    the bias (if any) is zeroed. Deterministic (no randomness).
    """
    whiten = getattr(model, "whiten", None)
    if not isinstance(whiten, nn.Conv2d):
        return False
    if images.ndim != 4 or images.shape[1] != whiten.in_channels:
        raise ValueError(f"init_whitening: images must be [N, {whiten.in_channels}, H, W], got {tuple(images.shape)}")
    x = images[:max_images].float().to(whiten.weight.device)
    k = whiten.kernel_size[0]
    patches = F.unfold(x, k).transpose(1, 2).reshape(-1, whiten.in_channels * k * k).double()
    patches = patches - patches.mean(0)
    cov = patches.T @ patches / patches.shape[0]
    eigval, eigvec = torch.linalg.eigh(cov)
    filters = (eigvec.T / torch.sqrt(eigval.clamp_min(0) + eps)[:, None]).float()
    filters = filters.reshape(-1, whiten.in_channels, k, k)
    whiten.weight.copy_(torch.cat([filters, -filters]) if whiten.out_channels == 2 * filters.shape[0] else filters)
    if whiten.bias is not None:
        whiten.bias.zero_()
    flag = getattr(model, "whitening_set", None)
    if isinstance(flag, torch.Tensor):
        flag.fill_(True)
    return True


def whitened_cnn(num_classes: int = 10, in_channels: int = 3, bits: int = 2, width: int = 64) -> WhitenedCNN:
    """:class:`WhitenedCNN` with groups (width, 4 * width, 4 * width): width 64 is airbench94's (64, 256, 256)."""
    _check_width(width, "whitened_cnn")
    return WhitenedCNN(num_classes, in_channels, bits, (width, 4 * width, 4 * width))


def whitened_cnn_analog(num_classes: int = 10, in_channels: int = 3, bits: int = 2, width: int = 64) -> WhitenedCNN:
    """:func:`whitened_cnn` with no quantizer after the whitening: the first conv sees the whitened image
    at full precision (``quantize_whitening=False``)."""
    _check_width(width, "whitened_cnn_analog")
    return WhitenedCNN(num_classes, in_channels, bits, (width, 4 * width, 4 * width), quantize_whitening=False)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": small_cnn,
    "vgg16": vgg16,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "whitened_cnn": whitened_cnn,
    "whitened_cnn_analog": whitened_cnn_analog,
}


def build_model(architecture: str, **kwargs: Any) -> nn.Module:
    """Build a model by name (see ARCHITECTURES) with keyword arguments such as num_classes, bits."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](**kwargs)
