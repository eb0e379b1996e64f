"""Confidence bounds and tests behind PREDICT and CERTIFY (SciPy only).

Every bound here is **one-sided** unless its name says otherwise, and holds "with probability
at least 1 - alpha" over the Monte Carlo draws that produced the counts. All functions are
vectorised: counts may be Python ints, NumPy arrays or tensors (any shape) and the result is a
float64 NumPy array of the broadcast shape (a 0-d array for scalar input).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import beta, binomtest

from .errors import InputError

__all__ = [
    "check_alpha",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "clopper_pearson_interval",
    "binomial_test_pvalue",
    "bonferroni",
    "min_samples_to_certify",
    "hoeffding_lower",
    "hoeffding_upper",
    "bernstein_lower",
    "bernstein_upper",
    "mean_lower",
    "mean_upper",
    "MEAN_BOUNDS",
]


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float, or ValueError if it is not in the open interval (0, 1)."""
    a = float(alpha)
    if not (0.0 < a < 1.0):
        raise InputError(f"alpha must lie in the open interval (0, 1), got {alpha}")
    return a


def _counts(k: ArrayLike, n: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    k_arr = np.asarray(getattr(k, "cpu", lambda: k)(), dtype=np.float64)
    n_arr = np.asarray(getattr(n, "cpu", lambda: n)(), dtype=np.float64)
    if np.any(n_arr < 1) or np.any(k_arr < 0) or np.any(k_arr > n_arr):
        raise InputError("counts must satisfy 0 <= k <= n and n >= 1")
    return np.broadcast_arrays(k_arr, n_arr)  # type: ignore[return-value]


def clopper_pearson_lower(k: ArrayLike, n: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """One-sided Clopper–Pearson lower bound on p from k successes in n Bernoulli(p) trials.

    P(p >= bound) >= 1 - alpha. Equals Beta(alpha; k, n - k + 1) quantile, and 0 when k = 0.
    (This is ``proportion_confint(k, n, alpha=2*alpha, method="beta")[0]`` of Cohen et al.)
    """
    a = check_alpha(alpha)
    k_arr, n_arr = _counts(k, n)
    with np.errstate(invalid="ignore"):
        out = beta.ppf(a, k_arr, n_arr - k_arr + 1)
    return np.where(k_arr == 0, 0.0, out)


def clopper_pearson_upper(k: ArrayLike, n: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """One-sided Clopper–Pearson upper bound: P(p <= bound) >= 1 - alpha; 1 when k = n."""
    a = check_alpha(alpha)
    k_arr, n_arr = _counts(k, n)
    with np.errstate(invalid="ignore"):
        out = beta.ppf(1 - a, k_arr + 1, n_arr - k_arr)
    return np.where(k_arr == n_arr, 1.0, out)


def clopper_pearson_interval(
    k: ArrayLike, n: ArrayLike, alpha: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Two-sided interval: each side at alpha/2, so P(lower <= p <= upper) >= 1 - alpha."""
    a = check_alpha(alpha)
    return clopper_pearson_lower(k, n, a / 2), clopper_pearson_upper(k, n, a / 2)


def binomial_test_pvalue(k: ArrayLike, n: ArrayLike, p: float = 0.5) -> NDArray[np.float64]:
    """Two-sided exact binomial test p-value of H0: success probability = ``p``.

    PREDICT (Cohen et al. 2019) abstains unless the test of nA against nA + nB rejects at alpha.
    n = 0 (no draw fell in either class) gives p-value 1.
    """
    k_arr = np.asarray(getattr(k, "cpu", lambda: k)(), dtype=np.int64)
    n_arr = np.asarray(getattr(n, "cpu", lambda: n)(), dtype=np.int64)
    k_arr, n_arr = np.broadcast_arrays(k_arr, n_arr)
    out = np.ones(k_arr.shape, dtype=np.float64)
    for i in np.ndindex(k_arr.shape):  # one exact test per input: B is small, n is not
        if n_arr[i] > 0:
            out[i] = binomtest(int(k_arr[i]), int(n_arr[i]), p, alternative="two-sided").pvalue
    return out


def bonferroni(alpha: float, m: int) -> float:
    """Per-statement level so that m statements hold together with probability >= 1 - alpha."""
    if m < 1:
        raise InputError("m must be >= 1")
    return check_alpha(alpha) / m


def min_samples_to_certify(alpha: float, p_threshold: float = 0.5) -> int:
    """Smallest n at which *any* radius can be certified at level ``alpha``.

    Even when all n draws agree, the Clopper–Pearson lower bound is alpha^(1/n); it must exceed
    ``p_threshold`` (1/2 for the one-class certificate), i.e. n > ln(alpha)/ln(p_threshold).
    """
    a = check_alpha(alpha)
    if not (0.0 < p_threshold < 1.0):
        raise InputError("p_threshold must lie in (0, 1)")
    n = math.floor(math.log(a) / math.log(p_threshold)) + 1
    # Guard the float boundary: make sure n is the first integer that really works.
    while n > 1 and a ** (1.0 / (n - 1)) > p_threshold:
        n -= 1
    while a ** (1.0 / n) <= p_threshold:
        n += 1
    return n


# ------------------------------------------------------------------------------------------
# Bounds on the mean of [0, 1]-valued draws (soft-classifier certificates)
# ------------------------------------------------------------------------------------------

#: Methods of :func:`mean_lower` / :func:`mean_upper`.
MEAN_BOUNDS = ("hoeffding", "bernstein", "best")


def _moments(
    mean: ArrayLike, n: ArrayLike, var: ArrayLike | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    m = np.asarray(getattr(mean, "cpu", lambda: mean)(), dtype=np.float64)
    n_arr = np.asarray(getattr(n, "cpu", lambda: n)(), dtype=np.float64)
    v = np.zeros_like(m) if var is None else np.asarray(getattr(var, "cpu", lambda: var)(), dtype=np.float64)
    if np.any(n_arr < 2):
        raise InputError("bounds on a mean need n >= 2 draws")
    # A float sum of n values in [0, 1] may land a few ulps outside; anything further is a bug.
    if np.any(m < -1e-9) or np.any(m > 1 + 1e-9) or np.any(~np.isfinite(m)):
        raise InputError("the sample mean of [0, 1]-valued draws must lie in [0, 1]")
    if np.any(v < -1e-9) or np.any(~np.isfinite(v)):
        raise InputError("the sample variance must be finite and non-negative")
    m, n_arr, v = np.broadcast_arrays(np.clip(m, 0.0, 1.0), n_arr, np.clip(v, 0.0, 0.25 * n_arr / (n_arr - 1)))
    return m, n_arr, v


def hoeffding_lower(mean: ArrayLike, n: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """One-sided Hoeffding lower bound on E X from the mean of n i.i.d. draws of X in [0, 1].

    P(E X >= mean - sqrt(ln(1/alpha) / (2n))) >= 1 - alpha (Hoeffding 1963, Thm. 2). Clipped to
    [0, 1] (clipping keeps the guarantee: E X lies in [0, 1]).
    """
    a = check_alpha(alpha)
    m, n_arr, _ = _moments(mean, n)
    return np.clip(m - np.sqrt(math.log(1.0 / a) / (2.0 * n_arr)), 0.0, 1.0)


def hoeffding_upper(mean: ArrayLike, n: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """One-sided Hoeffding upper bound: P(E X <= mean + sqrt(ln(1/alpha) / (2n))) >= 1 - alpha."""
    a = check_alpha(alpha)
    m, n_arr, _ = _moments(mean, n)
    return np.clip(m + np.sqrt(math.log(1.0 / a) / (2.0 * n_arr)), 0.0, 1.0)


def _bernstein_width(n_arr: NDArray[np.float64], var: NDArray[np.float64], a: float) -> NDArray[np.float64]:
    log_term = math.log(2.0 / a)
    return np.sqrt(2.0 * var * log_term / n_arr) + 7.0 * log_term / (3.0 * (n_arr - 1.0))


def bernstein_lower(mean: ArrayLike, var: ArrayLike, n: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """One-sided empirical-Bernstein lower bound on E X from n i.i.d. draws of X in [0, 1].

    ``var`` is the unbiased sample variance (divisor n - 1). With probability at least 1 - alpha,
    E X >= mean - sqrt(2 var ln(2/alpha) / n) - 7 ln(2/alpha) / (3 (n - 1))
    (Maurer & Pontil 2009, Thm. 4; the ln(2/alpha) pays for estimating the variance). Much tighter
    than Hoeffding when the draws barely vary (a confident soft classifier: var << 1/4).
    """
    a = check_alpha(alpha)
    m, n_arr, v = _moments(mean, n, var)
    return np.clip(m - _bernstein_width(n_arr, v, a), 0.0, 1.0)


def bernstein_upper(mean: ArrayLike, var: ArrayLike, n: ArrayLike, alpha: float) -> NDArray[np.float64]:
    """One-sided empirical-Bernstein upper bound (as :func:`bernstein_lower`, other side)."""
    a = check_alpha(alpha)
    m, n_arr, v = _moments(mean, n, var)
    return np.clip(m + _bernstein_width(n_arr, v, a), 0.0, 1.0)


def mean_lower(
    mean: ArrayLike, var: ArrayLike, n: ArrayLike, alpha: float, *, method: str = "best"
) -> NDArray[np.float64]:
    """Lower confidence bound on E X, X in [0, 1]: P(E X >= bound) >= 1 - alpha.

    ``method``: "hoeffding", "bernstein" or "best" -- both, each at level alpha/2 (a union
    bound, so choosing the larger after seeing the data keeps the guarantee), the larger kept.
    """
    if method == "hoeffding":
        return hoeffding_lower(mean, n, alpha)
    if method == "bernstein":
        return bernstein_lower(mean, var, n, alpha)
    if method == "best":
        half = check_alpha(alpha) / 2
        return np.maximum(hoeffding_lower(mean, n, half), bernstein_lower(mean, var, n, half))
    raise InputError(f"method must be one of {', '.join(MEAN_BOUNDS)}, got {method!r}")


def mean_upper(
    mean: ArrayLike, var: ArrayLike, n: ArrayLike, alpha: float, *, method: str = "best"
) -> NDArray[np.float64]:
    """Upper confidence bound on E X, X in [0, 1]: P(E X <= bound) >= 1 - alpha (see :func:`mean_lower`)."""
    if method == "hoeffding":
        return hoeffding_upper(mean, n, alpha)
    if method == "bernstein":
        return bernstein_upper(mean, var, n, alpha)
    if method == "best":
        half = check_alpha(alpha) / 2
        return np.minimum(hoeffding_upper(mean, n, half), bernstein_upper(mean, var, n, half))
    raise InputError(f"method must be one of {', '.join(MEAN_BOUNDS)}, got {method!r}")
