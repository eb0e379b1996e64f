"""Per-channel input normalization as a layer, so that noise is added in [0,1] pixel space.

Randomized smoothing adds noise to the input the user hands in; if the network expects
standardized inputs, the standardization must happen *after* the noise, i.e. inside the
model. Keeping it as the first layer also puts its constants into the state dict, where a
checkpoint can check them against its metadata.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InputError

__all__ = ["Normalize"]


class Normalize(nn.Module):
    """``(x - mean) / std`` channel-wise.

    Input ``[B, C, H, W]`` (or a single ``[C, H, W]``; the channel axis is ``-3``), output of
    the same shape. ``mean`` and ``std`` are persistent buffers of shape ``[C, 1, 1]``: they
    follow ``.to(device/dtype)`` and are part of ``state_dict()``. The arithmetic runs in the
    input's dtype (the buffers are cast to it), so the layer never silently promotes a bf16 or
    fp16 input to fp32.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_values = [float(v) for v in mean]
        std_values = [float(v) for v in std]
        if len(mean_values) == 0:
            raise InputError("Normalize needs at least one channel; got an empty mean")
        if len(mean_values) != len(std_values):
            raise InputError(
                f"Normalize: mean has {len(mean_values)} channels but std has {len(std_values)}"
            )
        if not all(math.isfinite(v) for v in mean_values):
            raise InputError(f"Normalize: mean must be finite, got {mean_values}")
        if not all(math.isfinite(v) and v > 0 for v in std_values):
            raise InputError(f"Normalize: std must be finite and > 0, got {std_values}")
        self.register_buffer("mean", torch.tensor(mean_values, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std_values, dtype=torch.float32).view(-1, 1, 1))

    @property
    def num_channels(self) -> int:
        return self.mean.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[-3] != self.num_channels:
            raise InputError(
                f"Normalize expects [B, {self.num_channels}, H, W] (or [{self.num_channels}, H, W]) "
                f"inputs; got shape {list(x.shape)}"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        if self.mean.is_meta:
            return f"channels={self.num_channels}"
        mean = ", ".join(f"{v:.4g}" for v in self.mean.flatten().tolist())
        std = ", ".join(f"{v:.4g}" for v in self.std.flatten().tolist())
        return f"mean=({mean}), std=({std})"
