"""1-Lipschitz (l2) layers and the ``sll-small`` backbone + head used by FaRS.

Every layer here is a :class:`LipschitzModule`: it states an upper bound on its l2 Lipschitz
constant, ``||m(x) - m(x')||_2 <= m.lipschitz_bound() * ||x - x'||_2`` for all inputs (per
sample, whatever the batch), proven for every value of its parameters — not measured. The bounds
hold in exact arithmetic; float32 rounding adds a relative error of order 1e-6 (the tests allow
1e-4).

SLL layers (Araujo, Havens, Delattre, Allauzen, Hu 2023, "A unified algebraic perspective on
Lipschitz neural networks", Theorem 3; eq. (1) of FaRS):

    phi(x) = x - 2 W T^-1 ReLU(W^T x + b),   T = diag_i( sum_j |W^T W|_ij q_j / q_i ),  q > 0,

is 1-Lipschitz for every W, b, q, because T >= W^T W (the scaled Gershgorin bound) and ReLU is
slope-restricted to [0, 1]. For a convolution ``W^T`` is the convolution and ``W`` its transpose;
``|W^T W|`` row sums are taken over the kernel's full (unpadded) self-correlation, which bounds the
zero-padded operator's Gram from above, so the theorem still applies.

The other pieces are isometries or norm-bounded maps: zero channel padding and space-to-depth
(permutations: ``||m(x) - m(x')|| = ||x - x'||``), flatten, sqrt(HW)-scaled global average pooling
(Cauchy–Schwarz), linear / 1x1-conv maps divided by their exact spectral norm when it exceeds 1.

:class:`BackboneHead` is how an architecture declares the FaRS split f = l o e: a Lipschitz
``backbone`` e (a :class:`LipschitzSequential`, so the bound is the product of its layers' proven
bounds) and an unconstrained ``head`` l. :mod:`smoothcert.lipschitz` certifies such models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoints import state_mismatch
from ..errors import ConfigMismatchError, InputError, InputTypeError
from .normalize import Normalize

__all__ = [
    "BackboneHead",
    "LipschitzFlatten",
    "LipschitzModule",
    "LipschitzSequential",
    "NormalizedConv1x1",
    "NormalizedLinear",
    "PadChannels",
    "SLLConv2d",
    "SLLLinear",
    "ScaledAvgPool2d",
    "SpaceToDepth",
    "Split",
    "sll_small",
    "sll_small_mlp",
    "spectral_norm",
    "split_model",
    "transfer_backbone",
]

# Added to T's diagonal before dividing: a zero column of W gives T_ii = 0 and a zero numerator,
# and a larger T only lowers the Lipschitz constant (T >= W^T W still holds).
_T_EPS = 1e-12


class LipschitzModule(nn.Module):
    """A module with a proven upper bound on its l2 Lipschitz constant (see the module docstring)."""

    def lipschitz_bound(self) -> float:
        """An upper bound L on ``||m(x) - m(x')||_2 / ||x - x'||_2`` over all inputs, per sample."""
        raise NotImplementedError(f"{type(self).__name__} must define lipschitz_bound()")

    def _weight_cached(self, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()`` (a function of this module's parameters only: T's diagonal, a normalized
        weight), reused while no gradient is recorded and the parameters are unchanged — every
        smoothing draw and every certified input would otherwise redo it. The key holds each
        parameter's storage, version counter (bumped by optimiser steps and ``load_state_dict``),
        device and dtype."""
        if torch.is_grad_enabled() or self.training:
            return compute()
        key = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in self.parameters())
        cached = self.__dict__.get("_cache")
        if cached is None or cached[0] != key:
            cached = (key, compute())
            self.__dict__["_cache"] = cached  # outside nn.Module's registries: not in state_dict
        return cached[1]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")


def _sll_scale(gram_abs: Tensor, log_q: Tensor) -> Tensor:
    """T's diagonal [I]: ``T_i = sum_j |W^T W|_ij q_j / q_i`` with q = exp(log_q)."""
    q = log_q.exp()
    return (gram_abs * (q[None, :] / q[:, None])).sum(dim=1) + _T_EPS


