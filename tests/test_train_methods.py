"""Training methods: every registered loss on a tiny problem, exact terms on fixed logits, schedules, CLI."""

import hashlib
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from smoothcert.cli import main
from smoothcert.data import get_dataset
from smoothcert.models import CheckpointMeta, build_model, load_checkpoint, read_checkpoint
from smoothcert.noise import get_noise
from smoothcert.train import (
    GaussianAugmentation,
    TrainConfig,
    consistency_loss,
    get_method,
    list_methods,
    macer_terms,
    smoothadv_examples,
    soft_margin,
    stability_loss,
    train,
)
from smoothcert.train import smoothadv as smoothadv_module
from smoothcert.models.sll import BackboneHead, LipschitzFlatten, LipschitzSequential, NormalizedLinear, SLLLinear
from smoothcert.train.methods import METHODS
from smoothcert.train.smoothadv import warmup_eps

#: Cheap settings per method (defaults are the papers' and cost m x steps forward passes).
FAST = {
    "smoothadv": {"eps": 0.5, "steps": 2, "m": 2, "warmup": 1},
    "macer": {"m": 4},
    # Noise in feature space, so the loss depends on the noise stream like every other method's.
    "lipschitz-margin": {"epsilon": 0.1, "feature_noise": True},
    # The student starts as its own teacher, so the loss is mostly the gradient penalty; with the
    # default weight 0.1 its optimum lies too close to the start for the loss to halve.
    "heat": {"gamma": 1.0},
}

#: Methods that need a particular architecture: a factory for the 8x8 problem and the registered
#: architecture (with its keywords) for the tiny training runs. Others use ``_linear``/lenet-small.
NEEDS_ARCH = {
    "lipschitz-margin": (
        lambda k: BackboneHead(LipschitzSequential(LipschitzFlatten(), SLLLinear(64, 32), NormalizedLinear(64, 16)),
                               nn.Linear(16, k)),
        ("sll-small", {"width": 8, "features": 16}),
    ),
}


