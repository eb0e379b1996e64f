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


# ---- what multi-step denoising asks of a noise: potential phi = -log q + const, and the MAP step ----


def _deltas(noise: Noise, n: int = 6, d: int = 5) -> torch.Tensor:
    # Inside the uniform box (half-width sigma sqrt(3)) so every density is positive.
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 1, d, generator=g, dtype=torch.float64) * 2 - 1) * 0.9 * noise.sigma * math.sqrt(3)


@pytest.mark.parametrize("sigma", [0.25, 1.0])
def test_potentials_are_the_closed_forms_and_minus_log_densities(sigma):
    gauss, lap, uni = Gaussian(sigma=sigma), Laplace(sigma=sigma), Uniform(sigma=sigma)
    for noise, closed, dist in [
        (gauss, lambda u: u.pow(2).sum((1, 2)) / (2 * sigma**2), torch.distributions.Normal(0.0, sigma)),
        # Laplace scale lambda = sigma / sqrt(2) (variance 2 lambda^2 = sigma^2).
        (lap, lambda u: u.abs().sum((1, 2)) / (sigma / math.sqrt(2)),
         torch.distributions.Laplace(0.0, sigma / math.sqrt(2))),
    ]:
        u = _deltas(noise)
        phi = noise.potential(u)
        assert phi.shape == (u.shape[0],) and phi.dtype == u.dtype
        torch.testing.assert_close(phi, closed(u))
        # -log q(u) = phi(u) + const: differences agree with torch's densities.
        neg_log_q = -dist.log_prob(u).sum((1, 2))
        torch.testing.assert_close(phi - phi[0], neg_log_q - neg_log_q[0])
        torch.testing.assert_close(noise.potential(-u), phi)  # even
    # Uniform on [-lambda, lambda]^d, lambda = sigma sqrt(3): 0 inside the box (edge included), inf outside.
    lam = sigma * math.sqrt(3)
    u = _deltas(uni)
    assert torch.equal(uni.potential(u), torch.zeros(u.shape[0], dtype=u.dtype))
    edge = torch.full((1, 4), lam, dtype=torch.float64)
    assert uni.potential(edge).tolist() == [0.0]
    out = u.clone()
    out[::2, 0, 1] = 1.001 * lam
    assert uni.potential(out).tolist() == [math.inf, 0.0] * 3


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_map_step_is_a_gradient_step_on_the_potential(name):
    noise = get_noise(name, sigma=0.5)
    g = torch.Generator().manual_seed(1)
    x, y, s = (torch.randn(4, 2, 3, generator=g, dtype=torch.float64) for _ in range(3))
    x[0, 0, 0] = y[0, 0, 0]  # the Laplace kink: subgradient 0
    u = (x - y).requires_grad_(True)
    (grad_phi,) = torch.autograd.grad(noise.potential(u).sum(), u)
    torch.testing.assert_close(noise.map_step(x, y, s, step_size=0.01), x + 0.01 * (s - grad_phi))
    closed = (x - y) / 0.25 if name == "gaussian" else torch.sign(x - y) / (0.5 / math.sqrt(2))
    assert torch.equal(noise.map_step(x, y, s, step_size=0.01), x + 0.01 * (s - closed))


def test_uniform_map_step_projects_onto_the_box_around_y():
    noise = Uniform(sigma=0.5)
    lam = noise.half_width
    g = torch.Generator().manual_seed(2)
    x, y, s = (torch.randn(4, 8, generator=g, dtype=torch.float64) for _ in range(3))
    out = noise.map_step(x, y, s, step_size=0.3)
    free = x + 0.3 * s
    assert ((out - y).abs() <= lam + 1e-12).all()
    inside = (free - y).abs() <= lam
    assert inside.any() and (~inside).any()
    assert torch.equal(out[inside], free[inside])  # no projection needed: the plain score step
    assert torch.equal(out[~inside], (y + lam * torch.sign(free - y))[~inside])  # else the nearest box face
    assert torch.isfinite(noise.potential(out - y)).all()


