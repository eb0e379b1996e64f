"""Adaptive sample sizes: exact thresholds, planning, and coverage >= 1 - alpha over seeded trials."""

import math

import numpy as np
import pytest
import torch
from linear import LinearBinary
from scipy.stats import norm as normal

from smoothcert import Certificate, CertifyAtResult, PlannedCertificate, SmoothedClassifier, get_noise
from smoothcert.adaptive import (
    certify_at,
    certify_planned,
    grid_stages,
    plan_sample_size,
    required_p_lower,
    sample_size_grid,
)


@pytest.mark.parametrize("sigma", [0.25, 1.0])
def test_required_p_matches_closed_forms(sigma):
    r = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(required_p_lower(get_noise("gaussian", sigma=sigma), r)[1:],
                               torch.from_numpy(normal.cdf(r[1:].numpy() / sigma)), rtol=0, atol=1e-12)
    lam = sigma / math.sqrt(2)
    torch.testing.assert_close(required_p_lower(get_noise("laplace", sigma=sigma), r)[1:],
                               1 - 0.5 * torch.exp(-r[1:] / lam), rtol=0, atol=1e-12)
    half = sigma * math.sqrt(3)
    within = r[(r > 0) & (r < half)]  # uniform l1 radii stop at lambda (pA = 1)
    got = required_p_lower(get_noise("uniform", sigma=sigma), within)
    torch.testing.assert_close(got, 0.5 + within / (2 * half), rtol=0, atol=1e-12)
    assert required_p_lower(get_noise("gaussian", sigma=sigma), r)[0] == 0.5


def test_grid_and_plan():
    grid = sample_size_grid(100_000)
    assert grid[0] == 1000 and grid[-1] == 100_000 and grid == sorted(set(grid))
    noise = get_noise("gaussian", sigma=0.25)
    n = plan_sample_size(np.array([0.6, 0.9, 0.99, 1.0]), noise=noise, alpha=0.001, max_n=100_000, radius_loss=0.01)
    assert n[-1] >= 80_000  # all draws agreeing: the radius keeps growing with the draws
    assert n[0] < n[2] <= n[3] and n[0] < 20_000
    loose = plan_sample_size(np.array([0.9, 1.0]), noise=noise, alpha=0.001, max_n=100_000, radius_loss=10.0)
    assert loose.tolist() == [1000, 1000]


def _copies(margin: float, count: int, d: int = 1):
    # count independent copies of one input at l2 distance `margin` from a linear boundary
    w = torch.zeros(d)
    w[0] = 1.0
    model = LinearBinary(w, -0.25)
    x = torch.full((count, d), 0.25)
    x[:, 0] += margin
    return model, x


def test_planned_certify_is_sound_with_coverage():
    # pA = Phi(0.5/1.0) = 0.69: each copy is an independent trial; certificates beyond the true
    # radius must occur at most alpha of the time (+4 s.d. of Monte Carlo error).
    model, x = _copies(0.5, 2000)
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=1.0), num_classes=2)
    cert = certify_planned(smoothed, x, n0=20, max_n=2000, alpha=0.1, batch_size=100_000, radius_loss=0.05,
                           grid=[100, 200, 500, 1000, 2000], generator=0)
    assert cert.n_used.min() >= 100 and cert.n_used.max() <= 2000
    too_big = (cert.radius > 0.5).double().mean().item()
    assert too_big <= 0.1 + 4 * math.sqrt(0.1 * 0.9 / 2000)
    assert (cert.prediction == 1).double().mean() > 0.5


