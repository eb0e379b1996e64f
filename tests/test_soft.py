"""Soft-classifier certificates: exact answers for a linear classifier (hard decisions as one-hot
probabilities, where G_A = Phi(d / sigma)), coverage over seeded trials, the phi >= L-bound
ordering, the one-pass heuristic, and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm as normal
from torch import nn

from linear import LinearBinary
from smoothcert.errors import InputError, InputTypeError
from smoothcert.noise import get_noise
from smoothcert.soft import certify_clean_class, certify_soft, deterministic_radius, soft_radius

SIGMA = 0.5


class OneHot(nn.Module):
    """Hard decisions of a model as one-hot probability vectors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, x):
        logits = self.model(x)
        return F.one_hot(logits.argmax(dim=1), logits.shape[1]).float()


def _linear():
    torch.manual_seed(0)
    return LinearBinary(torch.tensor([0.6, -0.8]), 0.05)


def _points(count, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.6 * torch.rand(count, 2, generator=g)


def _must_certify_margin(*, n0, n, alpha, failure):
    """Smallest G_A - 1/2 at which certify_soft (method "best", two one-hot classes) certifies the
    right class except with probability <= 2 * ``failure``, from Hoeffding's inequality alone:

    * selection: the n0 draws pick A unless their mean of 1[class A] is <= 1/2, probability
      <= exp(-2 n0 (G_A - 1/2)^2) <= failure once G_A - 1/2 >= sqrt(ln(1/failure) / (2 n0));
    * estimation: the mean of n draws is >= G_A - t except with probability exp(-2 n t^2) =
      failure; g_lower >= that mean minus the Hoeffding width at level alpha/4 ("best" spends
      alpha/2 on g_lower, half of it on Hoeffding); and g_lower > 1/2 certifies, since g_upper
      <= 1 - g_lower (the two G_c sum to 1).
    """
    t = math.sqrt(math.log(1 / failure) / (2 * n))
    width = math.sqrt(math.log(4 / alpha) / (2 * n))
    return max(math.sqrt(math.log(1 / failure) / (2 * n0)), width + t)


def test_phi_reaches_the_boundary_distance_and_never_exceeds_it():
    lin = _linear()
    x = _points(10)
    d = lin.true_radius(x, "l2")
    noise = get_noise("gaussian", sigma=SIGMA)
    n0, n, alpha = 1000, 20_000, 0.001
    cert = certify_soft(OneHot(lin), x, noise=noise, num_classes=2, n0=n0, n=n, alpha=alpha,
                        batch_size=20_000, generator=0, outputs="probs")
    ok = ~cert.abstained
    # Which inputs must be certified, with the right class: those with G_A = Phi(d / sigma) at least
    # the margin above 1/2 (exact for this linear model). With failure 1e-6 per event the check fails
    # for at most 2e-5 of all seeds (10 inputs, 2 events each); the margin is 0.083 here, so every
    # input with d >= 0.105 qualifies -- 5 of these 10 (a property of the fixed points, not of the noise).
    margin = _must_certify_margin(n0=n0, n=n, alpha=alpha, failure=1e-6)
    must = torch.from_numpy(normal.cdf(d.numpy() / SIGMA)) >= 0.5 + margin
    assert int(must.sum()) == 5
    assert torch.all(ok[must])
    assert torch.equal(cert.prediction[ok], lin.label(x)[ok])
    # Never above the exact answer; within the Monte Carlo slack of it. The slack: each bound is
    # off by at most eps ~ 0.015 in G (n = 2e4, alpha / 2 = 5e-4), which moves Phi^-1 by
    # eps / phi(Phi^-1(G)) <= 0.015 / 0.1 = 0.15 for the points here (d / sigma <= 1.6), so the
    # radius is at most sigma/2 * 2 * 0.15 = 0.075 short (checked at 0.1).
    assert torch.all(cert.radius[ok] <= d[ok])
    assert torch.all(d[ok] - cert.radius[ok] <= 0.1)
    # The L-bound from the same draws is smaller still, and below the exact answer.
    lb = certify_soft(OneHot(lin), x, noise=noise, num_classes=2, n0=n0, n=n, alpha=alpha,
                      batch_size=20_000, generator=0, outputs="probs", bound="lbound")
    assert torch.all(lb.radius <= cert.radius + 1e-12)
    assert torch.all(lb.radius <= d)
    # Estimated G_A matches Phi(d / sigma) (sd of a mean of 2e4 Bernoullis <= 0.0036; 4.5 sd).
    g_a = cert.g_mean[torch.arange(len(x)), lin.label(x)]
    assert torch.allclose(g_a, torch.from_numpy(normal.cdf(d.numpy() / SIGMA)), atol=0.016)


def test_coverage_over_seeded_trials():
    # 400 inputs = 400 independent trials at alpha = 0.1 and n = 500: a sound certificate
    # overshoots the exact radius in at most ~10% of them (binomial 99.9% quantile of
    # Bin(400, 0.1): 61); the bounds here are conservative, so far fewer are expected.
    lin = _linear()
    x = _points(400, seed=2)
    d = lin.true_radius(x, "l2")
    noise = get_noise("gaussian", sigma=SIGMA)
    for method in ("hoeffding", "bernstein"):
        cert = certify_soft(OneHot(lin), x, noise=noise, num_classes=2, n0=50, n=500, alpha=0.1,
                            batch_size=4000, generator=3, outputs="probs", method=method)
        wrong = (~cert.abstained) & ((cert.radius > d) | (cert.prediction != lin.label(x)))
        assert int(wrong.sum()) <= 61
        assert int((~cert.abstained).sum()) > 100  # not vacuous


def test_soft_radius_orders_and_closed_forms():
    lo = torch.tensor([0.9, 0.6, 0.3, 0.999])
    hi = torch.tensor([0.05, 0.4, 0.5, 0.0])
    phi = soft_radius(lo, hi, sigma=0.25, bound="phi")
    lb = soft_radius(lo, hi, sigma=0.25, bound="lbound")
    assert phi[0] == pytest.approx(0.125 * (normal.ppf(0.9) - normal.ppf(0.05)))
    assert lb[1] == pytest.approx(0.25 * math.sqrt(math.pi / 2) * 0.2)
    assert phi[2] == 0 and lb[2] == 0  # nothing certified where lo <= hi
    assert math.isinf(phi[3]) and lb[3] == pytest.approx(0.25 * math.sqrt(math.pi / 2) * 0.999)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1000, generator=g, dtype=torch.float64)
    b = a * torch.rand(1000, generator=g, dtype=torch.float64)
    assert torch.all(soft_radius(a, b, sigma=1.0, bound="phi") >= soft_radius(a, b, sigma=1.0, bound="lbound") - 1e-12)


