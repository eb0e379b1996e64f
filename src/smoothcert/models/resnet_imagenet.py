"""ImageNet ResNet-50 (He et al. 2016, "Deep Residual Learning", Table 1, 50-layer column).

A 7x7/2 conv with 64 filters and a 3x3/2 max-pool, then four stages of 3, 4, 6 and 3
bottleneck blocks (1x1 reduce, 3x3, 1x1 expand by 4; widths 64, 128, 256, 512) on 56, 28, 14 and
7 pixel maps, global average pooling and one linear layer: 25,557,032 parameters for 1000
classes and about 4.1 GMACs (8.2 GFLOPs, conv and linear) per 224x224 image. It is the base
classifier Cohen et al. 2019 smoothed on ImageNet.

The downsampling stride of a stage's first block sits on its 3x3 conv (the widely used
"ResNet v1.5" placement; He et al. put it on the first 1x1 conv). The parameter count is the same
either way. Parameter names follow the common layout (``conv1``, ``bn1``, ``layer1``..``layer4``
with blocks ``conv1..3`` / ``bn1..3`` / ``downsample.{0,1}``, ``fc``), so a ResNet-50 state dict in
that layout loads with ``load_state_dict``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["Bottleneck", "ImageNetResNet", "resnet50"]


class Bottleneck(nn.Module):
    """``relu(bn(conv1x1(relu(bn(conv3x3(relu(bn(conv1x1(x))))))) + shortcut(x))``.

    Input ``[B, in_planes, H, W]``, output ``[B, 4 * width, ceil(H/stride), ceil(W/stride)]``.
    The shortcut is the identity, or a strided 1x1 conv + batchnorm where the shape changes
    (He et al.'s option B).
    """

    expansion = 4

    def __init__(self, in_planes: int, width: int, *, stride: int = 1) -> None:
        super().__init__()
        out_planes = width * self.expansion
        self.conv1 = nn.Conv2d(in_planes, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity, inplace=True)


class ImageNetResNet(nn.Module):
    """Bottleneck ResNet for ImageNet-sized images.

    Input ``[B, in_channels, H, W]`` (224x224 for ImageNet; global pooling makes any size >= 32
    valid, with 32x downsampling), output logits ``[B, num_classes]``.

    Args:
        blocks: bottleneck blocks per stage, ``(3, 4, 6, 3)`` for ResNet-50.
        zero_init_residual: start each block's last batchnorm scale at 0, so that every block is
            the identity at initialisation (Goyal et al. 2017); off by default, as in He et al.
    """

    def __init__(
        self,
        *,
        blocks: tuple[int, int, int, int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in blocks):
            raise InputError(f"blocks must be four positive integers (3, 4, 6, 3 for ResNet-50), got {blocks!r}")
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        self.blocks = tuple(blocks)
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = []
        in_planes = 64
        for width, count, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)):
            stage = []
            for i in range(count):
                stage.append(Bottleneck(in_planes, width, stride=stride if i == 0 else 1))
                in_planes = width * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015 initialization, as in the ResNet paper.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise InputError(f"ImageNetResNet expects [B, C, H, W] inputs, got shape {list(x.shape)}")
        out = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


def resnet50(*, num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False) -> ImageNetResNet:
    """ImageNet ResNet-50: bottleneck stages (3, 4, 6, 3), 224x224 inputs, the ImageNet base
    classifier of Cohen et al. 2019 (25,557,032 parameters for 1000 classes)."""
    return ImageNetResNet(
        blocks=(3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels, zero_init_residual=zero_init_residual
    )
