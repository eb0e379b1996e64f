"""Adaptive sample sizes: the same certificates from fewer Monte Carlo draws, with the same guarantee.

Two modes (issue #3):

* **Planned radius** (:func:`certify_planned`): a pilot of n0 draws picks the class cA and an
  estimate of pA; from Clopper–Pearson bounds evaluated on a grid of sample sizes, the smallest n*
  whose radius would be within ``radius_loss`` of what ``max_n`` draws would give is chosen; then
  n* **fresh** draws certify as usual. The pilot only decides *how many* draws to take and which
  class to test, both before the estimation draws exist, so conditional on (cA, n*) the
  estimation is exactly CERTIFY's: the one-sided bound holds with probability >= 1 - alpha.

* **Decision at given radii** (:func:`certify_at`): "is g certified at r?" for one or several
  radii, by a staged sequential test. Draws accumulate over stages (default 1k, 10k, 100k); at
  stage s the Clopper–Pearson lower bound on the cumulative counts is taken at level alpha/S.
  By the union bound all S bounds hold together with probability >= 1 - alpha, so stopping at
  any stage keeps the guarantee. A radius is decided "certified" as soon as the bound passes the
  pA it needs, and "not certified" as soon as even the last stage could not plausibly get there
  (a "not certified" answer is always sound; this rule only trades power for samples).
  ``stages="auto"`` (:func:`grid_stages`) puts the stages where an input whose draws all agree
  first certifies each radius of the grid: such an input then stops at the fewest draws any
  valid test could use for the largest radius it reaches (see :func:`grid_stages`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .certificate import ABSTAIN, CertifyAtResult, PlannedCertificate, decide, split_counts
from .checks import check_int, check_sample_sizes
from .errors import InputError
from .noise import Noise
from .rng import make_generator
from .stats import check_alpha, clopper_pearson_lower, clopper_pearson_upper

__all__ = [
    "CertifyAtResult",
    "PlannedCertificate",
    "Smoothed",
    "certify_at",
    "certify_planned",
    "grid_stages",
    "plan_sample_size",
    "required_p_lower",
    "sample_size_grid",
]


class Smoothed(Protocol):
    """What the adaptive modes need from a smoothed classifier (:class:`smoothcert.smooth.SmoothedClassifier`
    has it): its noise and classes, input checks, and class counts of fresh draws."""

    noise: Noise
    num_classes: int

    @property
    def device(self) -> torch.device: ...

    def as_batch(self, x: Tensor) -> Tensor:
        """Validated inputs ``[B, ...]``."""
        ...

    def prepare(self, x: Tensor, *, batch_size: int | str, draws: Sequence[int] = ()) -> int:
        """Rows per forward pass, after any untimed probing and compiling."""
        ...

    def counts(self, x: Tensor, *, n: int, batch_size: int | str, generator: torch.Generator | None) -> Tensor:
        """int64 ``[B, num_classes]`` class counts of n fresh draws per input."""
        ...


def required_p_lower(
    noise: Noise, radius: Tensor | Sequence[float] | float, *, norm: str | None = None, dim: int | None = None
) -> Tensor:
    """The smallest lower bound on pA whose one-class radius reaches ``radius`` (float64, any shape).

    Found by bisection on the noise's own (monotone) radius function, so it holds for every noise
    and norm; radius 0 needs pA > 1/2, returned as 0.5. A radius no pA < 1 reaches gives 1.
    """
    r = torch.as_tensor(radius, dtype=torch.float64)
    if (r < 0).any() or torch.isnan(r).any():
        raise InputError("radii must be >= 0")
    lo = torch.full_like(r, 0.5)
    hi = torch.ones_like(r)
    for _ in range(60):  # 2^-60: below float64 resolution near 1
        mid = (lo + hi) / 2
        ok = noise.radius(mid, norm=norm, dim=dim) >= r
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    return torch.where(r == 0, torch.full_like(r, 0.5), hi)


def grid_stages(
    noise: Noise,
    radii: Sequence[float] | Tensor,
    *,
    alpha: float,
    max_n: int,
    norm: str | None = None,
    dim: int | None = None,
    min_stage: int = 100,
    multiples: Sequence[float] = (1.0, 2.0, 4.0),
) -> list[int]:
    """Stages of :func:`certify_at` for a radius grid: for each radius r, the fewest draws n_r after
    which an input whose draws all agree is certified at r (Clopper–Pearson at k = n is
    ``(alpha/S)^(1/n)``, so n_r is the smallest n with ``(alpha/S)^(1/n) > pA_needed(r)``), and
    ``multiples`` of it, for radii reachable within ``max_n``; then ``max_n``. S is the number of
    stages itself (fixed point). Stages are at least ``min_stage`` and at most ``max_n``.

    Why these: any level-alpha test that certifies r after n unanimous draws needs
    ``pA_needed(r)^n <= alpha`` (otherwise pA = pA_needed(r) would produce that outcome with
    probability above alpha), i.e. about n_r draws up to the ln(S) of the alpha split. Inputs with
    pA ~ 1, the common case on easy data, stop at the stage of the largest radius they reach; the
    multiples 2 n_r and 4 n_r let an input with a few disagreeing draws stop there instead of at
    ``max_n``. Simulated on the 50 MNIST inputs of BENCHMARKS.md (pA from their fixed-N radii,
    sigma 0.25, grid 0, 0.25, ..., 2): 9.0x fewer draws than fixed N = 100k with multiples
    (1, 2, 4), 5.4x with (1,), 5.4x with stages 1k/10k/100k.
    Returns sorted distinct stages, the last ``max_n``.
    """
    alpha = check_alpha(alpha)
    max_n = check_int("max_n", max_n, minimum=1)
    need = required_p_lower(noise, radii, norm=norm, dim=dim).numpy().reshape(-1)
    if not multiples or min(multiples) < 1:
        raise InputError(f"multiples must be >= 1 (at least one), got {multiples}")
    need = need[need < 1.0]  # a radius no pA < 1 reaches is never certified: no stage for it
    stages = [max_n]
    for _ in range(len(need) + 2):  # S only grows while stages cross max_n or merge; a few rounds
        log_a = math.log(alpha / len(stages))
        n_r = np.floor(log_a / np.log(need)) + 1
        reachable = [n * m for n in n_r if n < max_n for m in multiples]
        new = sorted({min(max(int(min_stage), int(n)), max_n) for n in reachable} | {max_n})
        if new == stages:
            break
        stages = new
    return stages


def sample_size_grid(max_n: int, *, smallest: int = 1000, factor: float = 1.25) -> list[int]:
    """Candidate sample sizes: a geometric ladder ``smallest * factor^k`` ending exactly at max_n."""
    if max_n < 1 or smallest < 1 or factor <= 1:
        raise InputError("need max_n >= 1, smallest >= 1 and factor > 1")
    grid, n = [], float(min(smallest, max_n))
    while n < max_n:
        grid.append(int(n))
        n *= factor
    return sorted(set(grid + [max_n]))


def plan_sample_size(
    p_plan: np.ndarray,
    *,
    noise: Noise,
    alpha: float,
    max_n: int,
    radius_loss: float,
    norm: str | None = None,
    dim: int | None = None,
    grid: Sequence[int] | None = None,
) -> np.ndarray:
    """For each planning value of pA, the smallest n on ``grid`` whose radius is within
    ``radius_loss`` of the radius max_n draws would give (both with nA = round(pA * n)).

    Args:
        p_plan: planning values of pA, shape [B].
    Returns:
        int64 [B] sample sizes from ``grid`` (default :func:`sample_size_grid`).
    """
    # Sizes beyond max_n are dropped and max_n is always a candidate: n* never exceeds max_n.
    sizes = sample_size_grid(max_n) if grid is None else sorted({int(g) for g in grid if 1 <= g <= max_n} | {max_n})
    grid = np.asarray(sizes, dtype=np.int64)
    p = np.clip(np.asarray(p_plan, dtype=np.float64), 0.0, 1.0)
    k = np.round(p[:, None] * grid[None, :])  # [B, G]
    lower = clopper_pearson_lower(k, grid[None, :], alpha)
    radii = noise.radius(torch.from_numpy(lower), norm=norm, dim=dim).numpy()  # [B, G]
    good = radii >= radii[:, -1:] - radius_loss
    return grid[np.argmax(good, axis=1)]  # first grid size within the loss (the last always is)


def certify_planned(
    smoothed: Smoothed,
    x: Tensor,
    *,
    n0: int,
    max_n: int,
    alpha: float,
    batch_size: int | str,
    radius_loss: float,
    generator: int | torch.Generator | None = None,
    norm: str | None = None,
    plan_alpha: float = 0.05,
    grid: Sequence[int] | None = None,
) -> PlannedCertificate:
    """CERTIFY with a sample size planned per input from an n0-draw pilot (see module docstring).

    The planning value of pA is the pilot's one-sided upper Clopper–Pearson bound at level
    ``plan_alpha`` — optimistic on purpose: a high pA is where more draws still buy radius, so
    erring upward spends samples rather than radius. ``plan_alpha`` affects only how many draws
    are taken, never the guarantee.

    Guarantee (per input): with probability at least 1 - alpha, either ABSTAIN or g(x') =
    prediction within ``radius``. ``n_used`` holds n* for each input (the pilot's n0 draws come
    on top).
    """
    alpha = check_alpha(alpha)
    check_alpha(plan_alpha)
    check_sample_sizes(n=max_n, n0=n0, batch_size=batch_size)
    if not radius_loss >= 0:
        raise InputError(f"radius_loss must be >= 0, got {radius_loss}")
    norm = smoothed.noise.check_norm(norm)
    x = smoothed.as_batch(x)
    gen = make_generator(generator, smoothed.device)
    dim = math.prod(x.shape[1:])
    # Pilot shape warmed here; planned sizes vary per input and compile (if on) when first met.
    batch_size = smoothed.prepare(x, batch_size=batch_size, draws=(n0,))  # probe and compile: not timed
    start = time.perf_counter()
    pilot = smoothed.counts(x, n=n0, batch_size=batch_size, generator=gen).cpu()
    c_a = pilot.argmax(dim=1)
    pilot_a = pilot.gather(1, c_a[:, None]).squeeze(1).numpy()
    p_plan = clopper_pearson_upper(pilot_a, n0, plan_alpha)
    n_star = plan_sample_size(p_plan, noise=smoothed.noise, alpha=alpha, max_n=max_n, radius_loss=radius_loss,
                              norm=norm, dim=dim, grid=grid)
    b, k = x.shape[0], smoothed.num_classes
    counts = torch.zeros(b, k, dtype=torch.long)
    for n_i in np.unique(n_star):  # inputs sharing a sample size share batches
        rows = torch.from_numpy(np.flatnonzero(n_star == n_i))
        counts[rows] = smoothed.counts(x[rows], n=int(n_i), batch_size=batch_size, generator=gen).cpu()
    n_used = torch.from_numpy(n_star)
    count_a, count_b, _ = split_counts(counts, c_a)
    p_lower = torch.from_numpy(clopper_pearson_lower(count_a.numpy(), n_star, alpha))
    prediction, radius = decide(smoothed.noise, c_a, p_lower, norm=norm, dim=dim)
    elapsed = time.perf_counter() - start
    return PlannedCertificate(
        prediction=prediction,
        radius=radius,
        p_lower=p_lower,
        counts=counts,
        count_a=count_a,
        count_b=count_b,
        n_used=n_used,
        max_n=max_n,
        n0=n0,
        alpha=alpha,
        norm=norm,
        seconds=torch.full((b,), elapsed / b, dtype=torch.float64),
    )


def certify_at(
    smoothed: Smoothed,
    x: Tensor,
    radius: float | Sequence[float] | Tensor,
    *,
    n0: int,
    alpha: float,
    batch_size: int | str,
    stages: Sequence[int] | str = (1_000, 10_000, 100_000),
    max_n: int | None = None,
    generator: int | torch.Generator | None = None,
    norm: str | None = None,
) -> CertifyAtResult:
    """Decide, for each input and each radius, whether g is certified there, by a staged test.

    Stages are cumulative sample sizes; alpha is split evenly over them (Bonferroni), so the
    decisions hold jointly with probability >= 1 - alpha per input whatever stage stops. An input
    stops once every radius is decided: certified when the stage's lower bound on pA reaches the pA
    that radius needs (:func:`required_p_lower`); not certified when even the last stage could not
    reach it if pA were as high as the stage's upper bound (same level).
    ``stages="auto"``: :func:`grid_stages` of the radii up to ``max_n`` draws (required then).
    """
    alpha = check_alpha(alpha)
    norm = smoothed.noise.check_norm(norm)
    if isinstance(stages, str) and (stages != "auto" or max_n is None):
        raise InputError(f"stages must be sample sizes or 'auto' (with max_n), got {stages!r}")
    if not isinstance(stages, str) and max_n is not None:
        raise InputError("max_n goes with stages='auto'; with explicit stages the last one is the maximum")
    x = smoothed.as_batch(x)
    gen = make_generator(generator, smoothed.device)
    dim = math.prod(x.shape[1:])
    if isinstance(stages, str):  # "auto", checked above
        stages = grid_stages(smoothed.noise, torch.as_tensor(radius, dtype=torch.float64).reshape(-1),
                             alpha=alpha, max_n=max_n, norm=norm, dim=dim)
    stages = sorted(int(s) for s in stages)
    if not stages or stages[0] < 1 or len(set(stages)) != len(stages):
        raise InputError(f"stages must be distinct positive sample sizes, got {stages}")
    check_sample_sizes(n=stages[-1], n0=n0, batch_size=batch_size)
    batch_size = smoothed.prepare(x, batch_size=batch_size, draws=(n0, stages[0], *np.diff(stages)))
    radii = torch.as_tensor(radius, dtype=torch.float64).reshape(-1).cpu()
    if radii.numel() == 0:
        raise InputError("certify_at needs at least one radius")
    need = required_p_lower(smoothed.noise, radii, norm=norm, dim=dim).numpy()  # [R]
    a_s = alpha / len(stages)
    b, r_count = x.shape[0], len(radii)
    start = time.perf_counter()

    c_a = smoothed.counts(x, n=n0, batch_size=batch_size, generator=gen).argmax(dim=1).cpu()
    certified = np.zeros((b, r_count), dtype=bool)
    decided = np.zeros((b, r_count), dtype=bool)
    count_a = np.zeros(b, dtype=np.int64)
    n_used = np.zeros(b, dtype=np.int64)
    p_lower = np.zeros(b, dtype=np.float64)
    done_before = 0
    for s, n_s in enumerate(stages):
        active = np.flatnonzero(~decided.all(axis=1))
        if active.size == 0:
            break
        rows = torch.from_numpy(active)
        counts = smoothed.counts(x[rows], n=n_s - done_before, batch_size=batch_size, generator=gen).cpu()
        count_a[active] += counts.gather(1, c_a[rows][:, None]).squeeze(1).numpy()
        n_used[active] = n_s
        lo = clopper_pearson_lower(count_a[active], n_s, a_s)
        p_lower[active] = lo
        newly = (lo[:, None] > need[None, :]) & ~decided[active]
        certified[active] |= newly
        if s == len(stages) - 1:
            decided[active] = True
        else:
            # Hopeless: even with pA at its upper bound, the last stage's lower bound falls short.
            up = clopper_pearson_upper(count_a[active], n_s, a_s)
            best = clopper_pearson_lower(np.floor(up * stages[-1]), stages[-1], a_s)
            decided[active] |= newly | (best[:, None] <= need[None, :])
        done_before = n_s
    any_cert = torch.from_numpy(certified.any(axis=1))
    return CertifyAtResult(
        prediction=torch.where(any_cert, c_a, torch.full_like(c_a, ABSTAIN)),
        certified=torch.from_numpy(certified),
        radii=radii,
        p_lower=torch.from_numpy(p_lower),
        n_used=torch.from_numpy(n_used),
        count_a=torch.from_numpy(count_a),
        n0=n0,
        alpha=alpha,
        norm=norm,
        seconds=torch.full((b,), (time.perf_counter() - start) / b, dtype=torch.float64),
        alpha_look=a_s,
    )
