"""Score-based denoising: multi-scale denoising score matching, one-step and multi-step denoisers.

Source: "Efficient randomized smoothing by denoising with learned score function" (the
score-based denoised smoothing paper in ``shared/papers``), Sec. 3.1-3.3 and Algorithm 1, after
Song & Ermon 2019 (NCSN) for the multi-scale loss and the annealed step sizes.

A *score* is any callable ``score(y, sigma) -> Tensor`` with ``y`` ``[B, ...]`` and ``sigma`` a
``[B]`` tensor of noise levels (same device and dtype as ``y``), returning an estimate of
``grad_y log p_sigma(y)`` of ``y``'s shape, where ``p_sigma = p * N(0, sigma^2 I)`` is the data
density smoothed by Gaussian noise of standard deviation ``sigma``. A trained
:class:`~smoothcert.denoise.ScoreNet` is one; an exact analytic score is another (the tests).

Conventions (written once, here):

* ``ladder``: noise levels ``sigma_1 > sigma_2 > ... > sigma_L > 0`` (standard deviations),
  geometric by :func:`sigma_ladder`. Song & Ermon use ``sigma_1 = 1``, ``sigma_L = 0.01``,
  ``L = 10`` for 32x32 images in [0, 1].
* Noise potentials ``phi`` with ``q(u) proportional to exp(-phi(u))``, in this package's noise
  conventions (``sigma`` the per-coordinate standard deviation, see :mod:`smoothcert.noise`):
  Gaussian ``phi(u) = ||u||_2^2 / (2 sigma^2)``; Laplace ``phi(u) = ||u||_1 / lambda`` with the
  scale ``lambda = sigma / sqrt(2)``; uniform ``phi(u) = 0`` on the box ``[-lambda, lambda]^d``
  with half-width ``lambda = sigma sqrt(3)``, infinite outside. (The paper writes
  ``q_lambda(u) = exp(-phi(u / lambda))``; the scales are the same, only absorbed into ``phi``.)
  Every ``phi`` is even, so ``phi(y - x) = phi(x - y)``.
* The multi-step denoiser is gradient descent on the approximate MAP objective of the paper's Sec. 3.1,
  ``L(x; y) = -log p_sigma_i(x) + phi(x - y)``, whose gradient is
  ``-s(x, sigma_i) + grad phi(x - y)``. The update is therefore
  ``x <- x + alpha_i (s(x, sigma_i) - grad phi(x - y))``. Algorithm 1 of the paper prints
  ``x + alpha_i (s + grad_x phi(x - y))``, which taken literally *ascends* on ``phi``; the
  objective it descends (and the paper's gradient step ``x - alpha grad L_MAP``) fix the sign used here, and
  the tests check that the objective decreases. For uniform noise ``phi`` is an indicator, so its gradient
  step is the Euclidean projection onto ``{x : x - y in [-lambda, lambda]^d}`` (projected gradient descent).
* Each noise carries its own ``phi`` and step: :meth:`~smoothcert.noise.Noise.potential`,
  :meth:`~smoothcert.noise.Noise.map_step` and the step bound
  :attr:`~smoothcert.noise.Noise.map_step_limit`; this module only calls them, so a noise of one's
  own denoises once it implements them.
* Step sizes ``alpha_i = alpha sigma_i^2 / sigma_L^2`` (Algorithm 1 writes ``sigma^2`` in the
  denominator; as in Song & Ermon's annealed Langevin dynamics we take the smallest level
  ``sigma_L``, so ``alpha`` is the step of the last level).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_float, check_int
from ..errors import InputError, InputTypeError
from ..noise import Gaussian, Noise, describe_noise_mismatch
from ..rng import make_generator
from .nets import as_sigma

__all__ = [
    "MultiStepDenoiser",
    "OneStepDenoiser",
    "ScoreFn",
    "check_ladder",
    "dsm_loss",
    "level_step_sizes",
    "multistep_denoise",
    "noise_potential",
    "sigma_ladder",
    "tweedie_denoise",
]

#: ``score(y [B, ...], sigma [B]) -> [B, ...]``, an estimate of grad_y log p_sigma(y).
ScoreFn = Callable[[Tensor, Tensor], Tensor]

#: Callback of :func:`multistep_denoise`: ``(level i (0-based), step t (0-based), x after the step)``.
StepCallback = Callable[[int, int, Tensor], None]


def sigma_ladder(sigma_max: float, sigma_min: float, *, num_levels: int) -> list[float]:
    """The geometric ladder ``sigma_1 = sigma_max > ... > sigma_L = sigma_min`` of ``L = num_levels``
    levels (constant ratio ``(sigma_min / sigma_max)^(1/(L-1))``), as plain floats; e.g.
    ``sigma_ladder(1.0, 0.01, num_levels=10)``, Song & Ermon's ladder."""
    check_int("num_levels", num_levels, minimum=1)
    hi, lo = float(sigma_max), float(sigma_min)
    if not (math.isfinite(hi) and math.isfinite(lo) and hi >= lo > 0):
        raise InputError(f"need sigma_max >= sigma_min > 0, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    if num_levels == 1:
        if hi != lo:
            raise InputError("a one-level ladder needs sigma_max == sigma_min")
        return [hi]
    if hi == lo:
        raise InputError("a ladder of several levels needs sigma_max > sigma_min")
    ratio = math.log(lo / hi) / (num_levels - 1)
    levels = [hi * math.exp(ratio * i) for i in range(num_levels)]
    levels[-1] = lo  # exact end point, not exp(log(.)) rounding
    return levels


def check_ladder(ladder: Sequence[float] | Tensor) -> tuple[float, ...]:
    """``ladder`` as a tuple of floats if it is non-empty, finite, positive and strictly decreasing."""
    values = tuple(float(v) for v in (ladder.tolist() if isinstance(ladder, Tensor) else ladder))
    if not values:
        raise InputError("the sigma ladder is empty")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"ladder levels must be positive and finite, got {list(values)}")
    if any(b >= a for a, b in itertools.pairwise(values)):
        raise InputError(f"the ladder must be strictly decreasing (sigma_1 > ... > sigma_L), got {list(values)}")
    return values


