"""SmoothedRegressor: exact answers for linear maps and the identity, guarantees checked by attack."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from smoothcert.errors import InputError, InputTypeError
from smoothcert.noise import get_noise
from smoothcert.regression import (
    SmoothedRegressor,
    center_quantile_level,
    median_order_statistics,
    mse,
    psnr,
    worst_mse_ball,
    worst_mse_box,
)


class Linear(nn.Module):
    """f(y) = A y + b on flattened images, output [B, 2, 3] (a shape unlike the input's)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.A = nn.Parameter(torch.randn(6, d, generator=g) / math.sqrt(d), requires_grad=False)
        self.b = nn.Parameter(torch.randn(6, generator=g), requires_grad=False)

    def forward(self, y):
        return (y.flatten(1) @ self.A.T + self.b).view(-1, 2, 3)


def test_mean_of_linear_map_is_the_map():
    # E[A(y + delta) + b] = A y + b exactly; the Monte Carlo error of each coordinate is
    # sigma·‖A_i‖/sqrt(n) <= 0.5·1.6/sqrt(4000) ~ 0.013, tolerance 6 standard errors.
    y = torch.rand(3, 1, 5, 7)  # odd sizes
    f = Linear(35).eval()
    sr = SmoothedRegressor(f, noise=get_noise("gaussian", sigma=0.5))
    est = sr.mean(y, n=4000, batch_size=999, generator=0)
    exact = f(y)
    se = 0.5 * f.A.norm(dim=1).view(2, 3) / math.sqrt(4000)
    assert est.shape == (3, 2, 3)
    assert ((est - exact).abs() <= 6 * se).all()


def test_mean_is_reproducible_and_batch_one():
    y = torch.rand(1, 3, 9, 9)
    sr = SmoothedRegressor(nn.Identity().eval(), noise=get_noise("laplace", sigma=0.1))
    a = sr.mean(y[0], n=10, batch_size=3, generator=5)
    b = sr.mean(y, n=10, batch_size=3, generator=5)
    c = sr.mean(y, n=10, batch_size=3, generator=6)
    assert a.shape == (1, 3, 9, 9)
    torch.testing.assert_close(a, b)  # same seed, same draws
    assert not torch.equal(a, c)


def test_order_statistics_match_binomial_definition():
    k_l, k_u = median_order_statistics(n=1000, p_lower=0.3, p_upper=0.7, alpha=0.01)
    from scipy.stats import binom
    assert binom.cdf(k_l - 1, 1000, 0.3) <= 0.01 < binom.cdf(k_l, 1000, 0.3)
    assert binom.sf(k_u - 1, 1000, 0.7) <= 0.01 < binom.sf(k_u - 2, 1000, 0.7)
    assert k_u == 1000 + 1 - k_l  # symmetric levels give symmetric order statistics
    assert median_order_statistics(n=10, p_lower=1e-4, p_upper=1 - 1e-4, alpha=0.01) == (0, 11)


def test_median_bounds_identity_contains_shifted_interval_and_is_tight():
    # f = identity: f_i(y + delta) ~ N(y_i, sigma²), whose Φ(∓eps/sigma)-quantiles are exactly y_i ∓ eps,
    # and the median-smoothed output at y' is y' itself, which ranges over [y_i − eps, y_i + eps].
    sigma, eps, n, alpha = 0.25, 0.2, 2000, 0.01
    y = torch.rand(2, 3, 5, 5)
    sr = SmoothedRegressor(nn.Identity().eval(), noise=get_noise("gaussian", sigma=sigma))
    mb = sr.median_bounds(y, eps=eps, n=n, alpha=alpha, batch_size=512, generator=1)
    assert mb.lower.shape == y.shape
    assert (mb.lower <= y - eps).all() and (mb.upper >= y + eps).all()
    assert (mb.lower <= mb.median).all() and (mb.median <= mb.upper).all()
    # Not wider than the quantile slack explains: X_(k_l) concentrates at the k_l/(n+1) quantile with
    # standard deviation sqrt(p(1-p)/n)/φ(Φ⁻¹(p))·sigma; 6 of them (75 coordinates per image).
    p = mb.k_lower / (n + 1)
    expect = y + sigma * norm.ppf(p)
    sd = sigma * math.sqrt(p * (1 - p) / n) / norm.pdf(norm.ppf(p))
    assert ((mb.lower - expect).abs() <= 6 * sd).all()
    assert ((mb.upper - (y + sigma * norm.ppf(mb.k_upper / (n + 1)))).abs() <= 6 * sd).all()
    # ... and the order statistic lies within a Bonferroni-level slack of the nominal quantile.
    assert norm.ppf(mb.p_lower) - norm.ppf(p) < 0.35


def test_median_bounds_unbounded_when_n_too_small_and_requires_gaussian():
    y = torch.rand(1, 4)
    sr = SmoothedRegressor(nn.Identity().eval(), noise=get_noise("gaussian", sigma=0.1))
    mb = sr.median_bounds(y, eps=0.5, n=50, alpha=0.05, batch_size=50, generator=0)
    assert torch.isinf(mb.lower).all() and torch.isinf(mb.upper).all()
    with pytest.raises(InputTypeError, match="Gaussian"):
        SmoothedRegressor(nn.Identity().eval(), noise=get_noise("laplace", sigma=0.1)).median_bounds(
            y, eps=0.1, n=50, alpha=0.05, batch_size=50)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3, 7, 5)])
