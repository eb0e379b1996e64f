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

Norms are ``"l1"``, ``"l2"`` and ``"linf"``. A radius in one norm becomes a radius in another
through :func:`convert_radius` (the one place that does so): the largest ball of the target norm
inside the certified ball.

Multi-step denoisers (:mod:`smoothcert.denoise`) need more of a noise than its samples and radii:
its potential ``phi`` (``q(delta) proportional to exp(-phi(delta))``, :meth:`Noise.potential`) and
one descent step on a MAP objective with ``phi`` as data term (:meth:`Noise.map_step`). The three
families implement both; a noise of one's own that does not gets an error naming the method.

Sources: Gaussian l2 — Cohen, Rosenfeld, Kolter 2019, Thm 1; Laplace l1 — Teng, Lee, Yuan 2020
("l1 adversarial robustness certificates: a randomized smoothing approach"), Thm 1;
uniform l1 / linf — Yang et al. 2020 ("Randomized smoothing of all shapes and sizes"), Table 1.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from .errors import InputError, InputTypeError
from .registry import Registry

__all__ = [
    "NORMS",
    "Gaussian",
    "Laplace",
    "Noise",
    "NoiseAware",
    "Uniform",
    "conversion_formula",
    "convert_radius",
    "describe_noise_mismatch",
    "get_noise",
    "list_noises",
    "register_noise",
]

NOISES: Registry[Noise] = Registry("noise")
register_noise = NOISES.register


def get_noise(name: str, *, sigma: float) -> Noise:
    """The noise registered as ``name`` with per-coordinate standard deviation ``sigma``."""
    return NOISES.create(name, sigma=sigma)


def list_noises() -> list[str]:
    """Names accepted by :func:`get_noise`."""
    return NOISES.names()


#: The lp norms of certificates, as ``Noise.norms`` and ``--norm`` name them.
NORMS = ("l1", "l2", "linf")

# 1/p of each norm: ||v||_p <= d^(1/p - 1/q) ||v||_q for p <= q (Hoelder), and ||v||_p <= ||v||_q for p >= q.
_INVERSE_P = {"l1": 1.0, "l2": 0.5, "linf": 0.0}


def _check_norm_name(norm: str) -> str:
    if norm not in _INVERSE_P:
        raise InputError(f"unknown norm {norm!r}; norms are {', '.join(NORMS)}")
    return norm


def _ratio_exponent(from_norm: str, to_norm: str) -> float:
    """e with ||v||_from <= d^e ||v||_to for every v in R^d (tight): max(0, 1/from - 1/to)."""
    return max(0.0, _INVERSE_P[_check_norm_name(from_norm)] - _INVERSE_P[_check_norm_name(to_norm)])


def convert_radius(radius: Tensor, *, from_norm: str, to_norm: str, dim: int | None = None) -> Tensor:
    """The largest ``to_norm`` radius whose ball lies inside the ``from_norm`` ball of ``radius``.

    ``||v||_from <= d^e ||v||_to`` with ``e = max(0, 1/from - 1/to)`` (Hoelder; attained by the
    all-ones direction) puts the ``to_norm`` ball of radius ``r / d^e`` inside the ``from_norm``
    ball of radius ``r``, and no larger one fits. So l1 -> l2 and l2 -> linf divide by sqrt(d),
    l1 -> linf by d, and a conversion to a norm of smaller p (linf -> l2, l2 -> l1) keeps r: a
    certificate of radius r in ``from_norm`` certifies the returned radius in ``to_norm``.
    ``radius`` any shape; ``dim`` = d, needed where the factor depends on it.
    """
    e = _ratio_exponent(from_norm, to_norm)
    if e == 0.0:
        return radius
    d = _need_dim(dim, f"{from_norm} -> {to_norm}")
    return radius / (math.sqrt(d) if e == 0.5 else float(d) ** e)


