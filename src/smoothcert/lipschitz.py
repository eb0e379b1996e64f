"""FaRS: certificates for a 1-Lipschitz backbone e under a head l, sampling only where it is cheap.

For f = l o e with ``||e(x) - e(x')||_2 <= L ||x - x'||_2`` (L = 1 for SLL backbones; FaRS,
Proposition 1), any l2 certificate of radius r for the head at z = e(x) is a certificate of radius
r / L for the whole model at x: an input perturbation of norm < r / L moves z by less than r.

Two certificates:

- :func:`certify_margin` (linear head l(z) = W z + b): deterministic, one forward pass. The
  prediction y = argmax l(z) cannot change while ``||dz||_2 < min_{j != y} (l_y - l_j) / ||w_y -
  w_j||_2`` — the exact distance from z to the nearest decision boundary of a linear model — so the
  input-space radius is that divided by L (:func:`margin_radius`).
- :class:`FeatureSmoothedClassifier` (any head): randomized smoothing of the head in feature space,
  g(z) = argmax_c P(l(z + delta) = c), delta ~ N(0, sigma^2 I), by the same CERTIFY as
  :class:`~smoothcert.smooth.SmoothedClassifier` (it *is* one, on the head, over unbounded
  features): the backbone runs once per input, the n Monte Carlo draws only through l. The
  guarantee is the input-space one: with probability at least 1 - alpha, g(e(x')) = prediction for
  every ``||x' - x||_2 < radius`` (= feature radius / L).

Which models qualify is declared by the architecture, never guessed: a
:class:`~smoothcert.models.sll.BackboneHead` (e.g. ``build_model("sll-small", ...)``), optionally
behind a :class:`~smoothcert.models.Normalize` layer, whose Lipschitz factor 1/min(std) is
multiplied in (:func:`split_model`). Anything else is refused with an :class:`InputTypeError`.

The sparsemax variant of FaRS (Sec. 2.2, and its code: radius = sparsemax_r(l(z))_y / ||W||_2) is
**not** offered: it is unsound (docs/lipschitz.md gives the derivation, and
tests/test_lipschitz.py a linear model where an attack crosses the boundary well inside the radius
it claims). Sparsemax preserves the order of the logits, so argmax o sparsemax o l = argmax o l and
the sound certificate for that classifier is :func:`margin_radius` itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from .certificate import Certificate, PerInput, PlannedCertificate
from .checks import as_batch, ensure_eval, model_device
from .errors import ConfigMismatchError, InputError, InputTypeError
from .models.sll import (
    BackboneHead,
    LipschitzFlatten,
    LipschitzModule,
    LipschitzSequential,
    NormalizedConv1x1,
    NormalizedLinear,
    PadChannels,
    ScaledAvgPool2d,
    SLLConv2d,
    SLLLinear,
    SpaceToDepth,
    Split,
    sll_small,
    sll_small_mlp,
    spectral_norm,
    split_model,
    transfer_backbone,
)
from .noise import Noise
from .smooth import SmoothedClassifier

__all__ = [
    "BackboneHead",
    "FeatureSmoothedClassifier",
    "LipschitzFlatten",
    "LipschitzModule",
    "LipschitzSequential",
    "MarginCertificate",
    "NormalizedConv1x1",
    "NormalizedLinear",
    "PadChannels",
    "SLLConv2d",
    "SLLLinear",
    "ScaledAvgPool2d",
    "SpaceToDepth",
    "Split",
    "certify_margin",
    "check_lipschitz",
    "jacobian_norm",
    "margin_radius",
    "sll_small",
    "sll_small_mlp",
    "spectral_norm",
    "split_model",
    "transfer_backbone",
]


def margin_radius(features: Tensor, head: nn.Linear, *, lipschitz: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(prediction, radius)`` of the linear head ``l(z) = W z + b`` at features ``z`` ``[B, D]``.

    ``prediction`` [B] int64 is argmax_j l_j(z); ``radius`` [B] float64 is
    ``min_{j != y} (l_y - l_j) / ||w_y - w_j||_2 / lipschitz`` — exactly the l2 distance from z to
    the nearest decision boundary of the linear model (for ``lipschitz=1``), hence, for features
    z = e(x) of an L-Lipschitz backbone and ``lipschitz=L``, a deterministic certificate: f(x') =
    prediction for all ``||x' - x||_2 < radius``. Computed in float64 (the features in the
    dtype they come in); a class whose weight row equals the predicted one and whose bias is lower
    can never win and imposes no limit; a tie gives radius 0.
    """
    if not isinstance(head, nn.Linear):
        raise InputTypeError(
            f"margin_radius needs an nn.Linear head, got {type(head).__name__}; certify other heads "
            "with FeatureSmoothedClassifier"
        )
    if not (lipschitz > 0 and lipschitz < float("inf")):
        raise InputError(f"lipschitz must be positive and finite, got {lipschitz}")
    z = features.unsqueeze(0) if features.dim() == 1 else features
    if z.dim() != 2 or z.shape[1] != head.in_features:
        raise InputError(f"features must be [B, {head.in_features}], got {list(features.shape)}")
    if not torch.isfinite(z).all():
        raise InputError("features contain NaN or inf")
    w = head.weight.detach().double()
    b = head.bias.detach().double() if head.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                               device=w.device)
    logits = z.detach().double() @ w.T + b  # [B, K]
    y = logits.argmax(dim=1)
    gaps = logits.gather(1, y[:, None]) - logits  # [B, K], l_y - l_j >= 0
    dist = (w[y][:, None, :] - w[None, :, :]).norm(dim=2)  # [B, K], ||w_y - w_j||_2
    ratio = torch.where(dist > 0, gaps / dist.clamp_min(1e-300),
                        torch.where(gaps > 0, torch.full_like(gaps, float("inf")), torch.zeros_like(gaps)))
    ratio.scatter_(1, y[:, None], float("inf"))  # j = y is no competitor
    return y, (ratio.min(dim=1).values / lipschitz).cpu()


