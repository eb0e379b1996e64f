"""Certificates of the smoothed *soft* classifier, and the HeatSmoothing one-pass heuristic.

The smoothed soft classifier of a base model f with K outputs is

    G(x) = E_delta[ F(x + delta) ],   delta ~ N(0, sigma^2 I),

where F(z) in [0, 1]^K is softmax f(z) (``outputs="logits"``) or f(z) itself when f already
returns probabilities (``outputs="probs"``; one-hot hard decisions are the special case where G
is Cohen et al.'s class-probability vector). Its top class is certified by two bounds, both
sound for *any* f because they only use that every F_c takes values in [0, 1]:

* ``"phi"`` (Salman et al. 2019, Lemma 2 / App. A): x -> Phi^-1(G_c(x)) is 1/sigma-Lipschitz for
  each class c, so the top class A cannot change within
  ``sigma/2 * (Phi^-1(G_A) - Phi^-1(G_B))``, G_B the largest other class.
* ``"lbound"`` (Campbell, Finlay & Oberman, "Adversarial Boot Camp", Thm. 3): the Gaussian average
  of F_A - F_c, a function with values in [-1, 1], is sqrt(2/pi)/sigma-Lipschitz (Salman et al.'s
  Lemma 1 argument: <u, grad> = E[<u, delta> h(x + delta)] / sigma^2 <= E|<u, delta>| / sigma^2),
  so the top class cannot change within ``sigma * sqrt(pi/2) * (G_A - G_B)``. Since
  (Phi^-1)' >= sqrt(2 pi), the phi radius is never smaller than the L-bound from the same numbers.

:func:`certify_soft` estimates G by Monte Carlo and certifies from one-sided confidence bounds
(Hoeffding / empirical Bernstein, :mod:`smoothcert.stats`), the class chosen from n0 separate
draws as in CERTIFY. :func:`deterministic_radius` is the paper's own use -- the network's softmax
*taken as* its Gaussian average, one forward pass -- and is a heuristic, not a certificate.
:func:`certify_clean_class` is CERTIFY with the class taken from one clean forward pass (the
paper's variant for its HeatSmoothing models).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .certificate import ABSTAIN, Certificate, PerInput, competitor_upper, decide, split_counts
from .checks import as_batch, check_choice, check_int, check_sample_sizes, ensure_eval, model_device
from .engine import Engine
from .errors import InputError, InputTypeError
from .noise import Noise
from .rng import make_generator
from .stats import MEAN_BOUNDS, bonferroni, check_alpha, clopper_pearson_lower, mean_lower, mean_upper

__all__ = [
    "OUTPUT_KINDS",
    "SELECTIONS",
    "SOFT_BOUNDS",
    "DeterministicRadius",
    "SoftCertificate",
    "certify_clean_class",
    "certify_soft",
    "deterministic_radius",
    "probabilities",
    "soft_radius",
]

#: Radii of :func:`certify_soft` (see the module docstring).
SOFT_BOUNDS = ("phi", "lbound")
#: What a base model returns: logits (softmax applied here) or probabilities (used as they are).
OUTPUT_KINDS = ("logits", "probs")
#: How far a row of ``outputs="probs"`` may be from a probability vector (float32 softmax rounding).
PROB_TOLERANCE = 1e-4
#: Class choices of :func:`certify_soft`: n0 noisy draws (CERTIFY) or one clean forward pass.
SELECTIONS = ("draws", "clean")


@dataclass
class SoftCertificate(PerInput):
    """Result of :func:`certify_soft` for B inputs (tensors on the CPU).

    With probability at least 1 - alpha over the Monte Carlo draws (for each input separately):
    ``g_lower <= G_A(x)`` and ``g_upper >= max_{c != A} G_c(x)`` for the class A = ``prediction``,
    and therefore, where ``prediction`` is not ABSTAIN, the top class of G is A at every x' with
    ``||x' - x||_2 < radius``.
    """

    prediction: Tensor  #: int64 [B], ABSTAIN (-1) where g_lower <= g_upper
    radius: Tensor  #: float64 [B], 0 where abstaining
    g_lower: Tensor  #: float64 [B], lower confidence bound on G_A(x)
    g_upper: Tensor  #: float64 [B], upper confidence bound on max_{c != A} G_c(x)
    g_mean: Tensor  #: float64 [B, K], Monte Carlo estimate of G(x) from the n estimation draws
    n: int  #: estimation draws per input
    n0: int  #: selection draws per input (0 with selection="clean")
    alpha: float
    bound: str  #: "phi" or "lbound"
    method: str  #: confidence bound: "hoeffding", "bernstein" or "best"
    seconds: Tensor  #: float64 [B], wall time per input (a shared batch's time split evenly)


@dataclass
class DeterministicRadius:
    """Result of :func:`deterministic_radius` (tensors on the CPU). **Heuristic, not certified.**"""

    prediction: Tensor  #: int64 [B], argmax of the network's softmax at x (one forward pass)
    heuristic_radius: Tensor  #: float64 [B], the bound computed as if softmax f(x) were G(x)
    p_top: Tensor  #: float64 [B], largest softmax output
    p_second: Tensor  #: float64 [B], second largest softmax output
    seconds: Tensor  #: float64 [B]


def _check_noise(noise: Noise) -> float:
    if not isinstance(noise, Noise):
        raise InputTypeError(f"noise must be a Noise object (smoothcert.noise.get_noise), got {type(noise).__name__}")
    if noise.name != "gaussian":
        raise InputError(
            f"soft-classifier certificates (phi, L-bound) are proved for Gaussian noise only, got {noise.name}"
        )
    sigma = float(noise.sigma)
    if not sigma > 0:
        raise InputError(f"sigma must be > 0, got {sigma}")
    return sigma


def _as_probs(outputs: Tensor, *, num_classes: int, kind: str) -> tuple[Tensor, Tensor]:
    """``(F, ok)``: float64 probabilities from a model's outputs and a 0-d bool tensor saying they
    were valid, left on the device (so a sampling loop checks once, at the end, not per chunk)."""
    if outputs.ndim != 2 or outputs.shape[1] != num_classes:
        raise InputError(
            f"the model must return [batch, num_classes={num_classes}] {kind}; got shape {tuple(outputs.shape)}"
        )
    out = outputs.double()
    if kind == "logits":
        p = out.softmax(dim=1)
        return p, torch.isfinite(p).all()
    ok = torch.isfinite(out).all() & (out >= -PROB_TOLERANCE).all() & (out <= 1 + PROB_TOLERANCE).all()
    ok = ok & ((out.sum(dim=1) - 1).abs() <= PROB_TOLERANCE).all()
    return out.clamp(0.0, 1.0), ok


def _invalid(kind: str) -> InputError:
    if kind == "logits":
        return InputError("the model returned NaN or inf logits")
    return InputError(
        "outputs='probs' but the model's outputs are not probability vectors (finite entries in [0, 1] "
        "summing to 1); pass outputs='logits' for a model that returns logits"
    )


def probabilities(outputs: Tensor, *, num_classes: int, kind: str) -> Tensor:
    """F(z) in [0, 1]^K from a model's outputs ``[b, num_classes]``: float64 softmax of logits,
    or the outputs themselves after checking they are probability vectors (``kind="probs"``).

    Raises InputError for the wrong number of classes, non-finite outputs, or "probs" rows
    outside [0, 1] or not summing to 1 (within :data:`PROB_TOLERANCE`).
    """
    check_choice("outputs", kind, OUTPUT_KINDS)
    p, ok = _as_probs(outputs, num_classes=num_classes, kind=kind)
    if not bool(ok):
        raise _invalid(kind)
    return p


def soft_radius(g_lower: Tensor, g_upper: Tensor, *, sigma: float, bound: str) -> Tensor:
    """The radius certified by ``G_A >= g_lower`` and ``max_{c != A} G_c <= g_upper`` (float64 [B];
    0 where g_lower <= g_upper): ``sigma/2 (Phi^-1(g_lower) - Phi^-1(g_upper))`` ("phi") or
    ``sigma sqrt(pi/2) (g_lower - g_upper)`` ("lbound")."""
    check_choice("bound", bound, SOFT_BOUNDS)
    lo = torch.as_tensor(g_lower, dtype=torch.float64)
    hi = torch.as_tensor(g_upper, dtype=torch.float64)
    if bound == "phi":
        # ndtri(0) = -inf, ndtri(1) = +inf: a bound at the edge either certifies nothing or
        # everything on its side; the positive-part below keeps -inf - -inf (nan) out.
        r = 0.5 * sigma * (torch.special.ndtri(lo) - torch.special.ndtri(hi))
    else:
        r = sigma * math.sqrt(math.pi / 2) * (lo - hi)
    return torch.where((lo > hi) & ~r.isnan(), r, torch.zeros_like(r))


def _sample_moments(
    engine: Engine, model: nn.Module, x: Tensor, noise: Noise, *, n: int, num_classes: int, kind: str,
    batch_size: int | str, generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Mean and unbiased variance (float64 ``[B, K]``, on the CPU) of F(x_i + delta) over n draws."""
    b = x.shape[0]
    device = model_device(model)
    # Row B collects the padding rows of a fixed-shape last chunk (owner B), which are dropped.
    sums = torch.zeros(b + 1, num_classes, dtype=torch.float64, device=device)
    squares = torch.zeros_like(sums)
    ok = torch.ones((), dtype=torch.bool, device=device)
    with torch.inference_mode():
        for owner, outputs in engine.outputs(model, x, noise, n=n, batch_size=batch_size, generator=generator):
            p, valid = _as_probs(outputs, num_classes=num_classes, kind=kind)
            ok &= valid  # checked once below: no host synchronisation per chunk
            sums.index_add_(0, owner, p)
            squares.index_add_(0, owner, p * p)
    if not bool(ok):
        raise _invalid(kind)
    sums, squares = sums[:b].cpu(), squares[:b].cpu()
    mean = sums / n
    var = ((squares - n * mean * mean) / (n - 1)).clamp_min(0.0)
    return mean, var