def conversion_formula(from_norm: str, to_norm: str) -> str:
    """How :func:`convert_radius` maps a ``from_norm`` radius to ``to_norm``, as text: ``"r_l1/√d"``,
    ``"r_l1/d"`` or ``"r_linf"`` (unchanged)."""
    e = _ratio_exponent(from_norm, to_norm)
    factor = {0.0: "", 0.5: "/√d", 1.0: "/d"}.get(e, f"/d^{e:g}")
    return f"r_{from_norm}{factor}"


def _need_dim(dim: int | None, what: str) -> int:
    if dim is None or dim < 1:
        raise InputError(f"the {what} radius depends on the input dimension: pass dim=d")
    return int(dim)


def describe_noise_mismatch(made_for: Noise, noise: Noise, *, what: str, advice: str = "") -> str:
    """'' if ``made_for`` and the smoothing ``noise`` are the same family and sigma (relative
    tolerance 1e-9), else a sentence for a warning: ``what`` (e.g. "the denoiser (DnCNN)") is
    made for one noise but smoothing uses another, then ``advice``. Such a mismatch leaves every
    certificate valid (the base classifier is still a fixed function) but costs accuracy."""
    if made_for.name == noise.name and math.isclose(made_for.sigma, noise.sigma, rel_tol=1e-9, abs_tol=0.0):
        return ""
    return (
        f"{what} is made for {made_for.name} noise sigma {made_for.sigma:g}, but smoothing uses {noise.name} "
        f"noise sigma {noise.sigma:g}; the certificates stay valid, but accuracy will likely suffer"
        + (f". {advice}" if advice else "")
    )


@runtime_checkable
class NoiseAware(Protocol):
    """A base classifier (or part of one) that knows which noise it is made for.

    :class:`~smoothcert.smooth.SmoothedClassifier` asks a base that is ``NoiseAware`` (checked with
    ``isinstance``: any object with this method qualifies, inheriting is optional) and warns with
    the message when it is not empty. :class:`~smoothcert.denoise.Denoised`,
    :class:`~smoothcert.denoise.OneStepDenoiser` and :class:`~smoothcert.denoise.MultiStepDenoiser`
    implement it.
    """

    def noise_mismatch(self, noise: Noise) -> str:
        """'' if this object is made for smoothing with ``noise`` (or knows nothing about it), else
        why not, as a sentence for a warning (:func:`describe_noise_mismatch` writes one)."""
        ...


