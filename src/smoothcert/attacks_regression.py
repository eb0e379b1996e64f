"""Attacks on regression (image-to-image) models: l2 PGD on the output error, plain and through noise.

Pure functions of (model, inputs, targets): :func:`pgd_regression` maximises ‖f(y + e) − x‖² over
‖e‖₂ <= eps with normalised-gradient steps and projection (the thesis's eq. 10, Madry et al. 2018);
:func:`eot_pgd_regression` is its expectation-over-noise version against the smoothed estimate
ĝ(y) = (1/k) Σ f(y + δ_j) (the adaptive attack on a smoothed regressor). :func:`relative_eps` turns the
thesis's relative budget into an l2 radius, eps = sqrt(d)·eps_rel (eq. 9).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .errors import InputError
from .noise import Noise
from .rng import make_generator

__all__ = ["eot_pgd_regression", "pgd_regression", "relative_eps"]


def relative_eps(eps_rel: float, shape: tuple[int, ...] | torch.Size) -> float:
    """The thesis's budget (eq. 9): eps = sqrt(d)·eps_rel, d = c·h·w the size of one input ``shape``
    (``[C, H, W]``; a leading batch dimension is not counted when given ``[B, C, H, W]``)."""
    if not math.isfinite(eps_rel) or eps_rel < 0:
        raise InputError(f"eps_rel must be a finite number >= 0, got {eps_rel}")
    dims = tuple(shape)[-3:] if len(shape) >= 3 else tuple(shape)
    return math.sqrt(math.prod(dims)) * eps_rel


def _norms(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))


def _check(y: Tensor, x: Tensor, eps: float, steps: int) -> None:
    if y.shape[0] != x.shape[0]:
        raise InputError(f"inputs and targets have different batch sizes: {y.shape[0]} vs {x.shape[0]}")
    if not math.isfinite(eps) or eps < 0:
        raise InputError(f"eps must be a finite number >= 0 (an l2 radius), got {eps}")
    if int(steps) != steps or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps}")


def _pgd(loss_of, y: Tensor, *, eps: float, steps: int, step_size: float | None, random_start: bool,
         clip: bool, generator: torch.Generator | None) -> Tensor:
    y = y.detach()
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    e = torch.zeros_like(y)
    if random_start and eps > 0:
        g = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        u = torch.rand(y.shape[0], generator=generator, device=y.device, dtype=y.dtype)
        e = g / _norms(g).clamp_min(1e-12) * eps * u.pow(1 / y[0].numel()).view(-1, *([1] * (y.ndim - 1)))
        if clip:
            e = (y + e).clamp(0, 1) - y
    if eps == 0:
        return y.clone()
    for _ in range(steps):
        e.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of(y + e), e)
        with torch.no_grad():
            n = _norms(grad)
            # A zero gradient (a flat model) takes a random direction rather than stalling.
            if bool((n == 0).any()):
                rnd = torch.randn(grad.shape, generator=generator, device=grad.device, dtype=grad.dtype)
                grad = torch.where(n == 0, rnd, grad)
                n = _norms(grad)
            e = e + alpha * grad / n
            e = e * torch.clamp(eps / _norms(e).clamp_min(1e-12), max=1.0)  # project onto ‖e‖ <= eps
            if clip:
                # Clipping moves each coordinate towards y (in [0, 1]): ‖e‖ never grows.
                e = (y + e).clamp(0, 1) - y
    return (y + e).detach()


def pgd_regression(
    model: nn.Module,
    y: Tensor,
    x: Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float | None = None,
    random_start: bool = False,
    clip: bool = True,
    generator: int | torch.Generator | None = None,
) -> Tensor:
    """l2 PGD maximising the squared output error ‖f(y + e) − x‖² (thesis eq. 10).

    Each step adds ``step_size`` times the l2-normalised gradient (per example), projects e onto
    ‖e‖₂ <= eps and, with ``clip``, clips y + e to [0, 1] (which never increases ‖e‖).

    Args:
        model: f, ``[B, ...] -> [B, ...]`` (kept in its current mode; put it in eval first).
        y: clean inputs ``[B, ...]`` in [0, 1]; x: the references ``[B, ...]`` (f's target).
        eps: l2 budget (>= 0); see :func:`relative_eps`. steps: gradient steps (>= 1).
        step_size: l2 length of a step; default 2.5·eps/steps (Madry et al.'s rule of thumb).
        random_start: start uniformly in the ball. generator: randomness of the start and of
            replacement directions for zero gradients.
    Returns:
        adversarial inputs ``[B, ...]`` with ‖y_adv − y‖₂ <= eps per example (in [0, 1] with ``clip``).
    """
    _check(y, x, eps, steps)
    x = x.detach()
    gen = make_generator(generator, y.device)

    def loss_of(inp: Tensor) -> Tensor:
        return (model(inp) - x).pow(2).sum()

    return _pgd(loss_of, y, eps=eps, steps=steps, step_size=step_size, random_start=random_start, clip=clip,
                generator=gen)


def eot_pgd_regression(
    model: nn.Module,
    y: Tensor,
    x: Tensor,
    *,
    noise: Noise,
    eps: float,
    steps: int,
    samples: int,
    step_size: float | None = None,
    random_start: bool = False,
    clip: bool = True,
    generator: int | torch.Generator | None = None,
) -> Tensor:
    """l2 PGD against the smoothed estimate: maximises ‖(1/k) Σ_j f(y + e + δ_j) − x‖² with k =
    ``samples`` fresh draws δ_j of ``noise`` at every step (expectation over transformation: the
    gradient of the plug-in estimate of the smoothed mean's error; Salman et al. 2019's estimator for
    classifiers, here for regression). Same arguments and guarantee (‖y_adv − y‖₂ <= eps) as
    :func:`pgd_regression`; ``generator`` also drives the noise draws.

    The same inputs attack median- and centre-smoothed outputs only approximately (their
    gradients are not available); the certified sets of :mod:`smoothcert.regression` hold
    against any attack, this one included.
    """
    _check(y, x, eps, steps)
    if int(samples) != samples or samples < 1:
        raise InputError(f"samples must be a positive integer, got {samples}")
    x = x.detach()
    gen = make_generator(generator, y.device)

    def loss_of(inp: Tensor) -> Tensor:
        b = inp.shape[0]
        rep = inp.unsqueeze(1).expand(b, samples, *inp.shape[1:]).reshape(b * samples, *inp.shape[1:])
        delta = noise.sample(rep.shape, generator=gen, device=inp.device, dtype=inp.dtype)
        out = model(rep + delta).view(b, samples, *x.shape[1:]).mean(dim=1)
        return (out - x).pow(2).sum()

    return _pgd(loss_of, y, eps=eps, steps=steps, step_size=step_size, random_start=random_start, clip=clip,
                generator=gen)
