"""Certified accuracy, ACR and the best-over-runs envelope of certification runs.

Definitions (Cohen et al. 2019, Sec. 4; their ``code/analyze.py``):

* certified accuracy at radius ``r`` = fraction of *all* rows with ``correct == 1`` and
  ``radius >= r``; abstentions and wrong predictions count as failures;
* ACR (average certified radius) = mean over all rows of ``radius * correct``;
* the best-sigma envelope is, at each radius, the maximum certified accuracy over several runs
  (typically one run per sigma).

These are "approximate" certified accuracies in Cohen's sense: each row's certificate holds
with probability at least ``1 - alpha`` on its own; no correction over the test set is applied.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, InputTypeError
from ..results import ResultsWarning
from ..stats import clopper_pearson_interval
from .load import ABSTAIN, Results, single_value

__all__ = [
    "Envelope",
    "abstain_rate",
    "acr",
    "as_radii",
    "certified_accuracy",
    "certified_accuracy_interval",
    "check_runs",
    "clean_accuracy",
    "envelope",
    "envelope_of",
    "summary",
]


@dataclass(frozen=True, eq=False)
class Envelope:
    """Best-over-runs certified accuracy (e.g. the best-sigma curve of Cohen et al. 2019).

    Attributes:
        radii: float64 ``[R]``, the radii asked for.
        accuracy: float64 ``[R]``, the maximum certified accuracy over the runs at each radius.
        best: int64 ``[R]``, index (into the list of runs) of the run attaining it; on ties the
            first such run.
        names: the runs' display names, so ``names[best[j]]`` labels radius ``j``.
    """

    radii: np.ndarray
    accuracy: np.ndarray
    best: np.ndarray
    names: tuple[str, ...]

    def best_names(self) -> list[str]:
        """Display name of the best run at each radius, ``[R]``."""
        return [self.names[int(i)] for i in self.best]


def check_nonempty(results: Results) -> None:
    if len(results) == 0:
        raise InputError(f"{results!r} has no rows")


def as_radii(radii: float | Iterable[float]) -> np.ndarray:
    if not isinstance(radii, (np.ndarray, Sequence)) and isinstance(radii, Iterable):
        radii = list(radii)  # generators, sets, dict views
    r = np.asarray(radii, dtype=np.float64)
    if r.ndim > 1:
        raise InputError(f"radii must be a number or a 1-D sequence, got shape {r.shape}")
    if np.isnan(r).any() or (r < 0).any():
        raise InputError(f"radii must be numbers >= 0, got {r.tolist()}")
    return r


def certified_accuracy(results: Results, radii: float | Iterable[float]) -> np.ndarray:
    """Certified accuracy at each radius: fraction of rows with ``correct == 1`` and ``radius >= r``.

    This is Cohen et al.'s (2019) approximate certified accuracy: the denominator is every row,
    so abstentions and wrong predictions count as failures, and the comparison is ``>=``.

    Args:
        results: a run.
        radii: a radius ``>= 0`` or a 1-D sequence of them.

    Returns:
        float64 array with the shape of ``radii`` (0-d for a single number), values in [0, 1],
        non-increasing in the radius.
    """
    check_nonempty(results)
    r = as_radii(radii)
    certified = np.sort(results.radius[results.correct == 1])
    # count of certified radii >= r, exact for ties thanks to side="left"
    count = len(certified) - np.searchsorted(certified, r, side="left")
    return count / float(len(results))


def certified_accuracy_interval(
    results: Results, radii: float | Iterable[float], *, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Clopper–Pearson interval ``(lower, upper)`` on the certified accuracy at each
    radius, over the sample of test inputs.

    The rows are a sample of m inputs; the count k of certified-correct rows at radius r is
    Binomial(m, q_r), with q_r the probability that an input drawn like these (and certified with
    fresh noise) is certified correct at r. With probability at least ``confidence`` (each radius
    separately) ``lower <= q_r <= upper`` (exact binomial interval, each side at
    (1 - confidence) / 2; Cohen et al.'s analysis applies a comparable high-probability
    correction). On 500 inputs at accuracy 0.6 it is about +-0.044. Arrays shaped like
    :func:`certified_accuracy`'s result.
    """
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie in (0, 1), got {confidence}")
    accuracy = certified_accuracy(results, radii)
    m = len(results)
    k = np.rint(accuracy * m).astype(np.int64)
    lower, upper = clopper_pearson_interval(k, np.full_like(k, m), 1 - confidence)
    return np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)


