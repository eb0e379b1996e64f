"""Denoiser networks and the sigma-conditioned score network, with their own registry.

Two kinds of network live here, told apart by the class attribute ``kind``:

* ``"denoiser"`` (``dncnn``): ``D(y) -> x_hat``, ``[B, C, H, W] -> [B, C, H, W]``, trained for one
  noise and one sigma; it plugs into :class:`~smoothcert.denoise.Denoised` directly.
* ``"score"`` (``scorenet``): ``s(y, sigma) -> [B, C, H, W]``, an estimate of the score
  ``grad_y log p_sigma(y)`` of the data convolved with N(0, sigma^2 I), for every sigma of a
  ladder; it denoises through :class:`~smoothcert.denoise.OneStepDenoiser` or
  :class:`~smoothcert.denoise.MultiStepDenoiser`.

They are *not* in :data:`smoothcert.models.MODELS`: entries there map images to ``num_classes``
logits behind a ``Normalize`` layer, and the model registry's shared tests and checkpoint metadata
(``num_classes``, ``mean``/``std``) rely on that. A denoiser has neither, so it has its registry
(:data:`DENOISERS`) and checkpoints (:mod:`smoothcert.denoise.checkpoint`) of the same design.

Inputs are images in [0, 1] plus noise (so any real values); nothing normalizes them outside the
network.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int
from ..errors import InputError
from ..noise import Noise
from ..registry import Registry

__all__ = [
    "DENOISERS",
    "DnCNN",
    "ScoreNet",
    "as_sigma",
    "build_denoiser",
    "denoiser_kind",
    "list_denoisers",
    "record_training",
    "register_denoiser",
]

DENOISERS: Registry[nn.Module] = Registry("denoiser")
_KINDS: dict[str, str] = {}
KINDS = ("denoiser", "score")


def register_denoiser(name: str, *, kind: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a network factory under ``name``.

    ``kind`` is ``"denoiser"`` (the factory's module maps ``y -> x_hat`` of the same shape) or
    ``"score"`` (it maps ``(y, sigma) -> score``, ``sigma`` a float or ``[B]`` tensor). The
    factory is called with keyword-only ``in_channels`` and architecture keywords.
    """
    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    add = DENOISERS.register(name)

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        factory = add(factory)
        _KINDS[name.lower()] = kind
        return factory

    return decorator


def build_denoiser(name: str, *, in_channels: int, **arch_kwargs: Any) -> nn.Module:
    """The network registered as ``name`` for ``in_channels``-channel images."""
    return DENOISERS.create(name, in_channels=in_channels, **arch_kwargs)


def list_denoisers() -> list[str]:
    """Registered denoiser and score network names, sorted."""
    return DENOISERS.names()


def denoiser_kind(name: str) -> str:
    """``"denoiser"`` or ``"score"`` for the registered network ``name``."""
    DENOISERS.factory(name)  # the registry's "unknown denoiser ...; known: ..." error
    return _KINDS[name.lower()]


def record_training(
    net: nn.Module, *, noise: Noise | None = None, ladder: Sequence[float] | None = None
) -> None:
    """Deprecated, does nothing: it used to note ``net.noise`` / ``net.training_ladder`` on the
    network for the mismatch warnings. What a network was trained for is now passed explicitly:
    ``Denoised(f, D, trained_for=trained_noise(meta))`` and ``OneStepDenoiser`` /
    ``MultiStepDenoiser(..., training_ladder=meta.ladder)`` (:func:`~smoothcert.denoise.denoiser_for_noise`
    does both for a loaded checkpoint)."""
    warnings.warn(
        "record_training is deprecated and notes nothing on the network: pass trained_for= to Denoised "
        "and training_ladder= to OneStepDenoiser/MultiStepDenoiser instead",
        DeprecationWarning,
        stacklevel=2,
    )


def as_sigma(sigma: float | Tensor, like: Tensor) -> Tensor:
    """``sigma`` as a ``[B]`` tensor on ``like``'s device and dtype (``B = like.shape[0]``).

    Accepts a number, a 0-d or 1-element tensor (broadcast to every row), or ``[B]`` /
    ``[B, 1, 1, 1]`` per-row levels. A number must be positive; tensors are not inspected
    (that would cost a device synchronisation per call).
    """
    if not isinstance(sigma, Tensor) and not (float(sigma) > 0 and math.isfinite(float(sigma))):
        raise InputError(f"sigma must be positive and finite, got {sigma!r}")
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device).reshape(-1)
    b = like.shape[0]
    if s.numel() == 1:
        s = s.expand(b)
    elif s.numel() != b:
        raise InputError(f"sigma must be a number or hold one value per row ({b}), got {s.numel()} values")
    return s


