"""Data for ×2 super-resolution: photo folders, patch crops and the bilinear degradation.

A pair is (y, x): x an RGB image in [0, 1] ``[3, H, W]``, y = :func:`degrade` (x), the image
downsampled by bilinear interpolation (factor 2, antialiased) and brought back to full size by
bilinear interpolation, as in the thesis ("generate low resolution images with bilinear
downsampling"; input and output 160 × 160). Sources: any folder of images (:func:`load_folder`:
``../shared/data/photos`` here, Mini-ImageNet for real users), scikit-image's bundled photos
(:func:`skimage_photos`, optional dependency), and the 20 ImageNet images of
``../shared/data/samples`` (:func:`load_folder` with ``pattern="imagenet_*"``) as a held-out test set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, MissingFileError

__all__ = [
    "IMAGE_SUFFIXES",
    "SKIMAGE_PHOTOS",
    "center_crop",
    "check_images",
    "degrade",
    "load_folder",
    "random_crops",
    "skimage_photos",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: scikit-image's bundled RGB photographs (no download needed; ``skimage.data.<name>()``).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "cat", "hubble_deep_field")


def check_images(x: Tensor, *, channels: int = 3, name: str = "images") -> Tensor:
    """``x`` as ``[B, channels, H, W]`` (a single ``[channels, H, W]`` is promoted), float, finite, in
    [0, 1]; a clear error otherwise (wrong channel count included)."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor in [0, 1]")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise InputError(f"{name} must be [B, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise InputError(f"{name} must have {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})")
    if not bool(((x >= 0) & (x <= 1)).all()):  # NaN fails both comparisons: one pass, one sync
        raise InputError(f"{name} must be finite with values in [0, 1]")
    return x


def degrade(x: Tensor, *, factor: int = 2) -> Tensor:
    """The low-resolution input at full size: bilinear (antialiased) downsampling by ``factor``, then
    bilinear upsampling back to ``x``'s size. ``x``: ``[B, 3, H, W]`` in [0, 1], H, W >= factor.
    Returns ``[B, 3, H, W]`` in [0, 1]."""
    x = check_images(x)
    if factor < 1 or int(factor) != factor:
        raise InputError(f"factor must be a positive integer, got {factor}")
    h, w = x.shape[-2:]
    if h < factor or w < factor:
        raise InputError(f"images of {h}x{w} are smaller than the downsampling factor {factor}")
    small = F.interpolate(x, size=(h // factor, w // factor), mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def _to_tensor(arr: np.ndarray) -> Tensor:
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float() / scale  # a writable copy


def image_paths(folder: str | os.PathLike[str], *, pattern: str = "*", limit: int | None = None) -> list[Path]:
    """The image files (:data:`IMAGE_SUFFIXES`) in ``folder`` matching ``pattern``, sorted by name, at
    most ``limit``: what :func:`load_folder` reads, in its order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"no image folder at {folder}")
    paths = sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise MissingFileError(f"no images matching {pattern!r} in {folder}")
    return paths[:limit]


def load_folder(folder: str | os.PathLike[str], *, pattern: str = "*", limit: int | None = None) -> list[Tensor]:
    """The images in ``folder`` matching ``pattern`` (sorted by name, :func:`image_paths`) as RGB
    ``[3, H, W]`` tensors in [0, 1] (grey images are repeated to three channels, alpha dropped)."""
    from PIL import Image  # Pillow: a core dependency, imported where images are read

    images = []
    for p in image_paths(folder, pattern=pattern, limit=limit):
        with Image.open(p) as im:
            images.append(_to_tensor(np.asarray(im.convert("RGB"))))
    return images


def skimage_photos(names: Sequence[str] = SKIMAGE_PHOTOS) -> list[Tensor]:
    """scikit-image's bundled photos ``names`` as ``[3, H, W]`` tensors in [0, 1] (needs the
    ``superres`` extra: ``pip install smoothcert[superres]``)."""
    try:
        from skimage import data as skdata
    except ImportError as e:  # optional dependency
        raise InputError("scikit-image is not installed: pip install 'smoothcert[superres]'") from e
    out = []
    for name in names:
        if name not in SKIMAGE_PHOTOS:
            raise InputError(f"unknown scikit-image photo {name!r}; choose from {', '.join(SKIMAGE_PHOTOS)}")
        out.append(_to_tensor(getattr(skdata, name)()))
    return out


def _check_crop(image: Tensor, size: int) -> None:
    if int(size) != size or size < 1:
        raise InputError(f"crop size must be a positive integer, got {size}")
    h, w = image.shape[-2:]
    if size > h or size > w:
        raise InputError(f"crop size {size} is larger than the image ({h}x{w})")


def center_crop(image: Tensor, size: int) -> Tensor:
    """The central ``size`` × ``size`` crop of a ``[C, H, W]`` image."""
    _check_crop(image, size)
    h, w = image.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top:top + size, left:left + size]


def random_crops(
    images: Sequence[Tensor], *, size: int, count: int, generator: torch.Generator, flip: bool = True
) -> Tensor:
    """``count`` random ``size`` × ``size`` crops ``[count, 3, size, size]``: image chosen uniformly,
    position uniformly, horizontal flip with probability 1/2 (``flip``); reproducible from ``generator``.
    Every image must be at least ``size`` on each side."""
    if not images:
        raise InputError("no images to crop from")
    for im in images:
        _check_crop(im, size)
    out = torch.empty(count, 3, size, size)
    which = torch.randint(len(images), (count,), generator=generator)
    for i, k in enumerate(which.tolist()):
        im = images[k]
        h, w = im.shape[-2:]
        top = int(torch.randint(h - size + 1, (1,), generator=generator))
        left = int(torch.randint(w - size + 1, (1,), generator=generator))
        crop = im[:, top:top + size, left:left + size]
        if flip and bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(-1)
        out[i] = crop
    return out