def _problem(seed: int = 0, n: int = 64, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """n images [1, 8, 8] in [0, 1]: k random prototypes plus pixel noise of std 0.15."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(k, 1, 8, 8, generator=g)
    y = torch.arange(n) % k
    return (protos[y] + 0.15 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1), y


def _linear(seed: int = 0, k: int = 4, *, method: str = "gaussian") -> nn.Module:
    torch.manual_seed(seed)
    if method in NEEDS_ARCH:
        return NEEDS_ARCH[method][0](k)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, k))


def _method(name: str, **extra):
    return get_method(name, **(FAST.get(name, {}) | extra))


GAUSS = get_noise("gaussian", sigma=0.25)


# ------------------------------------------------------------------ every registered method


@pytest.mark.parametrize("name", list_methods())
def test_loss_decreases_on_a_tiny_problem(name):
    x, y = _problem()
    model, method = _linear(method=name), _method(name)

    def loss_at_fixed_noise() -> float:
        return method.loss(model, x, y, noise=GAUSS, generator=torch.Generator().manual_seed(123))[0].item()

    before = loss_at_fixed_noise()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        loss, _ = method.loss(model, x, y, noise=GAUSS, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_at_fixed_noise()
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("name", list_methods())
def test_shapes_and_determinism(name):
    x, y = _problem(n=12)
    model, method = _linear(method=name), _method(name)
    loss, logits = method.loss(model, x, y, noise=GAUSS, generator=torch.Generator().manual_seed(5))
    assert loss.shape == () and torch.isfinite(loss) and loss.requires_grad
    assert logits.shape == (12, 4) and torch.isfinite(logits).all()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    again, logits2 = method.loss(model, x, y, noise=GAUSS, generator=torch.Generator().manual_seed(5))
    assert again.item() == loss.item()
    torch.testing.assert_close(logits2, logits, rtol=0, atol=0)
    other, _ = method.loss(model, x, y, noise=GAUSS, generator=torch.Generator().manual_seed(6))
    assert other.item() != loss.item()


@pytest.mark.parametrize("name", list_methods())
def test_hyperparameters_are_keyword_only_and_repr_shows_them(name):
    method = get_method(name)
    with pytest.raises(TypeError):
        METHODS.factory(name)(1)
    assert repr(method) == f"{type(method).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in method.hparams().items()) + ")"
    assert get_method(name, **method.hparams()).hparams() == method.hparams()


def _tiny_training(tmp_path, method, *, epochs=1, resume=False, name="m.pt"):
    data = get_dataset("embedded", split="train").subset(range(64))
    info = data.info
    torch.manual_seed(0)
    arch, arch_kwargs = NEEDS_ARCH[method.name][1] if method.name in NEEDS_ARCH else ("lenet-small", {})
    model = build_model(arch, num_classes=10, in_channels=1, mean=list(info.mean), std=list(info.std), **arch_kwargs)
    meta = CheckpointMeta(arch=arch, arch_kwargs=arch_kwargs, dataset="embedded", num_classes=10, in_channels=1,
                          input_size=28, mean=list(info.mean), std=list(info.std), noise="none", sigma=0.0)
    history = train(model, data, method=method, noise=GAUSS, meta=meta, checkpoint=tmp_path / name,
                    config=TrainConfig(epochs=epochs, batch_size=32, lr=0.01, gamma=0.5, step_size=7, seed=0),
                    resume=resume, progress=False)
    return history, tmp_path / name


@pytest.mark.parametrize("name", list_methods())
def test_hparams_round_trip_through_a_checkpoint(name, tmp_path):
    method = _method(name)
    history, path = _tiny_training(tmp_path, method)
    assert len(history) == 1 and math.isfinite(history[0]["loss"])
    _, saved = load_checkpoint(path)
    assert saved.training["method"] == name
    assert saved.training["hparams"] == method.hparams()
    # Method hyperparameters are nested, so TrainConfig's gamma/step_size do not overwrite them.
    assert saved.training["gamma"] == 0.5 and saved.training["step_size"] == 7
    rebuilt = get_method(saved.training["method"], **saved.training["hparams"])
    assert repr(rebuilt) == repr(method)


def test_resume_refuses_other_method_hparams(tmp_path):
    _tiny_training(tmp_path, get_method("consistency", m=2))
    with pytest.raises(ValueError, match="cannot resume"):
        _tiny_training(tmp_path, get_method("consistency", m=3), epochs=2, resume=True)


@pytest.mark.parametrize(
    ("name", "hparams", "match"),
    [
        ("consistency", {"m": 1}, "m must be an integer >= 2"),
        ("consistency", {"m": 2.0}, "m must be an integer"),
        ("consistency", {"lbd": -1.0}, "lbd must be"),
        ("consistency", {"eta": float("nan")}, "eta must be"),
        ("consistency", {"xent": True}, "method 'consistency' has no hyperparameter 'xent'"),
        ("stability", {"lbd": -1.0}, "lbd must be"),
        ("stability", {"xent": 1}, "xent must be True or False"),
        ("stability", {"clean": "yes"}, "clean must be True or False"),
        ("stability", {"clean": True, "xent": 1}, "xent must be True or False"),
        ("smoothadv", {"eps": 0.0}, "eps must be a finite number > 0"),
        ("smoothadv", {"steps": 0}, "steps must be"),
        ("smoothadv", {"m": True}, "m must be an integer"),
        ("smoothadv", {"warmup": -1}, "warmup must be"),
        ("smoothadv", {"attack": "fgsm"}, "attack must be one of"),
        ("smoothadv", {"step_size": -0.1}, "step_size must be"),
        ("macer", {"beta": 0.0}, "beta must be"),
        ("macer", {"gamma": float("inf")}, "gamma must be"),
        ("macer", {"lbd": -2}, "lbd must be"),
        ("macer", {"m": 0}, "m must be"),
        ("macer", {"deferred": 1.5}, "deferred must be"),
    ],
)
def test_invalid_hparams_raise(name, hparams, match):
    with pytest.raises(ValueError, match=match):
        get_method(name, **hparams)


# ------------------------------------------------------------------ stability / consistency


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


LOGITS = np.array([[[2.0, 0.5, -1.0], [0.0, 1.0, 0.3], [3.0, -2.0, 0.0]],
                   [[1.0, 1.5, -0.5], [0.2, 0.1, 2.0], [2.5, -1.0, 0.5]]])  # [m=2, B=3, K=3]
LABELS = np.array([0, 1, 0])


def test_consistency_loss_equals_a_hand_computation():
    log_p = _log_softmax(LOGITS)
    p = np.exp(log_p)
    p_hat = p.mean(0)
    ce = -np.mean([log_p[i, b, LABELS[b]] for i in range(2) for b in range(3)])
    kl = np.mean([(p_hat[b] * (np.log(p_hat[b]) - log_p[i, b])).sum() for i in range(2) for b in range(3)])
    ent = np.mean([-(p_hat[b] * np.log(p_hat[b])).sum() for b in range(3)])
    got = consistency_loss(torch.tensor(LOGITS), torch.tensor(LABELS), lbd=10.0, eta=0.5)
    assert got.item() == pytest.approx(ce + 10.0 * kl + 0.5 * ent, rel=1e-6)


def test_stability_loss_equals_a_hand_computation():
    clean = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [2.0, 0.0, 1.0]])
    log_c = _log_softmax(clean)
    log_p = _log_softmax(LOGITS)
    ce = -np.mean([log_c[b, LABELS[b]] for b in range(3)])
    kl = np.mean([(np.exp(log_c[b]) * (log_c[b] - log_p[i, b])).sum() for i in range(2) for b in range(3)])
    got = stability_loss(torch.tensor(clean), torch.tensor(LOGITS), torch.tensor(LABELS), lbd=2.0)
    assert got.item() == pytest.approx(ce + 2.0 * kl, rel=1e-6)
    assert got.dtype == torch.float64  # float64 logits are not narrowed
    # Jeong & Shin's train_stab.py: the cross-entropy -Σ p(x) log p(x + delta_i) in place of the KL.
    xent = np.mean([-(np.exp(log_c[b]) * log_p[i, b]).sum() for i in range(2) for b in range(3)])
    got = stability_loss(torch.tensor(clean), torch.tensor(LOGITS), torch.tensor(LABELS), lbd=2.0, xent=True)
    assert got.item() == pytest.approx(ce + 2.0 * xent, rel=1e-6)
    assert consistency_loss(torch.tensor(LOGITS), torch.tensor(LABELS), lbd=1.0, eta=0.5).dtype == torch.float64


class FixedLogits(nn.Module):
    """Ignores its input (and so the noise): example b of a batch gets ``table[b]``; copies are
    stacked copy-major ([m·B, ...]), so row i·B + b gets ``table[b]`` too."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone().float())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.table.repeat(z.shape[0] // len(self.table), 1)


def test_stability_method_wires_the_losses():
    table = torch.tensor(LOGITS[0], dtype=torch.float32)
    x, y = torch.zeros(3, 1, 2, 2), torch.tensor(LABELS)
    p = torch.softmax(table.double(), -1)
    ce = torch.nn.functional.cross_entropy(table.double(), y).item()
    ent = -(p * p.log()).sum(-1).mean().item()
    # Noise-blind model: the copies agree, so the KL terms vanish and only CE + eta·H(p̂) is left.
    loss, logits = get_method("consistency", m=3, eta=0.5).loss(FixedLogits(table), x, y, noise=GAUSS, generator=None)
    assert loss.item() == pytest.approx(ce + 0.5 * ent, rel=1e-6)
    torch.testing.assert_close(logits, torch.log_softmax(table, -1))
    # Stability training, KL form: clean and noisy predictions agree, only CE is left.
    loss, _ = get_method("stability", xent=False).loss(FixedLogits(table), x, y, noise=GAUSS, generator=None)
    assert loss.item() == pytest.approx(ce, rel=1e-6)
    # The default cross-entropy form keeps lbd·H(p) (Jeong & Shin's baseline): KL = 0, H(p, p) = H(p).
    loss, _ = get_method("stability").loss(FixedLogits(table), x, y, noise=GAUSS, generator=None)
    assert loss.item() == pytest.approx(ce + 2.0 * ent, rel=1e-6)


def test_consistency_and_stability_are_two_methods_with_their_papers_defaults():
    from smoothcert.train import ConsistencyRegularization, StabilityTraining

    consistency, stability = get_method("consistency"), get_method("stability")
    assert isinstance(consistency, ConsistencyRegularization) and isinstance(stability, StabilityTraining)
    assert consistency.hparams() == {"m": 2, "lbd": 10.0, "eta": 0.5}  # Jeong & Shin 2020
    assert stability.hparams() == {"lbd": 2.0, "xent": True}  # Li et al. 2019, Jeong & Shin's baseline form
    assert {"consistency", "stability"} <= set(list_methods())


def test_a_checkpoint_saved_before_a_new_hyperparameter_resumes(tmp_path, monkeypatch):
    # Checkpoints written before xent existed record no xent: resuming fills in its default.
    from smoothcert.train.stability import StabilityTraining

    real = StabilityTraining.hparams
    monkeypatch.setattr(StabilityTraining, "hparams", lambda self: {k: v for k, v in real(self).items() if k != "xent"})
    _tiny_training(tmp_path, get_method("stability", xent=True))
    assert "xent" not in read_checkpoint(tmp_path / "m.pt")["meta"]["training"]["hparams"]
    monkeypatch.setattr(StabilityTraining, "hparams", real)
    history, path = _tiny_training(tmp_path, get_method("stability"), epochs=2, resume=True)
    assert len(history) == 2 and read_checkpoint(path)["meta"]["training"]["hparams"]["xent"] is True


# In smoothcert 0.1.0, "stability" was one method: consistency regularization by default, stability
# training with clean=True. These records are what that code wrote for each variant.
OLD_CONSISTENCY = {"m": 2, "lbd": 10.0, "eta": 0.5, "clean": False, "xent": False}
OLD_STABILITY = {"m": 1, "lbd": 2.0, "eta": 0.0, "clean": True, "xent": True}


def test_old_stability_records_read_as_the_two_methods():
    from smoothcert.train import method_record

    assert method_record("stability", OLD_CONSISTENCY) == ("consistency", {"m": 2, "lbd": 10.0, "eta": 0.5})
    assert method_record("stability", {"m": 3, "lbd": 20.0, "eta": 0.5, "clean": False}) == (  # before xent
        "consistency", {"m": 3, "lbd": 20.0, "eta": 0.5})
    assert method_record("stability", OLD_STABILITY | {"xent": False}) == ("stability", {"lbd": 2.0, "xent": False})
    assert method_record("stability", {"lbd": 2.0, "xent": True}) == ("stability", {"lbd": 2.0, "xent": True})
    # An old stability-training run with settings the method no longer has stays as recorded (resume refuses it).
    assert method_record("stability", OLD_STABILITY | {"m": 2}) == ("stability", OLD_STABILITY | {"m": 2})
    assert method_record("unregistered", {"a": 1}) == ("unregistered", {"a": 1})


def test_old_stability_settings_build_stability_training_or_point_to_consistency():
    with pytest.warns(FutureWarning, match="clean=True is no longer needed"):
        method = get_method("stability", clean=True, lbd=3.0)
    assert method.name == "stability" and method.hparams() == {"lbd": 3.0, "xent": True}
    with pytest.warns(FutureWarning):
        assert get_method("stability", **OLD_STABILITY).hparams() == {"lbd": 2.0, "xent": True}
    for old in ({"clean": False}, {"m": 2}, {"eta": 0.5}, OLD_CONSISTENCY):
        with pytest.raises(ValueError, match="is the method 'consistency'"):
            get_method("stability", **old)
    with pytest.raises(ValueError, match=r"get_method\('consistency', m=2, lbd=10.0, eta=0.5\)"):
        get_method("stability", **OLD_CONSISTENCY)
    with pytest.raises(ValueError, match="m and eta are hyperparameters of 'consistency'"):
        get_method("stability", clean=True, m=2)


def _rewrite_method_record(path, name, hparams):
    """Make a checkpoint look as if an older smoothcert had written it with this method record."""
    payload = read_checkpoint(path)
    payload["meta"]["training"] |= {"method": name, "hparams": hparams}
    torch.save(payload, path)


@pytest.mark.parametrize(("old", "now"), [(OLD_CONSISTENCY, "consistency"), (OLD_STABILITY, "stability")])
def test_a_checkpoint_of_the_old_stability_method_resumes_under_its_new_name(tmp_path, old, now):
    new = get_method(now)
    history, path = _tiny_training(tmp_path, new)
    _rewrite_method_record(path, "stability", old)
    resumed, path = _tiny_training(tmp_path, get_method(now), epochs=2, resume=True)
    assert [h["epoch"] for h in resumed] == [1, 2] and resumed[0] == history[0]
    training = read_checkpoint(path)["meta"]["training"]
    assert training["method"] == now and training["hparams"] == new.hparams()  # written under the new name
    # The other method may not continue it.
    _rewrite_method_record(path, "stability", old)
    other = get_method("stability" if now == "consistency" else "consistency")
    with pytest.raises(ValueError, match="cannot resume"):
        _tiny_training(tmp_path, other, epochs=3, resume=True)


# ------------------------------------------------------------------ macer


def _macer_by_hand(table: np.ndarray, y: np.ndarray, *, sigma, beta, gamma) -> tuple[float, float, list[float]]:
    """(classification, robustness, per-example hinge) for logits ``table`` [m, B, K] in float64 with scipy."""
    b = table.shape[1]
    g = np.exp(_log_softmax(table)).mean(0)
    classification = -np.mean(np.log(g[np.arange(b), y]))
    g_beta = np.exp(_log_softmax(beta * table)).mean(0)
    hinges = []
    for j in range(b):
        order = np.argsort(-g_beta[j])
        if order[0] != y[j]:
            hinges.append(0.0)
            continue
        xi = norm.ppf(g_beta[j, order[0]]) - norm.ppf(g_beta[j, order[1]])
        hinges.append(gamma - xi if 0 <= xi <= gamma else 0.0)
    return classification, sigma / 2 * sum(hinges) / b, hinges


def test_macer_terms_equal_a_hand_computation():
    # beta = 2 keeps Ĝβ away from 0 and 1, so ξ is well inside [0, gamma] for the correct examples.
    y = np.array([0, 0, 0])  # example 1 is misclassified: Ĝβ's top class is 2
    terms = macer_terms(torch.tensor(LOGITS), torch.tensor(y), sigma=0.5, beta=2.0, gamma=8.0)
    cl, rob, hinges = _macer_by_hand(LOGITS, y, sigma=0.5, beta=2.0, gamma=8.0)
    assert hinges[0] > 0 and hinges[2] > 0 and hinges[1] == 0.0  # the case mix this test is about
    assert terms.classification.item() == pytest.approx(cl, rel=1e-6)
    assert terms.robustness.item() == pytest.approx(rob, rel=1e-5)


def test_soft_margin_equals_a_hand_computation_for_every_example():
    # ξ is reported for misclassified examples too (with correct = False), as the diagnostics read it.
    y = np.array([0, 0, 0])
    margin = soft_margin(torch.tensor(LOGITS), torch.tensor(y), beta=2.0)
    g_beta = np.exp(_log_softmax(2.0 * LOGITS)).mean(0)
    top2 = np.sort(g_beta, axis=-1)[:, ::-1][:, :2]
    np.testing.assert_allclose(margin.xi.numpy(), norm.ppf(top2[:, 0]) - norm.ppf(top2[:, 1]), rtol=1e-5)
    assert margin.correct.tolist() == (g_beta.argmax(-1) == y).tolist() == [True, False, True]
    assert margin.unsaturated.all()
    saturated = soft_margin(torch.tensor([[[60.0, 0.0, -5.0]]]), torch.tensor([0]), beta=16.0)
    assert not saturated.unsaturated.item() and torch.isfinite(saturated.xi).all()


def test_macer_radius_term_through_a_model_with_known_outputs():
    table = torch.tensor([[3.0, 0.0, 0.5], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0], [0.1, 0.0, 0.2]])
    y = torch.tensor([0, 1, 0, 2])  # example 2 misclassified (top class 2); example 3 barely correct
    x = torch.rand(4, 1, 2, 2)
    noise = get_noise("gaussian", sigma=0.5)
    method = get_method("macer", m=3, beta=1.0, gamma=8.0, lbd=12.0)
    loss, logits = method.loss(FixedLogits(table), x, y, noise=noise, generator=torch.Generator().manual_seed(0))
    cl, rob, hinges = _macer_by_hand(table.double().numpy()[None], y.numpy(), sigma=0.5, beta=1.0, gamma=8.0)
    assert hinges[2] == 0.0 and all(h > 0 for h in (hinges[0], hinges[1], hinges[3]))
    assert loss.item() == pytest.approx(cl + 12.0 * rob, rel=1e-5)
    torch.testing.assert_close(logits, torch.log_softmax(table, -1))


