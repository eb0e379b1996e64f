"""U-Net for image-to-image regression (×2 super-resolution in the thesis on smoothing for inverse
problems), and its checkpoint with the metadata needed to rebuild it.

The thesis's network: feature channels (8, 16, 32, 64, 128), input = the low-resolution image brought
back to full size, output = the full-size estimate (160 × 160 crops). Here each level is two
3×3 conv–BatchNorm–ReLU blocks; down by 2×2 max-pooling, up by a 2×2 transposed convolution and
concatenation with the skip; a 1×1 convolution gives the output. ``residual=True`` adds the input to the output (the net learns
the missing detail); it is off by default: a residual net passes the smoothing noise straight to its
output (f(y + δ) ≈ y + δ + ...), so a smoothed mean of n draws keeps noise of variance σ²/n and the
noise-augmented net must learn to cancel δ exactly, while a plain U-Net learns to map noisy inputs to
clean images (measured: BENCHMARKS.md, super-resolution).
Inputs of any size are reflect-padded to a multiple of 2^(levels − 1) and the output cropped back,
so odd sizes work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints import CheckpointKind, MetaRecord
from ..errors import InputError, MissingFileError

__all__ = ["THESIS_CHANNELS", "UNET_CHECKPOINT", "UNet", "UNetMeta", "load_unet", "save_unet"]

#: Feature channels per level of the thesis's U-Net.
THESIS_CHANNELS = (8, 16, 32, 64, 128)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """``[B, in_channels, H, W]`` in [0, 1] -> ``[B, out_channels, H, W]`` (any H, W >= 1).

    Args:
        channels: feature channels per level (default the thesis's 8/16/32/64/128).
        in_channels, out_channels: image channels (3 for RGB).
        residual: add the input to the output (needs in_channels == out_channels); off by default.
            The output layer then starts at zero, so the untrained net is the identity.
    """

    def __init__(
        self,
        *,
        channels: Sequence[int] = THESIS_CHANNELS,
        in_channels: int = 3,
        out_channels: int = 3,
        residual: bool = False,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 1 or any(c < 1 for c in channels):
            raise InputError(f"channels must be positive integers, got {channels}")
        if residual and in_channels != out_channels:
            raise InputError("a residual U-Net needs in_channels == out_channels")
        self.channels, self.in_channels, self.out_channels, self.residual = channels, in_channels, out_channels, residual
        self.down = nn.ModuleList()
        cin = in_channels
        for c in channels:
            self.down.append(_block(cin, c))
            cin = c
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c_hi, c_lo in zip(reversed(channels[:-1]), reversed(channels[1:]), strict=True):
            self.up.append(nn.ConvTranspose2d(c_lo, c_hi, 2, stride=2))
            self.merge.append(_block(2 * c_hi, c_hi))
        self.head = nn.Conv2d(channels[0], out_channels, 1)
        if residual:
            # Start as the identity, i.e. at the bilinear input: the net then only learns the missing
            # detail and is never worse than its input early in training (with a random head, a
            # residual net started below bilinear and stayed there for 200 steps: BENCHMARKS.md).
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def config(self) -> dict[str, Any]:
        """The keywords that rebuild this architecture: ``UNet(**net.config())``."""
        return {"channels": list(self.channels), "in_channels": self.in_channels,
                "out_channels": self.out_channels, "residual": self.residual}

    def forward(self, y: Tensor) -> Tensor:
        if y.ndim != 4 or y.shape[1] != self.in_channels:
            raise InputError(f"the U-Net takes [B, {self.in_channels}, H, W] images, got {tuple(y.shape)}")
        h, w = y.shape[-2:]
        m = 2 ** (len(self.channels) - 1)
        ph, pw = (-h) % m, (-w) % m
        # Reflect padding needs pad < size; replicate covers tiny images.
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(y, (0, pw, 0, ph), mode=mode) if ph or pw else y
        x = x - 0.5  # centre the [0, 1] inputs
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        out = self.head(x)[..., :h, :w]
        return out + y if self.residual else out


@dataclass(kw_only=True)
class UNetMeta(MetaRecord):
    """What rebuilds a U-Net and says how it was trained: ``arch_kwargs`` = :meth:`UNet.config`,
    ``training`` = the training settings (:class:`~smoothcert.train.superres.SRTrainConfig` as a
    dict), ``epoch`` = finished epochs of the training loop, ``info`` = provenance (data folders,
    initial checkpoint, a run's name)."""

    arch: str = "unet"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_names("arch")
        self._check_counts("epoch", minimum=0)
        self._check_dicts("arch_kwargs", "training", "info")
        if self.arch != "unet":
            raise InputError(f"UNetMeta.arch must be 'unet', got {self.arch!r}")


def _build(meta: UNetMeta) -> UNet:
    try:
        return UNet(**meta.arch_kwargs)
    except TypeError as err:
        raise InputError(f"cannot build a U-Net with arch_kwargs={meta.arch_kwargs}: {err}") from None


#: The U-Net checkpoint format: the generic core of :mod:`smoothcert.checkpoints` with :class:`UNetMeta`
#: (so the training loop's resume state, atomic writes and format checks are the classifiers').
UNET_CHECKPOINT: CheckpointKind[UNetMeta] = CheckpointKind(
    label="U-Net checkpoint",
    format="smoothcert-unet",
    version=1,
    meta_type=UNetMeta,
    build=_build,
    loader="smoothcert.models.unet.load_unet",
)


def save_unet(
    path: str | os.PathLike[str],
    model: UNet,
    *,
    training: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and architecture with its ``training`` settings and ``info``
    (JSON-able provenance), atomically. Raises ``CheckpointError`` if it cannot be written."""
    meta = UNetMeta(arch_kwargs=model.config(), training=dict(training or {}), info=dict(info or {}))
    return UNET_CHECKPOINT.save(path, model, meta=meta)


def load_unet(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> tuple[UNet, UNetMeta]:
    """``(model in eval mode, meta)`` from a U-Net checkpoint (:func:`save_unet` or the training
    loop's); a file of another kind, or without the architecture record, is refused (never guessed)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no U-Net checkpoint at {path}")
    model, meta = UNET_CHECKPOINT.load(path, map_location=map_location)
    return model, meta  # type: ignore[return-value]
