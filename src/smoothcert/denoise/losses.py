"""Denoiser training losses, selectable by name: ``mse``, ``stability``, ``classification``, ``dsm``.

A loss is a small object holding its hyperparameters (recorded in the checkpoint) with one call
``loss(net, x, y, *, noise, generator, classifier)`` returning a scalar for the optimiser, as the
training methods of :mod:`smoothcert.train.methods` do for classifiers.

* ``mse``: ``mean ||D(x + delta) - x||^2 / d`` (Salman et al. 2020, Sec. 3; ``L_MSE``, eq. (3) of
  the score-based denoised smoothing paper), the per-pixel mean so that the scale does not depend on the image size.
* ``stability``: ``CE(f(D(x + delta)), f(x))`` with the frozen classifier's own prediction on the
  clean input as the label (Salman et al. 2020, Sec. 3, "stability objective"; ``L_CLF``, eq. (4)
  of the score-based paper). Needs no labels.
* ``classification``: ``CE(f(D(x + delta)), y)`` with the true labels (Salman et al.'s
  "classification objective").
* ``dsm``: multi-scale denoising score matching of a score network over a sigma ladder
  (:func:`smoothcert.denoise.score.dsm_loss`); classifier-free, no single noise.

The classifier-guided losses take ``access``:

* ``"full"``: gradients are backpropagated through ``f`` (its parameters are frozen, never
  updated).
* ``"query"``: ``f`` is only queried for outputs. Salman et al. handle this setting by training
  through *surrogate* classifiers of their own; that needs no code here: pass the surrogate as
  ``classifier`` with ``access="full"``. What ``"query"`` implements instead is a zeroth-order
  alternative that uses the real classifier's outputs only: the gradient of the per-row loss
  ``l(z) = CE(f(z), t)`` with respect to the classifier input ``z = D(x + delta)`` is estimated
  by Gaussian-smoothing finite differences (Nesterov & Spokoiny 2017),
  ``g = (1/q) sum_j (l(z + mu u_j) - l(z)) / mu * u_j``, ``u_j ~ N(0, I)``, from ``q = queries``
  extra queries per row, and backpropagated into the denoiser. ``E g`` is the gradient of the
  ``mu``-smoothed loss; its cosine with the true gradient is about ``(1 + (d + 1)/q)^(-1/2)`` in
  dimension ``d`` (the tests check it on a linear classifier). Costs ``q + 1`` classifier
  evaluations per row and step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_float, check_int
from ..errors import InputError, InputTypeError
from ..noise import Noise
from ..registry import Registry
from ..rng import make_generator
from .score import check_ladder, dsm_loss

__all__ = [
    "ACCESS",
    "ClassificationLoss",
    "DSMLoss",
    "DenoiserLoss",
    "MSELoss",
    "StabilityLoss",
    "get_denoiser_loss",
    "list_denoiser_losses",
    "register_denoiser_loss",
    "zeroth_order_cross_entropy",
]

LOSSES: Registry[DenoiserLoss] = Registry("denoiser loss")
register_denoiser_loss = LOSSES.register
ACCESS = ("full", "query")


def get_denoiser_loss(name: str, **hparams: Any) -> DenoiserLoss:
    """The denoiser loss ``name`` with its hyperparameters (keyword-only)."""
    return LOSSES.create(name, **hparams)


def list_denoiser_losses() -> list[str]:
    """Names accepted by :func:`get_denoiser_loss`."""
    return LOSSES.names()


class DenoiserLoss(ABC):
    """A loss for training a denoiser (``kind="denoiser"``) or a score network (``kind="score"``)."""

    name: ClassVar[str]
    #: The kind of network trained (see :mod:`smoothcert.denoise.nets`).
    kind: ClassVar[str] = "denoiser"
    #: Whether the loss queries a classifier.
    needs_classifier: ClassVar[bool] = False
    #: Whether the loss needs the true labels.
    needs_labels: ClassVar[bool] = False

    def hparams(self) -> dict[str, Any]:
        """The hyperparameters, as stored in checkpoints (plain JSON-able values)."""
        return {}

    @abstractmethod
    def loss(
        self,
        net: nn.Module,
        x: Tensor,
        y: Tensor | None,
        *,
        noise: Noise | None,
        generator: int | torch.Generator | None,
        classifier: nn.Module | None = None,
    ) -> Tensor:
        """Scalar loss for clean inputs ``x`` [B, C, H, W] in [0, 1], labels ``y`` [B] (or None),
        the training ``noise`` (None for ``dsm``), random draws from ``generator`` (an int seed, a
        ``torch.Generator`` on ``x``'s device, or None for torch's global RNG)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"