def test_macer_radius_term_is_zero_when_every_input_is_misclassified():
    table = torch.tensor(LOGITS)
    y = torch.tensor([2, 0, 1])  # never the top class of Ĝβ
    terms = macer_terms(table, y, sigma=1.0, beta=16.0, gamma=8.0)
    assert terms.robustness.item() == 0.0
    # The hinge is also flat beyond gamma: a confidently correct input contributes nothing.
    confident = torch.tensor([[[30.0, 0.0, 0.0]]])
    assert macer_terms(confident, torch.tensor([0]), sigma=1.0, beta=16.0, gamma=8.0).robustness.item() == 0.0


def test_macer_leaves_saturated_examples_out_and_stays_finite():
    # Examples 0 and 1 saturate at beta = 16 (the other classes' mass underflows float32), where the
    # official code's Φ⁻¹ is ±inf and the example is dropped; example 2 does not (ξ ≈ 6.2).
    table = torch.tensor([[[60.0, 0.0, -5.0], [0.0, 9.0, 0.0], [0.0, 1.0, 0.5]]], requires_grad=True)
    y = torch.tensor([0, 1, 1])
    for gamma in (8.0, 30.0, 100.0):  # a large gamma would take in a clamped, artificial ξ ≈ 22.8
        terms = macer_terms(table, y, sigma=0.25, beta=16.0, gamma=gamma)
        _, rob, hinges = _macer_by_hand(table.detach().double().numpy()[:, 2:], y.numpy()[2:], sigma=0.25,
                                        beta=16.0, gamma=gamma)
        assert hinges[0] > 0  # the unsaturated example contributes ...
        assert terms.robustness.item() == pytest.approx(rob / 3, rel=1e-4)  # ... and only it (B = 3)
        table.grad = None
        terms.robustness.backward()
        assert torch.isfinite(table.grad).all()
        assert torch.equal(table.grad[0, :2], torch.zeros(2, 3)) and table.grad[0, 2].abs().sum() > 0
    table.grad = None
    macer_terms(table, y, sigma=0.25, beta=16.0, gamma=100.0).classification.backward()
    assert torch.isfinite(table.grad).all()