def clean_accuracy(results: Results) -> float:
    """Accuracy of the smoothed classifier (certified accuracy at radius 0; abstentions are wrong)."""
    return float(certified_accuracy(results, 0.0))


def acr(results: Results) -> float:
    """Average certified radius: mean over all rows of ``radius * correct`` (abstentions and
    wrong predictions contribute 0)."""
    check_nonempty(results)
    return float(np.mean(results.radius * results.correct))


def abstain_rate(results: Results) -> float:
    """Fraction of rows where the smoothed classifier abstained (``predict == -1``)."""
    check_nonempty(results)
    return float(np.mean(results.predict == ABSTAIN))


def summary(results: Results, radii: float | Iterable[float]) -> dict[str, Any]:
    """Headline numbers of a run as plain Python values (JSON-serialisable).

    Returns:
        ``{"name", "path", "rows", "sigma", "noise", "clean_accuracy", "acr", "abstain_rate",
        "certified_accuracy": {radius: accuracy}, "mean_seconds", "total_seconds"}``.
    """
    r = np.atleast_1d(as_radii(radii))
    accs = certified_accuracy(results, r)
    return {
        "name": results.display_name(),
        "path": str(results.path) if results.path is not None else None,
        "rows": len(results),
        "sigma": results.sigma,
        "noise": results.noise,
        "clean_accuracy": clean_accuracy(results),
        "acr": acr(results),
        "abstain_rate": abstain_rate(results),
        "certified_accuracy": {float(a): float(b) for a, b in zip(r, accs, strict=True)},
        "mean_seconds": float(np.mean(results.seconds)),
        "total_seconds": float(np.sum(results.seconds)),
    }


def check_runs(results_list: Sequence[Results]) -> list[Results]:
    runs = list(results_list)
    if not runs:
        raise InputError("need at least one Results")
    for run in runs:
        if not isinstance(run, Results):
            raise InputTypeError(f"expected Results, got {type(run).__name__}; use load_results(path)")
        check_nonempty(run)
    norms = {str(single_value(run.extra["norm"])) if "norm" in run.extra else "l2" for run in runs}
    if len(norms) > 1:
        # Radii in different norms are different units: a shared column or envelope mixes them.
        warnings.warn(f"these runs certify different norms ({', '.join(sorted(norms))}); their radii are "
                      "not comparable", ResultsWarning, stacklevel=3)
    return runs


def envelope(results_list: Sequence[Results], radii: float | Iterable[float]) -> Envelope:
    """Best-over-runs certified accuracy at each radius and the run attaining it.

    Args:
        results_list: the runs (typically one per sigma).
        radii: a radius ``>= 0`` or a 1-D sequence of them.

    Returns:
        An :class:`Envelope` over ``[R]`` radii; ties go to the first run in ``results_list``.

    Warns (:class:`ResultsWarning`) when the runs were evaluated on different inputs (different
    ``idx`` sets), since the envelope then compares different test subsets. Cohen et al.'s
    published ImageNet table does exactly that: their sigma = 0.25 log stops after 427 of 500
    inputs.
    """
    return envelope_of(check_runs(results_list), radii, warn=True, stacklevel=3)


def envelope_of(
    runs: list[Results], radii: float | Iterable[float], *, warn: bool, stacklevel: int = 3
) -> Envelope:
    """:func:`envelope` of runs already checked by :func:`check_runs`; ``warn`` about runs on
    different inputs, attributed ``stacklevel`` frames up."""
    r = np.atleast_1d(as_radii(radii))
    table = np.stack([certified_accuracy(run, r) for run in runs])  # [runs, R]
    if warn:
        first = set(runs[0].idx.tolist())
        if any(set(run.idx.tolist()) != first for run in runs[1:]):
            sizes = ", ".join(f"{run.display_name()}: {len(run)}" for run in runs)
            warnings.warn(
                f"runs were certified on different inputs (rows: {sizes}); the envelope "
                "compares different test subsets",
                ResultsWarning,
                stacklevel=stacklevel,
            )
    best = np.argmax(table, axis=0).astype(np.int64)
    return Envelope(
        radii=r,
        accuracy=table[best, np.arange(len(r))],
        best=best,
        names=tuple(run.display_name() for run in runs),
    )