def _noisy(x: Tensor, noise: Noise | None, generator: torch.Generator | None) -> Tensor:
    if not isinstance(noise, Noise):
        raise InputTypeError("this denoiser loss trains for one noise: pass noise=get_noise(name, sigma=...)")
    return x + noise.sample(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@register_denoiser_loss("mse")
class MSELoss(DenoiserLoss):
    """``mean over rows and pixels of (D(x + delta) - x)^2`` (Salman et al. 2020, Sec. 3)."""

    name = "mse"

    def loss(self, net, x, y, *, noise, generator, classifier=None):
        return F.mse_loss(net(_noisy(x, noise, make_generator(generator, x.device))), x)


class _Guided(DenoiserLoss):
    """Cross-entropy of the frozen classifier on ``D(x + delta)`` against per-row targets."""

    needs_classifier = True

    def __init__(self, *, access: str = "full", queries: int = 32, mu: float = 1e-3) -> None:
        if access not in ACCESS:
            raise InputError(f"access must be one of {ACCESS}, got {access!r}")
        check_int("queries", queries, minimum=1)
        check_float("mu", mu, strict=True)
        self.access = access
        self.queries = queries
        self.mu = float(mu)

    def hparams(self) -> dict[str, Any]:
        if self.access == "full":
            return {"access": "full"}
        return {"access": "query", "queries": self.queries, "mu": self.mu}

    @abstractmethod
    def targets(self, classifier: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
        """Class indices [B]."""

    def loss(self, net, x, y, *, noise, generator, classifier=None):
        if classifier is None:
            raise InputError(f"the {self.name!r} loss needs the classifier (classifier=...)")
        if classifier.training:
            raise InputError("the classifier must be in eval mode (it is frozen; wrap it with Denoised or call .eval())")
        generator = make_generator(generator, x.device)  # one stream for the noise and the queries
        target = self.targets(classifier, x, y)
        z = net(_noisy(x, noise, generator))
        if self.access == "full":
            return F.cross_entropy(classifier(z), target)
        return zeroth_order_cross_entropy(
            classifier, z, target, queries=self.queries, mu=self.mu, generator=generator
        ).mean()


@register_denoiser_loss("stability")
class StabilityLoss(_Guided):
    """``CE(f(D(x + delta)), argmax f(x))``: the classifier's clean prediction as the label."""

    name = "stability"

    def targets(self, classifier, x, y):
        with torch.no_grad():
            return classifier(x).argmax(1)


@register_denoiser_loss("classification")
class ClassificationLoss(_Guided):
    """``CE(f(D(x + delta)), y)`` with the true labels."""

    name = "classification"
    needs_labels = True

    def targets(self, classifier, x, y):
        if y is None:
            raise InputError("the 'classification' loss needs labels; use 'stability' for unlabelled data")
        return y


@register_denoiser_loss("dsm")
class DSMLoss(DenoiserLoss):
    """Multi-scale denoising score matching over ``ladder`` (:func:`~smoothcert.denoise.score.dsm_loss`)."""

    name = "dsm"
    kind = "score"

    def __init__(self, *, ladder: Sequence[float] | Tensor) -> None:
        self.ladder = check_ladder(ladder)

    def hparams(self) -> dict[str, Any]:
        return {"ladder": list(self.ladder)}

    def loss(self, net, x, y, *, noise, generator, classifier=None):
        if noise is not None:
            raise InputError("the 'dsm' loss trains over its sigma ladder; pass noise=None")
        return dsm_loss(net, x, ladder=self.ladder, generator=generator)


class _ZerothOrderCE(torch.autograd.Function):
    """Per-row CE(f(z), t) whose backward is the Gaussian-smoothing finite-difference estimate."""

    @staticmethod
    def forward(ctx, z, classifier, target, queries, mu, generator):  # type: ignore[override]
        with torch.no_grad():
            base = F.cross_entropy(classifier(z), target, reduction="none")
        ctx.save_for_backward(z, target, base)
        ctx.classifier, ctx.queries, ctx.mu, ctx.generator = classifier, queries, mu, generator
        return base

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        z, target, base = ctx.saved_tensors
        shape = (-1,) + (1,) * (z.ndim - 1)
        grad = torch.zeros_like(z)
        with torch.no_grad():
            for _ in range(ctx.queries):  # one query of B rows at a time: memory of one forward pass
                u = torch.randn(z.shape, generator=ctx.generator, device=z.device, dtype=z.dtype)
                loss = F.cross_entropy(ctx.classifier(z + ctx.mu * u), target, reduction="none")
                grad.add_(u * ((loss - base) / ctx.mu).view(shape))
        grad.div_(ctx.queries)
        return grad * grad_out.view(shape), None, None, None, None, None


def zeroth_order_cross_entropy(
    classifier: nn.Module,
    z: Tensor,
    target: Tensor,
    *,
    queries: int,
    mu: float,
    generator: int | torch.Generator | None = None,
) -> Tensor:
    """Per-row ``CE(classifier(z), target)`` [B] that backpropagates to ``z`` by queries only.

    The value is exact; the gradient with respect to ``z`` [B, ...] is the estimate
    ``(1/q) sum_j (l(z + mu u_j) - l(z)) / mu * u_j`` with ``q = queries`` standard normal
    directions ``u_j`` drawn from ``generator`` (an unbiased estimate of the gradient of the
    Gaussian-smoothed loss ``E l(z + mu u)``). The classifier is never differentiated.
    ``generator``: an int seed, a ``torch.Generator`` on ``z``'s device, or None (global RNG); the
    directions are drawn when the gradient is computed (backward).
    """
    generator = make_generator(generator, z.device)
    return _ZerothOrderCE.apply(z, classifier, target, queries, float(mu), generator)
