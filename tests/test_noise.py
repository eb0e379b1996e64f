"""Noises: registry, sampling statistics and closed-form radii against exact linear answers."""

import math

import pytest
import torch
from scipy.stats import norm as normal

from smoothcert.noise import Gaussian, Laplace, Noise, Uniform, get_noise, list_noises

SIGMAS = [0.12, 0.5, 1.0]


def test_registry_lists_the_three_families():
    assert list_noises() == ["gaussian", "laplace", "uniform"]
    assert isinstance(get_noise("Gaussian", sigma=0.5), Gaussian)
    assert get_noise("laplace", sigma=0.5) == Laplace(sigma=0.5)


def test_unknown_noise_names_the_known_ones():
    with pytest.raises(ValueError, match="known: gaussian, laplace, uniform"):
        get_noise("gausian", sigma=0.5)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        get_noise("gaussian", sigma=sigma)


@pytest.mark.parametrize("name", list_noises())
@pytest.mark.parametrize("sigma", SIGMAS)
def test_empirical_sigma_and_mean(name, sigma):
    # 2e6 draws: the std of the sample std is ~sigma * 1e-3 (kurtosis <= 6), so 1% is > 5 s.d.
    g = torch.Generator().manual_seed(0)
    d = get_noise(name, sigma=sigma).sample((2_000_000,), generator=g)
    assert d.dtype == torch.float32
    assert abs(d.std().item() / sigma - 1) < 0.01
    assert abs(d.mean().item()) < 0.01 * sigma


@pytest.mark.parametrize("name", list_noises())
def test_sampling_is_seeded_shaped_and_typed(name):
    noise = get_noise(name, sigma=0.25)
    a = noise.sample((3, 1, 4, 4), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    b = noise.sample((3, 1, 4, 4), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    c = noise.sample((3, 1, 4, 4), generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    assert a.shape == (3, 1, 4, 4) and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.equal(a, c)
    x = torch.rand(2, 5)
    assert noise.perturb(x).shape == x.shape


def test_support_of_uniform_and_laplace_shape():
    u = Uniform(sigma=0.5).sample((100_000,), generator=torch.Generator().manual_seed(0))
    lam = 0.5 * math.sqrt(3)
    assert u.abs().max() <= lam and u.abs().max() > 0.99 * lam
    lap = Laplace(sigma=0.5).sample((400_000,), generator=torch.Generator().manual_seed(0))
    # Laplace(scale) has E|X| = scale = sigma/sqrt(2).
    assert abs(lap.abs().mean().item() / (0.5 / math.sqrt(2)) - 1) < 0.01


@pytest.mark.parametrize("noise", [Gaussian(sigma=0.5), Laplace(sigma=0.5), Uniform(sigma=0.5)])
def test_unsupported_norm_names_supported_ones(noise: Noise):
    bad = {"gaussian": "l1", "laplace": "l2", "uniform": "l2"}[noise.name]
    with pytest.raises(ValueError, match="supports: " + ", ".join(noise.norms)):
        noise.radius(0.9, norm=bad)


def test_radius_needs_dim_for_linf():
    with pytest.raises(ValueError, match="dim"):
        Gaussian(sigma=0.5).radius(0.9, norm="linf")


def test_radius_rejects_non_probabilities():
    with pytest.raises(ValueError, match="p_lower"):
        Gaussian(sigma=0.5).radius(torch.tensor([0.7, 1.2]))


# ---- exact radii: a linear boundary at distance m from x in the direction of w ----


@pytest.mark.parametrize("sigma", SIGMAS)
def test_gaussian_l2_exact(sigma):
    # pA = Phi(m / sigma) for unit ||w||_2, so sigma * Phi^-1(pA) = m exactly (Cohen Thm 1 is tight).
    # m / sigma <= 5 keeps pA below 1 in float64 (Phi(8.3) already rounds to 1).
    m = sigma * torch.tensor([0.01, 0.5, 2.0, 5.0], dtype=torch.float64)
    pa = torch.from_numpy(normal.cdf(m.numpy() / sigma))
    r = Gaussian(sigma=sigma).radius(pa)
    torch.testing.assert_close(r, m, rtol=1e-9, atol=1e-12)
    # the two-class form with pB = 1 - pA is the same number
    torch.testing.assert_close(Gaussian(sigma=sigma).radius(pa, p_upper_b=1 - pa), m, rtol=1e-9, atol=1e-12)


def test_gaussian_linf_exact_for_all_ones_direction():
    # w = ones(d): l2 distance m/sqrt(d), linf distance m/d = (l2 distance)/sqrt(d).
    d, sigma, margin = 16, 0.5, 0.8
    pa = normal.cdf(margin / math.sqrt(d) / sigma)
    r = Gaussian(sigma=sigma).radius(pa, norm="linf", dim=d)
    assert r.item() == pytest.approx(margin / d, rel=1e-9)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_laplace_l1_exact_axis_aligned(sigma):
    # w = e1: pA = P(delta_1 > -m) = 1 - exp(-m/lambda)/2 and the l1 distance is m.
    lam = sigma / math.sqrt(2)
    m = lam * torch.tensor([0.05, 1.0, 8.0], dtype=torch.float64)
    pa = 1 - 0.5 * torch.exp(-m / lam)
    torch.testing.assert_close(Laplace(sigma=sigma).radius(pa), m, rtol=1e-9, atol=1e-12)
    two = Laplace(sigma=sigma).radius(pa, p_upper_b=1 - pa)
    assert torch.all(two >= m - 1e-12)  # never below the one-class form...
    assert torch.all(two <= m + 1e-12)  # ...and never beyond the true distance (sound)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_uniform_l1_and_linf_exact_in_one_dimension(sigma):
    lam = sigma * math.sqrt(3)
    m = torch.tensor([0.0, 0.1, 0.9]) * lam
    pa = (lam + m.double()) / (2 * lam)
    noise = Uniform(sigma=sigma)
    torch.testing.assert_close(noise.radius(pa, norm="l1"), m.double(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(noise.radius(pa, norm="linf", dim=1), m.double(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(noise.radius(pa, p_upper_b=1 - pa), m.double(), rtol=1e-9, atol=1e-12)


def test_uniform_linf_sound_in_two_dimensions():
    # w = (1, 1): the sum of two U[-lam, lam] is triangular, P(S > -m) = 1 - (2 lam - m)^2 / (8 lam^2);
    # the true linf distance is m / ||w||_1 = m / 2. Yang et al.'s bound must not exceed it.
    lam = math.sqrt(3) * 0.5
    noise = Uniform(sigma=0.5)
    for m in [0.1, 0.5, 1.0, 1.5]:
        pa = 1 - (2 * lam - m) ** 2 / (8 * lam**2)
        r = noise.radius(pa, norm="linf", dim=2).item()
        assert 0 < r <= m / 2


@pytest.mark.parametrize("name", list_noises())
def test_radius_zero_at_or_below_one_half_and_monotone(name):
    noise = get_noise(name, sigma=0.5)
    p = torch.linspace(0.0, 0.999, 200, dtype=torch.float64)
    r = noise.radius(p, norm=noise.default_norm)
    assert torch.all(r[p <= 0.5] == 0)
    assert torch.all(r[p > 0.5] > 0)
    assert torch.all(r.diff() >= 0)
