"""Denoised smoothing: exact answers on Gaussian data, frozen classifiers, training, checkpoints.

Gaussian data x ~ N(mu, s^2 I) is the reference case: y = x + sigma z has density N(mu, (s^2 +
sigma^2) I), so the exact score of p_sigma is -(y - mu)/(s^2 + sigma^2), Tweedie's denoiser is the
posterior mean mu + s^2/(s^2 + sigma^2)(y - mu), the minimum of the DSM loss is known, and the MAP
problems of the multi-step denoiser have closed-form minimisers for all three noises.
"""

from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from linear import LinearBinary
from torch import nn

from smoothcert.data import get_dataset
from smoothcert.denoise import (
    MULTISTEP_DEFAULTS,
    Denoised,
    DenoiserMeta,
    MultiStepDenoiser,
    OneStepDenoiser,
    build_denoiser,
    check_ladder,
    default_step_size,
    denoiser_for_noise,
    denoiser_kind,
    denoising_psnr,
    dsm_loss,
    get_denoiser_loss,
    level_step_sizes,
    list_denoiser_losses,
    list_denoisers,
    load_denoiser,
    multistep_denoise,
    noise_potential,
    psnr,
    save_denoiser,
    sigma_ladder,
    train_denoiser,
    trained_noise,
    tweedie_denoise,
    zeroth_order_cross_entropy,
)
from smoothcert.denoise.nets import record_training
from smoothcert.models import (
    CheckpointError,
    CheckpointMeta,
    build_model,
    save_checkpoint,
)
from smoothcert.noise import Noise, NoiseAware, get_noise
from smoothcert.smooth import SmoothedClassifier

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPE = (1, 4, 4)  # d = 16
S = 0.2  # data standard deviation


def gaussian_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = 0.3 + 0.4 * torch.rand(SHAPE, generator=g, dtype=torch.float64)
    x = mu + S * torch.randn((n, *SHAPE), generator=g, dtype=torch.float64)
    return mu, x


