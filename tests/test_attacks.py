"""l2 attacks (pgd_l2, ddn) on plain and smoothed classifiers, and attack_dataset / `smoothcert attack`.

Exact answers come from linear binary classifiers: the l2 distance from x to the boundary w.x + b = 0
is |w.x + b| / ||w||, for the base classifier and (any symmetric noise) for its smoothed version.
"""

import copy
import dataclasses
import math
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from linear import LinearBinary
from torch import nn

from smoothcert import SmoothedClassifier, get_noise
from smoothcert.attacks import (
    SmoothedSoft,
    adversarial_l2,
    ddn,
    l2_norms,
    log_mean_softmax,
    minimal_l2,
    pgd_l2,
    smoothed_log_probs,
)
from smoothcert.analysis import Violation, summarize_attack, summary_table
from smoothcert.cli import main
from smoothcert.runs import attack as attack_module
from smoothcert.runs.attack import attack_columns, attack_dataset, l2_radius
from smoothcert.smooth import ABSTAIN

ATTACKS = ["pgd", "ddn"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Thousands of tiny forward/backward passes: a second intra-op thread only adds synchronisation
    # (5x slower file on 2 busy cores: 39 s vs 7 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

SHAPES = [(16,), (3, 2, 2)]


def run_attack(name, model, x, y, eps, **kw):
    if name == "pgd":
        return pgd_l2(model, x, y, eps=eps, steps=kw.pop("steps", 20), **kw)
    return ddn(model, x, y, eps=eps, steps=kw.pop("steps", 30), **kw)


def linear_problem(batch: int, shape: tuple[int, ...], *, seed: int = 0, d_min=0.05, d_max=0.9):
    """A LinearBinary model and inputs at known distances d in [d_min, d_max] from its boundary, whose
    closest boundary points (and the segments to them) lie well inside [0, 1]^D."""
    g = torch.Generator().manual_seed(seed)
    dim = math.prod(shape)
    # Entries ±1/sqrt(D): moving a distance d along w changes each pixel by d/sqrt(D) <= 0.25.
    w = torch.where(torch.rand(dim, generator=g) < 0.5, -1.0, 1.0) / math.sqrt(dim)
    u = 0.2 * torch.rand(batch, dim, generator=g) - 0.1
    on_boundary = 0.5 + u - (u @ w)[:, None] * w[None]  # w.c = 0.5 sum(w) = -b
    d = d_min + (d_max - d_min) * torch.rand(batch, generator=g)
    side = torch.where(torch.rand(batch, generator=g) < 0.5, -1.0, 1.0)
    x = (on_boundary + (side * d)[:, None] * w[None]).view(batch, *shape)
    model = LinearBinary(w, -0.5 * float(w.sum()))
    assert 0.1 < float(x.min()) and float(x.max()) < 0.9
    return model, x, model.label(x), model.true_radius(x, "l2").float()


def mlp(shape: tuple[int, ...], classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 32), nn.ReLU(), nn.Linear(32, classes)).eval()


# ------------------------------------------------------------------------------ budgets


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", [1, 7])
def test_budget_is_respected_exactly(name, shape, batch):
    model = mlp(shape)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *shape, generator=g)
    x[:, ..., 0] = 0.0  # pixels on the box's faces, where clipping bites
    y = torch.randint(0, 5, (batch,), generator=g)
    eps = torch.linspace(0.05, 3.0, batch) if batch > 1 else 0.5
    x_adv = run_attack(name, model, x, y, eps, step_size=2.0) if name == "ddn" else \
        run_attack(name, model, x, y, eps, random_start=True, generator=g)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert bool((l2_norms(x_adv - x) <= torch.as_tensor(eps) + 1e-5).all())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


def test_zero_budget_returns_the_input():
    model, x, y, _ = linear_problem(4, (16,))
    for name in ATTACKS:
        assert torch.equal(run_attack(name, model, x, y, 0.0), x)


