"""Smoothing of regression / image-to-image models, with certified bounds on how far the output moves.

``SmoothedRegressor(model, noise=...)`` wraps a base model f mapping inputs ``[B, ...]`` to outputs
``[B, ...]`` (e.g. a super-resolution U-Net, image -> image) and offers three smoothed outputs:

* :meth:`SmoothedRegressor.mean` — the smoothed estimate g(y) = E f(y + delta) estimated by
  ĝ(y) = (1/n) Σ_j f(y + delta_j) (the thesis on smoothing for inverse problems, eq. 6–8).
  No certificate: the mean of an unbounded f can move arbitrarily far.
* :meth:`SmoothedRegressor.median_bounds` — per-coordinate median smoothing (Chiang et al. 2020,
  "Detection as Regression: Certified Object Detection by Median Smoothing"): bounds, valid with
  probability at least 1 - alpha simultaneously for every output coordinate, on the median of
  f_i(y' + delta) at every y' with ‖y' - y‖₂ <= eps.
* :meth:`SmoothedRegressor.center` — center smoothing (Kumar & Goldstein 2021, "Center Smoothing:
  Certified Robustness for Networks with Structured Outputs"): a centre z(y) and a radius R such
  that, with probability at least 1 - alpha, ‖z(y) - z(y')‖₂ <= R for every ‖y' - y‖₂ <= eps.

From either certified set, :func:`worst_mse_box` / :func:`worst_mse_ball` give the certified
worst-case MSE against a reference image (the worst point of the set) and :func:`psnr` the
matching PSNR. Sampling runs through the engine's chunk iterator (precision, batch size, seeded
generators), as for classification.

Only Gaussian noise is certified here: both certificates rest on x -> Φ⁻¹(P(f(x + delta) ∈ A))
being (1/sigma)-Lipschitz in l2 for every set A (Salman et al. 2019, Lemma 2), which is a property
of N(0, sigma² I). :meth:`SmoothedRegressor.mean` accepts any noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import binom, norm
from torch import Tensor, nn

from .checks import as_batch, check_float, check_sample_sizes, ensure_eval, model_device
from .engine import Engine
from .errors import InputError, InputTypeError
from .noise import Gaussian, Noise, get_noise
from .ops import mse, psnr
from .rng import make_generator
from .stats import check_alpha

__all__ = [
    "CenterCertificate",
    "CertifiedPSNR",
    "MedianBounds",
    "SmoothedRegressor",
    "center_from_draws",
    "center_quantile_level",
    "certified_psnr",
    "median_bounds_from_draws",
    "median_order_statistics",
    "mse",
    "psnr",
    "select_sigma_g",
    "smoothed_mean",
    "ssim",
    "worst_mse_ball",
    "worst_mse_box",
]


@dataclass(frozen=True)
class MedianBounds:
    """Result of :meth:`SmoothedRegressor.median_bounds` (tensors ``[B, *output_shape]``).

    ``lower``/``upper``: certified bounds (−inf/+inf where n is too small for ``eps``);
    ``median``: the empirical median of f(y + delta) at y (the median-smoothed output's estimate);
    ``k_lower``/``k_upper``: the 1-based order statistics used (0 / n + 1 mean unbounded);
    ``alpha_coordinate``: the per-side, per-coordinate level alpha / (2 d) (Bonferroni);
    ``p_lower``/``p_upper``: the quantile levels Φ(∓eps/sigma).
    """

    lower: Tensor
    median: Tensor
    upper: Tensor
    k_lower: int
    k_upper: int
    alpha_coordinate: float
    p_lower: float
    p_upper: float


@dataclass(frozen=True)
class CenterCertificate:
    """Result of :meth:`SmoothedRegressor.center`.

    ``center`` ``[B, *output_shape]``: the centre z(y); ``radius`` float64 ``[B]``: the certified
    l2 bound (1 + beta)·R on ‖z(y) − z(y')‖₂ (inf where the quantile level exceeds 1 or the
    procedure abstained); ``quantile_radius`` ``[B]``: R itself; ``r_hat`` ``[B]``: the radius of
    the centre's ball holding more than 1/2 − delta of the mass; ``mass`` ``[B]``: the fraction of
    the n draws inside it; ``abstained`` bool ``[B]``: n too small for the margin delta.
    """

    center: Tensor
    radius: Tensor
    quantile_radius: Tensor
    r_hat: Tensor
    mass: Tensor
    abstained: Tensor


def median_order_statistics(*, n: int, p_lower: float, p_upper: float, alpha: float) -> tuple[int, int]:
    """1-based order statistics (k_l, k_u) of n i.i.d. draws X_(1) <= ... <= X_(n) with

        P(X_(k_l) > q⁻(p_lower)) <= alpha   and   P(X_(k_u) < q⁺(p_upper)) <= alpha,

    where q⁻(p) = inf{t : F(t) >= p} and q⁺(p) = sup{t : F(t) <= p} are the lower/upper p-quantiles of
    the draws' CDF F (any F, atoms allowed). Derivation: X_(k) > q⁻ iff #{X_i <= q⁻} <= k − 1, and
    #{X_i <= q⁻} ~ Bin(n, F(q⁻)) with F(q⁻) >= p, so the probability is at most BinCDF(k − 1; n, p);
    k_l is the largest k with BinCDF(k − 1; n, p_lower) <= alpha. Symmetrically X_(k) < q⁺ iff
    #{X_i < q⁺} >= k with P(X < q⁺) <= p, so k_u is the smallest k with P(Bin(n, p_upper) >= k) <= alpha.
    Returns k_l = 0 (no lower bound: −inf) or k_u = n + 1 (no upper bound: +inf) when no order
    statistic qualifies.
    """
    ks = np.arange(1, n + 1)
    ok_l = binom.cdf(ks - 1, n, p_lower) <= alpha
    k_l = int(ks[ok_l].max()) if ok_l.any() else 0
    ok_u = binom.sf(ks - 1, n, p_upper) <= alpha  # sf(k - 1) = P(Bin >= k)
    k_u = int(ks[ok_u].min()) if ok_u.any() else n + 1
    return k_l, k_u


def _dkw_width(alpha: float, n: int) -> float:
    """sqrt(ln(1/alpha) / (2 n)): the one-sided DKW margin of an empirical CDF of n draws at level alpha."""
    return math.sqrt(math.log(1 / alpha) / (2 * n))


def _check_center_params(delta: float, beta: float) -> tuple[float, float]:
    delta = check_float("delta", delta, strict=True)
    if delta >= 0.5:
        raise InputError(f"delta must be in (0, 1/2), got {delta}")
    return delta, check_float("beta", beta, minimum=1.0)


def center_quantile_level(*, eps: float, sigma: float, delta: float, n: int, alpha: float) -> float:
    """The empirical quantile level of center smoothing's certifying radius (Kumar & Goldstein 2021):
    Φ(Φ⁻¹(1/2 + delta) + eps/sigma) + sqrt(ln(1/alpha) / (2 n)); above 1 nothing can be certified."""
    return float(norm.cdf(norm.ppf(0.5 + delta) + eps / sigma) + _dkw_width(alpha, n))


def _check_eps(eps: float) -> float:
    try:
        return check_float("eps", eps)
    except InputError:
        raise InputError(f"eps must be a finite number >= 0 (an l2 radius), got {eps!r}") from None


class SmoothedRegressor:
    """A regression model f smoothed by additive noise: mean, median bounds and center smoothing.

    Args:
        model: f, ``[B, ...]`` inputs in [0, 1] -> ``[B, ...]`` outputs (any output shape, the same
            for every input); switched to eval mode when sampled.
        noise: the smoothing distribution (:func:`smoothcert.noise.get_noise`); the certificates
            (:meth:`median_bounds`, :meth:`center`) need :class:`~smoothcert.noise.Gaussian` noise.
        engine: how f is evaluated on noisy copies (:class:`~smoothcert.engine.Engine`: precision,
            layout, compilation, automatic batch sizes); default ``Engine()`` (fp32). The precision
            is part of the smoothed model: the guarantees hold for f as evaluated.

    Inputs ``y`` are ``[B, C, H, W]`` or ``[B, D]`` (a single ``[C, H, W]``/``[D]`` is promoted),
    finite and in [0, 1]. Every method takes ``generator`` (a ``torch.Generator`` or an int seed;
    None: torch's global RNG) and ``batch_size`` (rows per forward pass, or ``"auto"``; draws of
    several inputs may share one).
    """

    def __init__(self, model: nn.Module, *, noise: Noise, engine: Engine | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(noise, Noise):
            raise InputTypeError(f"noise must be a smoothcert Noise (get_noise(...)), got {type(noise).__name__}")
        if engine is not None and not isinstance(engine, Engine):
            raise InputTypeError(f"engine must be a smoothcert Engine, got {type(engine).__name__}")
        self.model = model
        self.noise = noise
        self.engine = Engine() if engine is None else engine

    def __repr__(self) -> str:
        return f"SmoothedRegressor({type(self.model).__name__}, noise={self.noise!r}, engine={self.engine!r})"

    # ---- sampling ----

    def _chunks(self, y: Tensor, *, n: int, batch_size: int | str, generator: torch.Generator | None
                ) -> Iterator[tuple[Tensor, Tensor]]:
        """``(owner [b], outputs [b, D])`` per chunk of noisy rows from the engine, in row order (input
        0's n draws first); padding rows of a fixed-shape engine come last, with owner B."""
        for owner, out in self.engine.outputs(self.model, y, self.noise, n=n, batch_size=batch_size,
                                              generator=generator):
            yield owner, out.flatten(1)

    def _prepare(self, y: Tensor, generator: int | torch.Generator | None) -> tuple[Tensor, torch.Generator | None]:
        y = as_batch(y, name="y")
        ensure_eval(self.model)
        return y, make_generator(generator, model_device(self.model))

    def _output_shape(self, y: Tensor) -> tuple[int, ...]:
        with torch.inference_mode():
            out = self.model(y[:1].to(model_device(self.model)))
        return tuple(out.shape[1:])

    def samples(self, y: Tensor, *, n: int, batch_size: int | str, generator: int | torch.Generator | None = None) -> Tensor:
        """All n outputs f(y_b + delta_j): float32 ``[B, n, *output_shape]`` on the model's device
        (memory B·n·d floats: meant for the median and for tests, not for large n)."""
        y, gen = self._prepare(y, generator)
        return self._samples(y, n=n, batch_size=batch_size, generator=gen)

    def _samples(self, y: Tensor, *, n: int, batch_size: int | str, generator: torch.Generator | None) -> Tensor:
        check_sample_sizes(n=n, batch_size=batch_size)
        shape = self._output_shape(y)
        count = y.shape[0]
        store = torch.empty(count * n, math.prod(shape), device=model_device(self.model))
        offset = 0
        for _, out in self._chunks(y, n=n, batch_size=batch_size, generator=generator):
            real = min(out.shape[0], count * n - offset)  # padding rows come last; no device sync
            store[offset:offset + real] = out[:real].float()
            offset += real
        return store.view(count, n, *shape)

    def mean(self, y: Tensor, *, n: int, batch_size: int | str, generator: int | torch.Generator | None = None) -> Tensor:
        """The thesis's smoothed estimate ĝ(y) = (1/n) Σ_j f(y + delta_j), delta_j i.i.d. from the noise
        (eq. 8): an unbiased Monte Carlo estimate of g(y) = E f(y + delta), accumulated in float64.

        Returns float32 ``[B, *output_shape]`` on the model's device.
        """
        y, gen = self._prepare(y, generator)
        check_sample_sizes(n=n, batch_size=batch_size)
        shape = self._output_shape(y)
        count = y.shape[0]
        sums = torch.zeros(count + 1, math.prod(shape), dtype=torch.float64, device=model_device(self.model))
        for owner, out in self._chunks(y, n=n, batch_size=batch_size, generator=gen):
            sums.index_add_(0, owner, out.double())
        return (sums[:count] / n).float().view(count, *shape)

    def _gaussian_sigma(self, what: str) -> float:
        if not isinstance(self.noise, Gaussian):
            raise InputTypeError(
                f"{what} certifies l2 balls under Gaussian noise only; this regressor smooths with "
                f"{type(self.noise).__name__} noise (use get_noise('gaussian', sigma=...))"
            )
        return self.noise.sigma

    def median_bounds(
        self,
        y: Tensor,
        *,
        eps: float,
        n: int,
        alpha: float,
        batch_size: int | str,
        generator: int | torch.Generator | None = None,
    ) -> MedianBounds:
        """Certified per-coordinate bounds on the median-smoothed output (Chiang et al. 2020).

        Guarantee: with probability at least 1 − alpha over the n draws, for **every** output
        coordinate i simultaneously and every y' with ‖y' − y‖₂ <= eps, every median of
        f_i(y' + delta) lies in [lower_i, upper_i]. (Per input y_b; a batch is B such statements.)

        Construction. For a threshold t, y -> Φ⁻¹(P(f_i(y + delta) <= t)) is (1/sigma)-Lipschitz
        (Salman et al. 2019, Lemma 2), so any median of f_i(y' + delta) lies in
        [q⁻_i(Φ(−eps/sigma)), q⁺_i(Φ(eps/sigma))], the lower/upper quantiles of f_i(y + delta) at y
        (Chiang et al. 2020, Thm 1 with p = 1/2). Each quantile is bounded by an order statistic of
        the n draws at level alpha / (2 d) (:func:`median_order_statistics`): d coordinates times two
        sides, combined by Bonferroni's union bound, which needs no independence between
        coordinates (they share the draws). The same order statistics serve every coordinate.

        Args:
            eps: l2 radius of the input perturbation (>= 0); eps = 0 gives a confidence interval
                for the median at y itself.
            n: draws per input; alpha: in (0, 1).
        Returns:
            :class:`MedianBounds` with ``[B, *output_shape]`` tensors on the model's device.
            Coordinates get ±inf when n is too small for eps at this alpha (roughly when
            Φ(−eps/sigma) < ln(2d/alpha)/n).
        """
        sigma = self._gaussian_sigma("median_bounds")
        eps = _check_eps(eps)
        alpha = check_alpha(check_float("alpha", alpha, strict=True))
        y, gen = self._prepare(y, generator)
        draws = self._samples(y, n=n, batch_size=batch_size, generator=gen)
        return median_bounds_from_draws(draws, sigma=sigma, eps=eps, alpha=alpha)

    def center(
        self,
        y: Tensor,
        *,
        eps: float,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int | str,
        generator: int | torch.Generator | None = None,
        delta: float = 0.05,
        beta: float = 2.0,
    ) -> CenterCertificate:
        """Center smoothing (Kumar & Goldstein 2021): a centre z(y) and an l2 bound on how far it moves.

        Procedure (per input y):
          1. n0 draws Z = {f(y + delta_j)}; the centre z is the candidate with the smallest median
             l2 distance to Z, the candidates being the draws (K&G's point-based approximation of the
             smallest ball holding half the mass: within a factor beta = 2 of it for the sample, since
             any draw inside that ball is within twice its radius of every draw in it) plus Z's mean
             and coordinate-wise median (a smaller ball only helps: the factor 2 still holds).
          2. n fresh draws, distances d_(1) <= ... <= d_(n) to z, t = sqrt(ln(1/alpha)/(2n)). By the
             one-sided DKW inequality (Massart 1990), with probability at least 1 − alpha,
             P(‖f(y + delta) − z‖ <= r) >= F_n(r) − t for **every** r at once, F_n the empirical CDF.
             On that event:
             r̂ = d_(k̂), k̂ = ⌊(1/2 − delta + t)·n⌋ + 1: B(z, r̂) holds more than 1/2 − delta of the mass;
             R = d_(k), k = ⌈(p + t)·n⌉, p = Φ(Φ⁻¹(1/2 + delta) + eps/sigma) (:func:`center_quantile_level`
             is p + t): B(z, R) holds at least p, so at every y' with ‖y' − y‖₂ <= eps it holds at
             least Φ(Φ⁻¹(p) − eps/sigma) = 1/2 + delta (Salman et al. 2019, Lemma 2).
          3. At such a y', the same procedure's ball B(z', r̂') holds more than 1/2 − delta, so the two
             balls intersect (masses summing past 1), and r̂' <= beta·R (r̂' is within beta of the
             smallest ball holding 1/2 + delta at y', which is no larger than B(z, R)); hence
             ‖z − z'‖₂ <= R + r̂' <= (1 + beta)·R.
          K&G estimate r̂ on the n0 draws and check its mass on fresh ones (abstaining when
          the check fails); choosing r̂ on the fresh draws under the same uniform (DKW) event gives
          the same guarantee with one confidence event instead of two, and abstains only when
          t > delta (n too small for the margin delta).

        Guarantee (Kumar & Goldstein 2021, Thm 1): with probability at least 1 − alpha (over the
        draws at y, and likewise at y'), for every y' with ‖y' − y‖₂ <= eps at which the procedure
        does not abstain, ‖z(y) − z(y')‖₂ <= radius = (1 + beta)·R. As in the paper, the factor beta
        is the approximation ratio of step 1, taken to hold for the sample.

        Args:
            eps: input l2 radius (>= 0). n0: draws choosing the centre (pairwise distances: n0² of
                them). n: independent draws for r̂ and R (n0 < n). alpha: in (0, 1).
            delta: the mass margin Δ in (0, 1/2) (the paper's default 0.05).
            beta: the enclosing-ball approximation ratio (2 for the draw with the smallest median).
        Returns:
            :class:`CenterCertificate` (``mass``: k̂/n, the empirical mass of B(z, r̂)).
        """
        sigma = self._gaussian_sigma("center")
        eps = _check_eps(eps)
        alpha = check_alpha(check_float("alpha", alpha, strict=True))
        delta, beta = _check_center_params(delta, beta)  # before any draw
        check_sample_sizes(n=n, n0=n0, batch_size=batch_size)
        y, gen = self._prepare(y, generator)
        count = y.shape[0]
        centre = _choose_centre(self._samples(y, n=n0, batch_size=batch_size, generator=gen))
        # Step 2: distances of n fresh draws to the centre (streamed: nothing of size n·d is kept).
        dists = torch.empty(count * n, dtype=torch.float64, device=centre.device)
        offset = 0
        for owner, out in self._chunks(y, n=n, batch_size=batch_size, generator=gen):
            real = min(out.shape[0], count * n - offset)  # padding rows come last; no device sync
            dists[offset:offset + real] = (out[:real].double() - centre[owner[:real]]).norm(dim=1)
            offset += real
        return _center_certificate(centre, dists.view(count, n), self._output_shape(y), sigma=sigma, eps=eps,
                                   alpha=alpha, delta=delta, beta=beta)


def median_bounds_from_draws(draws: Tensor, *, sigma: float, eps: float, alpha: float) -> MedianBounds:
    """:meth:`SmoothedRegressor.median_bounds` from draws already made: ``draws`` ``[B, n, *shape]``
    are n i.i.d. outputs f(y_b + delta_j), delta_j ~ N(0, sigma² I), per input (the same draws may
    serve several eps: the guarantee holds for each eps separately at level 1 − alpha)."""
    eps = _check_eps(eps)
    alpha = check_alpha(check_float("alpha", alpha, strict=True))
    sigma = check_float("sigma", sigma, strict=True)
    count, n, shape = draws.shape[0], draws.shape[1], draws.shape[2:]
    d = math.prod(shape)
    alpha_c = alpha / (2 * d)
    p_lo, p_hi = float(norm.cdf(-eps / sigma)), float(norm.cdf(eps / sigma))
    k_l, k_u = median_order_statistics(n=n, p_lower=p_lo, p_upper=p_hi, alpha=alpha_c)
    flat = draws.reshape(count, n, d)
    median = flat.median(dim=1).values
    inf = torch.full_like(median, math.inf)
    lower = flat.kthvalue(k_l, dim=1).values if k_l >= 1 else -inf
    upper = flat.kthvalue(k_u, dim=1).values if k_u <= n else inf
    return MedianBounds(
        lower=lower.view(count, *shape), median=median.view(count, *shape), upper=upper.view(count, *shape),
        k_lower=k_l, k_upper=k_u, alpha_coordinate=alpha_c, p_lower=p_lo, p_upper=p_hi,
    )


def center_from_draws(
    draws0: Tensor, draws: Tensor, *, sigma: float, eps: float, alpha: float, delta: float = 0.05, beta: float = 2.0
) -> CenterCertificate:
    """:meth:`SmoothedRegressor.center` from draws already made: ``draws0`` ``[B, n0, *shape]`` choose
    the centre, ``draws`` ``[B, n, *shape]`` (independent of them) give r̂ and R; same guarantee."""
    eps = _check_eps(eps)
    alpha = check_alpha(check_float("alpha", alpha, strict=True))
    sigma = check_float("sigma", sigma, strict=True)
    centre = _choose_centre(draws0)
    count, n = draws.shape[:2]
    dists = (draws.reshape(count, n, -1).double() - centre[:, None]).norm(dim=2)
    return _center_certificate(centre, dists, tuple(draws.shape[2:]), sigma=sigma, eps=eps, alpha=alpha,
                               delta=delta, beta=beta)


def _choose_centre(draws0: Tensor) -> Tensor:
    """Step 1 of center smoothing: per input, the candidate (a draw, the draws' mean or their
    coordinate-wise median) with the smallest median distance to the draws. ``draws0``
    ``[B, n0, ...]`` -> float64 ``[B, d]``."""
    z0 = draws0.flatten(2).double()
    # Candidates: the draws, plus their mean and coordinate-wise median (closer to the middle of a
    # noisy cloud than any single draw: in d dimensions a draw sits ~sqrt(2) further from the other
    # draws than their mean does). The chosen radius can only shrink, so beta = 2 still holds.
    cand = torch.cat([z0, z0.mean(dim=1, keepdim=True), z0.median(dim=1, keepdim=True).values], dim=1)
    med = torch.cdist(cand, z0).median(dim=2).values  # [B, n0 + 2]
    best = med.argmin(dim=1)
    return cand[torch.arange(z0.shape[0], device=z0.device), best]


def _center_certificate(
    centre: Tensor, dists: Tensor, shape: tuple[int, ...], *, sigma: float, eps: float, alpha: float,
    delta: float, beta: float,
) -> CenterCertificate:
    """Steps 2-3 of center smoothing from the distances ``[B, n]`` of n fresh draws to ``centre``."""
    delta, beta = _check_center_params(delta, beta)
    count, n = dists.shape
    dists = dists.sort(dim=1).values
    t = _dkw_width(alpha, n)
    abstain = t > delta
    k_hat = min(n, math.floor((0.5 - delta + t) * n) + 1)
    r_hat = dists[:, k_hat - 1]
    level = center_quantile_level(eps=eps, sigma=sigma, delta=delta, n=n, alpha=alpha)
    inf = torch.full((count,), math.inf, dtype=torch.float64, device=dists.device)
    quantile_radius = inf if level > 1 else dists[:, max(1, math.ceil(level * n - 1e-9)) - 1]
    radius = inf if abstain else (1 + beta) * quantile_radius
    return CenterCertificate(
        center=centre.float().view(count, *shape), radius=radius, quantile_radius=quantile_radius,
        r_hat=r_hat, mass=torch.full_like(r_hat, k_hat / n),
        abstained=torch.full((count,), abstain, dtype=torch.bool, device=dists.device),
    )


def smoothed_mean(
    model: nn.Module, y: Tensor, *, sigma_g: float, n: int, batch_size: int | str,
    generator: int | torch.Generator | None = None,
) -> Tensor:
    """ĝ(y) = mean of f(y + N(0, sigma_g² I)) over ``n`` draws (:meth:`SmoothedRegressor.mean`); at
    ``sigma_g`` = 0 the model itself, one forward pass (no noise, no draws)."""
    if sigma_g == 0:
        with torch.no_grad():
            return model(y)
    return SmoothedRegressor(model, noise=get_noise("gaussian", sigma=sigma_g)).mean(
        y, n=n, batch_size=batch_size, generator=generator)


def select_sigma_g(
    model: nn.Module,
    y: Tensor,
    x: Tensor,
    *,
    sigma_gs: list[float] | tuple[float, ...],
    n: int,
    batch_size: int | str = 256,
    generator: int,
    scores: dict[float, float] | None = None,
) -> tuple[float, dict[float, float]]:
    """The thesis's choice of the smoothing level sigma_g on a validation split: the candidate whose
    smoothed mean ĝ(y) (``n`` Gaussian draws, seeded by ``generator``) has the lowest MSE against the
    references ``x``; sigma_g = 0 is the base model f(y) itself (no smoothing).

    ``y``: validation inputs ``[B, ...]`` (clean or attacked), ``x``: references ``[B, *output_shape]``.
    ``scores``: MSEs already computed for some candidates (same model, inputs, n and generator): only
    the others are evaluated. Every candidate is scored with the same seed, so a score does not depend
    on which other candidates are in the list and an extended grid gives the same choice as a fresh one.
    Returns ``(sigma_g, scores)`` with ``scores`` the mean validation MSE per candidate (ties: the first).
    """
    if not sigma_gs:
        raise InputError("select_sigma_g needs at least one sigma_g candidate")
    done = dict(scores or {})
    candidates = [check_float("sigma_g", s) for s in sigma_gs]
    for s in candidates:
        if s in done:
            continue
        out = smoothed_mean(model, y, sigma_g=s, n=n, batch_size=batch_size, generator=generator)
        done[s] = float(mse(out, x).mean())
    ranked = {s: done[s] for s in candidates}
    return min(ranked, key=ranked.get), ranked


# ---- metrics and certified worst cases ----


def ssim(output: Tensor, reference: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Per-image SSIM ``[B]`` (float64) of ``[B, C, H, W]`` images, by scikit-image's
    ``structural_similarity`` (Wang et al. 2004; 7×7 uniform window, channels averaged; outputs are
    clipped to the data range first, as an image would be saved). Needs the ``superres`` extra."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError as e:  # optional dependency
        raise InputError("SSIM needs scikit-image: pip install 'smoothcert[superres]'") from e
    _same_shape(output, reference)
    if output.ndim != 4:
        raise InputError(f"ssim takes [B, C, H, W] images, got shape {tuple(output.shape)}")
    out = output.detach().double().clamp(0, data_range).cpu().numpy()
    ref = reference.detach().double().cpu().numpy()
    vals = [structural_similarity(o, r, channel_axis=0, data_range=data_range) for o, r in zip(out, ref, strict=True)]
    return torch.tensor(vals, dtype=torch.float64)


def _same_shape(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise InputError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def worst_mse_box(
    lower: Tensor, upper: Tensor, reference: Tensor, *, value_range: tuple[float, float] | None = None
) -> Tensor:
    """Certified worst-case MSE ``[B]`` over the box lower <= out <= upper: per coordinate the
    farther of the two ends from the reference, max((x − l)², (u − x)²) (the box's worst point).

    ``value_range``: intersect the box with it first. Valid when f's outputs lie in it, and always
    as the certificate of the clamped model clamp(f) (what is saved as an image): clamping is monotone,
    so it commutes with quantiles and order statistics, and clamp(lower), clamp(upper) bound the
    median of clamp(f).
    """
    _same_shape(lower, reference)
    _same_shape(upper, reference)
    lo, hi, x = lower.double(), upper.double(), reference.double()
    if value_range is not None:
        lo, hi = lo.clamp(min=value_range[0]), hi.clamp(max=value_range[1])
    worst = torch.maximum((x - lo).pow(2), (hi - x).pow(2))
    return worst.flatten(1).mean(dim=1)


def worst_mse_ball(center: Tensor, radius: Tensor, reference: Tensor) -> Tensor:
    """Certified worst-case MSE ``[B]`` over the l2 ball B(center, radius): (‖center − x‖₂ + R)² / d."""
    _same_shape(center, reference)
    d = center[0].numel()
    gap = (center.double() - reference.double()).flatten(1).norm(dim=1)
    return (gap + radius.double().to(gap.device)).pow(2) / d



@dataclass(frozen=True)
class CertifiedPSNR:
    """Both certificates at one eps for B inputs and their PSNRs against the reference, each
    ``[B]`` float64: the clean PSNR of the median / centre and the certified worst case (the PSNR
    at the worst point of the certified box / ball; the box clipped to ``value_range`` when given)."""

    box: MedianBounds
    ball: CenterCertificate
    median_clean: Tensor
    median_certified: Tensor
    center_clean: Tensor
    center_certified: Tensor


def certified_psnr(
    draws0: Tensor, draws: Tensor, reference: Tensor, *, sigma: float, eps: float, alpha: float,
    delta: float = 0.05, value_range: tuple[float, float] | None = None,
) -> CertifiedPSNR:
    """:func:`median_bounds_from_draws` and :func:`center_from_draws` at ``eps`` from the same
    draws (``draws0`` ``[B, n0, *shape]`` for the centre's choice, ``draws`` ``[B, n, *shape]``),
    and the PSNR (data range 1) of each against ``reference`` ``[B, *shape]``: the clean one and the
    certified worst case over all inputs within ``eps`` (each at level 1 − alpha)."""
    box = median_bounds_from_draws(draws, sigma=sigma, eps=eps, alpha=alpha)
    ball = center_from_draws(draws0, draws, sigma=sigma, eps=eps, alpha=alpha, delta=delta)
    return CertifiedPSNR(
        box=box, ball=ball,
        median_clean=psnr(mse(box.median, reference)),
        median_certified=psnr(worst_mse_box(box.lower, box.upper, reference, value_range=value_range)),
        center_clean=psnr(mse(ball.center, reference)),
        center_certified=psnr(worst_mse_ball(ball.center, ball.radius, reference)),
    )