def test_center_radius_of_identity_at_least_eps(shape):
    # The centre-smoothed identity is shift-equivariant (up to the centre's sampling error), so it moves
    # by ‖y' − y‖ = eps: a certified radius below eps would be wrong.
    sigma = 0.25
    y = torch.rand(*shape)
    sr = SmoothedRegressor(nn.Identity().eval(), noise=get_noise("gaussian", sigma=sigma))
    for eps in (0.0, 0.1, 0.3):
        cert = sr.center(y, eps=eps, n0=50, n=2000, alpha=0.01, batch_size=500, generator=2)
        assert not cert.abstained.any()
        assert (cert.radius >= eps).all() and torch.isfinite(cert.radius).all()
        assert cert.center.shape == y.shape


def test_center_bound_holds_under_shift():
    # Identity in d = 1: the centre at y' = y + eps must be within the certified radius of the centre at y.
    sigma, eps = 0.2, 0.15
    sr = SmoothedRegressor(nn.Identity().eval(), noise=get_noise("gaussian", sigma=sigma))
    y = torch.full((1, 1), 0.5)
    c0 = sr.center(y, eps=eps, n0=100, n=3000, alpha=0.01, batch_size=1000, generator=3)
    c1 = sr.center(y + eps, eps=eps, n0=100, n=3000, alpha=0.01, batch_size=1000, generator=4)
    assert (c1.center - c0.center).norm() <= c0.radius[0]
    assert c0.quantile_radius[0] >= eps  # even R itself, before the (1 + beta) factor


def test_center_infinite_radius_when_quantile_above_one():
    sr = SmoothedRegressor(nn.Identity().eval(), noise=get_noise("gaussian", sigma=0.1))
    assert center_quantile_level(eps=1.0, sigma=0.1, delta=0.05, n=100, alpha=0.01) > 1
    cert = sr.center(torch.rand(2, 3), eps=1.0, n0=10, n=100, alpha=0.01, batch_size=64, generator=0)
    assert torch.isinf(cert.radius).all()


def test_worst_case_metrics_exact():
    x = torch.zeros(1, 1, 2, 2)
    lo = torch.tensor([[-0.1, 0.0, -0.3, 0.1]]).view(1, 1, 2, 2)
    hi = torch.tensor([[0.2, 0.1, 0.1, 0.4]]).view(1, 1, 2, 2)
    expect = (0.2**2 + 0.1**2 + 0.3**2 + 0.4**2) / 4
    assert worst_mse_box(lo, hi, x).item() == pytest.approx(expect)
    assert worst_mse_box(lo, hi, x, value_range=(0.0, 0.3)).item() == pytest.approx((0.04 + 0.01 + 0.01 + 0.09) / 4)
    c = torch.full((1, 1, 2, 2), 0.1)  # ‖c − x‖ = 0.2
    assert worst_mse_ball(c, torch.tensor([0.3]), x).item() == pytest.approx(0.25 / 4)
    assert mse(c, x).item() == pytest.approx(0.01)
    assert psnr(0.01).item() == pytest.approx(20.0)