def test_macer_refuses_non_gaussian_noise():
    x, y = _problem(n=4)
    with pytest.raises(ValueError, match="Gaussian"):
        get_method("macer", m=2).loss(_linear(), x, y, noise=get_noise("laplace", sigma=0.25), generator=None)


def test_methods_return_the_log_mean_softmax_of_their_copies_in_float64_for_a_float64_model():
    x, y = _problem(n=6)
    for name in list_methods():
        model = _linear(method=name).double()
        loss, logits = _method(name).loss(model, x.double(), y, noise=GAUSS, generator=torch.Generator().manual_seed(0))
        assert loss.dtype == torch.float64 and logits.dtype == torch.float64, name
        if name not in ("gaussian", "lipschitz-margin"):  # those two return the base model's logits  # the others return log-probabilities of the smoothed soft classifier
            torch.testing.assert_close(logits.exp().sum(1), torch.ones(6, dtype=torch.float64))


def test_macer_deferred_switches_the_radius_term_on():
    method = get_method("macer", deferred=2)
    method.begin_epoch(1, 10)
    assert method.lbd_t == 0.0
    method.begin_epoch(2, 10)
    assert method.lbd_t == method.lbd == 12.0


# ------------------------------------------------------------------ smoothadv


def test_smoothadv_warmup_schedule():
    assert [warmup_eps(1.0, epoch=e, warmup=4) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_eps(0.5, epoch=0, warmup=1) == warmup_eps(0.5, epoch=0, warmup=0) == 0.5
    with pytest.raises(TypeError):
        warmup_eps(1.0, 0, 4)  # keyword-only: epoch and warmup are easily swapped
    method = get_method("smoothadv", eps=0.5, warmup=10)
    assert method.eps_t == 0.5  # full budget until a training loop sets the epoch
    method.begin_epoch(0, 90)
    assert method.eps_t == pytest.approx(0.05)
    method.begin_epoch(4, 90)
    assert method.eps_t == pytest.approx(0.25)
    method.begin_epoch(50, 90)
    assert method.eps_t == 0.5


def test_smoothadv_attacks_with_the_scheduled_eps_and_the_same_draws(monkeypatch):
    seen = {}
    real = smoothadv_module.smoothadv_examples

    def spy(model, x, y, deltas, **kw):
        seen.update(kw, deltas=deltas.clone())
        return real(model, x, y, deltas, **kw)

    monkeypatch.setattr(smoothadv_module, "smoothadv_examples", spy)
    x, y = _problem(n=8)
    method = get_method("smoothadv", eps=1.0, warmup=4, m=3, steps=2)
    method.begin_epoch(1, 10)
    method.loss(_linear(), x, y, noise=GAUSS, generator=torch.Generator().manual_seed(0))
    assert seen["eps"] == 0.5 and seen["steps"] == 2 and seen["attack"] == "pgd"
    expected = GAUSS.sample((3, *x.shape), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen["deltas"], expected, rtol=0, atol=0)


@pytest.mark.parametrize("attack", ["pgd", "ddn"])
def test_smoothadv_examples_stay_within_eps(attack):
    x, y = _problem(n=16)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    model.train()
    deltas = GAUSS.sample((2, *x.shape), generator=torch.Generator().manual_seed(0))
    eps = 0.3
    x_adv = smoothadv_examples(model, x, y, deltas, eps=eps, steps=5, attack=attack)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    dist = (x_adv - x).flatten(1).norm(dim=1)
    assert (dist <= eps + 1e-5).all() and dist.max() > 0.5 * eps

    model.eval()
    with torch.no_grad():
        from smoothcert.attacks import smoothed_log_probs

        def smoothed_loss(z):
            return torch.nn.functional.nll_loss(smoothed_log_probs(model, z, deltas), y)

        assert smoothed_loss(x_adv) > smoothed_loss(x)


def test_smoothadv_examples_refuse_an_unknown_attack():
    x, y = _problem(n=2)
    with pytest.raises(ValueError, match="attack must be one of"):
        smoothadv_examples(_linear(), x, y, torch.zeros(1, *x.shape), eps=0.1, steps=1, attack="cw")


# ------------------------------------------------------------------ the loop's epoch hook


class Spy(GaussianAugmentation):
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        self.calls.append((epoch, epochs))


def test_begin_epoch_is_called_every_epoch_and_after_resume(tmp_path):
    first = Spy()
    _tiny_training(tmp_path, first, epochs=2)
    assert first.calls == [(0, 2), (1, 2)]
    resumed = Spy()
    _tiny_training(tmp_path, resumed, epochs=4, resume=True)
    assert resumed.calls == [(2, 4), (3, 4)]


# ------------------------------------------------------------------ command line

BASE = ["train", "--dataset", "embedded", "--sigma", "0.25", "--batch", "32", "--limit", "64", "--quiet",
        "--device", "cpu"]
TRAIN = [*BASE, "--lr", "0.01", "--epochs", "1"]
#: A vanishing step: the weights stay (to 1e-6) where --init put them.
STILL = [*BASE, "--lr", "1e-12", "--momentum", "0", "--weight-decay", "0"]

def test_cli_hparam_sets_and_records_method_hyperparameters(tmp_path):
    out = tmp_path / "s.pt"
    assert main([*TRAIN, "--arch", "lenet-small", "--method", "consistency", "--hparam", "m=3",
                 "--hparam", "lbd=2", "--out", str(out)]) == 0
    training = read_checkpoint(out)["meta"]["training"]
    assert training["method"] == "consistency"
    assert training["hparams"] == {"m": 3, "lbd": 2.0, "eta": 0.5}


def test_cli_old_stability_settings(tmp_path, capsys):
    out = tmp_path / "s.pt"
    with pytest.warns(FutureWarning):
        assert main([*TRAIN, "--arch", "lenet-small", "--method", "stability", "--hparam", "clean=true",
                     "--out", str(out)]) == 0
    training = read_checkpoint(out)["meta"]["training"]
    assert training["method"] == "stability" and training["hparams"] == {"lbd": 2.0, "xent": True}
    for hparam in ("m=3", "clean=false", "eta=0.5"):
        assert main([*TRAIN, "--method", "stability", "--hparam", hparam, "--out", str(tmp_path / "x.pt")]) == 2
        assert "--method consistency" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize(
    ("hparam", "message"),
    [
        ("epsilon=0.5", "no hyperparameter 'epsilon'; its hyperparameters (defaults): eps=1.0, steps=10"),
        ("eps", "expects KEY=VALUE"),
        ("eps=-1", "eps must be a finite number > 0"),
        ("attack=fgsm", "attack must be one of"),
    ],
)
def test_cli_hparam_errors_are_clear(hparam, message, tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert main([*TRAIN, "--method", "smoothadv", "--hparam", hparam, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_init_fine_tunes_and_records_provenance(tmp_path, capsys):
    base = tmp_path / "base.pt"
    assert main([*TRAIN, "--arch", "lenet-small", "--out", str(base)]) == 0
    tuned = tmp_path / "tuned.pt"
    # No --arch: the checkpoint's is used (the dataset default would be lenet).
    assert main([*STILL, "--epochs", "1", "--init", str(base), "--out", str(tuned)]) == 0
    a, b = read_checkpoint(base), read_checkpoint(tuned)
    assert b["meta"]["arch"] == "lenet-small"
    init = b["meta"]["training"]["init"]
    assert init["path"] == str(base.resolve())
    assert init["sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    assert init["noise"] == "gaussian" and init["sigma"] == 0.25 and init["method"] == "gaussian"
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=1e-6)
    # Resuming the same command works (same --init, same record).
    assert main([*STILL, "--epochs", "2", "--init", str(base), "--out", str(tuned), "--resume"]) == 0
    assert read_checkpoint(tuned)["meta"]["epoch"] == 2

    # Another architecture is refused with a message that names both and the fix.
    assert main([*TRAIN, "--arch", "lenet", "--init", str(base), "--out", str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err
    assert "holds lenet-small" in err and "builds lenet" in err and "--arch lenet-small" in err
    assert main([*TRAIN, "--init", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "bad.pt")]) == 2
    assert "no checkpoint file" in capsys.readouterr().err


def test_cli_init_accepts_a_checkpoint_written_without_the_default_input_size(tmp_path, capsys):
    # The Python API builds lenet-small without input_size (the factory's default, 28); the CLI records
    # input_size=28. Same network: --init must take it. Another input size is another network.
    from smoothcert.models import model_kwargs, save_checkpoint

    assert model_kwargs("lenet-small", {}) == model_kwargs("lenet-small", {"input_size": 28})
    assert model_kwargs("lenet-small", {"input_size": 32}) != model_kwargs("lenet-small", {})
    info = get_dataset("embedded", split="train").info
    net = build_model("lenet-small", num_classes=10, in_channels=1, mean=list(info.mean), std=list(info.std))
    meta = CheckpointMeta(arch="lenet-small", dataset="embedded", num_classes=10, in_channels=1, input_size=28,
                          mean=list(info.mean), std=list(info.std), noise="gaussian", sigma=0.25)
    base = save_checkpoint(tmp_path / "api.pt", net, meta=meta)
    assert read_checkpoint(base)["meta"]["arch_kwargs"] == {}
    assert main([*STILL, "--epochs", "1", "--init", str(base), "--out", str(tmp_path / "tuned.pt")]) == 0
    other = build_model("lenet-small", num_classes=10, in_channels=1, mean=list(info.mean), std=list(info.std),
                        input_size=32)
    meta32 = CheckpointMeta(arch="lenet-small", arch_kwargs={"input_size": 32}, dataset="embedded", num_classes=10,
                            in_channels=1, input_size=32, mean=list(info.mean), std=list(info.std),
                            noise="gaussian", sigma=0.25)
    wrong = save_checkpoint(tmp_path / "s32.pt", other, meta=meta32)
    assert main([*STILL, "--epochs", "1", "--init", str(wrong), "--out", str(tmp_path / "bad.pt")]) == 2
    assert "Fine-tuning needs the same network" in capsys.readouterr().err
