"""What the certify layer returns, and the two steps every certificate shares.

:class:`Certificate` (CERTIFY with a fixed n), :class:`PlannedCertificate` (sample size planned
per input) and :class:`CertifyAtResult` (decisions at given radii) are plain records on the CPU;
:func:`split_counts` and :func:`decide` turn class counts and a lower bound into a prediction and
a radius. Both :mod:`smoothcert.smooth` and :mod:`smoothcert.adaptive` build on this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .noise import Noise

__all__ = ["ABSTAIN", "Certificate", "CertifyAtResult", "PerInput", "PlannedCertificate", "decide", "split_counts"]

#: Label returned when the smoothed classifier declines to answer.
ABSTAIN = -1


class PerInput:
    """What every per-input result record shares: ``len()`` is the number of inputs B (the length of
    its ``prediction`` [B]) and ``abstained`` marks the inputs answered with :data:`ABSTAIN`."""

    prediction: Tensor

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    @property
    def abstained(self) -> Tensor:
        return self.prediction == ABSTAIN


@dataclass
class Certificate(PerInput):
    """Result of :meth:`SmoothedClassifier.certify` for a batch of B inputs (tensors on the CPU).

    With probability at least 1 - alpha (over the Monte Carlo draws, for each input separately),
    every input whose ``prediction`` is not ABSTAIN has g(x') = prediction for all x' with
    ||x' - x||_norm < radius[i].
    """

    prediction: Tensor  #: int64 [B], ABSTAIN (-1) where nothing is certified
    radius: Tensor  #: float64 [B], 0 where abstaining
    p_lower: Tensor  #: float64 [B], lower confidence bound on pA
    counts: Tensor  #: int64 [B, K], class counts of the n estimation draws
    count_a: Tensor  #: int64 [B], draws (of n) that gave the selected class
    count_b: Tensor  #: int64 [B], draws (of n) that gave the most frequent other class
    n: int  #: estimation draws per input (the n0 selection draws come on top)
    n0: int
    alpha: float
    norm: str
    seconds: Tensor  #: float64 [B], wall time per input (a shared batch's time split evenly)
    p_upper_b: Tensor | None = None  #: float64 [B], upper bound on pB (two-class certificates)


@dataclass
class PlannedCertificate(PerInput):
    """Result of :func:`smoothcert.adaptive.certify_planned` for B inputs (tensors on the CPU).

    Same guarantee as :class:`Certificate`, per input: with probability at least 1 - alpha,
    either ABSTAIN or g(x') = prediction for all x' within ``radius[i]``. Each input used its own
    number of estimation draws, ``n_used[i]`` <= ``max_n``, planned from the n0 pilot draws
    (which also chose the class) before any estimation draw existed.
    """

    prediction: Tensor  #: int64 [B], ABSTAIN (-1) where nothing is certified
    radius: Tensor  #: float64 [B], 0 where abstaining
    p_lower: Tensor  #: float64 [B], lower confidence bound on pA from the n_used[i] draws
    counts: Tensor  #: int64 [B, K], class counts of each input's estimation draws (rows sum to n_used)
    count_a: Tensor  #: int64 [B], draws (of n_used) that gave the selected class
    count_b: Tensor  #: int64 [B], draws (of n_used) that gave the most frequent other class
    n_used: Tensor  #: int64 [B], estimation draws of each input (the pilot's n0 come on top)
    max_n: int  #: the most estimation draws any input could be given
    n0: int
    alpha: float
    norm: str
    seconds: Tensor  #: float64 [B], wall time per input (a shared batch's time split evenly)


@dataclass
class CertifyAtResult(PerInput):
    """Decisions of :func:`smoothcert.adaptive.certify_at` for B inputs and R radii (tensors on the CPU).

    With probability at least 1 - alpha per input, every ``certified[i, j]`` that is True is
    right: g(x') = prediction[i] for all x' with ||x' - x_i|| < radii[j].
    """

    prediction: Tensor  #: int64 [B], the class tested (cA from the pilot); ABSTAIN if nothing certified
    certified: Tensor  #: bool [B, R]
    radii: Tensor  #: float64 [R]
    p_lower: Tensor  #: float64 [B], the lower bound at the stage each input stopped
    n_used: Tensor  #: int64 [B], estimation draws each input used (the pilot's n0 come on top)
    count_a: Tensor  #: int64 [B], of those draws, how many gave the tested class
    n0: int
    alpha: float
    norm: str
    seconds: Tensor  #: float64 [B]
    #: the level of each look: alpha / (number of stages), Bonferroni over the stages (None: not recorded)
    alpha_look: float | None = None

    def largest_certified_radius(self) -> Tensor:
        """float64 [B]: the largest radius of the grid certified for each input (0 where none).

        Decisions are monotone in the radius (a certified radius implies every smaller one), so
        ``largest >= r`` holds exactly when r is certified: result rows written with this radius
        give the right certified accuracy at every grid radius. It is only a lower bound on the
        radius CERTIFY would report, so averages of it (ACR) understate.
        """
        masked = torch.where(self.certified, self.radii[None, :], torch.zeros_like(self.radii)[None, :])
        return masked.max(dim=1).values


def split_counts(counts: Tensor, c_a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(count_a, count_b, others)`` from class counts ``[B, K]`` and the tested classes ``[B]``:
    the count of cA, the largest count of any other class, and the counts with cA's set to -1."""
    count_a = counts.gather(1, c_a[:, None]).squeeze(1)
    others = counts.scatter(1, c_a[:, None], -1)
    return count_a, others.max(dim=1).values.clamp_min(0), others


def competitor_upper(uppers: Tensor, c_a: Tensor, lower_a: Tensor) -> Tensor:
    """The upper bound on the runner-up class: the largest of the per-class upper bounds ``[B, K]``
    over the classes other than cA ``[B]`` (each bound at its own, e.g. Bonferroni, level), and at
    most 1 - ``lower_a`` ``[B]`` (the classes' probabilities sum to at most 1). Returns ``[B]``."""
    others = uppers.scatter(1, c_a[:, None], float("-inf"))  # cA is not its own competitor
    return torch.minimum(others.max(dim=1).values, 1.0 - lower_a)


def decide(
    noise: Noise, c_a: Tensor, p_lower: Tensor, *, p_upper_b: Tensor | None = None, norm: str, dim: int
) -> tuple[Tensor, Tensor]:
    """``(prediction, radius)``: cA where pA_lower > 1/2 (or > pB_upper), else ABSTAIN; the
    noise's radius there and 0 elsewhere (:meth:`Noise.radius` already returns 0 where the bounds
    certify nothing)."""
    certified = p_lower > (0.5 if p_upper_b is None else p_upper_b)
    prediction = torch.where(certified, c_a, torch.full_like(c_a, ABSTAIN))
    return prediction, noise.radius(p_lower, norm=norm, p_upper_b=p_upper_b, dim=dim)