def dsm_loss(
    score: ScoreFn,
    x: Tensor,
    *,
    ladder: Sequence[float] | Tensor,
    generator: int | torch.Generator | None = None,
    levels: Tensor | None = None,
) -> Tensor:
    """Multi-scale denoising score matching loss (paper Sec. 3.3; Song & Ermon 2019, Sec. 4.2).

    ``L(theta) = (1/L) sum_i sigma_i^2 * 1/2 E ||s(y; sigma_i) + (y - x) / sigma_i^2||_2^2`` with
    ``y = x + sigma_i z``, ``z ~ N(0, I)``; the norm is over all coordinates of one input, the
    expectation over inputs and noise. Each row of ``x`` [B, ...] gets one level, drawn uniformly
    (``levels`` [B] int64 indices into the ladder fixes them instead), and one noise draw; the
    mean over rows is an unbiased estimate of ``L``. The weight ``sigma_i^2`` puts every level on
    the same scale: the loss of row b is ``1/2 ||sigma_i s(y; sigma_i) + z||^2``. Its minimum over
    all score functions is reached by the true score of ``p_sigma_i`` (Vincent 2011). Returns a
    scalar with gradients to ``score``'s parameters.

    ``generator``: an int seed (a generator on ``x.device`` is made from it), a ``torch.Generator``
    on ``x``'s device, or None (torch's global RNG).
    """
    sig = torch.tensor(check_ladder(ladder), dtype=x.dtype, device=x.device)
    generator = make_generator(generator, x.device)
    b = x.shape[0]
    if levels is None:
        levels = torch.randint(len(sig), (b,), generator=generator, device=x.device)
    elif levels.shape != (b,):
        raise InputError(f"levels must be [B] = [{b}] indices into the ladder, got shape {tuple(levels.shape)}")
    sigma = sig[levels.to(x.device)]
    s = sigma.view(b, *([1] * (x.ndim - 1)))
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    out = score(x + s * z, sigma)
    return 0.5 * (s * out + z).flatten(1).pow(2).sum(1).mean()


def tweedie_denoise(score: ScoreFn, y: Tensor, *, sigma: float | Tensor) -> Tensor:
    """One-step denoiser ``x_hat = y + sigma^2 s(y, sigma)`` (paper Prop. 3.1; Tweedie/Robbins).

    With the exact score of ``p_sigma`` this is the posterior mean E[x | y] for
    ``y = x + N(0, sigma^2 I)``, the minimiser of the MSE; it is exact only for Gaussian noise.
    ``y`` [B, ...], ``sigma`` a number or [B]; returns ``y``'s shape.
    """
    s = as_sigma(sigma, y)
    return y + (s * s).view(-1, *([1] * (y.ndim - 1))) * score(y, s)