class SLLLinear(LipschitzModule):
    """Dense SLL layer: ``[B, features] -> [B, features]``, 1-Lipschitz in l2 (Araujo et al. 2023).

    ``W`` is ``[features, inner_features]``; ``inner_features`` may be larger or smaller than
    ``features`` (the residual keeps the width).
    """

    def __init__(self, features: int, inner_features: int) -> None:
        super().__init__()
        _check_positive(features=features, inner_features=inner_features)
        self.features, self.inner_features = features, inner_features
        self.weight = nn.Parameter(torch.empty(features, inner_features))
        nn.init.xavier_normal_(self.weight)
        self.bias = nn.Parameter(torch.zeros(inner_features))
        self.log_q = nn.Parameter(torch.zeros(inner_features))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise InputError(f"SLLLinear({self.features}) expects [B, {self.features}], got {list(x.shape)}")
        w = self.weight
        t = self._weight_cached(lambda: _sll_scale((w.T @ w).abs(), self.log_q))
        return x - 2 * (F.relu(x @ w + self.bias) / t) @ w.T

    def lipschitz_bound(self) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"features={self.features}, inner_features={self.inner_features}"


class SLLConv2d(LipschitzModule):
    """Convolutional SLL layer: ``[B, channels, H, W] -> [B, channels, H, W]``, 1-Lipschitz in l2.

    ``W^T x`` is a ``kernel_size`` convolution to ``inner_channels`` with "same" zero padding and
    ``W y`` its exact adjoint (the transposed convolution with the same padding).
    """

    def __init__(self, channels: int, inner_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        _check_positive(channels=channels, inner_channels=inner_channels, kernel_size=kernel_size)
        if kernel_size % 2 == 0:
            raise InputError(f"SLLConv2d needs an odd kernel_size (input and output shapes equal), got {kernel_size}")
        self.channels, self.inner_channels, self.kernel_size = channels, inner_channels, kernel_size
        self.weight = nn.Parameter(torch.empty(inner_channels, channels, kernel_size, kernel_size))
        nn.init.xavier_normal_(self.weight)
        self.bias = nn.Parameter(torch.zeros(inner_channels))
        self.log_q = nn.Parameter(torch.zeros(inner_channels))

    def scale(self) -> Tensor:
        """T's diagonal [inner_channels]: ``|W^T W|`` row sums from the kernel's full self-correlation
        ``[I, I, 2k-1, 2k-1]`` (every spatial offset at which two kernels overlap)."""
        k = self.weight
        gram = F.conv2d(k, k, padding=self.kernel_size - 1)
        return _sll_scale(gram.abs().sum(dim=(2, 3)), self.log_q)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise InputError(f"SLLConv2d({self.channels}) expects [B, {self.channels}, H, W], got {list(x.shape)}")
        pad = self.kernel_size // 2
        t = self._weight_cached(self.scale)
        inner = F.relu(F.conv2d(x, self.weight, self.bias, padding=pad)) / t[None, :, None, None]
        return x - 2 * F.conv_transpose2d(inner, self.weight, padding=pad)

    def lipschitz_bound(self) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inner_channels={self.inner_channels}, kernel_size={self.kernel_size}"


class PadChannels(LipschitzModule):
    """Zero-pads ``[B, in_channels, H, W]`` to ``out_channels`` channels: an isometry (the
    1-Lipschitz first layer that widens a 1- or 3-channel image for the SLL convolutions)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels)
        if out_channels < in_channels:
            raise InputError(f"PadChannels only widens: out_channels {out_channels} < in_channels {in_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"PadChannels expects [B, {self.in_channels}, H, W], got {list(x.shape)}")
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def lipschitz_bound(self) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}"


class SpaceToDepth(LipschitzModule):
    """Norm-preserving downsampling ``[B, C, H, W] -> [B, C f^2, H/f, W/f]`` (pixel unshuffle):
    a permutation of the coordinates, so distances are kept exactly. H and W must divide by f."""

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        _check_positive(factor=factor)
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise InputError(f"SpaceToDepth({self.factor}) needs [B, C, H, W] with H, W divisible by "
                             f"{self.factor}, got {list(x.shape)}")
        return F.pixel_unshuffle(x, self.factor)

    def lipschitz_bound(self) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class LipschitzFlatten(LipschitzModule):
    """``[B, ...] -> [B, D]``: an isometry."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def lipschitz_bound(self) -> float:
        return 1.0


class ScaledAvgPool2d(LipschitzModule):
    """Global average pooling times sqrt(H W): ``[B, C, H, W] -> [B, C]``, 1-Lipschitz in l2
    (|mean(a)| <= ||a||_2 / sqrt(HW) by Cauchy–Schwarz; plain averaging would be 1/sqrt(HW)-Lipschitz
    and shrink every margin by that factor)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise InputError(f"ScaledAvgPool2d expects [B, C, H, W], got {list(x.shape)}")
        return x.mean(dim=(2, 3)) * math.sqrt(x.shape[2] * x.shape[3])

    def lipschitz_bound(self) -> float:
        return 1.0


def spectral_norm(weight: Tensor) -> Tensor:
    """The exact spectral norm (largest singular value) of a matrix ``[m, n]``, as the square root of
    the largest eigenvalue of the smaller Gram matrix (an eigendecomposition of min(m, n) rows:
    a 128 x 3136 matrix takes ~2 ms where its SVD took ~700 ms on 2 CPU cores), computed in
    float64 so the bound does not depend on float32 rounding of the eigensolver."""
    w = weight.double()
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return torch.linalg.eigvalsh(gram)[-1].clamp_min(0).sqrt().to(weight.dtype)


def _spectral_cap(weight: Tensor) -> Tensor:
    """``weight / max(1, ||weight||_2)``."""
    return weight / spectral_norm(weight).clamp_min(1.0)


class NormalizedLinear(LipschitzModule):
    """``[B, in_features] -> [B, out_features]``, ``x W'^T + b`` with ``W' = W / max(1, ||W||_2)``
    (exact spectral norm, :func:`spectral_norm`, every call): 1-Lipschitz. The backbone's last, width-changing layer."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        _check_positive(in_features=in_features, out_features=out_features)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        weight = self._weight_cached(lambda: _spectral_cap(self.linear.weight))
        return F.linear(x, weight, self.linear.bias)

    def lipschitz_bound(self) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"{self.linear.in_features} -> {self.linear.out_features}"


class NormalizedConv1x1(LipschitzModule):
    """A 1x1 convolution ``[B, in_channels, H, W] -> [B, out_channels, H, W]`` whose channel matrix
    is divided by ``max(1, ||W||_2)``: per pixel a map of norm <= 1, hence 1-Lipschitz on the image
    (the squared distances of the pixels add up). A 1-Lipschitz channel change."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        w = self.conv.weight
        capped = self._weight_cached(lambda: _spectral_cap(w.flatten(1)).view_as(w))
        return F.conv2d(x, capped, self.conv.bias)

    def lipschitz_bound(self) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"{self.conv.in_channels} -> {self.conv.out_channels}"


class LipschitzSequential(LipschitzModule):
    """Layers applied in turn; every layer must be a :class:`LipschitzModule`, and the bound is the
    product of theirs (a layer without a proven bound is refused here, so a backbone cannot silently
    contain one)."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, LipschitzModule):
                raise InputTypeError(
                    f"layer {i} ({type(layer).__name__}) has no proven Lipschitz bound; a Lipschitz "
                    "backbone takes only LipschitzModule layers (SLLConv2d, SLLLinear, PadChannels, ...)"
                )
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def lipschitz_bound(self) -> float:
        bound = 1.0
        for layer in self.layers:
            bound *= float(layer.lipschitz_bound())  # type: ignore[operator]
        return bound


class BackboneHead(nn.Module):
    """f(x) = head(backbone(x)): the FaRS split, declared by the architecture.

    ``backbone`` e maps the network's input to features ``z`` ``[B, D]`` with the proven l2 bound
    :meth:`backbone_lipschitz`; ``head`` l maps ``[B, D]`` to logits ``[B, K]`` and is unconstrained
    (a ``nn.Linear`` gets the exact margin certificate, anything else feature-space smoothing).
    The bound is with respect to *this* module's input; a ``Normalize`` layer in front multiplies it
    by 1/min(std) (:func:`split_model` accounts for that).
    """

    def __init__(self, backbone: LipschitzModule, head: nn.Module) -> None:
        super().__init__()
        if not isinstance(backbone, LipschitzModule):
            raise InputTypeError(
                f"backbone must be a LipschitzModule (e.g. LipschitzSequential of SLL layers), got "
                f"{type(backbone).__name__}: the FaRS certificates need a proven Lipschitz bound"
            )
        if not isinstance(head, nn.Module):
            raise InputTypeError(f"head must be a torch.nn.Module, got {type(head).__name__}")
        self.backbone = backbone
        self.head = head

    def features(self, x: Tensor) -> Tensor:
        """z = e(x), ``[B, D]``."""
        return self.backbone(x)

    def backbone_lipschitz(self) -> float:
        """The proven upper bound on the backbone's l2 Lipschitz constant (1.0 for SLL backbones)."""
        return float(self.backbone.lipschitz_bound())

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


@dataclass(frozen=True)
class Split:
    """A model cut into ``features`` (x in [0,1] -> z ``[B, D]``, Normalize included) and ``head``
    (z -> logits ``[B, K]``), with ``lipschitz``: a proven upper bound on the l2 Lipschitz constant
    of ``features`` as a function of x."""

    features: nn.Module
    head: nn.Module
    lipschitz: float


def _unwrap(model: nn.Module, role: str = "") -> tuple[Normalize | None, BackboneHead]:
    """``(Normalize or None, BackboneHead)`` of ``model`` (a BackboneHead, or Sequential(Normalize,
    BackboneHead)); any other model is refused with an :class:`InputTypeError`."""
    normalize: Normalize | None = None
    net = model
    if isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[0], Normalize):
        normalize, net = model[0], model[1]
    if not isinstance(net, BackboneHead):
        raise InputTypeError(
            f"{role}{type(net).__name__} declares no Lipschitz backbone: the FaRS certificates need a "
            "smoothcert.models.sll.BackboneHead (e.g. build_model('sll-small', ...)), optionally behind "
            "a Normalize layer; a Lipschitz bound is never guessed for an arbitrary network"
        )
    return normalize, net