def _clean_outputs(model: nn.Module, x: Tensor, *, num_classes: int, kind: str) -> Tensor:
    with torch.inference_mode():
        return probabilities(model(x.to(model_device(model))), num_classes=num_classes, kind=kind).cpu()


def _check_sizes(*, n0: int, n: int, batch_size: int | str, selection: str) -> None:
    n = check_int("n", n, minimum=2)
    if selection == "draws":
        check_sample_sizes(n=n, n0=n0, batch_size=batch_size)
    else:
        check_sample_sizes(n=n, batch_size=batch_size)


def certify_soft(
    model: nn.Module,
    x: Tensor,
    *,
    noise: Noise,
    num_classes: int,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int | str,
    generator: int | torch.Generator | None = None,
    bound: str = "phi",
    method: str = "best",
    outputs: str = "logits",
    selection: str = "draws",
    engine: Engine | None = None,
) -> SoftCertificate:
    """Certify the top class of the smoothed soft classifier G(x) = E softmax f(x + delta).

    Sound for any model f: with probability at least 1 - alpha (over the Monte Carlo draws, for
    each input separately), every input whose prediction is not ABSTAIN has the same top class A
    of G at every x' with ``||x' - x||_2 < radius``. (This is a statement about G, the *soft*
    smoothed classifier, whose top class may differ from Cohen et al.'s majority vote g.)

    Steps: the class A is the argmax of the mean of F over n0 selection draws (``selection=
    "draws"``, as CERTIFY) or of F(x) from one clean forward pass (``selection="clean"``, the
    HeatSmoothing paper's variant; equally sound, because the class does not depend on the
    estimation draws). n *independent* estimation draws then give the per-class means and
    variances; a lower bound on G_A at level alpha/2 and an upper bound on every other G_c at
    level alpha/(2(K - 1)) hold together with probability >= 1 - alpha (Bonferroni);
    g_upper = min(max_c upper_c, 1 - g_lower) (the G_c sum to 1). The radius is
    :func:`soft_radius` of these; ABSTAIN where g_lower <= g_upper.

    Args:
        model: f returning ``[b, num_classes]`` logits (``outputs="logits"``) or probabilities
            (``outputs="probs"``, checked); switched to eval mode.
        x: inputs ``[B, C, H, W]`` / ``[C, H, W]`` / ``[B, D]`` in [0, 1].
        noise: Gaussian noise (``get_noise("gaussian", sigma=...)``); others are refused.
        n0, n: selection and estimation draws per input (n0 < n; n0 unused with "clean").
        alpha: total failure probability, in (0, 1).
        batch_size: rows per forward pass, or "auto".
        generator: a ``torch.Generator`` or int seed; selection draws come first, then the
            estimation draws, from the same stream (so they are independent).
        bound: "phi" (tighter) or "lbound" (the paper's Theorem 3).
        method: confidence bound on each mean, :data:`smoothcert.stats.MEAN_BOUNDS`.
        engine: how f is evaluated (precision, compile); default ``Engine()`` (fp32).
    Returns:
        :class:`SoftCertificate`, tensors on the CPU.
    """
    check_choice("bound", bound, SOFT_BOUNDS)
    check_choice("method", method, MEAN_BOUNDS)
    check_choice("outputs", outputs, OUTPUT_KINDS)
    check_choice("selection", selection, SELECTIONS)
    sigma = _check_noise(noise)
    num_classes = check_int("num_classes", num_classes, minimum=2)
    _check_sizes(n0=n0, n=n, batch_size=batch_size, selection=selection)
    alpha = check_alpha(alpha)
    engine = Engine() if engine is None else engine
    ensure_eval(model)
    x = as_batch(x)
    gen = make_generator(generator, model_device(model))
    batch_size = engine.prepare(model, x, noise, batch_size=batch_size,
                                draws=(n0, n) if selection == "draws" else (n,))
    start = time.perf_counter()
    if selection == "draws":
        select_mean, _ = _sample_moments(engine, model, x, noise, n=n0, num_classes=num_classes,
                                         kind=outputs, batch_size=batch_size, generator=gen)
    else:
        select_mean = _clean_outputs(model, x, num_classes=num_classes, kind=outputs)
    c_a = select_mean.argmax(dim=1)
    mean, var = _sample_moments(engine, model, x, noise, n=n, num_classes=num_classes, kind=outputs,
                                batch_size=batch_size, generator=gen)
    rows = torch.arange(len(c_a))
    g_lower = torch.from_numpy(
        mean_lower(mean[rows, c_a].numpy(), var[rows, c_a].numpy(), n, alpha / 2, method=method)
    )
    uppers = torch.from_numpy(
        mean_upper(mean.numpy(), var.numpy(), n, bonferroni(alpha / 2, num_classes - 1), method=method)
    )
    g_upper = competitor_upper(uppers, c_a, g_lower)
    radius = soft_radius(g_lower, g_upper, sigma=sigma, bound=bound)
    certified = g_lower > g_upper
    prediction = torch.where(certified, c_a, torch.full_like(c_a, ABSTAIN))
    elapsed = time.perf_counter() - start
    return SoftCertificate(
        prediction=prediction, radius=radius, g_lower=g_lower, g_upper=g_upper, g_mean=mean, n=n,
        n0=n0 if selection == "draws" else 0, alpha=alpha, bound=bound, method=method,
        seconds=torch.full((len(c_a),), elapsed / len(c_a), dtype=torch.float64),
    )