def test_planned_certify_saves_samples_where_it_can_and_loses_little():
    # Margins giving pA from 0.7 to 0.98: moderate pA needs far fewer than max_n draws.
    model, x = _copies(0.0, 4, d=4)
    x[:, 0] = 0.25 + torch.tensor([0.14, 0.25, 0.35, 0.5])
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=2)
    planned = certify_planned(smoothed, x, n0=200, max_n=100_000, alpha=0.001, batch_size=100_000,
                              radius_loss=0.02, generator=1)
    fixed = smoothed.certify(x, n0=200, n=100_000, alpha=0.001, batch_size=100_000, generator=1)
    assert torch.all(planned.radius <= model.true_radius(x, "l2"))
    assert planned.n_used.double().mean() < 0.5 * 100_000
    # planned loss 0.02 plus sampling noise of two independent estimates
    assert (fixed.radius - planned.radius).max() < 0.04


def test_certify_at_coverage_at_a_radius_just_beyond_the_truth():
    # true radius 0.5; ask about 0.45 (truly certified) and 0.55 (not): wrong "certified" answers
    # at 0.55 must stay below alpha (+4 s.d.) over 2000 independent copies.
    model, x = _copies(0.5, 1000)
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=1.0), num_classes=2)
    res = certify_at(smoothed, x, [0.45, 0.55], n0=20, alpha=0.1, batch_size=200_000, stages=(100, 1000, 4000),
                     generator=2)
    wrong = res.certified[:, 1].double().mean().item()
    assert wrong <= 0.1 + 4 * math.sqrt(0.1 * 0.9 / 1000)
    assert res.certified.shape == (1000, 2) and res.n_used.max() <= 4000
    assert res.certified[:, 0].double().mean() > 0.3  # and the true radius 0.45 is often certified


def test_certify_at_decides_early_and_agrees_with_fixed_n():
    # pA close to 1 (margins 0.3..0.75 at sigma 0.25): small radii are settled after 1k draws,
    # and radii that even 100k draws cannot reach are given up at once.
    model, x = _copies(0.0, 5, d=2)
    x[:, 0] = 0.25 + torch.tensor([0.3, 0.45, 0.55, 0.65, 0.75])
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=2)
    radii = [0.0, 0.25, 0.5, 0.75, 1.5]
    res = certify_at(smoothed, x, radii, n0=100, alpha=0.001, batch_size=100_000, generator=3)
    fixed = smoothed.certify(x, n0=100, n=100_000, alpha=0.001, batch_size=100_000, generator=3)
    fixed_at = fixed.radius[:, None] >= torch.tensor(radii)[None, :]
    assert res.certified[:, :2].all() and res.certified[2:, 2].all()  # true radii 0.3 .. 0.75
    assert not res.certified[:, 4].any() and not fixed_at[:, 4].any()  # 1.5 is out of reach
    assert (res.certified == fixed_at).double().mean() >= 0.9
    assert res.n_used.double().mean() < 0.5 * 100_000
    # decisions are monotone in r, so (answered, largest certified radius) encodes them all
    from_rows = (res.prediction != -1)[:, None] & (res.largest_certified_radius()[:, None] >= torch.tensor(radii))
    assert torch.equal(from_rows, res.certified)


def test_certify_at_checks_its_arguments():
    smoothed = SmoothedClassifier(torch.nn.Linear(2, 2).eval(), noise=get_noise("gaussian", sigma=0.5), num_classes=2)
    with pytest.raises(ValueError, match="stages"):
        certify_at(smoothed, torch.rand(1, 2), 0.1, n0=10, alpha=0.01, batch_size=8, stages=())
    with pytest.raises(ValueError, match="radii"):
        certify_at(smoothed, torch.rand(1, 2), -0.1, n0=10, alpha=0.01, batch_size=8)
    with pytest.raises(ValueError, match="n0"):
        certify_at(smoothed, torch.rand(1, 2), 0.1, n0=1000, alpha=0.01, batch_size=8, stages=(100, 1000))