@dataclass
class MarginCertificate(PerInput):
    """Result of :func:`certify_margin` for B inputs (CPU tensors). Deterministic: for every i,
    f(x') = prediction[i] for all ||x' - x_i||_2 < radius[i] (no probability, no abstain)."""

    prediction: Tensor  #: int64 [B]
    radius: Tensor  #: float64 [B], input-space l2 radius (feature_radius / lipschitz)
    feature_radius: Tensor  #: float64 [B], distance of the features to the head's nearest boundary
    lipschitz: float  #: the bound L the feature-space margin was divided by
    seconds: Tensor  #: float64 [B], the batch's wall time split evenly


def certify_margin(model: nn.Module, x: Tensor) -> MarginCertificate:
    """The margin certificate of a model with a linear head: one forward pass, no sampling.

    ``model``: see :func:`split_model`; its head must be ``nn.Linear``. ``x``: ``[B, C, H, W]`` or
    ``[C, H, W]`` in [0, 1].
    """
    split = split_model(model)
    if not isinstance(split.head, nn.Linear):
        raise InputTypeError(
            f"the margin certificate needs a linear head, this model's is {type(split.head).__name__}; "
            "use FeatureSmoothedClassifier (--certificate feature-smoothing)"
        )
    ensure_eval(model)
    x = as_batch(x).to(model_device(model))
    start = time.perf_counter()
    with torch.no_grad():  # not inference_mode: callers may attack the results
        z = split.features(x)
        prediction, feature_radius = margin_radius(z, split.head)
    seconds = time.perf_counter() - start
    return MarginCertificate(prediction=prediction.cpu(), radius=feature_radius / split.lipschitz,
                             feature_radius=feature_radius, lipschitz=split.lipschitz,
                             seconds=torch.full((len(x),), seconds / len(x), dtype=torch.float64))