def noise_potential(noise: Noise, u: Tensor) -> Tensor:
    """``phi(u)`` per row of ``u`` [B, ...] (float [B]), with ``q(u) proportional to exp(-phi(u))``:
    :meth:`noise.potential(u) <smoothcert.noise.Noise.potential>` (Gaussian ``||u||^2/(2 sigma^2)``,
    Laplace ``||u||_1/lambda``, uniform 0 inside ``[-lambda, lambda]^d`` and ``inf`` outside; see the
    module docstring for the lambdas)."""
    return noise.potential(u)


def level_step_sizes(ladder: Sequence[float] | Tensor, *, step_size: float) -> list[float]:
    """``alpha_i = alpha sigma_i^2 / sigma_L^2`` for each level of ``ladder`` (Algorithm 1, line 3)."""
    levels = check_ladder(ladder)
    return [float(step_size) * (s / levels[-1]) ** 2 for s in levels]


def _check_steps(noise: Noise, ladder: tuple[float, ...], steps_per_level: int, step_size: float) -> list[float]:
    noise.require("map_step")
    check_int("steps_per_level (T)", steps_per_level, minimum=1)
    check_float("step_size (alpha)", step_size, strict=True)
    alphas = level_step_sizes(ladder, step_size=step_size)
    limit = noise.map_step_limit
    if limit is not None and alphas[0] >= limit:
        warnings.warn(
            f"multi-step denoising: the first step size alpha_1 = {alphas[0]:.3g} is >= {limit:.3g}, where "
            f"gradient descent on the {noise.name} noise's potential alone diverges (Noise.map_step_limit; "
            "2 sigma^2 for Gaussian noise); lower step_size (alpha is the step of the last, smallest level)",
            stacklevel=3,
        )
    return alphas


def multistep_denoise(
    score: ScoreFn,
    y: Tensor,
    noise: Noise,
    *,
    ladder: Sequence[float] | Tensor,
    steps_per_level: int,
    step_size: float,
    callback: StepCallback | None = None,
) -> Tensor:
    """Annealed gradient descent on the MAP objective (paper Algorithm 1, signs as derived in Sec. 3.1).

    From ``x = y``, for each level ``sigma_i`` of the decreasing ``ladder`` and ``T =
    steps_per_level`` steps of ``alpha_i = alpha sigma_i^2 / sigma_L^2`` (``alpha = step_size``)::

        Gaussian, Laplace:  x <- x + alpha_i (s(x, sigma_i) - grad phi(x - y))
        uniform:            x <- clamp(x + alpha_i s(x, sigma_i), y - lambda, y + lambda)

    i.e. (projected) gradient descent on ``-log p_sigma_i(x) + phi(x - y)`` with the noise's
    potential ``phi`` (module docstring), one :meth:`~smoothcert.noise.Noise.map_step` of the
    noise per step: ``grad phi(u) = u / sigma^2`` (Gaussian), ``sign(u) / lambda`` (Laplace,
    ``lambda = sigma/sqrt(2)``; subgradient 0 at 0), and the projection onto the box of
    half-width ``lambda = sigma sqrt(3)`` (uniform). Every iterate of the uniform case satisfies
    ``|x - y| <= lambda`` coordinate-wise.

    Stability: with the exact score of Gaussian data of variance ``v`` the objective of level i
    is smooth with constant ``1/(v + sigma_i^2) + 1/sigma^2`` (Gaussian noise), and the iteration
    decreases it whenever ``alpha_i`` is below twice its inverse; a warning is given when
    ``alpha_1 >= noise.map_step_limit`` (``2 sigma^2`` for Gaussian noise). The Laplace
    subgradient step converges where the minimiser is off the kink ``x = y`` and oscillates
    across the kink within about ``2 alpha_i / lambda`` of it.

    Args:
        score: ``score(x, sigma [B])``, see :data:`ScoreFn`.
        y: noisy inputs ``[B, ...]``; the result has the same shape.
        noise: the noise that produced ``y``: Gaussian, Laplace, Uniform, or any
            :class:`~smoothcert.noise.Noise` that implements ``map_step`` (else an InputTypeError
            naming it).
        ladder: ``sigma_1 > ... > sigma_L`` at which the score is evaluated.
        steps_per_level: T.
        step_size: alpha, the step of the last level.
        callback: called as ``callback(i, t, x)`` after every step (tracing, tests).
    Gradients flow through every step (the unrolled iteration), for attacks through the denoiser;
    run under ``torch.no_grad()`` when none are needed.
    """
    levels = check_ladder(ladder)
    alphas = _check_steps(noise, levels, steps_per_level, step_size)
    return _anneal(score, y, noise, levels, alphas, steps_per_level, callback)


