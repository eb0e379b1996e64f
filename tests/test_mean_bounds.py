"""Bounds on means of [0, 1]-valued draws (Hoeffding, empirical Bernstein): closed forms,
which one is tighter where, coverage over seeded trials, bad input."""

import math

import numpy as np
import pytest

from smoothcert.errors import InputError
from smoothcert.stats import (
    bernstein_lower,
    bernstein_upper,
    hoeffding_lower,
    hoeffding_upper,
    mean_lower,
    mean_upper,
)


def test_closed_forms():
    width = math.sqrt(math.log(1 / 0.01) / (2 * 1000))
    assert hoeffding_lower(0.5, 1000, 0.01) == pytest.approx(0.5 - width)
    assert hoeffding_upper(0.5, 1000, 0.01) == pytest.approx(0.5 + width)
    bw = math.sqrt(2 * 0.04 * math.log(2 / 0.01) / 1000) + 7 * math.log(2 / 0.01) / (3 * 999)
    assert bernstein_lower(0.5, 0.04, 1000, 0.01) == pytest.approx(0.5 - bw)
    assert bernstein_upper(0.5, 0.04, 1000, 0.01) == pytest.approx(0.5 + bw)
    # clipped to [0, 1]
    assert hoeffding_upper(1.0, 10, 0.01) == 1.0
    assert hoeffding_lower(0.0, 10, 0.01) == 0.0


def test_bernstein_wins_at_low_variance_and_best_takes_the_tighter():
    # A confident soft classifier: mean 0.99, var 1e-4, n = 10^4.
    h = hoeffding_lower(0.99, 10_000, 0.001)
    b = bernstein_lower(0.99, 1e-4, 10_000, 0.001)
    assert b > h
    best = mean_lower(0.99, 1e-4, 10_000, 0.001, method="best")
    assert best == pytest.approx(bernstein_lower(0.99, 1e-4, 10_000, 0.0005))
    # At maximal variance Hoeffding is tighter, and "best" picks it (at alpha / 2).
    best_hi = mean_upper(0.5, 0.25, 10_000, 0.001, method="best")
    assert best_hi == pytest.approx(hoeffding_upper(0.5, 10_000, 0.0005))
    assert mean_lower(0.5, 0.25, 100, 0.01, method="hoeffding") == hoeffding_lower(0.5, 100, 0.01)


def test_vectorised():
    out = mean_lower(np.array([[0.2, 0.9]]), np.array([[0.01, 0.05]]), 500, 0.05)
    assert out.shape == (1, 2)
    assert np.all(out < [[0.2, 0.9]])


@pytest.mark.parametrize("method", ["hoeffding", "bernstein", "best"])
def test_coverage_over_seeded_trials(method):
    # Draws of a Beta(8, 2) variable (mean 0.8): the bounds must hold in >= 1 - alpha of trials.
    # alpha = 0.1, 2000 trials: a valid bound fails at most ~200 times; the binomial 99.9% upper
    # quantile of Bin(2000, 0.1) is ~243, so > 243 failures means the bound is wrong.
    rng = np.random.default_rng(0)
    x = rng.beta(8, 2, size=(2000, 50))
    m, v = x.mean(axis=1), x.var(axis=1, ddof=1)
    lower_fail = np.sum(mean_lower(m, v, 50, 0.1, method=method) > 0.8)
    upper_fail = np.sum(mean_upper(m, v, 50, 0.1, method=method) < 0.8)
    assert lower_fail <= 243 and upper_fail <= 243
    # and they are not vacuous
    assert np.all(mean_lower(m, v, 50, 0.1, method=method) > 0.3)


def test_bad_input():
    with pytest.raises(InputError, match="alpha"):
        hoeffding_lower(0.5, 100, 1.5)
    with pytest.raises(InputError, match="n >= 2"):
        hoeffding_lower(0.5, 1, 0.1)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        bernstein_lower(1.5, 0.1, 100, 0.1)
    with pytest.raises(InputError, match="variance"):
        bernstein_upper(0.5, -0.1, 100, 0.1)
    with pytest.raises(InputError, match="method"):
        mean_lower(0.5, 0.1, 100, 0.1, method="chernoff")
