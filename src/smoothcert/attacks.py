"""l2 attacks on classifiers and on smoothed (soft) classifiers, as pure functions on batches.

Every attack takes ``model`` — any callable mapping ``x`` [B, ...] in [0, 1] to scores [B, K] that
cross-entropy reads (logits, or log-probabilities such as those of :class:`SmoothedSoft`) — the clean
inputs ``x`` and labels ``y`` [B], and returns adversarial inputs of the same shape, detached, inside
[0, 1]. Attacks never change the model's parameters, gradients or train/eval mode: put the model in the
mode to attack first (eval for evaluation; SmoothAdv attacks in eval mode too).

Smoothed classifiers are attacked through their soft version G(x) = E_delta[softmax f(x + delta)]
estimated with m draws (the plug-in estimator of Salman et al. 2019, "Provably robust deep learning via
adversarially trained smoothed classifiers", Sec. 3): the loss −log((1/m) Σ_i softmax f(x' + delta_i))_y.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .noise import Noise

__all__ = ["pgd_l2", "smoothed_log_probs", "SmoothedSoft", "l2_norms"]


def l2_norms(v: Tensor) -> Tensor:
    """Per-example l2 norms of ``v`` [B, ...] → [B]."""
    return v.flatten(1).norm(dim=1)


def _per_example(value: float | Tensor, like: Tensor, name: str) -> Tensor:
    """``value`` as a [B, 1, ..., 1] tensor broadcastable against ``like`` [B, ...]."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(like.shape[0])
    if t.shape != (like.shape[0],):
        raise ValueError(f"{name} must be a number or a tensor of shape [{like.shape[0]}], got {list(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0")
    return t.view(-1, *([1] * (like.dim() - 1)))


def _unit(g: Tensor) -> Tensor:
    """``g`` scaled to unit l2 norm per example (zero rows stay zero)."""
    norms = _per_example_norm(g)
    return g / norms.clamp_min(1e-12)


def _per_example_norm(v: Tensor) -> Tensor:
    return l2_norms(v).view(-1, *([1] * (v.dim() - 1)))


def _project(delta: Tensor, eps: Tensor) -> Tensor:
    """Scale each row of ``delta`` into the l2 ball of radius ``eps`` (rows already inside are kept)."""
    return delta * torch.clamp(eps / _per_example_norm(delta).clamp_min(1e-12), max=1.0)


def pgd_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Tensor,
    steps: int,
    step_size: float | Tensor | None = None,
    random_start: bool = False,
    targeted: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent on the cross-entropy in an l2 ball (Madry et al. 2018).

    Each step moves ``delta`` by ``step_size`` along the l2-normalised gradient, projects it onto
    ``{‖delta‖₂ <= eps}`` and clips ``x + delta`` to [0, 1]. Clipping moves every coordinate towards
    ``x`` (which is in [0, 1]), so it never increases ‖delta‖: the budget holds exactly.

    Args:
        model: ``x`` [B, ...] → scores [B, K] (logits or log-probabilities).
        x: clean inputs in [0, 1], [B, ...]; y: labels [B] (targets if ``targeted``).
        eps: l2 budget, a number or one per example [B].
        steps: gradient steps (>= 1).
        step_size: l2 length of each step; default 2·eps/steps (Salman et al. 2019's choice).
        random_start: start from a uniformly random point of the ball instead of ``x``.
        targeted: minimise the loss of ``y`` instead of maximising it.
        generator: randomness of the random start.
    Returns:
        adversarial inputs [B, ...] with ‖x_adv − x‖₂ <= eps per example, in [0, 1], detached.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = x.detach()
    eps_t = _per_example(eps, x, "eps")
    alpha = 2 * eps_t / steps if step_size is None else _per_example(step_size, x, "step_size")
    delta = torch.zeros_like(x)
    if random_start:
        # Uniform in the ball: a uniform direction times eps·U^(1/d).
        direction = _unit(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype))
        u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
        radius = eps_t * u.pow(1.0 / x[0].numel()).view_as(eps_t)
        delta = (x + direction * radius).clamp(0, 1) - x
    sign = -1.0 if targeted else 1.0
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y, reduction="sum")
        (grad,) = torch.autograd.grad(sign * loss, delta)
        with torch.no_grad():
            delta = _project(delta + alpha * _unit(grad), eps_t)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def smoothed_log_probs(model: nn.Module, x: Tensor, deltas: Tensor) -> Tensor:
    """log((1/m) Σ_i softmax f(x + delta_i)): the plug-in estimate of the smoothed soft classifier.

    Args:
        model: base classifier, [N, ...] → logits [N, K].
        x: inputs [B, ...]; deltas: noise draws [m, B, ...] (the same draws for every call if the
            caller keeps them, as SmoothAdv does across the steps of one attack).
    Returns:
        log-probabilities [B, K] (rows sum to 1 after exp); differentiable in ``x`` and the model.
    """
    if deltas.dim() != x.dim() + 1 or deltas.shape[1:] != x.shape:
        raise ValueError(f"deltas must have shape [m, {', '.join(map(str, x.shape))}], got {list(deltas.shape)}")
    m, b = deltas.shape[0], x.shape[0]
    logits = model((x.unsqueeze(0) + deltas).flatten(0, 1))
    log_p = F.log_softmax(logits.float(), dim=1).view(m, b, -1)
    # log of the mean of probabilities, computed stably in log space
    return torch.logsumexp(log_p, dim=0) - math.log(m)


class SmoothedSoft(nn.Module):
    """The soft smoothed classifier G(x) = E[softmax f(x + delta)] with m fresh draws per call.

    ``forward(x)`` [B, ...] → log G(x) estimated with ``m`` new noise draws each call, so an attack
    that calls it once per step takes the expectation over fresh noise every step.
    """

    def __init__(self, base: nn.Module, noise: Noise, *, m: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if m < 1:
            raise ValueError(f"m (noise draws per estimate) must be >= 1, got {m}")
        self.base = base
        self.noise = noise
        self.m = m
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        deltas = self.noise.sample((self.m, *x.shape), generator=self.generator, device=x.device, dtype=x.dtype)
        return smoothed_log_probs(self.base, x, deltas)

    def extra_repr(self) -> str:
        return f"noise={self.noise!r}, m={self.m}"