def _positive(**values: int) -> None:
    for name, v in values.items():
        check_int(name, v, minimum=1)


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 where the width allows, else the largest divisor of 8 that divides it."""
    return math.gcd(8, channels)


class DnCNN(nn.Module):
    """DnCNN (Zhang et al. 2017, "Beyond a Gaussian denoiser"): residual learning of the noise.

    ``D(y) = y - R(y)`` with ``R`` = conv3x3(C->width)+ReLU, ``depth - 2`` x
    [conv3x3(width->width) (+BatchNorm) + ReLU], conv3x3(width->C). The published net has
    ``depth=17, width=64``; Salman et al. 2020 use it for denoised smoothing on CIFAR-10. The last
    convolution starts at zero, so an untrained net is the identity.

    Input ``[B, in_channels, H, W]`` (any H, W), output of the same shape; trained for one noise
    and sigma (its checkpoint's metadata records which; nothing is noted on the network).
    """

    kind: ClassVar[str] = "denoiser"

    def __init__(self, *, in_channels: int = 3, depth: int = 17, width: int = 64, batch_norm: bool = True) -> None:
        super().__init__()
        _positive(in_channels=in_channels, width=width)
        if not isinstance(depth, int) or depth < 2:
            raise InputError(f"DnCNN depth must be an integer >= 2, got {depth!r}")
        self.in_channels = in_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers.append(nn.Conv2d(width, width, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
        last = nn.Conv2d(width, in_channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.residual = nn.Sequential(*layers)

    def forward(self, y: Tensor) -> Tensor:
        if y.ndim != 4 or y.shape[1] != self.in_channels:
            raise InputError(f"DnCNN expects [B, {self.in_channels}, H, W], got {tuple(y.shape)}")
        return y - self.residual(y)


class _SigmaEmbedding(nn.Module):
    """log sigma -> sinusoidal features -> MLP (the noise-level embedding of score networks)."""

    def __init__(self, dim: int, frequencies: int = 16) -> None:
        super().__init__()
        # Fixed frequencies 1..2^(F/2) over log sigma: levels 1% apart in sigma stay distinguishable.
        self.register_buffer("freqs", torch.exp2(torch.linspace(0.0, frequencies / 2 - 1, frequencies // 2)),
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, sigma: Tensor) -> Tensor:
        angles = sigma.log()[:, None] * self.freqs.to(sigma.dtype)
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the sigma embedding added as a per-channel bias in between."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        out = self.conv1(F.silu(self.norm1(h)))
        out = out + self.emb(emb)[:, :, None, None]
        out = self.conv2(F.silu(self.norm2(out)))
        return self.skip(h) + out


class ScoreNet(nn.Module):
    """A small U-Net score network ``s(y, sigma)`` conditioned on the noise level.

    ``s(y, sigma) = N(c(sigma) (y - 1/2), log sigma) / sigma``, where ``N`` is a two-scale U-Net
    (widths ``width``, ``2 width``; residual GroupNorm blocks) whose blocks receive an embedding of
    ``log sigma`` (NCSN's conditioning, Song & Ermon 2019), and dividing by sigma follows NCSNv2
    (Song & Ermon 2020, Technique 3): the target ``-(y - x)/sigma^2 = -z/sigma`` then makes
    ``N`` predict ``-z``, of unit scale at every level. ``c(sigma) = 1/sqrt(1/4 + sigma^2)`` keeps
    the input at unit scale for every sigma (0.25 is the variance bound of data in [0, 1]). The
    output convolution starts at zero: an untrained net has score 0 (Tweedie: the identity).

    Input ``y`` ``[B, in_channels, H, W]`` (any H, W >= 1) and ``sigma`` (a number or ``[B]``),
    output ``[B, in_channels, H, W]``.
    """

    kind: ClassVar[str] = "score"

    def __init__(self, *, in_channels: int = 3, width: int = 32, emb_dim: int = 64) -> None:
        super().__init__()
        _positive(in_channels=in_channels, width=width, emb_dim=emb_dim)
        self.in_channels = in_channels
        w1, w2 = width, 2 * width
        self.embed = _SigmaEmbedding(emb_dim)
        self.conv_in = nn.Conv2d(in_channels, w1, 3, padding=1)
        self.enc1 = _ResBlock(w1, w1, emb_dim)
        self.down1 = nn.Conv2d(w1, w2, 3, stride=2, padding=1)
        self.enc2 = _ResBlock(w2, w2, emb_dim)
        self.down2 = nn.Conv2d(w2, w2, 3, stride=2, padding=1)
        self.mid = _ResBlock(w2, w2, emb_dim)
        self.dec2 = _ResBlock(2 * w2, w2, emb_dim)
        self.dec1 = _ResBlock(w2 + w1, w1, emb_dim)
        self.norm_out = nn.GroupNorm(_groups(w1), w1)
        self.conv_out = nn.Conv2d(w1, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, y: Tensor, sigma: float | Tensor) -> Tensor:
        if y.ndim != 4 or y.shape[1] != self.in_channels:
            raise InputError(f"ScoreNet expects [B, {self.in_channels}, H, W], got {tuple(y.shape)}")
        s = as_sigma(sigma, y)
        emb = self.embed(s)
        scale = (0.25 + s * s).rsqrt()[:, None, None, None]
        h1 = self.enc1(self.conv_in((y - 0.5) * scale), emb)
        h2 = self.enc2(self.down1(h1), emb)
        h = self.mid(self.down2(h2), emb)
        h = F.interpolate(h, size=h2.shape[-2:], mode="nearest")
        h = self.dec2(torch.cat([h, h2], dim=1), emb)
        h = F.interpolate(h, size=h1.shape[-2:], mode="nearest")
        h = self.dec1(torch.cat([h, h1], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h))) / s[:, None, None, None]


register_denoiser("dncnn", kind="denoiser")(DnCNN)
register_denoiser("scorenet", kind="score")(ScoreNet)