class FeatureSmoothedClassifier(SmoothedClassifier):
    """FaRS with a smoothed head: g(x) = argmax_c P(l(e(x) + delta) = c), delta from ``noise``.

    A :class:`~smoothcert.smooth.SmoothedClassifier` whose base is the head and whose inputs are
    images: :meth:`certify` and :meth:`predict` run the backbone once per input, then the engine's
    PREDICT/CERTIFY on the head over the (unbounded) features z = e(x), so the statistics,
    abstentions and :class:`~smoothcert.smooth.Certificate` fields are those of input-space
    smoothing and :func:`smoothcert.runs.certify_dataset` writes the same rows. Radii are l2,
    transferred to input space (divided by the backbone's bound L, :func:`split_model`);
    ``p_lower`` and the counts are the head's.

    Args:
        model: a :class:`BackboneHead` (optionally behind Normalize); any head.
        noise: the feature-space noise; its l2 radius is used (Gaussian: sigma Phi^-1(pA_lower)).
        num_classes: K.
        **engine: other :class:`SmoothedClassifier` settings (precision, batching, compile);
            ``channels_last`` defaults to False (features are vectors).
    """

    def __init__(self, model: nn.Module, *, noise: Noise, num_classes: int, **engine: Any) -> None:
        for key in ("allow_unbounded", "input_shape"):
            if key in engine:
                raise InputError(f"{key} is set by FeatureSmoothedClassifier (its inputs are images, the "
                                 "head's are unbounded feature vectors)")
        self.split = split_model(model)
        self.model = ensure_eval(model)
        if "engine" not in engine:
            engine.setdefault("channels_last", False)  # features are vectors
        super().__init__(self.split.head, noise=noise, num_classes=num_classes, **engine)

    def as_batch(self, x: Tensor) -> Tensor:
        """The head's inputs, features ``[B, D]``: finite, batch-first, unbounded by design (no
        [0, 1] check, no warning)."""
        return as_batch(x, bounded=False, name="features")

    @property
    def lipschitz(self) -> float:
        """The backbone's proven l2 bound L (input to features) the radii are divided by."""
        return self.split.lipschitz

    def __repr__(self) -> str:
        return f"FeatureSmoothedClassifier(lipschitz={self.lipschitz:.6g}, head={super().__repr__()})"

    def settings(self) -> dict[str, Any]:
        """The engine settings of the head's sampler, plus where the noise is added and L."""
        return {**super().settings(), "space": "features", "lipschitz": self.lipschitz}

    def features(self, x: Tensor) -> tuple[Tensor, float]:
        """``(z [B, D], seconds)``: the backbone's features of x in [0, 1], one pass."""
        x = as_batch(x).to(model_device(self.model))
        start = time.perf_counter()
        with torch.no_grad():  # not inference_mode: callers may attack the results
            z = self.split.features(x)
        if z.dim() != 2:
            raise InputError(f"the backbone must return features [B, D], got {list(z.shape)}")
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return z, time.perf_counter() - start

    def warmup(self, x_example: Tensor, *, batch_size: int | str) -> float:
        """The engine's warm-up on the features of ``x_example`` (images)."""
        return super().warmup(self.features(x_example)[0], batch_size=batch_size)

    def predict(self, x: Tensor, *, n: int, alpha: float, batch_size: int | str,
                generator: int | torch.Generator | None = None) -> Tensor:
        """PREDICT on the head at z = e(x): with probability at least 1 - alpha the returned class
        (or ABSTAIN) equals g(x)."""
        z, _ = self.features(x)
        return super().predict(z, n=n, alpha=alpha, batch_size=batch_size, generator=generator)

    def certify(self, x: Tensor, *, n0: int, n: int, alpha: float, batch_size: int | str,
                generator: int | torch.Generator | None = None, norm: str | None = "l2",
                two_class: bool = False, target: str = "fixed", max_n: int | None = None,
                radius_loss: float = 0.02,
                on_rows: Callable[[int], None] | None = None) -> Certificate | PlannedCertificate:
        """CERTIFY on the head at z = e(x), radius transferred to input space.

        Guarantee: for each input, with probability at least 1 - alpha over the draws, either the
        answer is ABSTAIN or g(x') = prediction for every ``||x' - x||_2 < radius``. ``norm`` must
        be l2 (the transfer is an l2 statement); the other arguments are
        :meth:`SmoothedClassifier.certify`'s. ``seconds`` includes the input's share of the
        backbone pass.
        """
        if norm not in (None, "l2"):
            raise InputError(f"feature-space certificates transfer in l2 only, got norm={norm!r}")
        if target != "fixed":
            raise InputError(f"feature-space smoothing certifies with target='fixed' only, got {target!r}")
        z, backbone_seconds = self.features(x)
        cert = super().certify(z, n0=n0, n=n, alpha=alpha, batch_size=batch_size, generator=generator, norm="l2",
                               two_class=two_class, target=target, max_n=max_n, radius_loss=radius_loss,
                               on_rows=on_rows)
        return replace(cert, radius=cert.radius / self.lipschitz, seconds=cert.seconds + backbone_seconds / len(z))

    def certify_at(self, *args: Any, **kwargs: Any) -> Any:
        raise InputError("certify_at is not available for feature-space smoothing; use certify")

    def certify_planned(self, *args: Any, **kwargs: Any) -> Any:
        raise InputError("certify_planned is not available for feature-space smoothing; use certify")


