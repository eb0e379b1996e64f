"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning", section 4.2).

Depth ``6n + 2``: a 3x3 conv with 16 filters, then three stages of ``n`` basic blocks
(two 3x3 conv + batchnorm each) with 16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps
(the first block of stages 2 and 3 has stride 2), global average pooling and one linear
layer. He et al. report 0.27M / 0.85M / 1.7M parameters for depths 20 / 56 / 110.
ResNet-110 is the base classifier Cohen et al. 2019 smoothed on CIFAR-10.

Where a block changes shape, its shortcut is either a strided 1x1 conv + batchnorm
(``shortcut="projection"``, He's option B, the choice of the ResNet-110 used by Cohen et al.)
or parameter-free subsampling with zero-padded channels (``shortcut="padding"``, option A,
the one in He's CIFAR experiments).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet56", "resnet110"]

Shortcut = Literal["projection", "padding"]


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` with 3x3 convolutions.

    Input ``[B, in_planes, H, W]``, output ``[B, planes, ceil(H/stride), ceil(W/stride)]``.
    """

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1, shortcut: Shortcut = "projection") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad_channels = 0
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            if shortcut == "projection":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
            elif planes >= in_planes:
                self.pad_channels = planes - in_planes
            else:
                raise InputError("shortcut='padding' cannot reduce the number of channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            identity = self.shortcut(x)
        elif self.stride != 1 or self.pad_channels:
            # Option A: keep every stride-th pixel, append zero channels (no parameters).
            identity = x[:, :, :: self.stride, :: self.stride]
            half = self.pad_channels // 2
            identity = F.pad(identity, (0, 0, 0, 0, half, self.pad_channels - half))
        else:
            identity = x
        return F.relu(out + identity, inplace=True)


class CifarResNet(nn.Module):
    """ResNet of depth ``6n + 2`` for small images.

    Input ``[B, in_channels, H, W]`` (32x32 for CIFAR; global pooling makes any size >= 4 valid),
    output logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        *,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: Shortcut = "projection",
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise InputError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 56, 110, ...), got {depth!r}")
        if shortcut not in ("projection", "padding"):
            raise InputError(f"shortcut must be 'projection' or 'padding', got {shortcut!r}")
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride=stride if i == 0 else 1, shortcut=shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015 initialization, as in the ResNet paper.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise InputError(f"CifarResNet expects [B, C, H, W] inputs, got shape {list(x.shape)}")
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


def resnet20(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "projection") -> CifarResNet:
    """CIFAR ResNet-20 (n = 3)."""
    return CifarResNet(depth=20, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


def resnet56(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "projection") -> CifarResNet:
    """CIFAR ResNet-56 (n = 9)."""
    return CifarResNet(depth=56, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


def resnet110(*, num_classes: int = 10, in_channels: int = 3, shortcut: Shortcut = "projection") -> CifarResNet:
    """CIFAR ResNet-110 (n = 18), the CIFAR-10 base classifier of Cohen et al. 2019."""
    return CifarResNet(depth=110, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)