# ------------------------------------------------------------------ exact linear boundary


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", [1, 6])
def test_ddn_finds_the_exact_boundary_of_a_linear_model(shape, batch):
    model, x, y, d = linear_problem(batch, shape, seed=batch)
    dist = minimal_l2(model, x, y, steps=100)
    ratio = dist / d
    # Never below the exact distance (an adversarial point is across the boundary) ...
    assert bool((ratio >= 1 - 1e-4).all()), ratio
    # ... and within 1% of it (gamma = 0.05 oscillations shrink below that in 100 steps).
    assert bool((ratio <= 1.01).all()), ratio


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", [1, 6])
def test_pgd_crosses_a_linear_boundary_exactly_when_the_budget_allows(shape, batch):
    model, x, y, d = linear_problem(batch, shape, seed=10 + batch)
    above = pgd_l2(model, x, y, eps=1.05 * d, steps=10)
    assert bool((model.label(above) != y).all())
    below = pgd_l2(model, x, y, eps=0.95 * d, steps=10)
    assert bool((model.label(below) == y).all())
    # It uses its whole budget: the loss keeps growing along -w·sign.
    torch.testing.assert_close(l2_norms(below - x), 0.95 * d, rtol=1e-4, atol=0)


def test_targeted_attacks_reach_the_target():
    model, x, y, d = linear_problem(6, (16,), seed=3)
    target = 1 - y
    # Binary: reaching the other class is the untargeted problem, with the same exact distance.
    dist = minimal_l2(model, x, target, steps=100, targeted=True)
    assert bool((dist / d <= 1.01).all() and (dist / d >= 1 - 1e-4).all())
    assert bool((model.label(pgd_l2(model, x, target, eps=1.05 * d, steps=10, targeted=True)) == target).all())
    # Several classes (a linear 4-class model: convex class regions): every target whose region meets
    # the box (the class of another input) is reached, DDN's perturbation no larger than PGD's.
    torch.manual_seed(2)
    net = nn.Linear(16, 4)
    xs, others = torch.rand(2, 8, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        pred, tgt = net(xs).argmax(1), net(others).argmax(1)
    assert int((tgt != pred).sum()) >= 4
    x_adv = pgd_l2(net, xs, tgt, eps=4.0, steps=50, targeted=True)
    assert bool((net(x_adv).argmax(1) == tgt).all())
    x_ddn = ddn(net, xs, tgt, steps=100, targeted=True)
    assert bool((net(x_ddn).argmax(1) == tgt).all())
    assert bool((adversarial_l2(net, xs, tgt, x_ddn, targeted=True) <= l2_norms(x_adv - xs) + 1e-6).all())


def test_ddn_with_a_budget_below_the_boundary_returns_the_last_iterate_inside_the_ball():
    model, x, y, d = linear_problem(6, (16,), seed=5, d_min=0.3)
    eps = 0.8 * d
    x_adv = ddn(model, x, y, steps=50, eps=eps)
    assert bool((model.label(x_adv) == y).all())  # nothing adversarial inside the ball ...
    # ... and the last iterate is at the ball's edge, straight towards the boundary (high loss).
    torch.testing.assert_close(model.true_radius(x_adv, "l2").float(), d - eps, rtol=0, atol=1e-4)
    assert torch.isinf(adversarial_l2(model, x, y, x_adv)).all()
    # With a budget above the boundary it finds the boundary and stays inside the budget.
    x_adv = ddn(model, x, y, steps=100, eps=1.2 * d)
    dist = adversarial_l2(model, x, y, x_adv)
    assert bool((dist <= 1.2 * d + 1e-5).all() and (dist / d <= 1.01).all())


def test_an_already_misclassified_input_is_its_own_minimal_adversarial():
    model, x, y, _ = linear_problem(3, (16,), seed=6)
    wrong = 1 - y
    assert torch.equal(ddn(model, x, wrong, steps=5), x)
    assert torch.equal(minimal_l2(model, x, wrong, steps=5), torch.zeros(3))


# ------------------------------------------------------------------- strength, hygiene


@pytest.mark.parametrize("name", ATTACKS)
def test_attacks_beat_random_noise_of_the_same_norm(name):
    model, shape = mlp((32,), classes=5, seed=7), (32,)
    g = torch.Generator().manual_seed(8)
    x = 0.25 + 0.5 * torch.rand(64, *shape, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.5
    x_adv = run_attack(name, model, x, y, eps, **({"steps": 50} if name == "ddn" else {}))
    noise = torch.randn(x.shape, generator=g)
    x_rand = (x + noise * (l2_norms(x_adv - x) / l2_norms(noise)).view(-1, 1)).clamp(0, 1)
    with torch.no_grad():
        flips_adv = float((model(x_adv).argmax(1) != y).float().mean())
        flips_rand = float((model(x_rand).argmax(1) != y).float().mean())
        loss_adv = F.cross_entropy(model(x_adv), y, reduction="none")
        loss_rand = F.cross_entropy(model(x_rand), y, reduction="none")
    assert flips_adv >= 0.5 and flips_rand <= 0.1, (flips_adv, flips_rand)
    if name == "pgd":  # PGD maximises the loss; DDN stops at the boundary
        assert bool((loss_adv > loss_rand).all())


@pytest.mark.parametrize("name", ATTACKS)
def test_model_parameters_gradients_and_mode_are_untouched(name):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.0), nn.Linear(8, 3))
    model.train()  # attacks must not switch modes, whatever the mode is
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(4, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0])
    run_attack(name, model, x, y, 1.0)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_invalid_arguments_are_refused():
    model, x, y, _ = linear_problem(2, (16,))
    with pytest.raises(ValueError, match="steps"):
        ddn(model, x, y, steps=0)
    with pytest.raises(ValueError, match="gamma"):
        ddn(model, x, y, steps=5, gamma=1.0)
    with pytest.raises(ValueError, match="eps must be a number or a tensor of shape"):
        ddn(model, x, y, steps=5, eps=torch.ones(3))
    with pytest.raises(ValueError, match="init_eps"):
        ddn(model, x, y, steps=5, init_eps=0.0)
    with pytest.raises(ValueError, match="eps must be finite"):
        pgd_l2(model, x, y, eps=-1.0, steps=5)