def deterministic_radius(
    model: nn.Module, x: Tensor, *, sigma: float, num_classes: int, bound: str = "lbound", outputs: str = "logits"
) -> DeterministicRadius:
    """The HeatSmoothing paper's one-pass robustness figure. **A heuristic, not a certificate.**

    Computes the L-bound ``sigma sqrt(pi/2) (p_(1) - p_(2))`` (or the phi form) from the
    network's own softmax p = softmax f(x), *as if* p were its Gaussian average G(x). The bound
    holds for G, and a HeatSmoothing model is only trained towards being its own Gaussian
    average, so nothing guarantees it for the network: report it as ``heuristic_radius`` and
    never in a certified-accuracy table. One forward pass, no randomness.

    Args: model f (logits or probabilities, ``[b, num_classes]``), x ``[B, ...]`` in [0, 1],
    sigma > 0 the smoothing level the model was trained for. Returns :class:`DeterministicRadius`.
    """
    check_choice("bound", bound, SOFT_BOUNDS)
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0 and math.isfinite(sigma)):
        raise InputError(f"sigma must be a finite number > 0, got {sigma!r}")
    num_classes = check_int("num_classes", num_classes, minimum=2)
    ensure_eval(model)
    x = as_batch(x)
    start = time.perf_counter()
    p = _clean_outputs(model, x, num_classes=num_classes, kind=outputs)
    top = p.topk(2, dim=1)
    radius = soft_radius(top.values[:, 0], top.values[:, 1], sigma=float(sigma), bound=bound)
    elapsed = time.perf_counter() - start
    return DeterministicRadius(
        prediction=top.indices[:, 0], heuristic_radius=radius, p_top=top.values[:, 0],
        p_second=top.values[:, 1], seconds=torch.full((len(p),), elapsed / len(p), dtype=torch.float64),
    )