def test_ssim_by_scikit_image():
    pytest.importorskip("skimage")
    from smoothcert.regression import ssim
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert (ssim((x + 0.3 * torch.randn(2, 3, 16, 16)).clamp(0, 1), x) < 0.8).all()


def test_bad_input():
    sr = SmoothedRegressor(nn.Identity().eval(), noise=get_noise("gaussian", sigma=0.1))
    y = torch.rand(1, 3, 4, 4)
    with pytest.raises(InputError, match="eps"):
        sr.median_bounds(y, eps=-0.1, n=10, alpha=0.1, batch_size=10)
    with pytest.raises(InputError, match="eps"):
        sr.center(y, eps=-1, n0=5, n=10, alpha=0.1, batch_size=10)
    with pytest.raises(InputError, match="alpha"):
        sr.median_bounds(y, eps=0.1, n=10, alpha=1.5, batch_size=10)
    with pytest.raises(InputError, match="n0"):
        sr.center(y, eps=0.1, n0=10, n=10, alpha=0.1, batch_size=10)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        sr.mean(y + 2, n=2, batch_size=2)
    with pytest.raises(InputTypeError):
        SmoothedRegressor(nn.Identity().eval(), noise="gaussian")
    with pytest.raises(InputError, match="shapes differ"):
        mse(torch.zeros(1, 3), torch.zeros(1, 4))


def test_fixed_shape_engine_padding_rows_are_dropped():
    # A fixed-shape engine pads the last pass with rows of owner B: none may enter the draws.
    from smoothcert.engine import Engine
    y = torch.rand(3, 5)
    sr = SmoothedRegressor(nn.Identity().eval(), noise=get_noise("gaussian", sigma=0.1),
                           engine=Engine(fixed_shape=True, channels_last=False))
    draws = sr.samples(y, n=7, batch_size=8, generator=0)
    assert draws.shape == (3, 7, 5)
    # Each input's draws are its own: within 6 sigma of it, and not all equal.
    assert ((draws - y[:, None]).abs() < 0.6).all()
    assert (draws.std(dim=1) > 0).all()
    with pytest.raises(InputTypeError, match="Engine"):
        SmoothedRegressor(nn.Identity(), noise=get_noise("gaussian", sigma=0.1), engine="fp32")


def test_certified_psnr_bundles_both_certificates_and_never_beats_the_clean_psnr():
    from smoothcert.regression import (center_from_draws, certified_psnr, median_bounds_from_draws, mse, psnr,
                                       worst_mse_ball, worst_mse_box)

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 4, 4, generator=g)
    draws0 = x[:, None] + 0.1 * torch.randn(2, 16, 1, 4, 4, generator=g)
    draws = x[:, None] + 0.1 * torch.randn(2, 200, 1, 4, 4, generator=g)
    c = certified_psnr(draws0, draws, x, sigma=0.25, eps=0.1, alpha=0.05, delta=0.1, value_range=(0, 1))
    box = median_bounds_from_draws(draws, sigma=0.25, eps=0.1, alpha=0.05)
    ball = center_from_draws(draws0, draws, sigma=0.25, eps=0.1, alpha=0.05, delta=0.1)
    assert torch.equal(c.median_clean, psnr(mse(box.median, x)))
    assert torch.equal(c.median_certified, psnr(worst_mse_box(box.lower, box.upper, x, value_range=(0, 1))))
    assert torch.equal(c.center_certified, psnr(worst_mse_ball(ball.center, ball.radius, x)))
    # the median lies in its box and the centre in its ball: the worst point is never closer to x
    assert bool((c.median_certified <= c.median_clean + 1e-9).all())
    assert bool((c.center_certified <= c.center_clean + 1e-9).all())