#: What :meth:`Noise.require` asks of a noise, by method name: (signature, meaning) for its error.
_DENOISING_METHODS = {
    "potential": ("potential(delta) -> Tensor [B]", "phi(delta) = -log q(delta) + const, per row"),
    "map_step": (
        "map_step(x, y, score, *, step_size) -> Tensor",
        "one (projected) gradient step on -log p(x) + phi(x - y), given score = grad log p(x)",
    ),
}


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
    per-norm radius functions (:meth:`_radius`). For multi-step denoising they also implement
    :meth:`potential` and :meth:`map_step` (and may give :attr:`map_step_limit`); a subclass
    without them certifies like any other, and a denoiser given it raises an InputTypeError
    naming the method to implement.
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

    # For subclasses' _radius (the built-in noises' pattern): d, or the error asking for it.
    _need_dim = staticmethod(_need_dim)

    def converted_radius(
        self,
        p_lower: Tensor | float,
        *,
        norm: str,
        dim: int,
        p_upper_b: Tensor | float | None = None,
    ) -> Tensor:
        """A certified radius in any lp ``norm``, also one this noise does not certify directly:
        for each of :attr:`norms`, the largest ``norm`` ball inside its certified ball
        (:func:`convert_radius`), and the largest of these. Equal to :meth:`radius` where
        ``norm`` is the noise's own norm and the others give less. float64, shape of the bounds,
        0 where nothing is certified; ``dim`` = d (always needed: a conversion may use it)."""
        _check_norm_name(norm)
        radii = [
            convert_radius(self.radius(p_lower, norm=own, p_upper_b=p_upper_b, dim=dim).double(),
                           from_norm=own, to_norm=norm, dim=dim)
            for own in self.norms
        ]
        return torch.stack(radii).max(dim=0).values

    def conversion_formula(self, norm: str) -> str:
        """How :meth:`converted_radius` gets its ``norm`` radius, as text: ``"r_l1/√d"`` (Laplace to
        l2), ``"max(r_l1/√d, r_linf)"`` (uniform to l2)."""
        terms = [conversion_formula(own, norm) for own in self.norms]
        return terms[0] if len(terms) == 1 else f"max({', '.join(terms)})"

    # ---- what multi-step denoising needs (smoothcert.denoise.score); not abstract: certifying needs none of it

    def potential(self, delta: Tensor) -> Tensor:
        """``phi(delta)`` per row, with ``q(delta)`` proportional to ``exp(-phi(delta))`` (the
        negative log-density up to a constant): ``delta`` [B, ...] -> [B], delta's dtype; ``inf``
        outside the support. Every ``phi`` here is even: ``phi(y - x) = phi(x - y)``."""
        raise self._missing("potential")

    def map_step(self, x: Tensor, y: Tensor, score: Tensor, *, step_size: float) -> Tensor:
        """One descent step from ``x`` on the MAP objective ``-log p(x) + phi(x - y)`` of the clean
        image given the noisy ``y``, where ``score`` = grad log p(x) (an estimate, e.g. a score
        network's at the current level) and ``phi`` is :meth:`potential`: a gradient step
        ``x + step_size (score - grad phi(x - y))``, or, where ``phi`` is an indicator, the
        projection of ``x + step_size score`` onto its support around ``y``. ``x``, ``y``,
        ``score`` of one shape ``[B, ...]``; returns that shape, differentiable in all three."""
        raise self._missing("map_step")

    @property
    def map_step_limit(self) -> float | None:
        """The step size at and above which gradient descent on ``phi`` alone diverges (2 / L for a
        potential with L-Lipschitz gradient); None where no such bound exists (a non-smooth
        ``phi``, a projection). Multi-step denoisers warn when their first step reaches it."""
        return None

    def require(self, *methods: str) -> None:
        """Raise the InputTypeError that names the method to implement if this noise's class leaves
        one of ``methods`` (``"potential"``, ``"map_step"``) to this base class; for checks
        before any work is done."""
        for method in methods:
            if getattr(type(self), method) is getattr(Noise, method):
                raise self._missing(method)

    def _missing(self, method: str) -> InputTypeError:
        signature, meaning = _DENOISING_METHODS[method]
        return InputTypeError(
            f"{type(self).__name__} noise does not implement Noise.{signature} ({meaning}), which "
            f"multi-step denoising needs; implement it in your Noise subclass"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma:g})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.sigma == other.sigma  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.sigma))


def _box_muller_blocks_(u: Tensor) -> None:
    """Turn ``u`` ``[m, 2, 8]`` of float64 uniforms on [0, 1) into N(0, 1) draws in place: in each
    block of 16, element j and j + 8 become r cos(t) and r sin(t) with r = sqrt(-2 ln(1 - u_j)),
    t = 2 pi u_(j+8) (Box & Muller 1958)."""
    u1, u2 = u[:, 0], u[:, 1]
    radius = torch.log1p(u1.neg()).mul_(-2.0).sqrt_()  # 1 - u1 lies in [2^-53, 1]: finite
    angle = u2.mul(2.0 * math.pi)
    torch.cos(angle, out=u1).mul_(radius)
    torch.sin(angle, out=u2).mul_(radius)