def certify_clean_class(
    model: nn.Module,
    x: Tensor,
    *,
    noise: Noise,
    num_classes: int,
    n: int,
    alpha: float,
    batch_size: int | str,
    generator: int | torch.Generator | None = None,
    engine: Engine | None = None,
) -> Certificate:
    """CERTIFY (Cohen et al. 2019) with the class cA taken from one clean forward pass, argmax f(x),
    instead of n0 noisy selection draws -- how the HeatSmoothing paper certifies its models.

    Sound, with the same guarantee as CERTIFY: cA does not depend on the n estimation draws, so
    with probability at least 1 - alpha either the prediction is ABSTAIN or the smoothed hard
    classifier g returns cA everywhere within ``radius`` (the noise's radius of the one-sided
    Clopper-Pearson bound pA_lower > 1/2). It abstains more often than CERTIFY where the clean
    argmax is not g's class. Returns a :class:`~smoothcert.certificate.Certificate` with n0 = 0.
    """
    check_sample_sizes(n=n, batch_size=batch_size)
    alpha = check_alpha(alpha)
    if not isinstance(noise, Noise):
        raise InputTypeError(f"noise must be a Noise object, got {type(noise).__name__}")
    num_classes = check_int("num_classes", num_classes, minimum=2)
    engine = Engine() if engine is None else engine
    ensure_eval(model)
    x = as_batch(x)
    gen = make_generator(generator, model_device(model))
    dim = math.prod(x.shape[1:])
    batch_size = engine.prepare(model, x, noise, batch_size=batch_size, draws=(n,))
    start = time.perf_counter()
    c_a = _clean_outputs(model, x, num_classes=num_classes, kind="logits").argmax(dim=1)
    counts = engine.counts(model, x, noise, n=n, num_classes=num_classes, batch_size=batch_size,
                           generator=gen).cpu()
    count_a, count_b, _ = split_counts(counts, c_a)
    p_lower = torch.from_numpy(clopper_pearson_lower(count_a.numpy(), n, alpha))
    norm = noise.check_norm(None)
    prediction, radius = decide(noise, c_a, p_lower, norm=norm, dim=dim)
    elapsed = time.perf_counter() - start
    return Certificate(
        prediction=prediction, radius=radius, p_lower=p_lower, counts=counts, count_a=count_a,
        count_b=count_b, n=n, n0=0, alpha=alpha, norm=norm,
        seconds=torch.full((len(c_a),), elapsed / len(c_a), dtype=torch.float64),
    )