def exact_score(mu: torch.Tensor):
    """grad_y log p_sigma(y) for x ~ N(mu, S^2 I): -(y - mu)/(S^2 + sigma^2)."""

    def score(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v = (S**2 + sigma**2).view(-1, *([1] * (y.ndim - 1)))
        return -(y - mu) / v

    return score


def neg_log_p(x: torch.Tensor, mu: torch.Tensor, sigma_level: float) -> torch.Tensor:
    """-log p_sigma(x) up to a constant, per row."""
    return 0.5 * (x - mu).flatten(1).pow(2).sum(1) / (S**2 + sigma_level**2)


# ---------------------------------------------------------------- ladder, Tweedie, DSM


def test_default_step_moves_a_fixed_fraction_to_the_tweedie_estimate() -> None:
    # With uniform noise so wide that the box never binds, one multi-step iteration is the score
    # step alone: x1 = y + alpha s(y, sigma_L) = y + c (tweedie(y) - y) with c = alpha / sigma_L^2,
    # whatever the ladder's last level (c = 0.2 here; default_step_size's default c is 1).
    mu = torch.full((1, 8), 0.5)
    y = mu + 0.3 * torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    wide = get_noise("uniform", sigma=100.0)
    for level in (0.01, 0.05, 0.3):
        assert default_step_size([level]) == pytest.approx(MULTISTEP_DEFAULTS["step_ratio"] * level**2, rel=1e-12)
        alpha = default_step_size([level], step_ratio=0.2)
        x1 = multistep_denoise(exact_score(mu), y, wide, ladder=[level], steps_per_level=1, step_size=alpha)
        tweedie = tweedie_denoise(exact_score(mu), y, sigma=level)
        torch.testing.assert_close(x1 - y, 0.2 * (tweedie - y), rtol=1e-5, atol=1e-7)
    assert default_step_size([1.0, 0.1], step_ratio=0.5) == pytest.approx(0.5 * 0.1**2)
    with pytest.raises(ValueError, match="step_ratio"):
        default_step_size([0.1], step_ratio=0.0)


def test_sigma_ladder_is_geometric_and_validated() -> None:
    ladder = sigma_ladder(1.0, 0.01, num_levels=10)
    assert ladder[0] == 1.0 and ladder[-1] == 0.01 and len(ladder) == 10
    ratios = [b / a for a, b in itertools.pairwise(ladder)]
    assert max(ratios) - min(ratios) < 1e-12 and all(r < 1 for r in ratios)
    assert sigma_ladder(0.3, 0.3, num_levels=1) == [0.3]
    assert check_ladder(torch.tensor([0.5, 0.25])) == (0.5, 0.25)
    for bad in ([], [0.1, 0.2], [0.5, 0.5], [0.5, -0.1], [math.nan]):
        with pytest.raises(ValueError):
            check_ladder(bad)
    with pytest.raises(ValueError):
        sigma_ladder(0.01, 1.0, num_levels=5)
    assert level_step_sizes([1.0, 0.5, 0.1], step_size=0.01) == pytest.approx([1.0, 0.25, 0.01])


def test_tweedie_with_the_exact_score_is_the_posterior_mean() -> None:
    mu, x = gaussian_data(20_000)
    sigma = 0.5
    g = torch.Generator().manual_seed(1)
    y = x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)
    shrink = S**2 / (S**2 + sigma**2)
    posterior_mean = mu + shrink * (y - mu)
    torch.testing.assert_close(tweedie_denoise(exact_score(mu), y, sigma=sigma), posterior_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(OneStepDenoiser(exact_score(mu), get_noise("gaussian", sigma=sigma))(y),
                               posterior_mean, rtol=0, atol=1e-12)
    # It denoises: its per-coordinate MSE is the posterior variance S^2 sigma^2/(S^2 + sigma^2).
    mse = (posterior_mean - x).pow(2).mean().item()
    assert mse == pytest.approx(S**2 * sigma**2 / (S**2 + sigma**2), rel=0.03)
    # Per-row levels: row b uses sigma_b.
    sig = torch.tensor([0.25, 1.0], dtype=x.dtype)
    out = tweedie_denoise(exact_score(mu), y[:2], sigma=sig)
    for b in range(2):
        expected = mu + S**2 / (S**2 + sig[b] ** 2) * (y[b] - mu)
        torch.testing.assert_close(out[b], expected, rtol=0, atol=1e-12)


def test_one_step_denoiser_refuses_non_gaussian_noise() -> None:
    mu, _ = gaussian_data(1)
    with pytest.raises(TypeError, match="Gaussian noise only"):
        OneStepDenoiser(exact_score(mu), get_noise("laplace", sigma=0.5))
    den = OneStepDenoiser(exact_score(mu), 0.25)
    assert den.settings() == {"denoiser": "one-step", "score": "score", "noise": "gaussian", "sigma": 0.25}
    assert "sigma=0.25" in repr(den)


def test_dsm_loss_is_minimised_by_the_exact_score() -> None:
    mu, x = gaussian_data(4000)
    ladder = [1.0, 0.3, 0.05]
    d = x[0].numel()
    score = exact_score(mu)

    def loss_of(fn, level: int | None) -> float:
        levels = None if level is None else torch.full((x.shape[0],), level, dtype=torch.long)
        return dsm_loss(fn, x, ladder=ladder, generator=torch.Generator().manual_seed(7), levels=levels).item()

    for i, sigma in enumerate(ladder):
        exact = loss_of(score, i)
        # Minimum value: 1/2 d S^2/(S^2 + sigma^2); rows are 1/2 c chi^2_16 (relative sd 0.35/sqrt(4000)).
        assert exact == pytest.approx(0.5 * d * S**2 / (S**2 + sigma**2), rel=0.03)
        # Same draws (same seed), perturbed scores: strictly larger.
        assert loss_of(lambda y, s: 1.2 * score(y, s), i) > exact * 1.001
        assert loss_of(lambda y, s: score(y, s) + 0.3 / s.view(-1, 1, 1, 1), i) > exact * 1.001
    # Random levels: an unbiased estimate of the mean over the ladder.
    expected = sum(0.5 * d * S**2 / (S**2 + s**2) for s in ladder) / len(ladder)
    assert loss_of(score, None) == pytest.approx(expected, rel=0.05)
    with pytest.raises(ValueError, match="levels"):
        dsm_loss(score, x, ladder=ladder, levels=torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------- multi-step denoiser


def _noisy(noise_name: str, sigma: float, n: int = 64):
    mu, x = gaussian_data(n, seed=3)
    noise = get_noise(noise_name, sigma=sigma)
    y = x + noise.sample(x.shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    return mu, x, noise, y


def test_multistep_gaussian_descends_the_map_objective_to_its_minimiser() -> None:
    sigma, level = 0.5, 0.1
    mu, _, noise, y = _noisy("gaussian", sigma)
    v = S**2 + level**2
    alpha = 0.5 / (1 / v + 1 / sigma**2)  # below 2 / (smoothness constant): monotone descent
    objective = []

    def record(i, t, x):
        objective.append(neg_log_p(x, mu, level) + noise_potential(noise, x - y))

    x = multistep_denoise(exact_score(mu), y, noise, ladder=[level], steps_per_level=60, step_size=alpha,
                          callback=record)
    start = neg_log_p(y, mu, level) + noise_potential(noise, torch.zeros_like(y))
    trace = torch.stack([start, *objective])
    assert (trace[1:] <= trace[:-1] + 1e-12).all(), "every step decreases -log p_sigma(x) + phi(x - y)"
    map_estimate = (sigma**2 * mu + v * y) / (sigma**2 + v)
    torch.testing.assert_close(x, map_estimate, rtol=0, atol=1e-9)


def test_multistep_laplace_reaches_the_soft_thresholded_map() -> None:
    sigma, level = 0.5, 0.1
    mu, _, noise, y = _noisy("laplace", sigma)
    lam, v = noise.scale, S**2 + level**2
    assert lam == pytest.approx(sigma / math.sqrt(2))
    alpha = 0.01
    x = multistep_denoise(exact_score(mu), y, noise, ladder=[level], steps_per_level=300, step_size=alpha)
    # argmin_x |x - mu|^2/(2v) + |x - y|_1/lambda, per coordinate: mu + clip(y - mu, -v/lambda, v/lambda).
    map_estimate = mu + (y - mu).clamp(-v / lam, v / lam)
    assert ((x - y).abs() < 1e-12).float().mean() < 1  # not trivially x = y
    # Smooth coordinates converge; at the kink x = y constant-step subgradient descent keeps jumping
    # across it by one step, alpha (|x - mu|/v + 1/lambda) <= about 2 alpha/lambda there.
    err = (x - map_estimate).abs()
    at_kink = (map_estimate - y).abs() < 1e-12
    assert at_kink.any() and (~at_kink).any()
    assert err[~at_kink].max().item() < 1e-9
    assert err[at_kink].max().item() <= 2.2 * alpha / lam

    def objective(z):
        return neg_log_p(z, mu, level) + noise_potential(noise, z - y)

    assert (objective(map_estimate) <= objective(x) + 1e-12).all()  # the closed form is the minimum
    assert (objective(x) < objective(y)).all()


def test_multistep_uniform_stays_in_the_box_and_reaches_the_projected_map() -> None:
    sigma, level = 0.5, 0.1
    mu, _, noise, y = _noisy("uniform", sigma)
    lam = noise.half_width
    assert lam == pytest.approx(sigma * math.sqrt(3))

    def in_box(i, t, x):
        assert ((x - y).abs() <= lam + 1e-12).all()
        assert torch.isfinite(noise_potential(noise, x - y)).all()

    x = multistep_denoise(exact_score(mu), y, noise, ladder=[level], steps_per_level=300, step_size=0.01,
                          callback=in_box)
    map_estimate = torch.minimum(torch.maximum(mu.expand_as(y), y - lam), y + lam)
    assert (map_estimate != mu).any(), "some coordinates must hit the box for this test to mean something"
    torch.testing.assert_close(x, map_estimate, rtol=0, atol=1e-9)
    assert torch.isinf(noise_potential(noise, torch.full_like(y, 1.01 * lam))).all()


def test_multistep_over_a_ladder_lowers_the_last_level_objective() -> None:
    sigma = 0.5
    mu, x_clean, noise, y = _noisy("gaussian", sigma)
    ladder = sigma_ladder(0.5, 0.05, num_levels=4)
    den = MultiStepDenoiser(exact_score(mu), noise, ladder=ladder, steps_per_level=300, step_size=0.002)
    settings = den.settings()
    assert settings["level_step_sizes"] == pytest.approx([0.002 * (s / 0.05) ** 2 for s in ladder])
    assert settings["steps_per_level"] == 300 and settings["ladder"] == ladder and settings["noise"] == "gaussian"
    assert "steps_per_level=300" in repr(den) and "step_size=0.002" in repr(den)
    x = den(y)
    v = S**2 + ladder[-1] ** 2
    map_last = (sigma**2 * mu + v * y) / (sigma**2 + v)
    torch.testing.assert_close(x, map_last, rtol=0, atol=1e-6)

    def objective(z):
        return neg_log_p(z, mu, ladder[-1]) + noise_potential(noise, z - y)

    assert (objective(x) < objective(y)).all()
    assert (x - x_clean).pow(2).mean() < (y - x_clean).pow(2).mean() / 4  # and it denoises


def test_multistep_validates_noise_and_steps() -> None:
    mu, _ = gaussian_data(1)
    y = torch.rand(2, *SHAPE, dtype=torch.float64)

    class Cauchy(Noise):
        name = "cauchy"
        norms = ("l2",)

        def sample_(self, out, *, generator=None):
            return out

        def _radius(self, pa, pb, norm, dim):
            return pa

    # A noise of one's own certifies without the denoising methods; denoising names the one to implement.
    with pytest.raises(TypeError, match=r"Cauchy noise does not implement Noise\.map_step\(x, y, score"):
        multistep_denoise(exact_score(mu), y, Cauchy(sigma=0.5), ladder=[0.1], steps_per_level=1, step_size=0.01)
    with pytest.raises(TypeError, match=r"Noise\.map_step.*implement it in your Noise subclass"):
        MultiStepDenoiser(exact_score(mu), Cauchy(sigma=0.5), ladder=[0.1], steps_per_level=1, step_size=0.01)
    with pytest.raises(TypeError, match=r"Cauchy noise does not implement Noise\.potential\(delta\)"):
        noise_potential(Cauchy(sigma=0.5), y)
    with pytest.raises(TypeError) as err:
        Cauchy(sigma=0.5).potential(y)
    assert "score.py" not in str(err.value) and "edit" not in str(err.value)
    gauss = get_noise("gaussian", sigma=0.25)
    with pytest.raises(ValueError, match="steps_per_level"):
        MultiStepDenoiser(exact_score(mu), gauss, ladder=[0.1], steps_per_level=0, step_size=0.01)
    with pytest.raises(ValueError, match="step_size"):
        MultiStepDenoiser(exact_score(mu), gauss, ladder=[0.1], steps_per_level=1, step_size=-1.0)
    with pytest.warns(UserWarning, match="diverge"):
        MultiStepDenoiser(exact_score(mu), gauss, ladder=[1.0, 0.1], steps_per_level=1, step_size=0.002)


# ---------------------------------------------------------------- the frozen classifier


class TinyClassifier(nn.Module):
    """Conv + BatchNorm + linear on [B, 1, 8, 8]: batch-norm buffers would move if it ever trained."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 64, classes))

    def forward(self, x):
        return self.net(x)


def _tiny_setup(seed: int = 0):
    torch.manual_seed(seed)
    clf = TinyClassifier()
    clf.net[1].running_mean.normal_()  # non-trivial buffers
    x = torch.rand(32, 1, 8, 8)
    y = torch.randint(0, 3, (32,))
    den = build_denoiser("dncnn", in_channels=1, depth=3, width=8)
    return clf, den, x, y


def _module_state(module: nn.Module) -> dict:
    """Everything of a module that wrapping could change: its attributes, modes, requires_grad and tensors."""
    return {
        "attributes": sorted(vars(module)),
        "modes": [m.training for m in module.modules()],
        "requires_grad": [p.requires_grad for p in module.parameters()],
        "grads": [p.grad for p in module.parameters()],
        "state": {k: v.clone() for k, v in module.state_dict().items()},
    }


def _same_state(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k != "state"} == {k: v for k, v in b.items() if k != "state"} and (
        a["state"].keys() == b["state"].keys() and all(torch.equal(v, b["state"][k]) for k, v in a["state"].items()))


def test_denoised_leaves_the_callers_classifier_unchanged() -> None:
    clf, den, _, _ = _tiny_setup()
    for mode in (True, False):
        clf.train(mode)
        before = _module_state(clf)
        model = Denoised(clf, den.eval(), trained_for=get_noise("gaussian", sigma=0.25))
        assert _same_state(before, _module_state(clf)), "Denoised(f, D) must not touch f"
        assert model.training == mode  # a classifier in train mode makes the wrapper report train mode
    # A training classifier makes SmoothedClassifier switch the whole composition to eval, with its warning.
    clf.train()
    with pytest.warns(UserWarning, match="train mode"):
        SmoothedClassifier(Denoised(clf, den.eval()), noise=get_noise("gaussian", sigma=0.25), num_classes=3)
    assert not clf.training and not den.training


def test_denoised_keeps_the_classifier_in_eval_mode_and_freezes_on_request() -> None:
    clf, den, x, _ = _tiny_setup()
    clf.train()
    model = Denoised(clf, den)
    model.train()
    assert model.training and den.training and not clf.training  # an explicit train() on the wrapper
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), clf(den(x).clamp(0, 1)))
        torch.testing.assert_close(model.denoise(x), den(x).clamp(0, 1))
    assert Denoised(clf, den, clamp=False).denoise(x * 3).max() > 1
    # Gradients reach the input through the classifier (attacks take them w.r.t. the input only).
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).sum(), xg)
    assert grad.abs().sum() > 0 and all(p.grad is None and p.requires_grad for p in clf.parameters())
    # freeze=True: the explicit opt-in to freezing in place; backward() then leaves f's gradients alone.
    clf.train()
    model = Denoised(clf, den, freeze=True).eval()
    assert not clf.training and all(not p.requires_grad for p in clf.parameters())
    model(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert all(p.grad is None for p in clf.parameters())
    with pytest.raises(ValueError, match="shares"):
        Denoised(clf, nn.Sequential(clf.net[0]))
    assert repr(model) == "Denoised(classifier=TinyClassifier, denoiser=DnCNN, clamp=True)"
    mu, _ = gaussian_data(1)
    one = Denoised(clf, OneStepDenoiser(exact_score(mu), 0.5))
    assert isinstance(one, NoiseAware) and isinstance(one.denoiser, NoiseAware)
    assert "OneStepDenoiser(score=score, noise=Gaussian(sigma=0.5))" in repr(one)
    assert one.settings()["sigma"] == 0.5 and one.settings()["classifier"] == "TinyClassifier"


@pytest.mark.parametrize(
    ("loss_name", "access"),
    [("mse", None), ("stability", "full"), ("stability", "query"), ("classification", "full"),
     ("classification", "query")],
)
def test_training_a_denoiser_never_changes_the_classifier(loss_name: str, access: str | None) -> None:
    clf, den, x, y = _tiny_setup()
    clf.train()  # train_denoiser must put it in eval mode, or batch-norm buffers would move
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    den_before = {k: v.clone() for k, v in den.state_dict().items()}
    data = torch.utils.data.TensorDataset(x, y)
    loss = get_denoiser_loss(loss_name) if access is None else get_denoiser_loss(loss_name, access=access, queries=4)
    history = train_denoiser(den, data, loss=loss, noise=get_noise("gaussian", sigma=0.25),
                             classifier=None if access is None else clf, epochs=1, batch_size=16, lr=1e-2)
    assert len(history) == 1 and math.isfinite(history[0]["loss"])
    after = clf.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"classifier tensor {k} changed"
    assert any(not torch.equal(den_before[k], v) for k, v in den.state_dict().items()), "the denoiser trained"
    if access is not None:
        assert not clf.training and all(not p.requires_grad for p in clf.parameters())


def test_an_attack_on_the_denoised_model_leaves_the_classifier_alone() -> None:
    from smoothcert.attacks import pgd_l2

    clf, den, x, y = _tiny_setup()
    model = Denoised(clf, den).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_adv = pgd_l2(model, x, y, eps=0.5, steps=3)
    assert x_adv.shape == x.shape and ((x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in clf.parameters())


def test_zeroth_order_gradient_estimate_correlates_with_the_true_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    d, classes, rows, queries = 64, 3, 8, 256
    clf = nn.Linear(d, classes).double()
    with torch.no_grad():
        clf.weight.copy_(torch.randn(classes, d, generator=g, dtype=torch.float64))
    z = torch.randn(rows, d, generator=g, dtype=torch.float64) * 0.1
    target = torch.randint(0, classes, (rows,), generator=g)

    zt = z.clone().requires_grad_(True)
    F.cross_entropy(clf(zt), target, reduction="sum").backward()
    clf.zero_grad(set_to_none=True)
    zq = z.clone().requires_grad_(True)
    value = zeroth_order_cross_entropy(clf, zq, target, queries=queries, mu=1e-4,
                                       generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(value, F.cross_entropy(clf(z), target, reduction="none"))
    value.sum().backward()
    assert all(p.grad is None for p in clf.parameters())
    cos = F.cosine_similarity(zq.grad, zt.grad, dim=1)
    # Expected about (1 + (d + 1)/q)^(-1/2) = 0.89 for d = 64, q = 256.
    assert cos.min() > 0.75 and cos.mean() > 0.85, cos


def test_loss_registry_and_argument_errors() -> None:
    assert {"mse", "stability", "classification", "dsm"} <= set(list_denoiser_losses())
    with pytest.raises(ValueError, match="access"):
        get_denoiser_loss("stability", access="partial")
    assert get_denoiser_loss("stability", access="query", queries=8).hparams() == {
        "access": "query", "queries": 8, "mu": 1e-3}
    clf, den, x, _ = _tiny_setup()
    noise = get_noise("gaussian", sigma=0.25)
    clf.eval()
    with pytest.raises(ValueError, match="needs labels"):
        get_denoiser_loss("classification").loss(den, x, None, noise=noise, generator=None, classifier=clf)
    with pytest.raises(ValueError, match="needs the frozen classifier"):
        train_denoiser(den, x, loss="stability", noise=noise)
    with pytest.raises(ValueError, match="does not use a classifier"):
        train_denoiser(den, x, loss="mse", noise=noise, classifier=clf)
    with pytest.raises(ValueError, match="score network"):
        train_denoiser(den, x, loss="dsm", ladder=[0.5, 0.1])
    score = build_denoiser("scorenet", in_channels=1, width=8)
    with pytest.raises(ValueError, match="ladder"):
        train_denoiser(score, x, loss="dsm")
    with pytest.raises(ValueError, match="not one noise"):
        train_denoiser(score, x, loss="dsm", ladder=[0.5, 0.1], noise=noise)
    with pytest.raises(ValueError, match="needs meta"):
        train_denoiser(den, x, loss="mse", noise=noise, checkpoint="unused.pt")


# ---------------------------------------------------------------- training reduces the loss


def _mnist(n: int, *, pool: int = 1) -> torch.Tensor:
    """The first n embedded MNIST training images, average-pooled by ``pool`` (14x14 for speed)."""
    images, _ = get_dataset("embedded", split="train").subset(range(n)).tensors()
    images = images.float() / 255 if images.dtype == torch.uint8 else images
    return F.avg_pool2d(images, pool) if pool > 1 else images


def test_dncnn_trained_briefly_with_mse_denoises() -> None:
    torch.manual_seed(0)
    x = _mnist(256, pool=2)
    noise = get_noise("gaussian", sigma=0.5)
    den = build_denoiser("dncnn", in_channels=1, depth=3, width=16)
    before = denoising_psnr(den, x[:64], noise=noise)
    assert before == pytest.approx(10 * math.log10(1 / 0.25), abs=0.3)  # identity at init: the noisy PSNR
    history = train_denoiser(den, x, loss="mse", noise=noise, epochs=1, batch_size=16, lr=1e-2)
    assert history[0]["loss"] < 0.5 * noise.sigma**2  # below the identity's MSE, sigma^2
    assert denoising_psnr(den, x[:64], noise=noise) > before + 3.0  # measured +5.2 dB


def test_clamped_psnr_is_of_the_image_in_the_unit_box() -> None:
    # Identity "denoiser" on noisy images in [0, 1]: clamping to [0, 1] can only move a pixel towards
    # the truth, so the clamped PSNR is higher; both equal psnr() computed by hand on the same draws.
    x = _mnist(32, pool=2)
    noise = get_noise("gaussian", sigma=0.5)
    raw = denoising_psnr(nn.Identity(), x, noise=noise, seed=3)
    clamped = denoising_psnr(nn.Identity(), x, noise=noise, seed=3, clamp=True)
    y = noise.perturb(x, generator=torch.Generator().manual_seed(3))
    assert raw == pytest.approx(float(psnr(y, x).mean()), rel=1e-9)
    assert clamped == pytest.approx(float(psnr(y.clamp(0, 1), x).mean()), rel=1e-9)
    assert clamped > raw + 1.0


def test_score_network_trained_briefly_lowers_the_dsm_loss() -> None:
    torch.manual_seed(0)
    images = _mnist(320, pool=2)
    x, held = images[:256], images[256:]  # trained on the first 256, evaluated on 64 others
    ladder = sigma_ladder(1.0, 0.1, num_levels=4)
    score = build_denoiser("scorenet", in_channels=1, width=8, emb_dim=16)
    levels = torch.arange(held.shape[0]) % len(ladder)

    def held_out_loss() -> float:
        with torch.no_grad():
            return dsm_loss(score, held, ladder=ladder, generator=9, levels=levels).item()

    before = held_out_loss()
    assert before == pytest.approx(0.5 * x[0].numel(), rel=0.1)  # score 0 at init: 1/2 E||z||^2
    history = train_denoiser(score, x, loss="dsm", ladder=ladder, epochs=1, batch_size=32, lr=1e-2, test_set=held)
    assert held_out_loss() < 0.6 * before  # measured 0.37
    assert not score.training and "training_ladder" not in vars(score)  # nothing noted on the network
    assert history[0]["test_dsm"] < 0.6 * before
    # The trained score denoises held-out images through Tweedie at a level of its ladder (measured +5.4 dB).
    noise = get_noise("gaussian", sigma=ladder[1])
    assert denoising_psnr(OneStepDenoiser(score, noise), held, noise=noise) > denoising_psnr(
        nn.Identity(), held, noise=noise) + 2.0


def test_psnr_exact_values() -> None:
    x = torch.rand(3, 1, 4, 4)
    assert psnr(x + 0.1, x).tolist() == pytest.approx([20.0] * 3)
    assert psnr(x, x).isinf().all()
    xd = x.double()  # float64 so that 2x and x + 2 carry no float32 rounding
    expected = 10 * torch.log10(4.0 / (xd - 2).flatten(1).pow(2).mean(1))  # MSE of 2x - (x + 2) = x - 2
    torch.testing.assert_close(psnr(2 * xd, xd + 2, data_range=2.0), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        psnr(x[:2], x)


# ---------------------------------------------------------------- registry, checkpoints


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list_denoisers())
def test_every_denoiser_shapes_devices_dtypes(name: str, dtype: torch.dtype, device: str) -> None:
    torch.manual_seed(0)
    kind = denoiser_kind(name)
    small = {"dncnn": {"depth": 4, "width": 8}, "scorenet": {"width": 8, "emb_dim": 16}}.get(name, {})
    for channels, size in ((1, (28, 28)), (3, (13, 10))):
        net = build_denoiser(name, in_channels=channels, **small).to(device=device, dtype=dtype)
        for p in net.parameters():  # move off the zero-initialised output layer: every path matters
            p.data.add_(0.01 * torch.randn_like(p))
        y = torch.rand(2, channels, *size, device=device, dtype=dtype, requires_grad=True)
        out = net(y) if kind == "denoiser" else net(y, 0.5)
        assert out.shape == y.shape and out.dtype == dtype and out.device.type == device
        out.square().sum().backward()
        assert y.grad is not None and torch.isfinite(y.grad).all()
        assert all(p.grad is not None for p in net.parameters())
        net.eval()
        with torch.no_grad():
            a = net(y) if kind == "denoiser" else net(y, torch.tensor([0.5, 0.1], device=device, dtype=dtype))
            b = net(y) if kind == "denoiser" else net(y, torch.tensor([0.5, 0.1], device=device, dtype=dtype))
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            if kind == "score":  # conditioned on sigma: row 0 at 0.5 agrees, row 1 at 0.1 does not
                c = net(y, 0.5)
                torch.testing.assert_close(a[0], c[0])
                assert not torch.allclose(a[1], c[1])
        with pytest.raises(ValueError):
            net(y[:, :1].expand(2, channels + 1, *size)) if kind == "denoiser" else net(y[:, :1].expand(
                2, channels + 1, *size), 0.5)


@pytest.mark.parametrize("name", list_denoisers())
def test_denoiser_checkpoints_round_trip(name: str, tmp_path) -> None:
    torch.manual_seed(0)
    small = {"dncnn": {"depth": 3, "width": 8}, "scorenet": {"width": 8, "emb_dim": 16}}.get(name, {})
    net = build_denoiser(name, in_channels=1, **small)
    for p in net.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    score = denoiser_kind(name) == "score"
    meta = DenoiserMeta(arch=name, arch_kwargs=small, dataset="embedded", in_channels=1, input_size=28,
                        noise="none" if score else "gaussian", sigma=0.0 if score else 0.5,
                        ladder=[1.0, 0.1] if score else [])
    save_denoiser(tmp_path / "d.pt", net, meta=meta)
    loaded, got = load_denoiser(tmp_path / "d.pt")
    assert got == meta and got.kind == denoiser_kind(name) and not loaded.training
    # What it was trained for stays in the metadata; nothing is noted on the network.
    assert not {"noise", "training_ladder"} & set(vars(loaded)) and vars(loaded).keys() == vars(net).keys()
    assert trained_noise(got) == (None if score else get_noise("gaussian", sigma=0.5))
    y = torch.rand(2, 1, 28, 28)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(y) if not score else loaded(y, 0.3), net(y) if not score else net(y, 0.3))
    bad = DenoiserMeta.from_dict(meta.to_dict() | {"arch_kwargs": {}})
    with pytest.raises(CheckpointError, match="does not match"):
        save_denoiser(tmp_path / "x.pt", net, meta=bad)
    if score:
        with pytest.raises(CheckpointError, match="ladder"):
            save_denoiser(tmp_path / "x.pt", net, meta=DenoiserMeta.from_dict(meta.to_dict() | {"ladder": []}))


def test_a_classifier_checkpoint_is_not_a_denoiser(tmp_path) -> None:
    model = build_model("lenet-small", num_classes=10, in_channels=1, mean=[0.5], std=[0.25])
    meta = CheckpointMeta(arch="lenet-small", dataset="embedded", num_classes=10, in_channels=1, input_size=28,
                          mean=[0.5], std=[0.25], noise="none", sigma=0.0)
    save_checkpoint(tmp_path / "c.pt", model, meta=meta)
    with pytest.raises(CheckpointError, match="load_checkpoint"):
        load_denoiser(tmp_path / "c.pt")


def test_resumed_training_equals_an_uninterrupted_run(tmp_path) -> None:
    x = _mnist(64)
    noise = get_noise("gaussian", sigma=0.5)
    meta = DenoiserMeta(arch="dncnn", arch_kwargs={"depth": 3, "width": 8}, dataset="embedded", in_channels=1,
                        input_size=28)

    def fresh():
        torch.manual_seed(0)
        return build_denoiser("dncnn", in_channels=1, depth=3, width=8)

    straight = fresh()
    hist = train_denoiser(straight, x, loss="mse", noise=noise, epochs=2, batch_size=16, seed=3,
                          checkpoint=tmp_path / "a.pt", meta=meta, test_set=x[:16])
    assert [h["epoch"] for h in hist] == [1, 2] and "test_psnr" in hist[0]
    part = fresh()
    train_denoiser(part, x, loss="mse", noise=noise, epochs=1, batch_size=16, seed=3, checkpoint=tmp_path / "b.pt",
                   meta=meta, test_set=x[:16])
    resumed = fresh()
    hist_b = train_denoiser(resumed, x, loss="mse", noise=noise, epochs=2, batch_size=16, seed=3,
                            checkpoint=tmp_path / "b.pt", meta=meta, resume=True, test_set=x[:16])
    assert [h["loss"] for h in hist_b] == [h["loss"] for h in hist]
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    _, saved = load_denoiser(tmp_path / "b.pt")
    assert saved.epoch == 2 and saved.noise == "gaussian" and saved.sigma == 0.5
    assert saved.training["loss"] == "mse" and saved.training["lr"] == 1e-3
    with pytest.raises(ValueError, match="cannot resume"):
        train_denoiser(fresh(), x, loss="mse", noise=noise, epochs=3, batch_size=16, seed=3, lr=1e-2,
                       checkpoint=tmp_path / "b.pt", meta=meta, resume=True)


# ---------------------------------------------------------------- inside SmoothedClassifier


def test_denoised_inside_smoothed_classifier_is_deterministic_and_concentrates() -> None:
    torch.manual_seed(0)
    sigma = 0.25
    w = torch.randn(16)
    mu = torch.full((1, 4, 4), 0.5)
    # Margin w.mu + b = sigma ||w|| / 2: f(mu + delta) is right with probability Phi(1/2) = 0.69 only.
    clf = LinearBinary(w, b=-float(w.sum()) * 0.5 + 0.5 * sigma * float(w.norm())).eval()
    x = mu.expand(3, *SHAPE).clone()  # inputs at the data mean
    noise = get_noise("gaussian", sigma=sigma)
    laplace = get_noise("laplace", sigma=sigma)

    def certify(model: nn.Module, smoothing: Noise):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no train-mode or noise-mismatch warning: all are matched and in eval
            smoothed = SmoothedClassifier(model, noise=smoothing, num_classes=2)
        return smoothed.certify(x, n0=10, n=100, alpha=0.01, batch_size=50, generator=1)

    # An identity denoiser without clipping is the classifier itself: identical counts, same seed.
    plain = SmoothedClassifier(clf, noise=noise, num_classes=2).certify(x, n0=10, n=100, alpha=0.01,
                                                                       batch_size=50, generator=1)
    ident = certify(Denoised(clf, nn.Identity(), clamp=False).eval(), noise)
    assert torch.equal(ident.counts, plain.counts) and torch.equal(ident.radius, plain.radius)
    assert (ident.counts[:, 0] > 0).all(), "the identity must err sometimes for the comparison to mean something"

    gaussian_denoisers = [
        OneStepDenoiser(exact_score(mu), noise),
        MultiStepDenoiser(exact_score(mu), noise, ladder=[0.25, 0.1], steps_per_level=2, step_size=5e-3),
    ]
    for den in gaussian_denoisers:
        assert not den.training  # starts in eval mode: SmoothedClassifier has nothing to switch
        cert = certify(Denoised(clf, den, clamp=False), noise)
        again = certify(Denoised(clf, den, clamp=False), noise)
        assert torch.equal(cert.counts, again.counts) and torch.equal(cert.radius, again.radius)
        assert cert.counts.sum(1).tolist() == [100] * 3
        # With the exact score both denoisers map mu + delta to mu + c delta with 0 < c <= 1 (posterior
        # mean; linear MAP iterates), so on the same draws every draw the identity classifies right the
        # denoised model classifies right too: at least as many votes for the true class, here more.
        assert (cert.counts[:, 1] >= ident.counts[:, 1]).all()
        assert cert.counts[:, 1].sum() > ident.counts[:, 1].sum()

    # Smoke: a DnCNN and a Laplace multi-step denoiser under Laplace smoothing are deterministic too.
    for den, smoothing in ((build_denoiser("dncnn", in_channels=1, depth=3, width=8).eval(), noise),
                           (MultiStepDenoiser(exact_score(mu), laplace, ladder=[0.25, 0.1], steps_per_level=2,
                                              step_size=1e-3), laplace)):
        cert = certify(Denoised(clf, den), smoothing)
        again = certify(Denoised(clf, den), smoothing)
        assert torch.equal(cert.counts, again.counts) and torch.equal(cert.prediction, again.prediction)
        assert cert.counts.sum(1).tolist() == [100] * 3
        smoothed = SmoothedClassifier(Denoised(clf, den), noise=smoothing, num_classes=2)
        assert torch.equal(smoothed.predict(x, n=50, alpha=0.01, batch_size=50, generator=2),
                           smoothed.predict(x, n=50, alpha=0.01, batch_size=50, generator=2))


def test_smoothing_with_another_noise_than_the_denoiser_warns() -> None:
    clf = LinearBinary(torch.ones(16), b=-8.0).eval()
    mu = torch.full((1, 4, 4), 0.5)
    gauss, laplace = get_noise("gaussian", sigma=0.25), get_noise("laplace", sigma=0.25)
    multi = MultiStepDenoiser(exact_score(mu), laplace, ladder=[0.25, 0.1], steps_per_level=2, step_size=1e-3)
    with pytest.warns(UserWarning, match="made for laplace noise sigma 0.25, but smoothing uses gaussian noise"):
        SmoothedClassifier(Denoised(clf, multi), noise=gauss, num_classes=2)
    with pytest.warns(UserWarning, match="made for gaussian noise sigma 0.5, but smoothing uses gaussian noise sigma"):
        SmoothedClassifier(Denoised(clf, OneStepDenoiser(exact_score(mu), 0.5)), noise=gauss, num_classes=2)
    dncnn = build_denoiser("dncnn", in_channels=1, depth=3, width=8).eval()
    # What a DnCNN was trained for is passed explicitly (trained_noise(meta) of its checkpoint).
    with pytest.warns(UserWarning, match="DnCNN.*made for uniform noise sigma 0.25"):
        SmoothedClassifier(Denoised(clf, dncnn, trained_for=get_noise("uniform", sigma=0.25)), noise=gauss,
                           num_classes=2)
    # trained_for overrides what a NoiseAware denoiser says of itself.
    with pytest.warns(UserWarning, match="made for uniform noise"):
        SmoothedClassifier(Denoised(clf, multi, trained_for=get_noise("uniform", sigma=0.25)), noise=laplace,
                           num_classes=2)
    with pytest.raises(TypeError, match="trained_for"):
        Denoised(clf, dncnn, trained_for="gaussian")  # type: ignore[arg-type]

    class OwnNoiseAware(nn.Module):  # any base with the method is NoiseAware: no inheritance needed
        def forward(self, x):
            return clf(x)

        def noise_mismatch(self, noise):
            return "" if noise.name == "gaussian" else "only gaussian, please"

    assert isinstance(OwnNoiseAware(), NoiseAware) and not isinstance(clf, NoiseAware)
    with pytest.warns(UserWarning, match="only gaussian, please"):
        SmoothedClassifier(OwnNoiseAware().eval(), noise=laplace, num_classes=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matched noises, or a denoiser that records none: silent
        SmoothedClassifier(Denoised(clf, multi), noise=laplace, num_classes=2)
        SmoothedClassifier(Denoised(clf, OneStepDenoiser(exact_score(mu), gauss)), noise=gauss, num_classes=2)
        SmoothedClassifier(Denoised(clf, nn.Identity()).eval(), noise=gauss, num_classes=2)
        SmoothedClassifier(Denoised(clf, dncnn), noise=gauss, num_classes=2)  # nothing known: nothing to say
        SmoothedClassifier(Denoised(clf, dncnn, trained_for=gauss), noise=gauss, num_classes=2)
        SmoothedClassifier(OwnNoiseAware().eval(), noise=gauss, num_classes=2)


def test_score_denoisers_warn_outside_the_training_ladder() -> None:
    mu = torch.full((1, 4, 4), 0.5)
    gauss = get_noise("gaussian", sigma=0.25)
    with pytest.warns(UserWarning, match="1 above the score network's largest trained level 0.5"):
        OneStepDenoiser(exact_score(mu), 1.0, training_ladder=[0.5, 0.1])
    with pytest.warns(UserWarning, match="0.05 below its smallest trained level 0.1"):
        MultiStepDenoiser(exact_score(mu), gauss, ladder=[0.25, 0.05], steps_per_level=1, step_size=1e-3,
                          training_ladder=[0.5, 0.1])
    score = build_denoiser("scorenet", in_channels=1, width=8, emb_dim=16)
    with pytest.warns(UserWarning, match="above the score network's largest trained level"):
        OneStepDenoiser(score, 0.75, training_ladder=[0.5, 0.1])  # meta.ladder, passed explicitly
    score.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        den = OneStepDenoiser(score, gauss, training_ladder=[0.5, 0.1])  # inside the ladder
        OneStepDenoiser(score, 0.75)  # an unknown ladder is never a warning
        OneStepDenoiser(exact_score(mu), 5.0)
        MultiStepDenoiser(score, gauss, ladder=[0.25, 0.1], steps_per_level=1, step_size=1e-3)
    assert not den.training and not score.training  # starts in eval mode, the score network too


def test_hyperparameters_are_keyword_only_and_seeds_may_be_ints() -> None:
    mu, x = gaussian_data(8)
    score = exact_score(mu)
    with pytest.raises(TypeError):
        sigma_ladder(1.0, 0.1, 3)  # type: ignore[misc]
    with pytest.raises(TypeError):
        tweedie_denoise(score, x, 0.5)  # type: ignore[misc]
    with pytest.raises(TypeError):
        level_step_sizes([1.0, 0.1], 0.01)  # type: ignore[misc]
    with pytest.raises(TypeError):
        dsm_loss(score, x, [1.0, 0.1])  # type: ignore[misc]
    with pytest.raises(TypeError, match="Gaussian noise or its sigma"):
        OneStepDenoiser(score, "0.5")  # type: ignore[arg-type]
    # An int seed is a generator on the input's device seeded with it.
    assert dsm_loss(score, x, ladder=[1.0, 0.1], generator=5).item() == dsm_loss(
        score, x, ladder=[1.0, 0.1], generator=torch.Generator().manual_seed(5)).item()
    den = build_denoiser("dncnn", in_channels=1, depth=3, width=8)
    noise = get_noise("gaussian", sigma=0.25)
    mse = get_denoiser_loss("mse")
    xf = x.float()
    assert mse.loss(den, xf, None, noise=noise, generator=3).item() == mse.loss(
        den, xf, None, noise=noise, generator=torch.Generator().manual_seed(3)).item()
    clf = nn.Linear(16, 3)
    z = torch.rand(4, 16)
    target = torch.tensor([0, 1, 2, 0])
    grads = []
    for gen in (7, torch.Generator().manual_seed(7)):
        zq = z.clone().requires_grad_(True)
        zeroth_order_cross_entropy(clf, zq, target, queries=4, mu=1e-3, generator=gen).sum().backward()
        grads.append(zq.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_test_dsm_restores_the_mode_and_uint8_datasets_are_scaled() -> None:
    from smoothcert.denoise.train import _test_dsm

    score = build_denoiser("scorenet", in_channels=1, width=8, emb_dim=16)
    images = torch.rand(8, 1, 8, 8)
    for mode in (True, False):
        score.train(mode)
        _test_dsm(score, images, [0.5, 0.1], seed=0)
        assert score.training is mode
    # A dataset of uint8 images is divided by 255 on the DataLoader path, as iter_batches does.
    raw = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    clamp = nn.Hardtanh(0.0, 1.0)  # a denoiser that only clips: on 0..255 images its PSNR would collapse
    noise = get_noise("gaussian", sigma=0.25)
    as_bytes = denoising_psnr(clamp, torch.utils.data.TensorDataset(raw, torch.zeros(8, dtype=torch.long)),
                              noise=noise)
    assert as_bytes == pytest.approx(denoising_psnr(clamp, raw.float().div_(255), noise=noise), rel=1e-12)
    assert as_bytes > 12.0  # noisy PSNR at sigma 0.25 is 12 dB; clipping only helps


# ---------------------------------------------------------------- nothing noted on users' modules


def test_training_and_loading_note_nothing_on_the_network(tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    den = build_denoiser("dncnn", in_channels=1, depth=3, width=8)
    score = build_denoiser("scorenet", in_channels=1, width=8, emb_dim=16)
    attrs = {"dncnn": sorted(vars(den)), "score": sorted(vars(score))}
    meta = DenoiserMeta(arch="dncnn", arch_kwargs={"depth": 3, "width": 8}, dataset="embedded", in_channels=1,
                        input_size=8)
    train_denoiser(den, x, noise=get_noise("gaussian", sigma=0.25), epochs=1, batch_size=8,
                   checkpoint=tmp_path / "d.pt", meta=meta)
    train_denoiser(score, x, loss="dsm", ladder=[0.5, 0.1], epochs=1, batch_size=8)
    assert sorted(vars(den)) == attrs["dncnn"] and sorted(vars(score)) == attrs["score"]
    loaded, got = load_denoiser(tmp_path / "d.pt")
    assert sorted(vars(loaded)) == attrs["dncnn"]
    assert trained_noise(got) == get_noise("gaussian", sigma=0.25)
    wrapped = OneStepDenoiser(score, 0.25, training_ladder=[0.5, 0.1])
    assert sorted(vars(score)) == attrs["score"] and wrapped.noise == get_noise("gaussian", sigma=0.25)
    with pytest.warns(DeprecationWarning, match="record_training"):
        record_training(den, noise=get_noise("laplace", sigma=0.5))
    assert "noise" not in vars(den)


# ---------------------------------------------------------------- checkpoints written before the refactor


LEGACY = Path(__file__).parent / "data" / "legacy"


def test_legacy_denoiser_checkpoints_load_denoise_and_warn() -> None:
    net, meta = load_denoiser(LEGACY / "dncnn.pt")
    assert (meta.kind, meta.noise, meta.sigma) == ("denoiser", "gaussian", 0.25)
    gauss, wider = get_noise("gaussian", sigma=0.25), get_noise("gaussian", sigma=0.5)
    y = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        out = denoiser_for_noise(net, meta, gauss)(y)
    assert out.shape == y.shape and torch.isfinite(out).all() and not torch.equal(out, y)
    clf = LinearBinary(torch.ones(28 * 28), b=-392.0).eval()
    with pytest.warns(UserWarning, match="trained for gaussian noise sigma 0.25; smoothing uses gaussian sigma 0.5"):
        den = denoiser_for_noise(net, meta, wider)
    with pytest.warns(UserWarning, match=r"DnCNN\) is made for gaussian noise sigma 0.25, but smoothing uses gaussian"):
        SmoothedClassifier(Denoised(clf, den, trained_for=trained_noise(meta)), noise=wider, num_classes=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SmoothedClassifier(Denoised(clf, net, trained_for=trained_noise(meta)), noise=gauss, num_classes=2)

    score, smeta = load_denoiser(LEGACY / "score.pt")
    assert smeta.kind == "score" and trained_noise(smeta) is None
    assert smeta.ladder == pytest.approx([1.0, 0.1 ** 0.5, 0.1])
    for noise in (gauss, get_noise("laplace", sigma=0.25), get_noise("uniform", sigma=0.25)):
        d = denoiser_for_noise(score, smeta, noise)
        with torch.no_grad():
            out = d(y)
        assert out.shape == y.shape and torch.isfinite(out).all()
        with pytest.warns(UserWarning, match=f"made for {noise.name} noise sigma 0.25, but smoothing uses gaussian"):
            SmoothedClassifier(Denoised(clf, d), noise=wider, num_classes=2)
    with pytest.warns(UserWarning, match="above the score network's largest trained level 1"):
        denoiser_for_noise(score, smeta, get_noise("laplace", sigma=2.0))
    with pytest.warns(UserWarning, match="below its smallest trained level 0.1"):
        denoiser_for_noise(score, smeta, gauss, mode="multi-step", ladder=[0.25, 0.05])