def test_methods_on_the_smoothed_classifier():
    model, x = _copies(0.4, 3)
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.5), num_classes=2)
    cert = smoothed.certify_planned(x, n0=50, max_n=5000, alpha=0.01, batch_size=4096, generator=0, radius_loss=0.05)
    assert isinstance(cert, PlannedCertificate) and len(cert) == 3
    assert cert.max_n == 5000 and cert.n_used.shape == (3,) and torch.all(cert.n_used <= 5000)
    assert torch.equal(cert.counts.sum(1), cert.n_used)
    same = certify_planned(smoothed, x, n0=50, max_n=5000, alpha=0.01, batch_size=4096, generator=0, radius_loss=0.05)
    assert torch.equal(same.counts, cert.counts)  # the method is the function
    at = smoothed.certify_at(x, [0.1, 0.3], n0=50, alpha=0.01, batch_size=4096, stages=(500, 5000), generator=0)
    assert isinstance(at, CertifyAtResult) and at.certified.shape == (3, 2) and at.certified[:, 0].all()
    with pytest.raises(ValueError, match="target"):
        smoothed.certify(x, n0=50, n=5000, alpha=0.01, batch_size=64, target="speed")
    fixed = smoothed.certify(x, n0=50, n=5000, alpha=0.01, batch_size=4096, generator=0)
    assert isinstance(fixed, Certificate) and fixed.n == 5000 and fixed.counts.sum(1).tolist() == [5000] * 3
    assert not hasattr(fixed, "n_used")  # n is the estimation draws of every input, nothing else


def test_certify_target_radius_is_deprecated_and_forwards_to_certify_planned():
    model, x = _copies(0.4, 3)
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.5), num_classes=2)
    with pytest.warns(DeprecationWarning, match="certify_planned"):
        old = smoothed.certify(x, n0=50, n=5000, alpha=0.01, batch_size=4096, generator=0, target="radius",
                               radius_loss=0.05)
    new = smoothed.certify_planned(x, n0=50, max_n=5000, alpha=0.01, batch_size=4096, generator=0, radius_loss=0.05)
    assert isinstance(old, PlannedCertificate)
    assert torch.equal(old.counts, new.counts) and torch.equal(old.radius, new.radius)
    assert torch.equal(old.n_used, new.n_used) and old.max_n == 5000
    with pytest.warns(DeprecationWarning):
        capped = smoothed.certify(x, n0=50, n=5000, max_n=2000, alpha=0.01, batch_size=4096, generator=0,
                                  target="radius", radius_loss=0.05)
    assert capped.max_n == 2000 and torch.all(capped.n_used <= 2000)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="two_class"):
        smoothed.certify(x, n0=50, n=5000, alpha=0.01, batch_size=64, target="radius", two_class=True)


def test_certify_at_splits_alpha_over_the_stages(monkeypatch):
    # Every stage bound must be taken at alpha / S (the union bound behind the guarantee).
    import smoothcert.adaptive as adaptive

    levels = []
    real = adaptive.clopper_pearson_lower

    def spy(k, n, alpha):
        levels.append(alpha)
        return real(k, n, alpha)

    monkeypatch.setattr(adaptive, "clopper_pearson_lower", spy)
    model, x = _copies(0.3, 4)
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.5), num_classes=2)
    certify_at(smoothed, x, [0.2, 5.0], n0=20, alpha=0.03, batch_size=4096, stages=(100, 300, 900), generator=0)
    assert levels and all(a == pytest.approx(0.01) for a in levels)


def test_planned_grid_never_exceeds_max_n():
    noise = get_noise("gaussian", sigma=0.5)
    n = plan_sample_size(np.array([1.0]), noise=noise, alpha=0.01, max_n=2000, radius_loss=0.0, grid=[100, 5000])
    assert n.tolist() == [2000]


