"""Noise distributions for randomized smoothing and the certified radii they give.

Conventions (one place for all of them):

* ``sigma`` is always the per-coordinate **standard deviation** of the noise, so that models
  trained at the same ``sigma`` see perturbations of the same energy whatever the family.
* ``gaussian``: delta ~ N(0, sigma^2 I).
* ``laplace``: i.i.d. Laplace with scale ``lambda = sigma / sqrt(2)`` (variance 2 lambda^2).
* ``uniform``: i.i.d. uniform on ``[-lambda, lambda]`` with ``lambda = sigma * sqrt(3)``
  (variance lambda^2 / 3).

Radii take a *lower* bound ``p_lower`` on the probability pA of the top class (and optionally
an *upper* bound ``p_upper_b`` on the runner-up probability pB) and return the radius within
which the smoothed classifier provably keeps its prediction. They are vectorised over tensors
of bounds; a bound below 1/2 (or pA <= pB) gives radius 0 — the caller abstains there.

Sources: Gaussian l2 — Cohen, Rosenfeld, Kolter 2019, Thm 1; Laplace l1 — Teng, Lee, Yuan 2020
("l1 adversarial robustness certificates: a randomized smoothing approach"), Thm 1;
uniform l1 / linf — Yang et al. 2020 ("Randomized smoothing of all shapes and sizes"), Table 1.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from .errors import InputError
from .registry import Registry

__all__ = [
    "Noise",
    "Gaussian",
    "Laplace",
    "Uniform",
    "register_noise",
    "get_noise",
    "list_noises",
]

NOISES: Registry[Noise] = Registry("noise")
register_noise = NOISES.register


def get_noise(name: str, *, sigma: float) -> Noise:
    """The noise registered as ``name`` with per-coordinate standard deviation ``sigma``."""
    return NOISES.create(name, sigma=sigma)


def list_noises() -> list[str]:
    """Names accepted by :func:`get_noise`."""
    return NOISES.names()


def _normal_icdf(p: Tensor) -> Tensor:
    return torch.special.ndtri(p)


def _as_prob(p: Tensor | float, name: str) -> Tensor:
    # float64: Phi^-1 must stay accurate near 1 (p_lower = 0.99999 at n = 1e6 is routine).
    t = torch.as_tensor(p, dtype=torch.float64)
    if torch.isnan(t).any() or (t < 0).any() or (t > 1).any():
        raise InputError(f"{name} must hold probabilities in [0, 1]")
    return t


class Noise(ABC):
    """An additive noise distribution with a per-coordinate standard deviation ``sigma``.

    Subclasses declare ``norms`` (the lp norms they certify directly) and implement
    :meth:`sample_` (in-place draws; :meth:`sample` allocates and calls it) and the
    per-norm radius functions.
    """

    name: ClassVar[str]
    norms: ClassVar[tuple[str, ...]]

    def __init__(self, *, sigma: float) -> None:
        sigma = float(sigma)
        if not math.isfinite(sigma) or sigma <= 0:
            raise InputError(f"sigma must be a positive finite number, got {sigma}")
        self.sigma = sigma

    @property
    def default_norm(self) -> str:
        """The norm this noise is usually certified in (the first of ``norms``)."""
        return self.norms[0]

    def check_norm(self, norm: str | None) -> str:
        """``norm`` (default: :attr:`default_norm`) if this noise certifies it, else a ValueError
        naming the norms it supports."""
        norm = self.default_norm if norm is None else norm
        if norm not in self.norms:
            raise InputError(
                f"{type(self).__name__} noise cannot certify the {norm!r} norm; "
                f"it supports: {', '.join(self.norms)}"
            )
        return norm

    @abstractmethod
    def sample_(self, out: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Fill ``out`` (any shape, floating point, on ``generator``'s device) in place with i.i.d.
        noise drawn from ``generator`` (None: the device's default generator) and return it.

        Every element is overwritten, so a buffer can be reused across draws; a contiguous view
        (``buf[:b]``) fills only its rows. This is the engine's path: no allocation of the size
        of ``out`` beyond what the family's construction needs (Laplace: one temporary).
        """

    def sample(
        self,
        shape: torch.Size | tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """A new tensor of i.i.d. noise of ``shape``, drawn from ``generator`` on ``device``
        (:meth:`sample_` on a fresh tensor: the same seed gives the same values)."""
        return self.sample_(torch.empty(shape, device=device, dtype=dtype), generator=generator)

    def perturb(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """``x + delta`` with fresh noise of x's shape, device and dtype."""
        return x + self.sample(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def radius(
        self,
        p_lower: Tensor | float,
        *,
        norm: str | None = None,
        p_upper_b: Tensor | float | None = None,
        dim: int | None = None,
    ) -> Tensor:
        """Certified radius in ``norm`` from a lower bound on pA (and an upper bound on pB).

        Args:
            p_lower: lower confidence bound(s) on pA, any shape.
            norm: "l1", "l2" or "linf"; defaults to :attr:`default_norm`.
            p_upper_b: optional upper bound(s) on pB (broadcast with ``p_lower``); gives the
                two-class certificate, which is never smaller than the one-class form with
                pB <= 1 - pA.
            dim: the input dimension d, needed by norms whose radius depends on it.
        Returns:
            float64 tensor of radii, 0 where the bounds certify nothing.
        """
        norm = self.check_norm(norm)
        pa = _as_prob(p_lower, "p_lower")
        pb = None if p_upper_b is None else _as_prob(p_upper_b, "p_upper_b")
        if pb is not None:
            # An upper bound above 1 - pA is never useful: pB <= 1 - pA always holds.
            pb = torch.minimum(pb, 1 - pa)
        r = self._radius(pa, pb, norm, dim)
        certified = pa > 0.5 if pb is None else pa > pb
        return torch.where(certified, r, torch.zeros_like(r)).clamp_min(0.0)

    @abstractmethod
    def _radius(self, pa: Tensor, pb: Tensor | None, norm: str, dim: int | None) -> Tensor:
        """Radius where pA > 1/2 (or pA > pB); values elsewhere are discarded."""

    @staticmethod
    def _need_dim(dim: int | None, norm: str) -> int:
        if dim is None or dim < 1:
            raise InputError(f"the {norm} radius depends on the input dimension: pass dim=d")
        return int(dim)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma:g})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.sigma == other.sigma  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.sigma))


