"""Confidence bounds: closed forms, edge cases and coverage over seeded trials."""

import numpy as np
import pytest
from scipy.stats import beta

from smoothcert.stats import (
    binomial_test_pvalue,
    bonferroni,
    check_alpha,
    clopper_pearson_interval,
    clopper_pearson_lower,
    clopper_pearson_upper,
    min_samples_to_certify,
)


def test_closed_forms_at_the_edges():
    # k = n: lower bound alpha^(1/n); k = 0: upper bound 1 - alpha^(1/n).
    assert clopper_pearson_lower(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))
    assert clopper_pearson_upper(0, 100, 0.001) == pytest.approx(1 - 0.001 ** (1 / 100))
    assert clopper_pearson_lower(0, 100, 0.001) == 0.0
    assert clopper_pearson_upper(100, 100, 0.001) == 1.0


def test_lower_matches_beta_quantile_and_is_vectorised():
    k = np.array([[5, 50], [90, 99]])
    out = clopper_pearson_lower(k, 100, 0.05)
    assert out.shape == (2, 2)
    assert out[1, 0] == pytest.approx(beta.ppf(0.05, 90, 11))
    # bounds bracket the empirical frequency
    assert np.all(out < k / 100)
    assert np.all(clopper_pearson_upper(k, 100, 0.05) > k / 100)


def test_interval_splits_alpha():
    lo, hi = clopper_pearson_interval(30, 100, 0.1)
    assert lo == pytest.approx(clopper_pearson_lower(30, 100, 0.05))
    assert hi == pytest.approx(clopper_pearson_upper(30, 100, 0.05))


@pytest.mark.parametrize("p", [0.05, 0.5, 0.93, 0.995])
@pytest.mark.parametrize("n", [20, 500])
def test_one_sided_coverage(p, n):
    # 20,000 seeded trials per case. Clopper-Pearson is conservative, so the miss rate is at most
    # alpha = 0.05; allow 4 binomial standard deviations (0.0062) of Monte Carlo error on top.
    alpha, trials = 0.05, 20_000
    k = np.random.default_rng(1234).binomial(n, p, size=trials)
    miss_low = np.mean(clopper_pearson_lower(k, n, alpha) > p)
    miss_up = np.mean(clopper_pearson_upper(k, n, alpha) < p)
    tol = 4 * np.sqrt(alpha * (1 - alpha) / trials)
    assert miss_low <= alpha + tol
    assert miss_up <= alpha + tol


def test_bad_arguments():
    for a in [0, 1, -0.1, 1.5, float("nan")]:
        with pytest.raises(ValueError, match="alpha"):
            check_alpha(a)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        clopper_pearson_lower(11, 10, 0.05)
    with pytest.raises(ValueError):
        bonferroni(0.05, 0)


def test_binomial_test():
    # 50/50 split is no evidence at all; a 60/0 split is overwhelming
    assert binomial_test_pvalue(50, 100)[()] == pytest.approx(1.0)
    assert binomial_test_pvalue(60, 60)[()] < 1e-15
    assert binomial_test_pvalue(np.array([0, 3]), np.array([0, 3])).tolist()[0] == 1.0


@pytest.mark.parametrize("alpha", [0.5, 0.1, 0.05, 0.001, 1e-6])
def test_min_samples_to_certify(alpha):
    n = min_samples_to_certify(alpha)
    assert clopper_pearson_lower(n, n, alpha) > 0.5
    assert n == 1 or clopper_pearson_lower(n - 1, n - 1, alpha) <= 0.5


def test_min_samples_at_cohen_alpha():
    # alpha = 0.001: 0.001^(1/9) = 0.464 < 1/2 < 0.001^(1/10) = 0.501
    assert min_samples_to_certify(0.001) == 10