def test_grid_stages_are_where_unanimous_draws_first_certify_each_radius():
    # Gaussian sigma 0.25, alpha 0.001, max_n 100k: r = 1.0 needs pA > Phi(4), out of reach
    # (0.001^(1/100000) = Phi(3.81)); the others get the smallest n with (alpha/S)^(1/n) > Phi(r/sigma).
    noise = get_noise("gaussian", sigma=0.25)
    radii = [0.0, 0.25, 0.5, 0.75, 1.0]
    stages = grid_stages(noise, radii, alpha=0.001, max_n=100_000, min_stage=1, multiples=(1,))
    assert stages[-1] == 100_000 and len(stages) == 5  # r = 0 .. 0.75, then max_n
    a_s = 0.001 / len(stages)
    for r, n in zip(radii[:4], stages[:4]):
        need = 0.5 if r == 0 else normal.cdf(r / 0.25)
        assert a_s ** (1 / n) > need >= a_s ** (1 / (n - 1))  # first n that certifies r
    assert grid_stages(noise, radii, alpha=0.001, max_n=100_000, multiples=(1,))[0] == 100  # min_stage
    # The default adds 2 n_r and 4 n_r (alpha split over more stages: n_r recomputed at that S).
    wide = grid_stages(noise, radii, alpha=0.001, max_n=100_000, min_stage=1)
    n_075 = math.floor(math.log(0.001 / len(wide)) / math.log(normal.cdf(3.0))) + 1
    assert {n_075, 2 * n_075, 4 * n_075} <= set(wide) and wide[-1] == 100_000
    with pytest.raises(ValueError, match="multiples"):
        grid_stages(noise, radii, alpha=0.001, max_n=1000, multiples=(0.5,))
    assert grid_stages(noise, [5.0], alpha=0.001, max_n=1000) == [1000]  # nothing reachable
    assert grid_stages(noise, [0.0, 0.1], alpha=0.1, max_n=64) == [64]  # min_stage 100 capped at max_n
    with pytest.raises(ValueError, match="max_n"):
        grid_stages(noise, radii, alpha=0.001, max_n=0)


def test_auto_stages_stop_unanimous_inputs_at_the_lower_bound_and_keep_coverage():
    # Far from the boundary (pA = 1 in practice): the input stops at the stage of the largest
    # radius it can reach, i.e. with about the fewest draws any level-alpha test could use.
    model, x = _copies(0.0, 3, d=2)
    x[:, 0] = 0.9
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.1), num_classes=2)
    radii = [0.1, 0.2, 0.3, 0.5]
    res = certify_at(smoothed, x, radii, n0=50, alpha=0.001, batch_size=100_000, stages="auto", max_n=100_000,
                     generator=0)
    stages = grid_stages(smoothed.noise, radii, alpha=0.001, max_n=100_000, dim=2)
    assert res.certified[:, :3].all() and not res.certified[:, 3].any()  # 0.5 = 5 sigma: out of reach
    n_03 = math.floor(math.log(0.001 / len(stages)) / math.log(normal.cdf(3.0))) + 1  # r = 0.3 = 3 sigma
    assert n_03 in stages and res.n_used.tolist() == [n_03] * 3
    lower = math.log(0.001) / math.log(normal.cdf(3.0))  # any valid test: pA_needed^n <= alpha
    split = math.log(0.001 / len(stages)) / math.log(0.001)  # the price of the alpha split over S stages
    assert lower <= n_03 <= split * lower + 1 and split < 1.4
    # Coverage at a radius just beyond the truth, as for explicit stages.
    model, x = _copies(0.5, 1000)
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=1.0), num_classes=2)
    res = certify_at(smoothed, x, [0.45, 0.55], n0=20, alpha=0.1, batch_size=200_000, stages="auto", max_n=4000,
                     generator=5)
    assert res.certified[:, 1].double().mean().item() <= 0.1 + 4 * math.sqrt(0.1 * 0.9 / 1000)
    with pytest.raises(ValueError, match="auto"):
        certify_at(smoothed, x[:1], 0.1, n0=10, alpha=0.01, batch_size=8, stages="auto")  # no max_n
    with pytest.raises(ValueError, match="max_n"):
        certify_at(smoothed, x[:1], 0.1, n0=10, alpha=0.01, batch_size=8, stages=(100,), max_n=100)
