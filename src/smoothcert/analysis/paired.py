"""Two runs on the same test images compared image by image: the paired ACR difference."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..errors import InputError
from .load import Results

__all__ = ["PairedDifference", "paired_acr_difference"]


@dataclass(frozen=True)
class PairedDifference:
    """ACR of run a minus ACR of run b on their common inputs, with a paired t interval.

    Attributes:
        inputs: images both runs certified (rows matched by ``idx``).
        difference: mean over them of d_i = radius_a,i · correct_a,i − radius_b,i · correct_b,i.
        standard_error: std(d, ddof=1) / sqrt(inputs); inf for a single input.
        confidence: the two-sided level of [low, high].
        low, high: the paired t interval, difference ± t_{inputs-1} quantile · standard_error
            (one point when every d_i is the same; the whole line for a single input).
        a_better, b_better, ties: images where a's certified radius is larger, smaller, equal.
    """

    inputs: int
    difference: float
    standard_error: float
    confidence: float
    low: float
    high: float
    a_better: int
    b_better: int
    ties: int


def paired_acr_difference(a: Results, b: Results, *, confidence: float = 0.95) -> PairedDifference:
    """ACR of ``a`` minus ACR of ``b`` on the inputs both runs certified, with a paired t interval.

    Two methods certified on the same test images differ per image; the per-image difference d_i
    has a smaller spread than either run's radii when the runs agree on most images, so the
    interval mean(d) ± t_{n-1, (1+confidence)/2} · std(d)/sqrt(n) (Student's t over the n images,
    :data:`scipy.stats.t`) tells a real difference from test-set sampling. It covers the mean
    difference over the image distribution with probability ``confidence`` when the d_i are
    independent draws (exactly for normal d_i, approximately otherwise); the Monte Carlo error of
    each certificate is not in it. Rows are matched by ``idx``.

    Raises:
        InputError: the runs share no input, or give one input two different labels.
    """
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence!r}")
    common, ia, ib = np.intersect1d(a.idx, b.idx, return_indices=True)
    if len(common) == 0:
        raise InputError("the two runs certified no input in common (rows are matched by idx)")
    if not np.array_equal(a.label[ia], b.label[ib]):
        raise InputError("the two runs give different labels to the same idx: not the same dataset")
    d = a.radius[ia] * a.correct[ia] - b.radius[ib] * b.correct[ib]
    n = len(d)
    mean = float(np.mean(d))
    if n > 1:
        se = float(np.std(d, ddof=1) / math.sqrt(n))
        half = float(stats.t.ppf((1 + confidence) / 2, df=n - 1)) * se
    else:
        se = half = math.inf
    return PairedDifference(inputs=n, difference=mean, standard_error=se, confidence=confidence,
                            low=mean - half, high=mean + half, a_better=int(np.sum(d > 0)),
                            b_better=int(np.sum(d < 0)), ties=int(np.sum(d == 0)))