def test_map_step_limits():
    assert Gaussian(sigma=0.5).map_step_limit == 2 * 0.25  # grad phi is 1/sigma^2-Lipschitz
    assert Laplace(sigma=0.5).map_step_limit is None and Uniform(sigma=0.5).map_step_limit is None


def test_a_noise_without_the_denoising_methods_certifies_and_names_what_to_implement():
    class Cauchy(Noise):
        name = "cauchy"
        norms = ("l2",)

        def sample_(self, out, *, generator=None):
            return out

        def _radius(self, pa, pb, norm, dim):
            return pa

    noise = Cauchy(sigma=1.0)
    assert float(noise.radius(0.9)) == pytest.approx(0.9)  # certifying needs none of them
    assert noise.map_step_limit is None
    with pytest.raises(TypeError, match=r"Cauchy noise does not implement Noise\.potential\(delta\)"):
        noise.potential(torch.zeros(1, 3))
    with pytest.raises(TypeError, match=r"Noise\.map_step\(x, y, score, \*, step_size\).*your Noise subclass"):
        noise.map_step(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3), step_size=0.1)
    with pytest.raises(TypeError, match=r"Noise\.map_step"):
        noise.require("map_step")
    with pytest.raises(TypeError, match=r"Noise\.potential"):
        noise.require("potential", "map_step")
    Gaussian(sigma=1.0).require("potential", "map_step")  # implemented: no error


# ---- lp-norm conversion: one owner ----


def test_convert_radius_factors_and_geometry():
    from smoothcert.noise import conversion_formula, convert_radius

    r, d = torch.tensor([1.0, 2.0], dtype=torch.float64), 16
    expected = {("l1", "l2"): r / 4, ("l2", "linf"): r / 4, ("l1", "linf"): r / 16,
                ("linf", "l2"): r, ("l2", "l1"): r, ("linf", "l1"): r, ("l2", "l2"): r}
    for (a, b), want in expected.items():
        torch.testing.assert_close(convert_radius(r, from_norm=a, to_norm=b, dim=d), want)
    assert conversion_formula("l1", "l2") == "r_l1/√d" and conversion_formula("l1", "linf") == "r_l1/d"
    assert conversion_formula("linf", "l2") == "r_linf"
    # Tight: the all-ones (or an axis) direction on the converted ball's boundary lies on the original one.
    p = {"l1": 1, "l2": 2, "linf": math.inf}
    for (a, b) in expected:
        rb = float(convert_radius(torch.tensor(1.0), from_norm=a, to_norm=b, dim=d))
        g = torch.Generator().manual_seed(3)
        v = torch.cat([torch.randn(200, d, generator=g, dtype=torch.float64), torch.ones(1, d), torch.eye(d)])
        v = v / torch.linalg.vector_norm(v, ord=p[b], dim=1, keepdim=True) * rb
        outer = torch.linalg.vector_norm(v, ord=p[a], dim=1)
        assert (outer <= 1 + 1e-12).all() and outer.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="dim"):
        convert_radius(r, from_norm="l1", to_norm="l2")
    with pytest.raises(ValueError, match="unknown norm"):
        convert_radius(r, from_norm="l3", to_norm="l2", dim=d)


def test_converted_radius_takes_the_best_of_the_noises_norms():
    p = torch.tensor([0.4, 0.7, 0.99], dtype=torch.float64)
    gauss, lap, uni = Gaussian(sigma=0.5), Laplace(sigma=0.5), Uniform(sigma=0.5)
    torch.testing.assert_close(gauss.converted_radius(p, norm="l2", dim=16), gauss.radius(p))
    torch.testing.assert_close(gauss.converted_radius(p, norm="linf", dim=16), gauss.radius(p, norm="linf", dim=16))
    torch.testing.assert_close(lap.converted_radius(p, norm="l2", dim=16), lap.radius(p) / 4)
    both = torch.maximum(uni.radius(p, norm="l1") / 4, uni.radius(p, norm="linf", dim=16))
    torch.testing.assert_close(uni.converted_radius(p, norm="l2", dim=16), both)
    assert lap.conversion_formula("l2") == "r_l1/√d" and uni.conversion_formula("l2") == "max(r_l1/√d, r_linf)"
