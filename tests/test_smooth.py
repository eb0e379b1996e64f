"""SmoothedClassifier against exact answers from linear classifiers, plus its error handling."""

import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from linear import LinearBinary
from scipy.stats import norm as normal

from smoothcert import ABSTAIN, SmoothedClassifier, get_noise
from smoothcert.checks import as_batch
from smoothcert.engine import sample_counts, sample_mean_probs


def _model_and_inputs(d: int = 10, count: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    x = torch.rand(count, d, generator=g)
    # put the boundary through the middle of the data so both classes and many margins occur
    b = -float((x @ w).median())
    return LinearBinary(w, b), x


@pytest.mark.parametrize("name", ["gaussian", "laplace", "uniform"])
def test_certificates_never_exceed_the_true_radius(name):
    # Gaussian: any w (l2 radius is exact); Laplace/uniform: certify in l1, where the true
    # radius is |m| / ||w||_inf. alpha = 0.001 per input and 12 inputs under a fixed seed.
    model, x = _model_and_inputs()
    noise = get_noise(name, sigma=0.5)
    smoothed = SmoothedClassifier(model, noise=noise, num_classes=2)
    cert = smoothed.certify(x, n0=100, n=20_000, alpha=0.001, batch_size=4096, generator=1)
    true = model.true_radius(x, noise.default_norm)
    ok = cert.prediction != ABSTAIN
    assert ok.sum() >= 6
    assert torch.all(cert.prediction[ok] == model.label(x)[ok])
    assert torch.all(cert.radius <= true + 1e-9)


@pytest.mark.parametrize(
    ("name", "norm"), [("gaussian", "l2"), ("laplace", "l1"), ("uniform", "l1"), ("uniform", "linf")]
)
def test_certificates_approach_the_true_radius_at_large_n(name, norm):
    # Choose w and margins where each bound is tight: axis-aligned w for Laplace/uniform
    # (d = 1 for uniform linf), and margins giving pA around 0.8-0.98.
    d = 1 if norm == "linf" else 8
    w = torch.zeros(d)
    w[0] = 1.0
    noise = get_noise(name, sigma=0.5)
    model = LinearBinary(w, -0.5)
    x = torch.full((4, d), 0.5)
    x[:, 0] = torch.tensor([0.85, 0.9, 0.95, 1.0])
    smoothed = SmoothedClassifier(model, noise=noise, num_classes=2)
    cert = smoothed.certify(x, n0=100, n=200_000, alpha=0.001, batch_size=50_000, generator=3, norm=norm)
    true = model.true_radius(x, norm)
    assert torch.all(cert.radius <= true)
    assert torch.all(cert.radius >= 0.95 * true), (cert.radius, true)


def test_two_class_certificate_is_sound_and_close():
    model, x = _model_and_inputs()
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.5), num_classes=2)
    one = smoothed.certify(x, n0=100, n=50_000, alpha=0.001, batch_size=8192, generator=2)
    two = smoothed.certify(x, n0=100, n=50_000, alpha=0.001, batch_size=8192, generator=2, two_class=True)
    assert two.p_upper_b is not None and torch.all(two.p_upper_b >= 0)
    assert torch.all(two.radius <= model.true_radius(x, "l2") + 1e-9)
    # with two classes the Bonferroni split costs little: within 5% of the one-class radius
    both = (one.radius > 0.05) & (two.radius > 0)
    assert both.sum() >= 5
    assert torch.all((two.radius[both] / one.radius[both] - 1).abs() < 0.05)


def test_certify_coverage_over_many_independent_inputs():
    # 2000 copies of one input with pA = Phi(0.5) ~ 0.69 and n = 100 at alpha = 0.1: each copy
    # draws its own noise, so the copies are 2000 independent trials of CERTIFY. The rate of
    # certificates beyond the true radius must stay below alpha (+4 s.d. Monte Carlo error).
    sigma, margin = 1.0, 0.5
    model = LinearBinary(torch.tensor([1.0]), -0.25)
    x = torch.full((2000, 1), 0.25 + margin)
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=sigma), num_classes=2)
    cert = smoothed.certify(x, n0=10, n=100, alpha=0.1, batch_size=50_000, generator=5)
    too_big = (cert.radius > margin).double().mean().item()
    assert too_big <= 0.1 + 4 * math.sqrt(0.1 * 0.9 / 2000)
    assert 0.3 < (cert.prediction == 1).double().mean().item()  # and it does certify often