def _anneal(
    score: ScoreFn,
    y: Tensor,
    noise: Noise,
    levels: Sequence[float],
    alphas: Sequence[float],
    steps_per_level: int,
    callback: StepCallback | None,
) -> Tensor:
    """The iteration of :func:`multistep_denoise`, settings already checked."""
    x = y
    for i, (sigma_i, alpha_i) in enumerate(zip(levels, alphas)):
        sig = torch.full((y.shape[0],), sigma_i, dtype=y.dtype, device=y.device)
        for t in range(steps_per_level):
            x = noise.map_step(x, y, score(x, sig), step_size=alpha_i)
            if callback is not None:
                callback(i, t, x)
    return x


def _mismatch(denoiser: OneStepDenoiser | MultiStepDenoiser, noise: Noise) -> str:
    return describe_noise_mismatch(denoiser.noise, noise, what=f"the denoiser ({type(denoiser).__name__})",
                                   advice=DENOISER_MISMATCH_ADVICE)


#: The advice of denoisers' noise-mismatch warnings.
DENOISER_MISMATCH_ADVICE = "The denoiser removes the wrong noise: use a denoiser for the smoothing noise"


def _score_name(score: object) -> str:
    return type(score).__name__ if isinstance(score, nn.Module) else getattr(score, "__name__", type(score).__name__)


def _check_trained_levels(
    score: ScoreFn, levels: Sequence[float], training_ladder: Sequence[float] | Tensor | None, what: str
) -> None:
    """Warn when a level lies outside the score network's training ladder ``training_ladder`` (the
    ``ladder`` of its :class:`~smoothcert.denoise.DenoiserMeta`): the network never saw such
    sigmas, and its score there is extrapolation. None or empty: unknown, no check."""
    if training_ladder is None or (not isinstance(training_ladder, Tensor) and len(training_ladder) == 0):
        return  # unknown: nothing to compare with
    trained = check_ladder(training_ladder)
    hi, lo = trained[0], trained[-1]
    above = [v for v in levels if v > hi * (1 + 1e-9)]
    below = [v for v in levels if v < lo * (1 - 1e-9)]
    parts = []
    if above:
        parts.append(f"{', '.join(f'{v:g}' for v in above)} above the score network's largest trained level {hi:g}")
    if below:
        parts.append(f"{', '.join(f'{v:g}' for v in below)} below its smallest trained level {lo:g}")
    if parts:
        warnings.warn(
            f"{what}: sigma {' and '.join(parts)} (training ladder {hi:g} ... {lo:g}, {len(trained)} levels); "
            "the score there is extrapolated and denoising may be poor. Train the score network over a "
            "ladder that covers the smoothing sigma",
            stacklevel=3,
        )