def test_logits_models_clean_selection_and_clean_class_certify():
    lin = _linear()
    x = _points(10)
    d = lin.true_radius(x, "l2")
    noise = get_noise("gaussian", sigma=SIGMA)
    # A logit model: G is the mean softmax, whose top class and radius are still valid (radius
    # of G's class, not g's), so only the shapes and the abstain rule are checked here.
    cert = certify_soft(lin, x, noise=noise, num_classes=2, n0=10, n=2000, alpha=0.01, batch_size=512,
                        generator=1, selection="clean")
    assert cert.n0 == 0 and cert.radius.shape == (10,) and cert.g_mean.shape == (10, 2)
    assert torch.all((cert.radius > 0) == ~cert.abstained)
    hard = certify_clean_class(lin, x, noise=noise, num_classes=2, n=2000, alpha=0.01, batch_size=512, generator=1)
    ok = ~hard.abstained
    assert ok.any() and torch.all(hard.radius[ok] <= d[ok]) and hard.n0 == 0
    assert torch.equal(hard.prediction[ok], lin.label(x)[ok])


def test_deterministic_radius_is_the_bound_of_the_softmax():
    class Fixed(nn.Module):
        def forward(self, x):
            return torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(len(x), 3)

    out = deterministic_radius(Fixed().eval(), torch.zeros(4, 1, 2, 2), sigma=0.25, num_classes=3)
    assert out.prediction.tolist() == [0] * 4
    assert out.heuristic_radius[0].item() == pytest.approx(0.25 * math.sqrt(math.pi / 2) * 0.5, rel=1e-6)
    phi = deterministic_radius(Fixed().eval(), torch.zeros(1, 1, 2, 2), sigma=0.25, num_classes=3, bound="phi")
    assert phi.heuristic_radius[0].item() == pytest.approx(0.125 * (normal.ppf(0.7) - normal.ppf(0.2)), rel=1e-6)


def test_bad_input_is_refused():
    lin = _linear()
    x = _points(3)
    noise = get_noise("gaussian", sigma=SIGMA)
    kw = dict(noise=noise, num_classes=2, n0=10, n=100, alpha=0.01, batch_size=64, generator=0)
    with pytest.raises(InputError, match="num_classes=3"):
        certify_soft(lin, x, **{**kw, "num_classes": 3})
    with pytest.raises(InputError, match="not probability vectors"):
        certify_soft(lin, x, outputs="probs", **kw)  # logits passed as probabilities
    with pytest.raises(InputError, match="n0"):
        certify_soft(lin, x, **{**kw, "n0": 100})
    with pytest.raises(InputError, match="n must be"):
        certify_soft(lin, x, **{**kw, "n": 1, "n0": 1})
    with pytest.raises(InputError, match="alpha"):
        certify_soft(lin, x, **{**kw, "alpha": 1.0})
    with pytest.raises(InputError, match="Gaussian"):
        certify_soft(lin, x, **{**kw, "noise": get_noise("laplace", sigma=0.5)})
    with pytest.raises(InputTypeError, match="Noise"):
        certify_soft(lin, x, **{**kw, "noise": "gaussian"})
    with pytest.raises(InputError, match="bound"):
        certify_soft(lin, x, bound="cohen", **kw)
    with pytest.raises(InputError, match="sigma"):
        deterministic_radius(lin, x, sigma=0.0, num_classes=2)
    with pytest.raises(InputError, match="sigma"):
        get_noise("gaussian", sigma=-1.0)

    class Nan(nn.Module):
        def forward(self, x):
            return torch.full((len(x), 2), float("nan"))

    with pytest.raises(InputError, match="NaN"):
        deterministic_radius(Nan().eval(), x, sigma=0.5, num_classes=2)
    with pytest.raises(InputError, match="NaN"):
        certify_soft(Nan().eval(), x, **kw)