def test_predict_abstains_on_a_coin_flip_and_answers_a_clear_case():
    model = LinearBinary(torch.tensor([1.0, 0.0]), -0.5)
    coin = torch.tensor([[0.5, 0.3]]).repeat(20, 1)  # exactly on the boundary: pA = pB = 1/2
    clear = torch.tensor([[0.95, 0.3], [0.05, 0.3]])
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=2)
    pred = smoothed.predict(coin, n=1000, alpha=0.001, batch_size=4096, generator=0)
    assert torch.all(pred == ABSTAIN)
    pred = smoothed.predict(clear, n=1000, alpha=0.001, batch_size=4096, generator=0)
    assert pred.tolist() == [1, 0]


def test_seeded_runs_repeat_and_different_seeds_differ():
    model, x = _model_and_inputs()
    smoothed = SmoothedClassifier(model, noise=get_noise("laplace", sigma=0.5), num_classes=2)
    a = smoothed.certify(x, n0=50, n=500, alpha=0.01, batch_size=333, generator=11)
    b = smoothed.certify(x, n0=50, n=500, alpha=0.01, batch_size=333, generator=11)
    c = smoothed.certify(x, n0=50, n=500, alpha=0.01, batch_size=333, generator=12)
    assert torch.equal(a.counts, b.counts) and torch.equal(a.radius, b.radius)
    assert not torch.equal(a.counts, c.counts)


def test_counts_are_per_input_when_inputs_share_a_batch():
    # Inputs on opposite sides, far from the boundary: any mixing of counts between inputs
    # that share a batch would show up as the wrong class.
    model = LinearBinary(torch.tensor([1.0]), -0.5)
    x = torch.tensor([[0.0], [1.0], [0.0], [1.0], [0.0]])
    counts = sample_counts(model, x, noise=get_noise("gaussian", sigma=0.01), n=37, num_classes=2, batch_size=64)
    assert counts.tolist() == [[37, 0], [0, 37], [37, 0], [0, 37], [37, 0]]


def test_mean_probs_match_the_closed_form():
    # For logits (-m, m) the softmax of class 1 is sigmoid(2m); average over Gaussian noise.
    model = LinearBinary(torch.tensor([1.0]), 0.0)
    x = torch.tensor([[0.3]])
    probs = sample_mean_probs(model, x, noise=get_noise("gaussian", sigma=0.5), n=400_000, num_classes=2,
                              batch_size=100_000, generator=torch.Generator().manual_seed(0))
    z = torch.linspace(-8, 8, 200_001, dtype=torch.float64)
    expected = (torch.sigmoid(2 * (0.3 + 0.5 * z)) * torch.from_numpy(normal.pdf(z.numpy()))).sum() * (z[1] - z[0])
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert probs[0, 1].item() == pytest.approx(expected.item(), abs=2e-3)


def test_image_inputs_single_image_promotion_and_certificate_fields():
    torch.manual_seed(0)  # weights and input; the test must not depend on which tests ran before
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=3)
    cert = smoothed.certify(torch.rand(3, 2, 2), n0=10, n=200, alpha=0.01, batch_size=64, generator=0)
    assert len(cert) == 1 and cert.counts.shape == (1, 3) and cert.counts.sum().item() == 200
    # count_a counts the class chosen by the n0 selection draws, count_b the best other class of the
    # estimation draws: it may exceed count_a (then CERTIFY abstains), never their sum n.
    counts = cert.counts[0].tolist()
    assert cert.count_a.item() + cert.count_b.item() <= 200 and cert.count_a.item() in counts
    assert cert.count_b.item() in counts
    assert cert.seconds.item() > 0 and cert.norm == "l2" and cert.n == 200 and cert.n0 == 10
    assert "Gaussian(sigma=0.25)" in repr(smoothed)


# ---- bad input gets a clear error ----