def split_model(model: nn.Module) -> Split:
    """The FaRS split of ``model``: a :class:`BackboneHead`, or ``nn.Sequential(Normalize, BackboneHead)``
    as built by :func:`smoothcert.models.build_model` / loaded from a checkpoint.

    Raises:
        InputTypeError: for any other model — a Lipschitz bound must be declared by the
            architecture (its backbone a :class:`LipschitzModule`), it is not inferred.
        InputError: if the declared bound is not a positive finite number.
    """
    normalize, net = _unwrap(model)
    bound = net.backbone_lipschitz()
    if normalize is not None:
        # (x - mean) / std is max_c(1/std_c)-Lipschitz in l2.
        bound *= float((1.0 / normalize.std.double()).max())
    if not (bound > 0 and bound < float("inf")):
        raise InputError(f"the backbone's Lipschitz bound must be positive and finite, got {bound}")
    features: nn.Module = net.backbone if normalize is None else nn.Sequential(normalize, net.backbone)
    return Split(features=features, head=net.head, lipschitz=bound)


def _layers(backbone: nn.Module) -> list[str]:
    """The backbone's structure, one line per module: name, type and settings (parameter-free layers
    such as SpaceToDepth(2) or PadChannels(4 -> 16) included, which a state_dict does not show)."""
    return [f"{name or '<backbone>'}: {type(m).__name__}({m.extra_repr()})" for name, m in backbone.named_modules()]