class OneStepDenoiser(nn.Module):
    """``D(y) = y + sigma^2 s(y, sigma)`` (:func:`tweedie_denoise`) for Gaussian noise of std ``sigma``.

    Args:
        score: the score network (or callable) ``s(y, sigma)``.
        noise: the smoothing noise, a :class:`~smoothcert.noise.Gaussian` (as
            :class:`MultiStepDenoiser` takes it), or its standard deviation ``sigma`` as a number.
            Other noises are refused with a TypeError (Tweedie's formula is the posterior mean for
            Gaussian noise only: use :class:`MultiStepDenoiser`).
        training_ladder: the levels the score network was trained at (``meta.ladder`` of a loaded
            checkpoint; :func:`~smoothcert.denoise.denoiser_for_noise` passes it); a ``sigma``
            outside them gets a warning. None: unknown, no check.
    Starts in eval mode (the score network too). Plugs into :class:`~smoothcert.denoise.Denoised`;
    ``noise`` and ``sigma`` are kept as attributes. :class:`~smoothcert.noise.NoiseAware`:
    :meth:`noise_mismatch` compares ``noise`` with a smoothing noise.
    """

    def __init__(
        self,
        score: ScoreFn,
        noise: Noise | float,
        *,
        training_ladder: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__()
        if isinstance(noise, Noise):
            if not isinstance(noise, Gaussian):
                raise InputTypeError(
                    f"the one-step (Tweedie) denoiser holds for Gaussian noise only, got {noise!r}; "
                    "use MultiStepDenoiser for Laplace or uniform noise"
                )
        else:
            try:
                if isinstance(noise, (str, bytes, bool)):
                    raise TypeError
                sigma = float(noise)
            except (TypeError, ValueError):
                raise InputTypeError(f"noise must be a Gaussian noise or its sigma (a number), got {noise!r}") from None
            if not (math.isfinite(sigma) and sigma > 0):
                raise InputError(f"sigma must be positive, got {sigma}")
            noise = Gaussian(sigma=sigma)
        self.score = score
        self.noise = noise
        _check_trained_levels(score, [noise.sigma], training_ladder, "one-step denoiser")
        self.eval()

    @property
    def sigma(self) -> float:
        """The standard deviation of the Gaussian noise it denoises."""
        return float(self.noise.sigma)

    def settings(self) -> dict[str, Any]:
        """The denoiser's settings as a plain dict (for run records)."""
        return {"denoiser": "one-step", "score": _score_name(self.score), "noise": "gaussian", "sigma": self.sigma}

    def forward(self, y: Tensor) -> Tensor:
        return tweedie_denoise(self.score, y, sigma=self.sigma)

    def noise_mismatch(self, noise: Noise) -> str:
        """'' if this denoiser removes ``noise`` (same family and sigma), else why not
        (:class:`~smoothcert.noise.NoiseAware`)."""
        return _mismatch(self, noise)

    def __repr__(self) -> str:
        return f"OneStepDenoiser(score={_score_name(self.score)}, noise={self.noise!r})"


class MultiStepDenoiser(nn.Module):
    """:func:`multistep_denoise` with fixed settings, as a module ``y -> x_hat``.

    Args:
        score: the score network (or callable) ``s(x, sigma)``.
        noise: the smoothing noise (Gaussian, Laplace or Uniform, from :func:`smoothcert.noise.get_noise`;
            any :class:`~smoothcert.noise.Noise` that implements ``map_step``).
        ladder: ``sigma_1 > ... > sigma_L``; e.g. ``sigma_ladder(noise.sigma, 0.01, num_levels=10)``.
        steps_per_level: T.
        step_size: alpha (the step of the last level; level i steps ``alpha sigma_i^2 / sigma_L^2``).
            ``alpha / sigma_L^2`` is the fraction of the way to each level's Tweedie estimate that a
            score step moves, so alpha must scale with the ladder's last level:
            :func:`~smoothcert.denoise.default_step_size` gives ``sigma_L^2`` (c = 1).
        training_ladder: the levels the score network was trained at (``meta.ladder`` of a loaded
            checkpoint; :func:`~smoothcert.denoise.denoiser_for_noise` passes it); levels of
            ``ladder`` outside them get a warning. None: unknown, no check.
    :meth:`settings` records all of them, the per-level steps included, for a run's record.
    Starts in eval mode (the score network too). :class:`~smoothcert.noise.NoiseAware`:
    :meth:`noise_mismatch` compares ``noise`` with a smoothing noise.
    """

    def __init__(
        self,
        score: ScoreFn,
        noise: Noise,
        *,
        ladder: Sequence[float] | Tensor,
        steps_per_level: int,
        step_size: float,
        training_ladder: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(noise, Noise):
            raise InputTypeError("noise must be a smoothcert Noise; build one with get_noise(name, sigma=...)")
        self.ladder = check_ladder(ladder)
        self._alphas = _check_steps(noise, self.ladder, steps_per_level, step_size)
        self.score = score
        self.noise = noise
        self.steps_per_level = steps_per_level
        self.step_size = float(step_size)
        _check_trained_levels(score, self.ladder, training_ladder, "multi-step denoiser")
        self.eval()

    def settings(self) -> dict[str, Any]:
        """The denoiser's settings as a plain dict (for run records)."""
        return {
            "denoiser": "multi-step",
            "score": _score_name(self.score),
            "noise": self.noise.name,
            "sigma": self.noise.sigma,
            "ladder": list(self.ladder),
            "steps_per_level": self.steps_per_level,
            "step_size": self.step_size,
            "level_step_sizes": level_step_sizes(self.ladder, step_size=self.step_size),
        }

    def forward(self, y: Tensor) -> Tensor:
        return _anneal(self.score, y, self.noise, self.ladder, self._alphas, self.steps_per_level, None)

    def noise_mismatch(self, noise: Noise) -> str:
        """'' if this denoiser removes ``noise`` (same family and sigma), else why not
        (:class:`~smoothcert.noise.NoiseAware`)."""
        return _mismatch(self, noise)

    def __repr__(self) -> str:
        ladder = ", ".join(f"{s:.4g}" for s in self.ladder)
        return (
            f"MultiStepDenoiser(score={_score_name(self.score)}, noise={self.noise!r}, ladder=[{ladder}], "
            f"steps_per_level={self.steps_per_level}, step_size={self.step_size:g})"
        )