class Flat(nn.Module):
    """Logits that do not depend on the input: every gradient is exactly zero."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(z.shape[0], 3, dtype=z.dtype) + 0.0 * z.flatten(1).sum(1, keepdim=True)


def test_pgd_moves_randomly_on_a_zero_gradient_and_int_seeds_are_generators():
    x = 0.5 * torch.ones(4, 16)
    y = torch.zeros(4, dtype=torch.long)
    a = pgd_l2(Flat(), x, y, eps=0.3, steps=3, generator=7)
    # A stalled PGD would return x; a random direction per step moves it, inside the budget.
    assert bool((l2_norms(a - x) > 0.1).all()) and bool((l2_norms(a - x) <= 0.3 + 1e-6).all())
    assert torch.equal(a, pgd_l2(Flat(), x, y, eps=0.3, steps=3, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(a, pgd_l2(Flat(), x, y, eps=0.3, steps=3, generator=8))
    assert torch.equal(ddn(Flat(), x, y, steps=3, generator=7), ddn(Flat(), x, y, steps=3, generator=7))


# --------------------------------------------------------------------- smoothed attacks


def test_smoothed_soft_draws_fresh_noise_each_call_and_is_seeded():
    model, x, _, _ = linear_problem(4, (16,), seed=9)
    soft = SmoothedSoft(model, get_noise("gaussian", sigma=0.25), m=16, generator=torch.Generator().manual_seed(0))
    a, b = soft(x), soft(x)
    assert not torch.equal(a, b)
    torch.testing.assert_close(a.exp().sum(1), torch.ones(4))
    again = SmoothedSoft(model, get_noise("gaussian", sigma=0.25), m=16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again(x), a)
    seeded = SmoothedSoft(model, get_noise("gaussian", sigma=0.25), m=16, generator=0)  # an int seed
    assert torch.equal(seeded(x), a) and torch.equal(seeded(x), b)


def test_log_mean_softmax_is_the_log_of_the_mean_probability_and_keeps_float64():
    logits = torch.tensor([[[2.0, 0.0, -1.0]], [[0.0, 3.0, 1.0]]], dtype=torch.float64)  # [m=2, B=1, K=3]
    expected = torch.softmax(logits, -1).mean(0).log()
    got = log_mean_softmax(logits)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(log_mean_softmax(torch.log_softmax(logits, -1)), expected, rtol=1e-12, atol=0)
    assert log_mean_softmax(logits.half()).dtype == torch.float32  # narrow floats are upcast
    # A float64 model's smoothed log-probabilities stay float64.
    net = nn.Linear(4, 3).double()
    assert smoothed_log_probs(net, torch.rand(2, 4, dtype=torch.float64),
                              torch.zeros(5, 2, 4, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError, match=r"\[m, B, K\]"):
        log_mean_softmax(torch.zeros(2, 3))


@pytest.mark.parametrize("name", ATTACKS)
def test_attacks_on_the_smoothed_soft_classifier_find_the_linear_boundary(name):
    # For a linear f and Gaussian noise the smoothed classifier has f's boundary, and every noisy
    # gradient of the plug-in estimate points along ±w: the attacks are exact despite the noise.
    model, x, y, d = linear_problem(5, (16,), seed=11, d_min=0.1, d_max=0.5)
    soft = SmoothedSoft(model, get_noise("gaussian", sigma=0.25), m=4, generator=torch.Generator().manual_seed(1))
    if name == "pgd":
        assert bool((model.label(pgd_l2(soft, x, y, eps=1.05 * d, steps=10)) != y).all())
        assert bool((model.label(pgd_l2(soft, x, y, eps=0.95 * d, steps=10)) == y).all())
    else:
        soft.m = 16
        dist = l2_norms(ddn(soft, x, y, steps=60) - x)
        # DDN keeps the smallest iterate that the *noisy* estimate called adversarial: near the
        # boundary the estimate errs, so it stops short by about the noise of m draws, sigma/sqrt(m).
        assert bool(((dist - d).abs() <= 1.5 * 0.25 / 16**0.5).all()), dist - d


# ----------------------------------------------------------------------- attack_dataset


def test_attack_dataset_on_a_plain_linear_model_is_exact(tmp_path):
    model, x, y, d = linear_problem(12, (1, 4, 4), seed=12)
    eps = [0.2, 0.45, 0.7]
    assert float((d[:, None] - torch.tensor(eps)).abs().min()) > 0.02  # no distance sits on the grid
    out = tmp_path / "plain.tsv"
    summary = attack_dataset(model, list(zip(x, y)), out, eps=eps, steps=100, attack_batch=5, progress=False)
    assert summary.inputs == 12 and summary.clean_accuracy == 1.0 and not summary.smoothed
    for e in eps:  # a linear model is robust at eps exactly when its distance exceeds eps
        assert summary.adversarial_accuracy[e] == pytest.approx(float((d > e).float().mean()))
    assert summary.ddn_found == 1.0
    assert summary.median_l2 == pytest.approx(statistics.median(d.tolist()), rel=0.01)
    assert summary.mean_l2 == pytest.approx(float(d.mean()), rel=0.01)
    assert summary.violations == ()
    lines = out.read_text().splitlines()
    assert lines[0].split("\t") == list(attack_columns(eps, "both")) and len(lines) == 13


def test_attack_dataset_smoothed_has_no_violations_and_dominates_certified_accuracy(tmp_path):
    model, x, y, d = linear_problem(10, (16,), seed=13, d_min=0.05, d_max=0.8)
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=2)
    data = list(zip(x, y))
    eps = [0.1, 0.25, 0.5]
    kw = {"eps": eps, "steps": 40, "m": 4, "n0": 32, "n": 1000, "alpha": 0.001, "batch_size": 1000,
          "attack_batch": 4, "progress": False}
    out = tmp_path / "smoothed.tsv"
    summary = attack_dataset(smoothed, data, out, **kw)
    assert summary.smoothed and summary.inputs == 10
    assert summary.violations == ()
    for e in eps:
        assert summary.adversarial_accuracy[e] >= summary.certified_accuracy[e]
    # The attacks really attack: PGD breaks every input whose distance is below eps.
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    col = {name: k for k, name in enumerate(rows[0])}
    for r, dist in zip(rows[1:], d.tolist(), strict=True):
        assert float(r[col["radius"]]) < dist  # the certificate holds (a linear model's radius is exact)
        for e in eps:
            if dist < 0.95 * e:
                assert int(r[col[f"pgd@{e!r}"]]) != int(r[col["label"]])
        # DDN's point, lengthened until PREDICT gives the other class, lies across g's boundary (a
        # PREDICT answer short of it would be one of its alpha-probable errors), by at most 1.05^5;
        # abstentions near the boundary are recorded apart and never count as adversarial.
        assert dist <= float(r[col["min_l2"]]) <= 1.3 * dist
        assert float(r[col["ddn_abstain_l2"]]) >= dist - 0.1
        assert r[col["norm"]] == "l2" and r[col["native_norm"]] == "l2"
        assert float(r[col["radius_native"]]) == float(r[col["radius"]])  # Gaussian: l2 is native
    assert summary.ddn_found == 1.0 and summary.confirmed_violations == ()
    # The bound on spurious violations: 10 inputs x (1 CERTIFY + 3 PGD + 6 DDN PREDICTs) x alpha.
    certified = sum(int(r[col["predict"]]) != ABSTAIN for r in rows[1:])
    assert summary.false_alarm_bound == pytest.approx(certified * 10 * 0.001)
    # Re-running resumes (nothing recomputed, same summary); another configuration is refused.
    assert attack_dataset(smoothed, data, out, **kw) == summary
    with pytest.raises(ValueError, match="different configuration"):
        attack_dataset(smoothed, data, out, **{**kw, "m": 8})


def test_inputs_certified_with_another_class_are_attacked_away_from_that_class(tmp_path):
    # Wrong labels: CERTIFY gives the model's (true) class, which is not the label. The attacks must
    # probe that certificate, i.e. push away from the certified class, across the boundary.
    model, x, y, _ = linear_problem(4, (16,), seed=17, d_min=0.1, d_max=0.3)
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=2)
    wrong = 1 - y
    out = tmp_path / "wrong.tsv"
    summary = attack_dataset(smoothed, list(zip(x, wrong)), out, eps=[0.6], steps=20, m=4, n0=32, n=1000,
                             alpha=0.001, batch_size=1000, progress=False)
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    col = {name: k for k, name in enumerate(rows[0])}
    for r, label in zip(rows[1:], wrong.tolist(), strict=True):
        assert int(r[col["predict"]]) == 1 - label  # certified: the model's class
        assert int(r[col[f"pgd@{0.6!r}"]]) == label  # PGD crossed g's boundary away from it
        assert int(r[col["ddn"]]) == label  # so did DDN
        assert float(r[col["min_l2"]]) == 0.0  # the clean answer is already not the label
    assert summary.clean_accuracy == 0.0 and summary.violations == ()


def test_summary_reports_violations_and_abstentions():
    def row(idx, predict, radius, pgd, l2):
        return {"idx": idx, "label": 1, "predict": predict, "radius": radius, "correct": int(predict == 1),
                f"pgd@{0.5!r}": pgd, f"pgd_l2@{0.5!r}": l2}

    rows = [
        row(0, 1, 0.8, 0, 0.5),  # another class at 0.5 < radius 0.8: a violation
        row(1, 1, 0.8, ABSTAIN, 0.5),  # abstaining is no violation, but counts as wrong
        row(2, 1, 0.3, 0, 0.5),  # outside the certified ball: allowed
        row(3, 1, 0.8, 1, 0.5),  # robust
    ]
    summary = summarize_attack(rows)
    assert [v.idx for v in summary.violations] == [0]
    assert summary.violations[0] == Violation(idx=0, attack="pgd", eps=0.5, l2=0.5, radius=0.8, certified=1,
                                              predicted=0, confirmed=False)
    assert summary.confirmed_violations == ()
    assert summary.adversarial_accuracy[0.5] == 0.25 and summary.certified_accuracy[0.5] == 0.75
    assert summary.certified_abstained[0.5] == 1
    assert "violations (another class inside the certified radius): 1" in summary_table(summary)
    with pytest.raises(ValueError, match="no attack was run at eps"):
        summarize_attack(rows, eps=[0.25])
    # The re-check's verdict is read from the rows; the bounds follow alpha.
    rechecked = [{**r, "alpha": 0.01, "recheck_radius": math.nan, "confirmed": "-"} for r in rows]
    rechecked[0].update(recheck_radius=0.7, confirmed=f"pgd@{0.5!r}")
    summary = summarize_attack(rechecked)
    assert [v.idx for v in summary.confirmed_violations] == [0]
    assert summary.false_alarm_bound == pytest.approx(4 * 2 * 0.01)  # 4 certified x (CERTIFY + 1 PGD)
    assert summary.confirmed_false_alarm_bound == pytest.approx(2 * 0.01 / 100)  # 1 input, 1 violation
    table = summary_table(summary)
    assert "[confirmed]" in table and "confirmed violations (re-checked" in table and "a bug" in table


def test_ddn_distances_exclude_abstentions_but_accuracy_counts_them():
    def row(idx, min_l2, abstain_l2):
        return {"idx": idx, "label": 1, "predict": 1, "radius": 0.1, "correct": 1, "ddn": 0 if min_l2 < 9 else 1,
                "ddn_l2": min(min_l2, 2.0), "min_l2": min_l2, "ddn_abstain_l2": abstain_l2}

    rows = [row(0, 0.4, math.inf), row(1, math.inf, 0.2), row(2, 0.8, 0.6)]
    summary = summarize_attack(rows, eps=[0.3, 0.5, 0.7])
    # Distances: the classes found only (0.4 and 0.8); input 1 abstained at 0.2 but found no class.
    assert summary.ddn_found == pytest.approx(2 / 3) and summary.mean_l2 == pytest.approx(0.6)
    assert summary.median_l2 == pytest.approx(0.8)
    # Accuracy: abstaining at an attacked point within eps counts as wrong.
    assert summary.adversarial_accuracy == {0.3: pytest.approx(2 / 3), 0.5: pytest.approx(1 / 3), 0.7: 0.0}


class Scripted:
    """A stand-in SmoothedClassifier whose PREDICT answers follow a script, one answer per call."""

    def __init__(self, answers):
        self.answers = list(answers)

    def predict(self, x, **kw):
        return torch.tensor([self.answers.pop(0)])


def test_confirm_passes_over_abstentions_and_records_them():
    x = torch.full((1, 4), 0.5)
    x_adv = x + torch.tensor([[0.1, 0.0, 0.0, 0.0]])
    kw = {"n": 10, "alpha": 0.01, "batch_size": 10, "seed": 0}
    # Abstain at 1.05^0 and 1.05^1, then class 0 (not the attacked class 1) at 1.05^2: stop there.
    points, preds, dists, abstains = attack_module._confirm(Scripted([ABSTAIN, ABSTAIN, 0, 1]), x, x_adv,
                                                                [1], [0], **kw)
    assert preds == [0] and dists[0] == pytest.approx(0.1 * 1.05**2) and abstains[0] == pytest.approx(0.1)
    torch.testing.assert_close(points, (x + 1.05**2 * (x_adv - x)))
    # Never another class: the last point, its answer (the attacked class), the first abstention.
    script = [1, ABSTAIN, 1, 1, ABSTAIN, 1]
    _, preds, dists, abstains = attack_module._confirm(Scripted(script), x, x_adv, [1], [0], **kw)
    assert preds == [1] and dists[0] == pytest.approx(0.1 * 1.05**5) and abstains[0] == pytest.approx(0.1 * 1.05)


def test_l2_radius_converts_other_norms_exactly():
    p = torch.tensor([0.3, 0.5, 0.8, 0.99], dtype=torch.float64)
    gauss = get_noise("gaussian", sigma=0.5)
    torch.testing.assert_close(l2_radius(gauss, p, dim=16), gauss.radius(p, norm="l2"))
    laplace = get_noise("laplace", sigma=0.5)
    torch.testing.assert_close(l2_radius(laplace, p, dim=16), laplace.radius(p, norm="l1") / 4)  # sqrt(16)
    uniform = get_noise("uniform", sigma=0.5)
    expected = torch.maximum(uniform.radius(p, norm="l1") / 4, uniform.radius(p, norm="linf", dim=16))
    torch.testing.assert_close(l2_radius(uniform, p, dim=16), expected)
    for noise in (gauss, laplace, uniform):  # nothing certified at pA <= 1/2
        assert l2_radius(noise, p, dim=16)[:2].tolist() == [0.0, 0.0]
    assert float(l2_radius(laplace, p, dim=16)[3]) > 0


def test_attack_dataset_with_laplace_noise_reports_the_l1_certificate_and_the_conversion(tmp_path):
    model, x, y, _ = linear_problem(3, (16,), seed=14, d_min=0.3, d_max=0.8)
    noise = get_noise("laplace", sigma=0.25)
    smoothed = SmoothedClassifier(model, noise=noise, num_classes=2)
    out = tmp_path / "laplace.tsv"
    summary = attack_dataset(smoothed, list(zip(x, y)), out, attack="pgd", eps=[0.1], steps=5, m=2, n0=32, n=500,
                             alpha=0.01, batch_size=500, progress=False)
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    col = {name: k for k, name in enumerate(rows[0])}
    for r in rows[1:]:
        assert r[col["norm"]] == "l2" and r[col["native_norm"]] == "l1"
        assert float(r[col["radius"]]) == pytest.approx(float(r[col["radius_native"]]) / 4, rel=1e-12)
    assert any(float(r[col["radius_native"]]) > 0 for r in rows[1:])
    assert summary.radius_conversion.startswith("r_l1/√d")
    assert "certified radii are l2: r_l1/√d (radii from the l1 certificate)" in summary_table(summary)


def _inflated_certify(monkeypatch):
    """Make CERTIFY claim pA >= 1 - 1e-9 wherever it certifies: a deliberately wrong, huge radius."""
    real = SmoothedClassifier.certify

    def certify(self, x, **kw):
        cert = real(self, x, **kw)
        p = torch.where(cert.prediction != ABSTAIN, torch.full_like(cert.p_lower, 1 - 1e-9), cert.p_lower)
        return dataclasses.replace(cert, p_lower=p, radius=self.noise.radius(p))

    monkeypatch.setattr(SmoothedClassifier, "certify", certify)


def test_a_wrong_certificate_is_reported_as_a_confirmed_violation(tmp_path, monkeypatch):
    # Inputs 0.1 .. 0.25 from a linear boundary: PGD at eps 0.6 crosses it by >= 0.35 = 1.4 sigma, so
    # PREDICT gives the other class there while the inflated certificate claims a radius of ~1.5.
    model, x, y, _ = linear_problem(4, (16,), seed=15, d_min=0.1, d_max=0.25)
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=2)
    _inflated_certify(monkeypatch)
    summary = attack_dataset(smoothed, list(zip(x, y)), tmp_path / "bug.tsv", attack="pgd", eps=[0.6], steps=10,
                             m=2, n0=32, n=1000, alpha=0.001, batch_size=1000, progress=False)
    assert [v.idx for v in summary.confirmed_violations] == [0, 1, 2, 3]
    assert all(v.l2 == pytest.approx(0.6, rel=1e-4) and v.radius > 1.0 for v in summary.confirmed_violations)
    assert "confirmed violations (re-checked with fresh draws at alpha/100): 4" in summary_table(summary)


def test_a_spurious_predict_error_is_a_violation_but_not_confirmed(tmp_path, monkeypatch):
    # PREDICT errs at level alpha (as it may, with probability alpha) and answers right at the
    # re-check's level alpha/100: the violation is listed, and the re-check clears it.
    model, x, y, _ = linear_problem(3, (16,), seed=16, d_min=0.6, d_max=0.8)
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=2)
    real = SmoothedClassifier.predict

    def predict(self, x, *, alpha, **kw):
        answer = real(self, x, alpha=alpha, **kw)
        return 1 - answer if alpha == 0.001 else answer

    monkeypatch.setattr(SmoothedClassifier, "predict", predict)
    summary = attack_dataset(smoothed, list(zip(x, y)), tmp_path / "noisy.tsv", attack="pgd", eps=[0.1], steps=5,
                             m=2, n0=32, n=1000, alpha=0.001, batch_size=1000, progress=False)
    assert len(summary.violations) == 3 and summary.confirmed_violations == ()
    assert summary.false_alarm_bound == pytest.approx(3 * 2 * 0.001)
    assert summary.confirmed_false_alarm_bound == pytest.approx(3 * 2 * 0.001 / 100)


# ------------------------------------------------------------------------------------ CLI

TRAIN = ["train", "--dataset", "embedded", "--arch", "lenet-small", "--sigma", "0.25", "--batch", "64",
         "--lr", "0.05", "--limit", "256", "--quiet", "--device", "cpu", "--epochs", "1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "lenet.pt"
    assert main([*TRAIN, "--out", str(path)]) == 0
    return path


def test_cli_attack_smoothed_and_base(checkpoint, tmp_path, capsys):
    out = tmp_path / "a.tsv"
    common = ["attack", "--checkpoint", str(checkpoint), "--max", "3", "--skip", "2", "--steps", "5",
              "--eps", "0.1", "0.25", "--quiet", "--device", "cpu"]
    assert main([*common, "--n0", "10", "--n", "64", "--alpha", "0.01", "--m", "2", "--batch", "64",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "| eps | adversarial acc. | certified acc. | certified, abstained |" in captured.out
    assert "violations (another class inside the certified radius): 0" in captured.out
    assert "SmoothedClassifier" in captured.err  # trained with noise: the smoothed model by default
    assert [int(line.split("\t")[0]) for line in out.read_text().splitlines()[1:]] == [0, 2, 4]
    assert '"smoothed": true' in (tmp_path / "a.tsv.json").read_text()

    base = tmp_path / "b.tsv"
    assert main([*common, "--base", "--attack", "ddn", "--out", str(base)]) == 0
    captured = capsys.readouterr()
    assert "| eps | adversarial acc. |\n" in captured.out and "minimal adversarial l2 (DDN)" in captured.out
    assert "base lenet-small" in captured.err
    header = base.read_text().splitlines()[0].split("\t")
    assert "min_l2" in header and not any(h.startswith("pgd@") for h in header)
