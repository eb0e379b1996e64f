"""l2 attacks on classifiers and on smoothed (soft) classifiers, as pure functions on batches.

Every attack takes ``model`` — any callable mapping ``x`` [B, ...] in [0, 1] to scores [B, K] that
cross-entropy reads (logits, or log-probabilities such as those of :class:`SmoothedSoft`) — the clean
inputs ``x`` and labels ``y`` [B], and returns adversarial inputs of the same shape, detached, inside
[0, 1]. Attacks never change the model's parameters, gradients or train/eval mode: put the model in the
mode to attack first (eval for evaluation; SmoothAdv attacks in eval mode too).

Smoothed classifiers are attacked through their soft version G(x) = E_delta[softmax f(x + delta)]
estimated with m draws (the plug-in estimator of Salman et al. 2019, "Provably robust deep learning via
adversarially trained smoothed classifiers", Sec. 3): the loss −log((1/m) Σ_i softmax f(x' + delta_i))_y.

Two attacks: :func:`pgd_l2` (fixed budget eps: the strongest point it finds inside the ball) and
:func:`ddn` (Rony et al. 2019: the smallest adversarial perturbation it finds, optionally inside a
ball); :func:`minimal_l2` turns DDN into per-example distances (inf where nothing was found).
:func:`log_mean_softmax` is the one place the plug-in estimate log((1/m) Σ_i softmax z_i) is computed;
the training methods (:mod:`smoothcert.train`) use it too.

Randomness: every ``generator`` argument takes a ``torch.Generator`` or an int seed (a generator is
then made on the inputs' device, as :func:`smoothcert.smooth.make_generator` does); a generator
passed in must live on the inputs' device (a CPU generator with CUDA inputs raises a RuntimeError).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError
from .noise import Noise
from .ops import log_mean_softmax, upcast_logits
from .rng import make_generator

__all__ = [
    "SmoothedSoft",
    "adversarial_l2",
    "ddn",
    "l2_norms",
    "log_mean_softmax",
    "minimal_l2",
    "pgd_l2",
    "smoothed_log_probs",
    "upcast_logits",
]


def l2_norms(v: Tensor) -> Tensor:
    """Per-example l2 norms of ``v`` [B, ...] → [B]."""
    return v.flatten(1).norm(dim=1)


def _per_example(value: float | Tensor, like: Tensor, name: str) -> Tensor:
    """``value`` as a [B, 1, ..., 1] tensor broadcastable against ``like`` [B, ...]."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(like.shape[0])
    if t.shape != (like.shape[0],):
        raise InputError(f"{name} must be a number or a tensor of shape [{like.shape[0]}], got {list(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise InputError(f"{name} must be finite and >= 0")
    return t.view(-1, *([1] * (like.dim() - 1)))


def _unit(g: Tensor) -> Tensor:
    """``g`` scaled to unit l2 norm per example (zero rows stay zero)."""
    norms = _per_example_norm(g)
    return g / norms.clamp_min(1e-12)


def _random_where_zero(grad: Tensor, generator: torch.Generator | None) -> Tensor:
    """``grad`` with every all-zero row (a saturated loss, or a model flat around the point)
    replaced by a standard normal direction from ``generator``; nothing is drawn when no row is zero."""
    zero = l2_norms(grad) == 0
    if not bool(zero.any()):
        return grad
    grad = grad.clone()
    grad[zero] = torch.randn(grad[zero].shape, generator=generator, device=grad.device, dtype=grad.dtype)
    return grad


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
    generator: int | torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent on the cross-entropy in an l2 ball (Madry et al. 2018).

    Each step moves ``delta`` by ``step_size`` along the l2-normalised gradient, projects it onto
    ``{‖delta‖₂ <= eps}`` and clips ``x + delta`` to [0, 1]. Clipping moves every coordinate towards
    ``x`` (which is in [0, 1]), so it never increases ‖delta‖: the budget holds exactly. Where the
    gradient of an example is exactly zero (a saturated loss, common for the fp32 soft smoothed
    classifier far from its boundary) the step takes a random direction instead of stalling, as
    :func:`ddn` and Salman et al.'s PGD do.

    Args:
        model: ``x`` [B, ...] → scores [B, K] (logits or log-probabilities).
        x: clean inputs in [0, 1], [B, ...]; y: labels [B] (targets if ``targeted``).
        eps: l2 budget, a number or one per example [B].
        steps: gradient steps (>= 1).
        step_size: l2 length of each step; default 2·eps/steps (Salman et al. 2019's choice).
        random_start: start from a uniformly random point of the ball instead of ``x``.
        targeted: minimise the loss of ``y`` instead of maximising it.
        generator: randomness of the random start and of the directions that replace zero
            gradients (a generator on ``x``'s device, or an int seed); None: torch's global RNG.
    Returns:
        adversarial inputs [B, ...] with ‖x_adv − x‖₂ <= eps per example, in [0, 1], detached.
    """
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    x = x.detach()
    generator = make_generator(generator, x.device)
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
            delta = _project(delta + alpha * _unit(_random_where_zero(grad, generator)), eps_t)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def smoothed_log_probs(model: nn.Module, x: Tensor, deltas: Tensor) -> Tensor:
    """log((1/m) Σ_i softmax f(x + delta_i)): the plug-in estimate of the smoothed soft classifier.

    Args:
        model: base classifier, [N, ...] → logits [N, K].
        x: inputs [B, ...]; deltas: noise draws [m, B, ...] (the same draws for every call if the
            caller keeps them, as SmoothAdv does across the steps of one attack).
    Returns:
        log-probabilities [B, K] (rows sum to 1 after exp; float32, or float64 for a float64
        model), differentiable in ``x`` and the model: :func:`log_mean_softmax` of the m copies.
    """
    if deltas.dim() != x.dim() + 1 or deltas.shape[1:] != x.shape:
        raise InputError(f"deltas must have shape [m, {', '.join(map(str, x.shape))}], got {list(deltas.shape)}")
    m, b = deltas.shape[0], x.shape[0]
    logits = model((x.unsqueeze(0) + deltas).flatten(0, 1))
    return log_mean_softmax(logits.view(m, b, -1))


class SmoothedSoft(nn.Module):
    """The soft smoothed classifier G(x) = E[softmax f(x + delta)] with m fresh draws per call.

    ``forward(x)`` [B, ...] → log G(x) estimated with ``m`` new noise draws each call, so an attack
    that calls it once per step takes the expectation over fresh noise every step.

    ``generator``: the noise stream — a ``torch.Generator`` on the inputs' device, or an int seed
    (a generator is then made on the device of the first input it sees and kept); None: torch's
    global RNG.
    """

    def __init__(
        self, base: nn.Module, noise: Noise, *, m: int, generator: int | torch.Generator | None = None
    ) -> None:
        super().__init__()
        if m < 1:
            raise InputError(f"m (noise draws per estimate) must be >= 1, got {m}")
        self.base = base
        self.noise = noise
        self.m = m
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            self.generator = make_generator(self.generator, x.device)
        deltas = self.noise.sample((self.m, *x.shape), generator=self.generator, device=x.device, dtype=x.dtype)
        return smoothed_log_probs(self.base, x, deltas)

    def extra_repr(self) -> str:
        return f"noise={self.noise!r}, m={self.m}"


def _is_adversarial(scores: Tensor, y: Tensor, targeted: bool) -> Tensor:
    """bool [B]: the top class is ``y`` (targeted) or is not ``y`` (untargeted)."""
    pred = scores.argmax(dim=1)
    return pred == y if targeted else pred != y


def ddn(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    init_eps: float | Tensor = 1.0,
    gamma: float = 0.05,
    step_size: float = 1.0,
    eps: float | Tensor | None = None,
    targeted: bool = False,
    generator: int | torch.Generator | None = None,
) -> Tensor:
    """Decoupled Direction and Norm (Rony et al. 2019, "Decoupling Direction and Norm for Efficient
    Gradient-Based L2 Adversarial Attacks and Defenses", Algorithm 1): the smallest l2 perturbation
    it finds that changes the prediction.

    Step k (k = 0 .. steps−1) at the iterate ``x + delta``: record it if it is adversarial and
    smaller than the best so far; move ``delta`` by ``alpha_k`` along the l2-normalised gradient of
    the cross-entropy (ascent; descent on the target's loss if ``targeted``), with ``alpha_k``
    cosine-annealed from ``step_size`` to ``step_size/100`` (the paper's 1 → 0.01); multiply the
    norm budget ``eps_k`` by (1 − gamma) if the iterate was adversarial, by (1 + gamma) otherwise;
    rescale ``delta`` to norm ``eps_k`` and clip ``x + delta`` to [0, 1]. The iterate after the last
    step is checked too (steps + 1 forward passes, ``steps`` backward). No quantisation to 8 bits.

    ``eps_k`` never exceeds the largest distance from ``x`` inside the box [0, 1]^d, nor ``eps``
    when given: then every iterate, hence the result, lies in the ball ‖x_adv − x‖₂ <= eps (the
    "DDN with a maximum norm" that SmoothAdv trains against; Salman et al.'s code instead runs
    unbounded and shrinks the best adversarial into the ball at the end). A zero gradient (a
    saturated model) is replaced by a random direction from ``generator``.

    Args:
        model: ``x`` [B, ...] → scores [B, K] (logits or log-probabilities, e.g. :class:`SmoothedSoft`).
        x: clean inputs in [0, 1], [B, ...]; y: labels [B] (targets if ``targeted``).
        steps: gradient steps (>= 1); init_eps: initial norm budget eps_0 (a number or [B]).
        gamma: norm adaptation factor, in (0, 1); step_size: initial step length alpha_0 (> 0).
        eps: optional hard l2 budget (a number or [B]).
        targeted: reach class ``y`` instead of leaving it.
        generator: randomness of the directions that replace zero gradients (nothing else is
            random): a generator on ``x``'s device or an int seed; None: torch's global RNG.
    Returns:
        adversarial inputs [B, ...] in [0, 1], detached: per example, the smallest-norm iterate that
        was adversarial (``x`` itself when ``x`` is already misclassified — or already classified as
        the target); **where no iterate was adversarial, the last iterate** (a point of high loss at
        norm <= eps, useful for adversarial training; its norm is *not* a distance to the boundary).
        Tell the two cases apart with :func:`adversarial_l2`. For a noisy model (SmoothedSoft with
        fresh draws) "adversarial" is the model's own noisy verdict at that step, and the smallest
        iterate so judged tends to stop short of the boundary (a smoothed linear model: by about
        sigma/sqrt(m)); check the result with the smoothed classifier's PREDICT.
    """
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if not 0.0 < gamma < 1.0:
        raise InputError(f"gamma must be in (0, 1), got {gamma}")
    if not step_size > 0:
        raise InputError(f"step_size must be > 0, got {step_size}")
    x = x.detach()
    generator = make_generator(generator, x.device)
    b = x.shape[0]
    # No point of the box is farther from x than max(x, 1 − x) coordinate-wise.
    cap = l2_norms(torch.maximum(x, 1 - x))
    if eps is not None:
        cap = torch.minimum(cap, _per_example(eps, x, "eps").view(b))
    init = _per_example(init_eps, x, "init_eps").view(b)
    if bool((init == 0).any()):
        raise InputError("init_eps must be > 0")
    norm = torch.minimum(init, cap)
    sign = -1.0 if targeted else 1.0
    delta = torch.zeros_like(x)
    best = x.clone()
    best_l2 = torch.full((b,), math.inf, device=x.device, dtype=x.dtype)
    found = torch.zeros(b, dtype=torch.bool, device=x.device)
    view = (-1, *([1] * (x.dim() - 1)))

    def keep_best(scores: Tensor, d: Tensor) -> None:
        nonlocal best, best_l2, found
        l2 = l2_norms(d)
        better = _is_adversarial(scores.detach(), y, targeted) & (l2 < best_l2)
        best = torch.where(better.view(view), x + d, best)
        best_l2 = torch.where(better, l2, best_l2)
        found |= better

    for k in range(steps):
        alpha = step_size * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * k / steps)))
        delta.requires_grad_(True)
        scores = model(x + delta)
        (grad,) = torch.autograd.grad(sign * F.cross_entropy(scores, y, reduction="sum"), delta)
        with torch.no_grad():
            delta = delta.detach()
            is_adv = _is_adversarial(scores.detach(), y, targeted)
            keep_best(scores, delta)
            norm = torch.minimum(torch.where(is_adv, (1.0 - gamma) * norm, (1.0 + gamma) * norm), cap)
            delta = delta + alpha * _unit(_random_where_zero(grad, generator))
            delta = delta * (norm.view(view) / _per_example_norm(delta).clamp_min(1e-12))
            delta = (x + delta).clamp(0, 1) - x
    with torch.no_grad():
        keep_best(model(x + delta), delta)
    return torch.where(found.view(view), best, x + delta).detach()


def adversarial_l2(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, *, targeted: bool = False) -> Tensor:
    """‖x_adv − x‖₂ [B] where ``model(x_adv)`` is adversarial (top class ≠ y, or = y if
    ``targeted``), ``inf`` where it is not; 0 for an ``x_adv = x`` that is already misclassified."""
    with torch.no_grad():
        hit = _is_adversarial(model(x_adv), y, targeted)
    l2 = l2_norms(x_adv.detach() - x.detach())
    return torch.where(hit, l2, torch.full_like(l2, math.inf))


def minimal_l2(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    init_eps: float | Tensor = 1.0,
    gamma: float = 0.05,
    step_size: float = 1.0,
    eps: float | Tensor | None = None,
    targeted: bool = False,
    generator: int | torch.Generator | None = None,
) -> Tensor:
    """An upper bound on each example's minimal adversarial l2 distance: :func:`ddn` with these
    settings (see there), its result checked by :func:`adversarial_l2`.

    Returns:
        float [B]: the distance of the smallest adversarial example found, ``inf`` where none was
        (0 for inputs the model already gets wrong).
    """
    x_adv = ddn(model, x, y, steps=steps, init_eps=init_eps, gamma=gamma, step_size=step_size, eps=eps,
                targeted=targeted, generator=generator)
    return adversarial_l2(model, x, y, x_adv, targeted=targeted)
