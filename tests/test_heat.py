"""HeatSmoothing: the finite-difference gradient-norm estimate against autograd, the sketch's
expectation, the loss terms by hand, the loss decreasing on a toy problem, the method's teacher
handling and bad input."""

import math

import pytest
import torch
from torch import nn

from smoothcert.errors import InputError
from smoothcert.noise import get_noise
from smoothcert.train import get_method
from smoothcert.train.heat import directional_gradient_fd, heat_terms, noisy_half
from smoothcert.train.methods import method_record


def _mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)


def _autograd_norm(model, x, w):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad((model(x) * w).sum(), x)
    return g.flatten(1).norm(dim=1)


def test_finite_difference_matches_autograd():
    model = _mlp()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 6, generator=g, dtype=torch.float64)
    w = torch.randn(8, 4, generator=g, dtype=torch.float64)
    exact = _autograd_norm(model, x, w)
    # float64, step 1e-5: the O(delta) curvature error is below 1e-4 relative here.
    fd = directional_gradient_fd(model, x.clone().requires_grad_(True), w, delta=1e-5)
    torch.testing.assert_close(fd, exact, rtol=1e-4, atol=1e-8)
    # The paper's step 0.1 on inputs in [0, 1]: within 5% for this mildly curved network.
    fd_paper = directional_gradient_fd(model, x.clone().requires_grad_(True), w, delta=0.1)
    torch.testing.assert_close(fd_paper, exact, rtol=0.05, atol=1e-6)
    # A linear model: exact at any step.
    lin = nn.Linear(6, 4).double()
    fd_lin = directional_gradient_fd(lin, x.clone().requires_grad_(True), w, delta=0.1)
    torch.testing.assert_close(fd_lin, _autograd_norm(lin, x, w), rtol=1e-10, atol=1e-12)


def test_the_sketch_estimates_the_frobenius_norm():
    # E ||J^T w||^2 = ||J||_F^2 / K for w ~ N(0, I/K): the average over many directions, times K.
    lin = nn.Linear(6, 4).double()
    frob2 = lin.weight.pow(2).sum()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 6, dtype=torch.float64).expand(4000, 6).clone().requires_grad_(True)
    w = torch.randn(4000, 4, generator=g, dtype=torch.float64) / 2
    est = directional_gradient_fd(lin, x, w, delta=0.1).pow(2).mean() * 4
    # sd of the mean of 4000 scaled chi-square-like terms: <= 3% of frob2 (checked at 10%).
    assert est.item() == pytest.approx(frob2.item(), rel=0.1)