@pytest.fixture
def smoothed():
    return SmoothedClassifier(torch.nn.Linear(4, 2).eval(), noise=get_noise("gaussian", sigma=0.25), num_classes=2)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.full((2, 4), float("nan")), "NaN or inf"),
        (torch.full((2, 4), 1.5), r"in \[0, 1\]"),
        (torch.ones(2, 4, dtype=torch.uint8), "floating-point"),
        (torch.ones(1, 1, 2, 2, 1), "shape"),
        ([[0.5] * 4], "torch.Tensor"),
    ],
)
def test_bad_inputs(smoothed, x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        smoothed.certify(x, n0=10, n=100, alpha=0.01, batch_size=8)


def test_unbounded_inputs_warn_when_allowed():
    s = SmoothedClassifier(torch.nn.Linear(4, 2).eval(), noise=get_noise("gaussian", sigma=0.25), num_classes=2,
                           allow_unbounded=True)
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        s.predict(torch.full((1, 4), 2.0), n=20, alpha=0.01, batch_size=8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n0": 100, "n": 100}, "n0"),
        ({"n0": 10, "n": 100, "alpha": 1.0}, "alpha"),
        ({"n0": 10, "n": 100, "alpha": 0.0}, "alpha"),
        ({"n0": 10, "n": 100, "norm": "l1"}, "supports: l2, linf"),
        ({"n0": 10, "n": 100, "batch_size": 0}, "batch_size"),
    ],
)
def test_bad_settings(smoothed, kwargs, match):
    args = {"alpha": 0.01, "batch_size": 8} | kwargs
    with pytest.raises(ValueError, match=match):
        smoothed.certify(torch.rand(1, 4), **args)


def test_too_few_samples_warns_with_the_smallest_useful_n(smoothed):
    with pytest.warns(UserWarning, match="n >= 10"):
        smoothed.certify(torch.rand(1, 4), n0=2, n=5, alpha=0.001, batch_size=8)


def test_train_mode_warns_and_switches_to_eval():
    model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Dropout(0.5))
    model.train()
    with pytest.warns(UserWarning, match="eval"):
        s = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=2)
    assert not model.training
    model.train()  # switched back behind our back: warn again at call time
    with pytest.warns(UserWarning, match="eval"):
        s.predict(torch.rand(1, 4), n=20, alpha=0.01, batch_size=8)
    assert not model.training


def test_wrong_number_of_logits(smoothed):
    s = SmoothedClassifier(torch.nn.Linear(4, 3).eval(), noise=get_noise("gaussian", sigma=0.25), num_classes=2)
    with pytest.raises(ValueError, match="num_classes=2"):
        s.predict(torch.rand(1, 4), n=20, alpha=0.01, batch_size=8)


def test_constructor_checks():
    with pytest.raises(TypeError, match="get_noise"):
        SmoothedClassifier(torch.nn.Linear(4, 2).eval(), noise="gaussian", num_classes=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision"):
        SmoothedClassifier(torch.nn.Linear(4, 2).eval(), noise=get_noise("gaussian", sigma=0.1), num_classes=2,
                           precision="int8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SmoothedClassifier(torch.nn.Linear(4, 2).eval(), noise=get_noise("gaussian", sigma=0.1), num_classes=2)


def test_bf16_precision_runs_on_cpu():
    model, x = _model_and_inputs()
    s = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.5), num_classes=2, precision="bf16")
    cert = s.certify(x, n0=20, n=2000, alpha=0.01, batch_size=512, generator=0)
    assert (cert.prediction != ABSTAIN).any()


def test_gaussian_linf_is_tight_along_the_all_ones_direction():
    # w = ones(d): the linf distance m/||w||_1 = m/d equals the l2 radius m/sqrt(d) divided by sqrt(d).
    d = 16
    model = LinearBinary(torch.ones(d), -d * 0.5)
    x = torch.full((3, d), 0.5) + torch.tensor([[0.05], [0.08], [0.12]])  # pA = 0.66 .. 0.83
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.5), num_classes=2)
    cert = smoothed.certify(x, n0=100, n=200_000, alpha=0.001, batch_size=50_000, generator=4, norm="linf")
    true = model.true_radius(x, "linf")
    assert torch.all(cert.radius <= true) and torch.all(cert.radius >= 0.95 * true)


def test_half_precision_model_at_fp32_setting():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).to(torch.bfloat16).eval()
    s = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=3)
    cert = s.certify(torch.rand(2, 4), n0=10, n=100, alpha=0.01, batch_size=64, generator=0)
    assert cert.counts.sum().item() == 200


def test_predict_warns_when_n_can_never_answer(smoothed):
    # two-sided p-value of n agreeing draws is 2 * 0.5^n: at alpha = 0.001 n must be >= 11
    with pytest.warns(UserWarning, match="n >= 11"):
        smoothed.predict(torch.rand(1, 4), n=10, alpha=0.001, batch_size=8)