@register_noise("gaussian")
class Gaussian(Noise):
    """delta ~ N(0, sigma^2 I).

    l2: R = sigma * Phi^-1(pA), or (sigma/2)(Phi^-1(pA) - Phi^-1(pB)) (Cohen et al. 2019, Thm 1).
    linf: R_l2 / sqrt(d), since ||v||_2 <= sqrt(d) ||v||_inf.
    """

    name = "gaussian"
    norms = ("l2", "linf")

    def sample_(self, out, *, generator=None):
        return out.normal_(0.0, self.sigma, generator=generator)

    def _radius(self, pa, pb, norm, dim):
        if pb is None:
            r = self.sigma * _normal_icdf(pa)
        else:
            r = 0.5 * self.sigma * (_normal_icdf(pa) - _normal_icdf(pb))
        if norm == "linf":
            r = r / math.sqrt(self._need_dim(dim, norm))
        return r


@register_noise("laplace")
class Laplace(Noise):
    """i.i.d. Laplace noise of scale lambda = sigma / sqrt(2).

    l1 (Teng et al. 2020, Thm 1): R = -lambda ln(2(1 - pA)); with pB:
    R = max{(lambda/2) ln(pA/pB), -lambda ln(1 - pA + pB)}.
    """

    name = "laplace"
    norms = ("l1",)

    @property
    def scale(self) -> float:
        """lambda, the Laplace scale parameter."""
        return self.sigma / math.sqrt(2.0)

    def sample_(self, out, *, generator=None):
        # Exact: the difference of two independent Exp(1) draws is Laplace(0, 1). exponential_
        # returns finite values, so no inf can occur (the inverse CDF -sgn(u) ln(1 - 2|u|) gives
        # inf at u = -1/2), and on CPU it keeps the tail far beyond a float32 uniform's
        # -ln(2^-24) = 16.6 (max 18.8 seen in 1e8 draws). exponential_ takes a generator;
        # torch.distributions.Laplace does not. Costs one temporary of out's size and ~12x the
        # time of normal_ on CPU (47 vs 4 ns per element), ~10% of a LeNet forward pass.
        out.exponential_(generator=generator)
        out.sub_(torch.empty_like(out).exponential_(generator=generator))
        return out.mul_(self.scale)

    def _radius(self, pa, pb, norm, dim):
        lam = self.scale
        if pb is None:
            return -lam * torch.log(2 * (1 - pa))
        return torch.maximum(0.5 * lam * torch.log(pa / pb), -lam * torch.log(1 - pa + pb))


@register_noise("uniform")
class Uniform(Noise):
    """i.i.d. uniform noise on [-lambda, lambda] with lambda = sigma * sqrt(3).

    l1 (Yang et al. 2020): R = 2 lambda (pA - 1/2). With pB: lambda (pA - pB), because the
    smoothed soft classifier is 1/(2 lambda)-Lipschitz in l1 and a margin pA - pB then survives
    any shift of l1 size below (pA - pB) lambda (lecture notes on RS, Lemma 2.1).
    linf (Yang et al. 2020): R = 2 lambda (1 - (3/2 - pA)^(1/d)).
    """

    name = "uniform"
    norms = ("l1", "linf")

    @property
    def half_width(self) -> float:
        """lambda, half the side of the support cube."""
        return self.sigma * math.sqrt(3.0)

    def sample_(self, out, *, generator=None):
        return out.uniform_(-self.half_width, self.half_width, generator=generator)

    def _radius(self, pa, pb, norm, dim):
        lam = self.half_width
        if norm == "l1":
            return 2 * lam * (pa - 0.5) if pb is None else lam * (pa - pb)
        # No two-class linf form is published; the one-class radius (pB <= 1 - pA) is used.
        d = self._need_dim(dim, norm)
        return 2 * lam * (1 - torch.pow(1.5 - pa, 1.0 / d))
