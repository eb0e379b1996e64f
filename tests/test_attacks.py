"""l2 attacks (pgd_l2, ddn) on plain and smoothed classifiers, and attack_dataset / `smoothcert attack`.

Exact answers come from linear binary classifiers: the l2 distance from x to the boundary w.x + b = 0
is |w.x + b| / ||w||, for the base classifier and (any symmetric noise) for its smoothed version.
"""

import copy
import math
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from linear import LinearBinary
from torch import nn

from smoothcert import SmoothedClassifier, get_noise
from smoothcert.attacks import SmoothedSoft, adversarial_l2, ddn, l2_norms, minimal_l2, pgd_l2
from smoothcert.cli import main
from smoothcert.robustness import attack_columns, attack_dataset, summarize_attack, summary_table
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


# --------------------------------------------------------------------- smoothed attacks


def test_smoothed_soft_draws_fresh_noise_each_call_and_is_seeded():
    model, x, _, _ = linear_problem(4, (16,), seed=9)
    soft = SmoothedSoft(model, get_noise("gaussian", sigma=0.25), m=16, generator=torch.Generator().manual_seed(0))
    a, b = soft(x), soft(x)
    assert not torch.equal(a, b)
    torch.testing.assert_close(a.exp().sum(1), torch.ones(4))
    again = SmoothedSoft(model, get_noise("gaussian", sigma=0.25), m=16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again(x), a)


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
    assert summary["inputs"] == 12 and summary["clean_accuracy"] == 1.0 and not summary["smoothed"]
    for e in eps:  # a linear model is robust at eps exactly when its distance exceeds eps
        assert summary["adversarial_accuracy"][e] == pytest.approx(float((d > e).float().mean()))
    assert summary["ddn_found"] == 1.0
    assert summary["median_l2"] == pytest.approx(statistics.median(d.tolist()), rel=0.01)
    assert summary["mean_l2"] == pytest.approx(float(d.mean()), rel=0.01)
    assert summary["violations"] == []
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
    assert summary["smoothed"] and summary["inputs"] == 10
    assert summary["violations"] == []
    for e in eps:
        assert summary["adversarial_accuracy"][e] >= summary["certified_accuracy"][e]
    # The attacks really attack: PGD breaks every input whose distance is below eps.
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    col = {name: k for k, name in enumerate(rows[0])}
    for r, dist in zip(rows[1:], d.tolist(), strict=True):
        assert float(r[col["radius"]]) < dist  # the certificate holds (a linear model's radius is exact)
        for e in eps:
            if dist < 0.95 * e:
                assert int(r[col[f"pgd@{e!r}"]]) != int(r[col["label"]])
        # DDN's point, lengthened until PREDICT confirms it, lies near the boundary: beyond it by
        # at most 1.05^5, or short of it where PREDICT abstains (|pA - 1/2| small: within 0.1).
        assert dist - 0.1 <= float(r[col["min_l2"]]) <= 1.3 * dist
    assert summary["ddn_found"] == 1.0
    # Re-running resumes (nothing recomputed, same summary); another configuration is refused.
    assert attack_dataset(smoothed, data, out, **kw) == summary
    with pytest.raises(ValueError, match="different configuration"):
        attack_dataset(smoothed, data, out, **{**kw, "m": 8})


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
    assert [v["idx"] for v in summary["violations"]] == [0]
    assert summary["violations"][0] == {"idx": 0, "attack": "pgd", "eps": 0.5, "l2": 0.5, "radius": 0.8,
                                        "certified": 1, "predicted": 0}
    assert summary["adversarial_accuracy"][0.5] == 0.25 and summary["certified_accuracy"][0.5] == 0.75
    assert summary["certified_abstained"][0.5] == 1
    assert "violations (another class inside the certified radius): 1" in summary_table(summary)
    with pytest.raises(ValueError, match="no attack was run at eps"):
        summarize_attack(rows, eps=[0.25])


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