def jacobian_norm(module: nn.Module | Callable[[Tensor], Tensor], x: Tensor, *, iters: int = 30,
                  seed: int = 0) -> Tensor:
    """Per-sample estimates ``[B]`` of the spectral norm of the Jacobian J of ``module`` at each
    sample of ``x``: power iteration on J^T J, from one forward pass (J^T u by backward, J v by
    differentiating J^T u in u). ``module`` must act on each sample separately, as eval-mode
    networks do. The estimates approach the norm from below: a lower bound on the local Lipschitz
    constant, for checking a declared bound."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    dims = (-1,) + (1,) * (x.dim() - 1)

    def unit(t: Tensor) -> Tensor:
        return t / t.flatten(1).norm(dim=1).clamp_min(1e-30).view(dims)

    v = unit(torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype))
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = module(xg)
        u = torch.zeros_like(y, requires_grad=True)
        (jtu,) = torch.autograd.grad(y, xg, u, create_graph=True)
        estimate = torch.zeros(x.shape[0], dtype=torch.float64)
        for _ in range(iters):
            (jv,) = torch.autograd.grad(jtu, u, v, retain_graph=True)
            estimate = jv.detach().flatten(1).norm(dim=1).double().cpu()
            (jtjv,) = torch.autograd.grad(y, xg, jv, retain_graph=True)
            if not bool((jtjv.flatten(1).abs().sum(dim=1) > 0).all()):
                break
            v = unit(jtjv.detach())
    return estimate


def check_lipschitz(module: LipschitzModule, x: Tensor, *, rtol: float = 1e-4, iters: int = 30) -> float:
    """Empirical check of a declared bound at the inputs ``x``: the largest per-sample Jacobian norm
    estimate (:func:`jacobian_norm`); raises :class:`ConfigMismatchError` if it exceeds
    ``module.lipschitz_bound() * (1 + rtol)`` (a declared bound that is wrong). Returns the estimate."""
    if not isinstance(module, LipschitzModule):
        raise InputTypeError(f"check_lipschitz needs a LipschitzModule, got {type(module).__name__}")
    bound = float(module.lipschitz_bound())
    estimate = float(jacobian_norm(module, x, iters=iters).max())
    if estimate > bound * (1 + rtol):
        raise ConfigMismatchError(
            f"{type(module).__name__} declares an l2 Lipschitz bound {bound:.6g} but its Jacobian norm "
            f"reaches {estimate:.6g} at the given inputs"
        )
    return estimate
