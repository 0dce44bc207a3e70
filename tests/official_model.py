"""A stand-in for the official Dynamic Confidence code's CIFAR-10 ResNet-18 (its module names and
layers, written here from the description in its repository), for import tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LsqActivation(nn.Module):
    """round(hardtanh(x / scale, 0, 2^constraint - 1)) * scale with torch.round (half to even).

    ``half_up = True`` (not in the official code) rounds with floor(v + 0.5) instead, as dcsim does.
    """

    def __init__(self, constraint: int, scale: float = 1.0) -> None:
        super().__init__()
        self.constraint = constraint
        self.scale = nn.Parameter(torch.ones(1) * scale)
        self.half_up = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = F.hardtanh(x / self.scale, 0, float(2**self.constraint - 1))
        return (torch.floor(v + 0.5) if self.half_up else torch.round(v)) * self.scale


class BasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, downsample: bool, bits: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.activation1 = LsqActivation(bits)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.activation2 = LsqActivation(bits)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, planes, 1, stride, 0, bias=False), nn.BatchNorm2d(planes))
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.activation1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.activation2(out + residual)


class OfficialResNet18(nn.Module):
    """forward(x) is the official ANN evaluation (mode 0) without the logit quantizer; ``ann_eval``
    applies it (``activation2`` on the logits) as the official code does."""

    def __init__(self, bits: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.activation1 = LsqActivation(bits)
        cin = 64
        for i, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            blocks = [
                BasicBlock(cin, planes, stride, stride != 1 or cin != planes, bits),
                BasicBlock(planes, planes, 1, False, bits),
            ]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = planes
        self.fc = nn.Linear(512, num_classes)
        self.activation2 = LsqActivation(bits, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation1(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(F.avg_pool2d(out, 4).view(out.size(0), -1))

    def ann_eval(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation2(self(x))


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random batch-norm statistics and affine parameters, random LSQ scales in [0.05, 0.5]; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, LsqActivation):
                m.scale.copy_(torch.rand(1, generator=g) * 0.45 + 0.05)
    return model.eval()
