"""A denoiser for one smoothing noise from a loaded network and its metadata: :func:`denoiser_for_noise`
(with :data:`DENOISE_MODES`, :func:`multistep_ladder`, :func:`default_step_size`), and
:func:`trained_noise`, the noise a denoiser checkpoint was trained for.

A denoiser checkpoint (kind ``"denoiser"``) is ``D`` itself, trained for one noise and sigma. A
score network (kind ``"score"``) becomes ``D`` through :class:`OneStepDenoiser` (Tweedie,
Gaussian noise only) or :class:`MultiStepDenoiser` (annealed MAP descent, any of the three
noises) with a ladder starting at the smoothing noise's standard deviation.

What a network was trained for travels in its :class:`~smoothcert.denoise.DenoiserMeta`, never on
the network: :func:`denoiser_for_noise` hands ``meta.ladder`` to the score denoisers, and
``Denoised(f, D, trained_for=trained_noise(meta))`` lets smoothing warn about a DnCNN made for
another noise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from torch import Tensor, nn

from ..checks import check_float
from ..errors import InputError
from ..noise import Gaussian, Noise, get_noise
from .checkpoint import DenoiserMeta
from .score import MultiStepDenoiser, OneStepDenoiser, check_ladder

__all__ = [
    "DENOISE_MODES",
    "MULTISTEP_DEFAULTS",
    "default_step_size",
    "denoiser_for_noise",
    "multistep_ladder",
    "trained_noise",
]

#: How a score network denoises: Tweedie's formula or annealed MAP descent.
DENOISE_MODES = ("one-step", "multi-step")

#: Default multi-step settings: T = 1 step per level and step ratio c = alpha / sigma_L^2 = 1,
#: where sigma_L is the last level of the annealing ladder. Since alpha_i / sigma_i^2 = alpha /
#: sigma_L^2 = c at every level, each score step moves the fraction c of the way towards that
#: level's Tweedie estimate, whatever the ladder (an absolute alpha tuned for one ladder is 25x
#: too small on a ladder ending at 0.05 instead of 0.01); the Gaussian data term's step
#: alpha_1 / sigma^2 = c stays below its divergence bound 2. Chosen by denoising PSNR on MNIST
#: (benchmarks/multistep_tuning.py, BENCHMARKS.md: over 3 noises x 3 sigmas, within 1.1 dB of the
#: best of T in {1, 3}, c in {0.01 .. 1.5} everywhere, 0.35 dB on average, at a third of T = 3's cost).
MULTISTEP_DEFAULTS = {"steps_per_level": 1, "step_ratio": 1.0}


def default_step_size(ladder: Sequence[float] | Tensor, *, step_ratio: float | None = None) -> float:
    """alpha = c sigma_L^2 for the annealing ``ladder`` (c = ``step_ratio``, default
    :data:`MULTISTEP_DEFAULTS`): the step of the last level that moves each score step the
    fraction c of the way to its level's Tweedie estimate."""
    ratio = MULTISTEP_DEFAULTS["step_ratio"] if step_ratio is None else step_ratio
    ratio = check_float("step_ratio", ratio, strict=True)
    return ratio * check_ladder(ladder)[-1] ** 2


def multistep_ladder(training_ladder: Sequence[float] | Tensor, *, sigma: float) -> list[float]:
    """The annealing ladder for smoothing noise of standard deviation ``sigma``: ``sigma`` itself,
    then every level of the score network's ``training_ladder`` below it.

    The first level matches the noise in ``y`` (per-coordinate std ``sigma`` for every noise of
    :mod:`smoothcert.noise`), later levels are ones the network was trained at. A ``sigma`` outside
    the trained levels is extrapolation; :class:`MultiStepDenoiser` warns about it.
    """
    levels = check_ladder(training_ladder)
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise InputError(f"sigma must be positive, got {sigma}")
    below = [s for s in levels if s < sigma * (1 - 1e-9)]
    return [sigma, *below]


def trained_noise(meta: DenoiserMeta) -> Noise | None:
    """The noise a denoiser checkpoint (kind ``"denoiser"``) was trained for, from its metadata; None
    for a score network (trained over a ladder, not one noise) or a noise this installation does not
    know. Pass it to :class:`~smoothcert.denoise.Denoised` as ``trained_for``."""
    if meta.kind != "denoiser" or meta.noise == "none" or meta.sigma <= 0:
        return None
    try:
        return get_noise(meta.noise, sigma=meta.sigma)
    except (KeyError, TypeError, ValueError):
        return None


def denoiser_for_noise(
    net: nn.Module,
    meta: DenoiserMeta,
    noise: Noise,
    *,
    mode: str | None = None,
    steps_per_level: int | None = None,
    step_size: float | None = None,
    ladder: Sequence[float] | None = None,
) -> nn.Module:
    """The denoiser ``D`` (``[B, C, H, W] -> [B, C, H, W]``) for smoothing with ``noise``.

    Args:
        net, meta: from :func:`~smoothcert.denoise.load_denoiser`.
        noise: the smoothing noise.
        mode: score networks only: ``"one-step"`` (Gaussian noise only) or ``"multi-step"``;
            default one-step for Gaussian noise, multi-step otherwise.
        steps_per_level, step_size, ladder: multi-step only; defaults: T from
            :data:`MULTISTEP_DEFAULTS`, :func:`multistep_ladder` of the training ladder, and
            :func:`default_step_size` of that ladder.
    The result is in eval mode. A denoiser trained for another noise or sigma is returned with a
    warning (the certificate stays valid for the composition; only its accuracy may suffer), and so
    is a score-network denoiser with a sigma outside ``meta.ladder``. A denoiser network is returned
    as it is (nothing is noted on it): give ``Denoised`` its ``trained_for=trained_noise(meta)``.
    """
    multi = {"steps_per_level": steps_per_level, "step_size": step_size, "ladder": ladder}
    if meta.kind == "denoiser":
        if mode is not None or any(v is not None for v in multi.values()):
            raise InputError(f"mode/steps/step size/ladder are settings of score networks; {meta.arch!r} is a denoiser")
        if (meta.noise, meta.sigma) != (noise.name, noise.sigma):
            warnings.warn(f"the denoiser was trained for {meta.noise} noise sigma {meta.sigma:g}; "
                          f"smoothing uses {noise.name} sigma {noise.sigma:g}", stacklevel=2)
        return net
    if mode is None:
        mode = "one-step" if isinstance(noise, Gaussian) else "multi-step"
    if mode not in DENOISE_MODES:
        raise InputError(f"mode must be one of {DENOISE_MODES}, got {mode!r}")
    if mode == "one-step":
        if any(v is not None for v in multi.values()):
            raise InputError("steps/step size/ladder are settings of the multi-step denoiser (mode='multi-step')")
        if not isinstance(noise, Gaussian):
            raise InputError(f"the one-step (Tweedie) denoiser holds for Gaussian noise only, not {noise.name}; "
                             "use mode='multi-step'")
        return OneStepDenoiser(net, noise, training_ladder=meta.ladder or None)
    ladder = ladder if ladder is not None else multistep_ladder(meta.ladder, sigma=noise.sigma)
    return MultiStepDenoiser(
        net, noise, ladder=ladder,
        steps_per_level=steps_per_level if steps_per_level is not None else MULTISTEP_DEFAULTS["steps_per_level"],
        step_size=step_size if step_size is not None else default_step_size(ladder),
        training_ladder=meta.ladder or None,
    )