def transfer_backbone(source: nn.Module, target: nn.Module) -> None:
    """Copy the Lipschitz backbone e of ``source`` into ``target``, in place; the target's head is
    left as it is. The FaRS workflow: train e with one head (``sll-small``, linear, margin loss),
    then train another head on it (``sll-small-mlp``, head-only with feature noise).

    Both models are :class:`BackboneHead` s, or ``nn.Sequential(Normalize, BackboneHead)`` as
    :func:`~smoothcert.models.build_model` and checkpoints give them. Guarantee: afterwards the
    target's features equal the source's for every input (same structure, parameters and buffers of
    e, same Normalize constants), and the target's backbone declares the source's Lipschitz bound —
    so its certificates (:func:`split_model`) rest on the proven bound of the source's architecture.

    Raises:
        InputTypeError: either model declares no Lipschitz backbone (its backbone is not a
            :class:`LipschitzModule`, or it is not a BackboneHead at all).
        ConfigMismatchError: the backbones differ in structure (layer types, widths, input size)
            or parameter shapes, the Normalize constants differ (the backbone learned on inputs
            normalised by the source's), or the declared bounds differ.
    """
    src_norm, src = _unwrap(source, "the source model: ")
    dst_norm, dst = _unwrap(target, "the target model: ")
    have, want = _layers(src.backbone), _layers(dst.backbone)
    if have != want:
        diff = next((i for i, (a, b) in enumerate(zip(have, want)) if a != b), min(len(have), len(want)))
        first_src = have[diff] if diff < len(have) else "(none)"
        first_dst = want[diff] if diff < len(want) else "(none)"
        raise ConfigMismatchError(
            f"the backbones differ ({len(have)} vs {len(want)} modules); first difference: source "
            f"{first_src} vs target {first_dst}. Build the target with the source's backbone settings "
            "(in_channels, input_size, width, features)"
        )
    state = src.backbone.state_dict()
    mismatch = state_mismatch(dst.backbone.state_dict(), state)
    if mismatch:
        raise ConfigMismatchError(f"the backbones' parameters differ: {mismatch}")
    if (src_norm is None) != (dst_norm is None):
        raise ConfigMismatchError(
            "one model has a Normalize layer in front of its backbone and the other has none; the backbone "
            "must see inputs normalised as it was trained"
        )
    if src_norm is not None and dst_norm is not None:
        for name in ("mean", "std"):
            a, b = getattr(src_norm, name), getattr(dst_norm, name)
            if a.shape != b.shape or not torch.equal(a.detach().cpu().double(), b.detach().cpu().double()):
                raise ConfigMismatchError(
                    f"the Normalize {name} differs: source {a.flatten().tolist()} vs target {b.flatten().tolist()}; "
                    "build the target with the source's mean and std (the backbone learned on inputs normalised "
                    "by them)"
                )
    dst.backbone.load_state_dict(state)
    if dst.backbone_lipschitz() != src.backbone_lipschitz():
        raise ConfigMismatchError(
            f"after the transfer the target's backbone declares the l2 bound {dst.backbone_lipschitz():.6g}, "
            f"the source's {src.backbone_lipschitz():.6g}"
        )