def test_heat_terms_by_hand():
    lin = nn.Linear(6, 3).double()
    x = torch.rand(5, 6, dtype=torch.float64)
    teacher = torch.full((5, 3), 1 / 3, dtype=torch.float64)
    terms = heat_terms(lin, x, teacher, sigma=0.5, kappa=3, delta=0.1, h=0.5, generator=torch.Generator().manual_seed(0))
    match = 0.5 * (lin(x).softmax(1) - teacher).pow(2).sum(1)
    torch.testing.assert_close(terms.match, match)
    # Penalty: 0.5 * h * sigma^2 * sum_j ||W^T w_j||^2 for the same w_j (same generator).
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(5, 3, generator=g, dtype=torch.float64) / math.sqrt(3) for _ in range(3)]
    exact = sum((w @ lin.weight).pow(2).sum(1) for w in ws)
    torch.testing.assert_close(terms.penalty, 0.5 * 0.5 * 0.25 * exact)
    assert terms.loss.item() == pytest.approx((match + terms.penalty).mean().item())
    half = heat_terms(lin, x, teacher, sigma=0.5, kappa=3, delta=0.1, h=0.5, gamma=0.5,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(half.penalty, 0.5 * terms.penalty)
    terms.loss.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


def test_logit_distance_and_the_penalty_scale():
    # distance="logits" (eq. 15): 1/2 ||v(x) - teacher logits||^2, the same penalty.
    lin = nn.Linear(6, 3).double()
    x = torch.rand(5, 6, dtype=torch.float64)
    teacher_logits = torch.randn(5, 3, dtype=torch.float64)
    kw = {"sigma": 0.5, "kappa": 3, "delta": 0.1, "generator": torch.Generator().manual_seed(0)}
    terms = heat_terms(lin, x, teacher_logits, distance="logits", **kw)
    torch.testing.assert_close(terms.match, 0.5 * (lin(x) - teacher_logits).pow(2).sum(1))
    kw["generator"] = torch.Generator().manual_seed(0)
    soft = heat_terms(lin, x, teacher_logits.softmax(1), **kw)
    torch.testing.assert_close(terms.penalty, soft.penalty)
    # The penalty sums kappa squared projections with w ~ N(0, I/K): its mean is
    # (h sigma^2 / 2)(kappa / K)||W||_F^2 (exact per direction for a linear model), not the
    # (h sigma^2 / 2)||W||_F^2 of eq. 16 unless kappa = K. 2000 rows: the sd of the mean of
    # kappa = 6 chi-square(K = 3)-like terms is < 2% of it (checked at 8%).
    xs = torch.rand(2000, 6, dtype=torch.float64)
    many = heat_terms(lin, xs, torch.zeros(2000, 3, dtype=torch.float64), sigma=0.5, kappa=6, delta=0.1,
                      distance="logits", generator=torch.Generator().manual_seed(1))
    expected = 0.5 * 0.25 * (6 / 3) * lin.weight.pow(2).sum()
    assert many.penalty.mean().item() == pytest.approx(expected.item(), rel=0.08)
    with pytest.raises(InputError, match="distance"):
        heat_terms(lin, x, teacher_logits, distance="probs", **kw)


def test_noisy_half_touches_half_the_rows():
    x = torch.zeros(10, 1, 2, 2)
    out = noisy_half(x, get_noise("gaussian", sigma=0.5), fraction=0.5, generator=torch.Generator().manual_seed(0))
    changed = (out != 0).flatten(1).any(dim=1)
    assert int(changed.sum()) == 5 and torch.count_nonzero(x) == 0


def test_loss_decreases_on_a_toy_problem():
    # Teacher: a steep two-class network on 2-D points; the student starts as the teacher and
    # the heat loss (sigma 0.5) pulls it towards a smoother function: the loss must fall.
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
    with torch.no_grad():
        teacher[2].weight.mul_(10)
    method = get_method("heat", kappa=2)
    student = method.teacher_from(teacher).train()
    for p in student.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(128, 2, generator=g)
    noise = get_noise("gaussian", sigma=0.5)
    method.begin_epoch(0, 1)
    losses = []
    for _ in range(30):
        loss, logits = method.loss(student, x, torch.zeros(128, dtype=torch.long), noise=noise, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert logits.shape == (128, 2)
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    # The teacher was frozen at the start: its weights are the original ones.
    torch.testing.assert_close(method._teacher[2].weight, teacher[2].weight)


def test_steps_renew_the_teacher_and_hparams_round_trip():
    method = get_method("heat", steps=2, kappa=2)
    assert get_method("heat", **method.hparams()).hparams() == method.hparams()
    logits = get_method("heat", distance="logits", gamma=5.0)
    assert get_method("heat", **logits.hparams()).hparams() == logits.hparams()
    assert logits.hparams()["distance"] == "logits"
    # A record from before gamma and distance existed: weight 1 and the softmax distance, whatever
    # the default is today.
    assert method_record("heat", {"kappa": 10, "delta": 0.1, "steps": 1, "noisy_fraction": 0.5})[1] == {
        "kappa": 10, "delta": 0.1, "steps": 1, "noisy_fraction": 0.5, "gamma": 1.0, "distance": "softmax"}
    model = nn.Linear(2, 2)
    noise = get_noise("gaussian", sigma=0.25)
    x, y = torch.rand(4, 2), torch.zeros(4, dtype=torch.long)
    method.begin_epoch(0, 4)
    method.loss(model, x, y, noise=noise, generator=None)
    first = method._teacher
    method.begin_epoch(1, 4)  # same time step: same teacher
    method.loss(model, x, y, noise=noise, generator=None)
    assert method._teacher is first
    method.begin_epoch(2, 4)  # step 2 starts: the teacher is the student now
    method.loss(model, x, y, noise=noise, generator=None)
    assert method._teacher is not first
    fresh = get_method("heat", steps=2)
    with pytest.warns(UserWarning, match="inside time step"):
        fresh.begin_epoch(1, 4)


def test_bad_input():
    with pytest.raises(InputError, match="kappa"):
        get_method("heat", kappa=0)
    with pytest.raises(InputError, match="delta"):
        get_method("heat", delta=0.0)
    with pytest.raises(InputError, match="gamma"):
        get_method("heat", gamma=-1.0)
    with pytest.raises(InputError, match="noisy_fraction"):
        get_method("heat", noisy_fraction=1.5)
    with pytest.raises(InputError, match="distance"):
        get_method("heat", distance="kl")
    with pytest.raises(InputError, match="multiple of steps"):
        get_method("heat", steps=5).begin_epoch(0, 3)
    with pytest.raises(InputError, match="Gaussian"):
        get_method("heat").loss(nn.Linear(2, 2), torch.rand(2, 2), torch.zeros(2, dtype=torch.long),
                                noise=get_noise("laplace", sigma=0.5), generator=None)
    with pytest.raises(InputError, match="requires_grad"):
        directional_gradient_fd(nn.Linear(2, 2), torch.rand(2, 2), torch.rand(2, 2), delta=0.1)