def standard_normal_f64_(out: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``out`` (contiguous float64 on the CPU, at least 16 elements) with N(0, 1) draws from
    ``generator`` and return it: the same draws as ``out.normal_(generator=generator)``, made
    with vectorised, multi-threaded tensor operations.

    torch's CPU ``normal_`` for float64 is a scalar Box-Muller loop over blocks of 16 (ATen's
    ``normal_fill``: fill with 53-bit uniforms, pair element j with j + 8 of each block; when the
    size is not a multiple of 16, re-draw the last 16 from fresh uniforms). This function does
    the same steps in the same order, so it consumes the generator identically and its values
    differ from ``normal_``'s only by the rounding of log/cos/sin (about 1e-16 relative; tested).
    Why: 12.4 vs 6.4 microseconds per 784-dimensional draw on 2 cores (BENCHMARKS.md, CPU engine),
    which is most of what exact float64 noise cost against float32 noise. The tail is the exact
    law's up to the 53-bit uniforms: |delta| reaches sqrt(2 * 53 ln 2) = 8.57 (P(|Z| > 8.57) ~ 1e-17).
    """
    flat = out.view(-1)
    m = flat.numel()
    if out.device.type != "cpu" or out.dtype != torch.float64 or m < 16:
        raise InputError(f"standard_normal_f64_ needs >= 16 float64 elements on the CPU, got {m} {out.dtype} on {out.device}")
    flat.uniform_(generator=generator)
    full = m - m % 16
    _box_muller_blocks_(flat[:full].view(-1, 2, 8))
    if full < m:
        _box_muller_blocks_(flat[m - 16:].uniform_(generator=generator).view(1, 2, 8))
    return out


@register_noise("gaussian")
class Gaussian(Noise):
    """delta ~ N(0, sigma^2 I).

    l2: R = sigma * Phi^-1(pA), or (sigma/2)(Phi^-1(pA) - Phi^-1(pB)) (Cohen et al. 2019, Thm 1).
    linf: R_l2 / sqrt(d), since ||v||_2 <= sqrt(d) ||v||_inf.
    """

    name = "gaussian"
    norms = ("l2", "linf")

    def sample_(self, out, *, generator=None):
        if out.device.type == "cpu" and out.dtype == torch.float64 and out.is_contiguous() and out.numel() >= 16:
            return standard_normal_f64_(out, generator=generator).mul_(self.sigma)
        return out.normal_(0.0, self.sigma, generator=generator)

    def _radius(self, pa, pb, norm, dim):
        if pb is None:
            r = self.sigma * _normal_icdf(pa)
        else:
            r = 0.5 * self.sigma * (_normal_icdf(pa) - _normal_icdf(pb))
        # The linf ball of radius R_l2 / sqrt(d) is the largest inside the certified l2 ball.
        return convert_radius(r, from_norm="l2", to_norm=norm, dim=dim)

    def potential(self, delta):
        return delta.flatten(1).pow(2).sum(1) / (2 * self.sigma**2)

    def map_step(self, x, y, score, *, step_size):
        # grad phi(u) = u / sigma^2
        return x + step_size * (score - (x - y) / self.sigma**2)

    @property
    def map_step_limit(self) -> float:
        # grad phi is (1/sigma^2)-Lipschitz: gradient descent on phi alone diverges past 2 sigma^2.
        return 2 * self.sigma**2


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

    def potential(self, delta):
        return delta.flatten(1).abs().sum(1) / self.scale

    def map_step(self, x, y, score, *, step_size):
        # Subgradient of phi(u) = ||u||_1 / lambda: sign(u) / lambda (0 at the kink u = 0). phi is not
        # smooth, so no step size bound: the iterate oscillates within ~2 step_size / lambda of the kink.
        return x + step_size * (score - torch.sign(x - y) / self.scale)


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
        d = _need_dim(dim, norm)
        return 2 * lam * (1 - torch.pow(1.5 - pa, 1.0 / d))

    def potential(self, delta):
        # The indicator of the box [-lambda, lambda]^d: 0 inside, inf outside.
        flat = delta.flatten(1)
        inside = (flat.abs() <= self.half_width).all(1)
        return torch.where(inside, torch.zeros_like(flat[:, 0]), torch.full_like(flat[:, 0], math.inf))

    def map_step(self, x, y, score, *, step_size):
        # phi is an indicator: its "gradient step" is the Euclidean projection onto y + [-lambda, lambda]^d
        # (projected gradient descent); clamp is that projection, coordinate by coordinate.
        lam = self.half_width
        return torch.clamp(x + step_size * score, y - lam, y + lam)