def sll_small(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 28,
    width: int = 16,
    features: int = 128,
    head: str = "linear",
    head_hidden: int = 256,
) -> BackboneHead:
    """A small 1-Lipschitz SLL backbone with a linear or MLP head, for 28x28 or 32x32 inputs.

    Backbone (1-Lipschitz): SpaceToDepth(2) -> PadChannels(4C -> width) -> 2 x SLLConv2d(width,
    2 width) -> SpaceToDepth(2) -> 2 x SLLConv2d(4 width, 4 width) -> flatten -> NormalizedLinear(->
    features) -> 2 x SLLLinear(features, 2 features). For width 16, features 128 and 28x28 inputs:
    0.55M parameters (0.59M with the MLP head). ``head="linear"``: ``nn.Linear(features,
    num_classes)`` (margin certificate); ``head="mlp"``: Linear -> ReLU -> Linear with ``head_hidden`` units (feature-space smoothing).
    """
    _check_positive(num_classes=num_classes, in_channels=in_channels, width=width, features=features,
                    head_hidden=head_hidden)
    if not isinstance(input_size, int) or input_size < 4 or input_size % 4:
        raise InputError(f"sll-small needs an input_size divisible by 4 (28 or 32), got {input_size!r}")
    if 4 * in_channels > width:
        raise InputError(f"sll-small: width {width} must be at least 4 * in_channels = {4 * in_channels}")
    side = input_size // 4
    backbone = LipschitzSequential(
        SpaceToDepth(2),
        PadChannels(4 * in_channels, width),
        SLLConv2d(width, 2 * width),
        SLLConv2d(width, 2 * width),
        SpaceToDepth(2),
        SLLConv2d(4 * width, 4 * width),
        SLLConv2d(4 * width, 4 * width),
        LipschitzFlatten(),
        NormalizedLinear(4 * width * side * side, features),
        SLLLinear(features, 2 * features),
        SLLLinear(features, 2 * features),
    )
    if head == "linear":
        head_module: nn.Module = nn.Linear(features, num_classes)
    elif head == "mlp":
        head_module = nn.Sequential(nn.Linear(features, head_hidden), nn.ReLU(), nn.Linear(head_hidden, num_classes))
    else:
        raise InputError(f"sll-small head must be 'linear' or 'mlp', got {head!r}")
    return BackboneHead(backbone, head_module)


def sll_small_mlp(*, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, **kwargs: object) -> BackboneHead:
    """``sll-small`` with the MLP head (``head="mlp"``): the architecture for feature-space smoothing."""
    return sll_small(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                     **{"head": "mlp", **kwargs})  # type: ignore[arg-type]