def test_a_batch_without_its_channel_axis_is_refused_when_the_input_shape_is_known():
    # [B, H, W] = 5 MNIST-sized images without their channel axis: without an input shape this
    # would be one 5-channel image; with it, it is refused with the fix in the message.
    x = torch.rand(5, 28, 28)
    with pytest.raises(ValueError, match=r"\(5, 28, 28\).*\[1, 28, 28\].*unsqueeze\(1\)"):
        as_batch(x, input_shape=(1, 28, 28))
    assert as_batch(x[:1], input_shape=(1, 28, 28)).shape == (1, 1, 28, 28)  # one [C, H, W] image
    assert as_batch(x[:, None], input_shape=(1, 28, 28)).shape == (5, 1, 28, 28)
    assert as_batch(x[:, None], input_shape=(1, None, None)).shape == (5, 1, 28, 28)  # any size
    assert as_batch(torch.rand(4), input_shape=(4,)).shape == (1, 4)
    assert as_batch(torch.rand(3, 4), input_shape=(4,)).shape == (3, 4)
    with pytest.raises(ValueError, match="shape"):
        as_batch(torch.rand(3, 1, 28, 28), input_shape=(3, 28, 28))
    assert as_batch(torch.rand(3, 4, 4)).shape == (1, 3, 4, 4)  # no shape given: one [C, H, W] image
    # Through the classifier, which takes the model's input shape.
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 2)).eval()
    s = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=2, input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="unsqueeze"):
        s.certify(x, n0=10, n=100, alpha=0.01, batch_size=64)
    with pytest.raises(ValueError, match="unsqueeze"):
        s.certify_planned(x, n0=10, max_n=100, alpha=0.01, batch_size=64, radius_loss=0.1)
    assert len(s.certify(x[0:1], n0=10, n=100, alpha=0.01, batch_size=64, generator=0)) == 1
    assert len(s.certify(x[:, None], n0=10, n=100, alpha=0.01, batch_size=64, generator=0)) == 5


# ---------------------------------------------------------------- rows written before the refactor

LEGACY = Path(__file__).parent / "data" / "legacy"
#: The commands of tests/data/legacy/README.md that exercise the certify layer (without --out).
LEGACY_RUNS = {
    "certify": ["--n0", "20", "--n", "200", "--max", "6"],
    "planned": ["--n0", "20", "--n", "400", "--max", "4", "--target", "radius"],
    "grid": ["--n0", "20", "--n", "400", "--max", "4", "--target", "grid", "--radii", "0.1", "0.2", "--stages", "100"],
    "twoclass": ["--n0", "20", "--n", "200", "--max", "4", "--two-class"],
}


def _rows_without_time(path: Path) -> list[list[str]]:
    header, *rows = [line.split("\t") for line in path.read_text().splitlines()]
    # alpha_look: the column a grid file gained after 0.1.0 (the per-look level), checked on its own
    keep = [i for i, c in enumerate(header) if c not in ("time", "alpha_look") and "seconds" not in c]
    return [[header[i] for i in keep]] + [[r[i] for i in keep] for r in rows]


@pytest.mark.parametrize("name", sorted(LEGACY_RUNS))
def test_legacy_result_files_are_reproduced_and_resumed(name, tmp_path, monkeypatch):
    # Same checkpoint, seed and batch: the engine and certify layer give the very rows (counts,
    # bounds, radii, n used per input) written before the refactor, and a copy of the old file
    # resumes with nothing left to do. Those rows were drawn with float32 noise (before issue #16
    # made float64 the default): the test draws the same way.
    from smoothcert.cli import main
    from smoothcert.engine import sampling

    monkeypatch.setattr(sampling, "noise_work_dtype", lambda noise_dtype, model_dtype: model_dtype)

    args = ["certify", "--checkpoint", str(LEGACY / "model.pt"), "--alpha", "0.01", "--batch", "100", "--quiet",
            *LEGACY_RUNS[name]]
    out = tmp_path / f"{name}.tsv"
    assert main([*args, "--out", str(out)]) == 0
    assert _rows_without_time(out) == _rows_without_time(LEGACY / f"{name}.tsv")
    if name == "grid":  # two looks (100 and 400 draws) at alpha / 2 each
        header, *rows = [line.split("\t") for line in out.read_text().splitlines()]
        assert {float(r[header.index("alpha_look")]) for r in rows} == {0.01 / 2}
    old = tmp_path / "old.tsv"
    shutil.copy(LEGACY / f"{name}.tsv", old)
    shutil.copy(LEGACY / f"{name}.tsv.json", tmp_path / "old.tsv.json")
    before = old.read_text()
    assert main([*args, "--out", str(old)]) == 0
    assert old.read_text() == before
