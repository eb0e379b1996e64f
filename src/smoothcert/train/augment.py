"""Data augmentation on batches, in torch only: random crop with zero padding + horizontal flip.

This is the standard CIFAR augmentation (He et al. 2016, Sec. 4.2: "4 pixels are padded on each
side, and a 32x32 crop is randomly sampled from the padded image or its horizontal flip"), which
Cohen et al. 2019 used for their CIFAR-10 base classifiers, applied before the Gaussian noise.
It runs on whole batches on the batch's device, one gather per batch, with every draw taken
from an explicit generator, so a training run is reproducible and resumable.

:func:`random_crop_flip` is the algorithm; :class:`RandomCropFlip` holds its settings and is
what :func:`smoothcert.train.train` takes as ``augment=`` (its :meth:`~RandomCropFlip.hparams`
go into the checkpoint's training metadata).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..checks import check_bool, check_int
from ..errors import InputError
from ..rng import make_generator

__all__ = ["RandomCropFlip", "augment_record", "random_crop_flip"]


def random_crop_flip(
    x: Tensor, *, padding: int = 4, flip: bool = True, generator: int | torch.Generator | None = None
) -> Tensor:
    """Per image: pad with ``padding`` zero pixels on every side, take a random ``H x W`` crop,
    and mirror it left-right with probability 1/2 (if ``flip``).

    Args:
        x: images ``[B, C, H, W]`` (any dtype, any device).
        padding: pixels of zeros added on each side; the crop offset is uniform on
            ``{0, ..., 2 * padding}`` in each direction, independently per image.
        flip: mirror each image independently with probability 1/2.
        generator: source of the offsets and flips (drawn on the generator's device, then moved
            to ``x``'s); an int seed makes a generator on ``x``'s device; ``None`` uses torch's
            global generator.
    Returns:
        ``[B, C, H, W]``, same dtype and device as ``x``; every pixel is a pixel of the same
        image and channel of ``x`` or a padding zero. ``padding=0, flip=False`` returns ``x``.
    """
    if x.dim() != 4:
        raise InputError(f"random_crop_flip expects images [B, C, H, W], got shape {list(x.shape)}")
    check_int("padding", padding, minimum=0)
    check_bool("flip", flip)
    if padding == 0 and not flip:
        return x
    generator = make_generator(generator, x.device)
    b, c, h, w = x.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    # Three draws per image: row offset, column offset, flip bit.
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(x.device)
    if flip:
        mirror = torch.randint(0, 2, (b,), generator=generator, device=gen_device).to(x.device).bool()
    else:
        mirror = torch.zeros(b, dtype=torch.bool, device=x.device)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # [B, H] rows of the padded image
    # A mirrored crop reads the crop window's columns right to left.
    cols = dx[:, None] + torch.where(mirror[:, None], w - 1 - ar_w, ar_w)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


class RandomCropFlip:
    """Settings of :func:`random_crop_flip`; call it as ``aug(x, generator=g)``.

    Defaults are the CIFAR recipe (4-pixel padding, horizontal flip) of He et al. 2016 and
    Cohen et al. 2019.
    """

    name = "crop-flip"

    def __init__(self, *, padding: int = 4, flip: bool = True) -> None:
        self.padding = check_int("padding", padding, minimum=0)
        self.flip = check_bool("flip", flip)

    def __call__(self, x: Tensor, *, generator: int | torch.Generator | None = None) -> Tensor:
        return random_crop_flip(x, padding=self.padding, flip=self.flip, generator=generator)

    def hparams(self) -> dict[str, Any]:
        """The settings, as stored in checkpoints."""
        return {"padding": self.padding, "flip": self.flip}

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"


def augment_record(augment: Any) -> dict[str, Any] | str:
    """How ``augment`` is described in a checkpoint's training metadata: ``{"name": ..., **hparams}``
    for objects with ``name`` and ``hparams()`` (such as :class:`RandomCropFlip`), else the
    callable's qualified name (so resuming with a different augmentation is noticed)."""
    hparams = getattr(augment, "hparams", None)
    if callable(hparams):
        return {"name": getattr(augment, "name", type(augment).__name__), **hparams()}
    return getattr(augment, "__qualname__", type(augment).__qualname__)
