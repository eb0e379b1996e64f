"""FaRS: 1-Lipschitz layers, the margin certificate, feature-space smoothing, the transfer check,
and the unsoundness of the sparsemax certificate."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from smoothcert.attacks import pgd_l2
from smoothcert.data import get_dataset
from smoothcert.errors import ConfigMismatchError, InputError, InputTypeError
from smoothcert.lipschitz import (
    BackboneHead,
    FeatureSmoothedClassifier,
    LipschitzFlatten,
    LipschitzModule,
    LipschitzSequential,
    NormalizedConv1x1,
    NormalizedLinear,
    PadChannels,
    ScaledAvgPool2d,
    SLLConv2d,
    SLLLinear,
    SpaceToDepth,
    certify_margin,
    check_lipschitz,
    jacobian_norm,
    margin_radius,
    sll_small,
    spectral_norm,
    split_model,
)
from smoothcert.models import CheckpointMeta, build_model
from smoothcert.noise import get_noise
from smoothcert.smooth import ABSTAIN, SmoothedClassifier
from smoothcert.train import TrainConfig, get_method, head_lipschitz, margin_logits, train

# float64 everywhere below: the bounds are exact, so 1e-9 absorbs only the rounding of the products.
TOL = 1e-9


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random biases, q scalings and large weights, so the tests probe more than the initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 3.0 if "weight" in name else 1.0
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module.double().eval()


LAYERS = {
    "sll-linear-wide": (lambda: SLLLinear(6, 11), (4, 6)),
    "sll-linear-narrow": (lambda: SLLLinear(8, 3), (4, 8)),
    "sll-conv3": (lambda: SLLConv2d(3, 5), (3, 3, 6, 5)),
    "sll-conv5": (lambda: SLLConv2d(4, 2, kernel_size=5), (2, 4, 7, 7)),
    "pad-channels": (lambda: PadChannels(2, 5), (3, 2, 4, 4)),
    "space-to-depth": (lambda: SpaceToDepth(2), (3, 2, 4, 6)),
    "flatten": (lambda: LipschitzFlatten(), (3, 2, 3, 3)),
    "scaled-avgpool": (lambda: ScaledAvgPool2d(), (3, 2, 5, 4)),
    "normalized-linear": (lambda: NormalizedLinear(12, 5), (4, 12)),
    "normalized-conv1x1": (lambda: NormalizedConv1x1(3, 6), (2, 3, 4, 4)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_is_1_lipschitz(name):
    make, shape = LAYERS[name]
    layer = _randomize(make(), seed=1)
    assert isinstance(layer, LipschitzModule) and layer.lipschitz_bound() == 1.0
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    # Power iteration on J^T J at each sample: a lower estimate of the local constant.
    assert float(jacobian_norm(layer, x, iters=20).max()) <= 1 + TOL
    # Random pairs, near and far.
    for scale in (1e-3, 1.0, 10.0):
        x2 = x + scale * torch.randn(shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            num = (layer(x) - layer(x2)).flatten(1).norm(dim=1)
        assert bool((num <= (x - x2).flatten(1).norm(dim=1) * (1 + TOL)).all())


def test_power_iteration_finds_the_norm_of_a_linear_map():
    # The check has teeth: on a linear map it converges to the exact spectral norm, and a module
    # that lies about its bound is caught.
    w = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lin = nn.Linear(5, 7, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(w)
    est = jacobian_norm(lin, torch.randn(3, 5, dtype=torch.float64), iters=200)
    exact = torch.linalg.matrix_norm(w, ord=2)
    assert torch.allclose(est, exact.expand(3), rtol=1e-8)
    assert torch.isclose(spectral_norm(w), exact, rtol=1e-10)

    class Liar(LipschitzModule):
        def forward(self, x):
            return 1.5 * x

        def lipschitz_bound(self):
            return 1.0

    with pytest.raises(ConfigMismatchError, match="declares an l2 Lipschitz bound 1"):
        check_lipschitz(Liar(), torch.randn(2, 3))


def test_sll_without_its_scaling_is_not_1_lipschitz():
    # Why T matters: the same residual with T = I has a Jacobian norm well above 1.
    layer = _randomize(SLLLinear(6, 11), seed=1)
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def no_scaling(v):
        return v - 2 * torch.relu(v @ layer.weight + layer.bias) @ layer.weight.T

    assert float(jacobian_norm(no_scaling, x, iters=50).max()) > 2.0


@pytest.mark.parametrize(("in_channels", "size"), [(1, 28), pytest.param(3, 32, marks=pytest.mark.slow)])
def test_sll_small_backbone_is_1_lipschitz(in_channels, size):
    torch.manual_seed(0)
    model = sll_small(num_classes=10, in_channels=in_channels, input_size=size, width=12, features=16).double().eval()
    assert model.backbone_lipschitz() == 1.0
    x = torch.rand(2, in_channels, size, size, dtype=torch.float64)
    assert check_lipschitz(model.backbone, x, rtol=TOL, iters=6) <= 1 + TOL
    x2 = x + 0.3 * torch.randn_like(x)
    with torch.no_grad():
        num = (model.features(x) - model.features(x2)).norm(dim=1)
    assert bool((num <= (x - x2).flatten(1).norm(dim=1) * (1 + TOL)).all())


def test_layers_refuse_bad_settings_and_shapes():
    with pytest.raises(InputError, match="odd kernel_size"):
        SLLConv2d(4, 4, kernel_size=2)
    with pytest.raises(InputError, match="positive integer"):
        SLLLinear(0, 3)
    with pytest.raises(InputError, match="expects"):
        SLLLinear(4, 3)(torch.zeros(2, 5))
    with pytest.raises(InputError, match="divisible"):
        SpaceToDepth(2)(torch.zeros(1, 1, 5, 4))
    with pytest.raises(InputError, match="divisible by 4"):
        sll_small(input_size=30)
    with pytest.raises(InputError, match="'linear' or 'mlp'"):
        sll_small(head="deep")


# -- the transfer: which models qualify ---------------------------------------------------------


def test_transfer_refuses_models_without_a_declared_lipschitz_backbone():
    lenet = build_model("lenet-small", num_classes=10, in_channels=1, mean=(0.5,), std=(0.5,))
    with pytest.raises(InputTypeError, match="declares no Lipschitz backbone"):
        split_model(lenet)
    with pytest.raises(InputTypeError, match="backbone must be a LipschitzModule"):
        BackboneHead(nn.Sequential(nn.Flatten(), nn.Linear(784, 16)), nn.Linear(16, 10))
    with pytest.raises(InputTypeError, match=r"layer 1 \(Conv2d\) has no proven Lipschitz bound"):
        LipschitzSequential(PadChannels(1, 4), nn.Conv2d(4, 4, 3))
    with pytest.raises(InputTypeError, match="declares no Lipschitz backbone"):
        FeatureSmoothedClassifier(lenet, noise=get_noise("gaussian", sigma=0.5), num_classes=10)


def test_transfer_multiplies_in_the_normalization():
    model = build_model("sll-small", num_classes=10, in_channels=1, mean=(0.1307,), std=(0.3081,))
    assert split_model(model).lipschitz == pytest.approx(1 / 0.3081, rel=1e-6)
    plain = build_model("sll-small", num_classes=10, in_channels=1, mean=(0.0,), std=(1.0,))
    assert split_model(plain).lipschitz == 1.0


# -- the margin certificate ---------------------------------------------------------------------


def _linear(k: int, d: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d, k).double()


def test_margin_radius_is_the_exact_boundary_distance_of_a_linear_model():
    head = _linear(5, 8, seed=0)
    z = torch.randn(64, 8, dtype=torch.float64)
    y, radius = margin_radius(z, head)
    assert torch.equal(y, head(z).argmax(1))
    w = head.weight.detach()
    with torch.no_grad():
        for i in range(len(z)):
            # The nearest facet of y's decision region: moving just past it changes the class,
            # moving just short of it does not.
            gaps = (head(z[i])[y[i]] - head(z[i])) / (w[y[i]] - w).norm(dim=1)
            gaps[y[i]] = float("inf")
            j = int(gaps.argmin())
            direction = (w[j] - w[y[i]]) / (w[j] - w[y[i]]).norm()
            assert float(radius[i]) == pytest.approx(float(gaps[j]), rel=1e-12)
            assert int(head(z[i] + radius[i] * (1 + 1e-6) * direction).argmax()) != int(y[i])
            assert int(head(z[i] + radius[i] * (1 - 1e-6) * direction).argmax()) == int(y[i])
            # ... and no direction at all flips it inside the radius.
            u = torch.randn(200, 8, dtype=torch.float64)
            u = u / u.norm(dim=1, keepdim=True) * radius[i] * (1 - 1e-9)
            assert bool((head(z[i] + u).argmax(1) == y[i]).all())


def test_margin_radius_binary_matches_the_closed_form_and_divides_by_lipschitz():
    head = _linear(2, 6, seed=1)
    z = torch.randn(16, 6, dtype=torch.float64)
    w = head.weight.detach()[1] - head.weight.detach()[0]
    b = head.bias.detach()[1] - head.bias.detach()[0]
    exact = (z @ w + b).abs() / w.norm()  # Cohen et al. 2019, Appendix B
    _, radius = margin_radius(z, head)
    assert torch.allclose(radius, exact, rtol=1e-12)
    _, scaled = margin_radius(z, head, lipschitz=4.0)
    assert torch.allclose(scaled, exact / 4, rtol=1e-12)


def test_margin_radius_edge_cases_and_errors():
    head = nn.Linear(3, 3).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]]))
        head.bias.copy_(torch.tensor([0.0, -1.0, 0.0]))
    # Class 1 has class 0's row and a lower bias: it never wins and imposes no limit.
    _, radius = margin_radius(torch.tensor([[3.0, 0.0, 0.0]], dtype=torch.float64), head)
    assert float(radius[0]) == pytest.approx(3 / 2**0.5)
    with pytest.raises(InputTypeError, match="nn.Linear head"):
        margin_radius(torch.zeros(1, 3), nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(InputError, match=r"features must be \[B, 3\]"):
        margin_radius(torch.zeros(1, 4), head)
    with pytest.raises(InputError, match="lipschitz"):
        margin_radius(torch.zeros(1, 3), head, lipschitz=0.0)
    with pytest.raises(InputError, match="NaN"):
        margin_radius(torch.full((1, 3), float("nan")), head)


def _tiny_sll(head: str = "linear", num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("sll-small", num_classes=num_classes, in_channels=1, mean=(0.1307,), std=(0.3081,),
                       width=8, features=16, head=head).eval()


def test_margin_certificate_is_never_broken_by_pgd():
    model = _tiny_sll()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    cert = certify_margin(model, x)
    with torch.no_grad():
        assert torch.equal(cert.prediction, model(x).argmax(1))
        _, expected = margin_radius(split_model(model).features(x), model[1].head, lipschitz=1 / 0.3081)
    assert torch.allclose(cert.radius, expected)
    assert cert.lipschitz == pytest.approx(1 / 0.3081)
    adv = pgd_l2(model, x, cert.prediction, eps=(cert.radius * 0.999).float(), steps=10, generator=0)
    with torch.no_grad():
        assert torch.equal(model(adv).argmax(1), cert.prediction)
    with pytest.raises(InputTypeError, match="linear head"):
        certify_margin(_tiny_sll(head="mlp"), x)


# -- feature-space smoothing --------------------------------------------------------------------


def test_feature_smoothing_stays_below_the_exact_radius_and_pgd_fails_inside_it():
    # A binary linear head: the smoothed head's decision equals the head's (symmetric noise), so its
    # exact feature-space radius is the margin radius; a certificate must stay below it.
    model = _tiny_sll(num_classes=2, seed=1)
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    fs = FeatureSmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # features outside [0, 1] are expected: no warning
        cert = fs.certify(x, n0=64, n=2000, alpha=0.001, batch_size=1000, generator=0)
    exact = certify_margin(model, x)
    kept = cert.prediction != ABSTAIN
    assert int(kept.sum()) >= 3
    assert torch.equal(cert.prediction[kept], exact.prediction[kept])
    assert bool((cert.radius[kept] <= exact.radius[kept]).all())
    # The transferred radius is the head's feature-space radius over L.
    with pytest.warns(UserWarning, match="must lie in"):  # the plain engine warns on features outside [0, 1]
        head_only = SmoothedClassifier(model[1].head, noise=fs.noise, num_classes=2, allow_unbounded=True).certify(
            fs.features(x)[0], n0=64, n=2000, alpha=0.001, batch_size=1000, generator=0)
    assert torch.allclose(cert.radius, head_only.radius / fs.lipschitz)
    assert bool((cert.seconds > head_only.seconds * 0).all()) and fs.settings()["space"] == "features"
    adv = pgd_l2(model, x[kept], cert.prediction[kept], eps=cert.radius[kept].float(), steps=10, generator=0)
    with torch.no_grad():
        assert torch.equal(model(adv).argmax(1), cert.prediction[kept])


def test_feature_smoothing_with_an_mlp_head_refuses_engine_overrides():
    model = _tiny_sll(head="mlp")
    with pytest.raises(InputError, match="allow_unbounded is set by"):
        FeatureSmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.5), num_classes=10,
                                  allow_unbounded=True)
    fs = FeatureSmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.5), num_classes=10)
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    pred = fs.predict(x, n=200, alpha=0.01, batch_size=200, generator=0)
    assert pred.shape == (2,)
    with pytest.raises(InputError, match="l2 only"):
        fs.certify(x, n0=10, n=100, alpha=0.01, batch_size=100, norm="l1")
    with pytest.raises(InputError, match="certify_at"):
        fs.certify_at(x, 0.1, n0=10, alpha=0.01, batch_size=100)


# -- the sparsemax variant: unsound -------------------------------------------------------------


def _sparsemax(z: torch.Tensor, r: float) -> torch.Tensor:
    """Euclidean projection of z [K] onto {p >= 0, sum p = r} (Martins & Astudillo 2016, scaled)."""
    s, _ = torch.sort(z, descending=True)
    k = torch.arange(1, len(z) + 1, dtype=z.dtype)
    support = r + k * s > torch.cumsum(s, 0)
    kz = int(support.nonzero().max()) + 1
    tau = (torch.cumsum(s, 0)[kz - 1] - r) / kz
    return (z - tau).clamp_min(0)


def test_the_fars_sparsemax_certificate_is_unsound():
    # FaRS's code certifies radius sparsemax_r(l(z))_y / ||W||_2 (r = 2), the "original" variant
    # l_y(z) / ||W||_2. Two nearly tied logits: both claim a radius of about 1, while moving z by
    # 0.01 along w_1 - w_0 changes the class. Sparsemax keeps the order of the logits, so the
    # classifier is argmax l and its exact radius is the margin radius (0.01 / sqrt(2) here).
    head = nn.Linear(2, 3).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        head.bias.zero_()
    z = torch.tensor([1.0, 0.99], dtype=torch.float64)
    logits = head(z).detach()
    p = _sparsemax(logits, r=2.0)
    assert torch.equal(p.argmax(), logits.argmax())  # order preserved
    spectral = torch.linalg.matrix_norm(head.weight.detach(), ord=2)
    claimed_sparsemax = float(p[0] / spectral)
    claimed_original = float(logits[0] / spectral)
    _, exact = margin_radius(z[None], head)
    assert claimed_sparsemax > 0.5 and claimed_original > 0.5
    assert float(exact[0]) == pytest.approx(0.01 / 2**0.5)
    w = head.weight.detach()
    step = (w[1] - w[0]) / (w[1] - w[0]).norm() * 0.02  # ||step|| = 0.02 << the claimed radii
    flipped = head(z + step).detach()
    assert int(flipped.argmax()) == 1 and int(_sparsemax(flipped, r=2.0).argmax()) == 1


# -- training -----------------------------------------------------------------------------------


def test_margin_logits_add_the_certifying_margin_to_non_targets():
    head = _linear(4, 6, seed=3)
    logits = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    out = margin_logits(logits, y, head, epsilon=0.5, lipschitz=2.0)
    w = head.weight.detach()
    for i in range(5):
        for j in range(4):
            expected = 0.0 if j == y[i] else 0.5 * 2.0 * float((w[y[i]] - w[j]).norm())
            assert float((out - logits).detach()[i, j]) == pytest.approx(expected, rel=1e-12)
    # A margin-augmented logit gap > 0 certifies epsilon: (l_y - l_j) / ||w_y - w_j|| / L > epsilon.
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).double()
    bound = head_lipschitz(mlp)
    expected = torch.linalg.matrix_norm(mlp[0].weight, ord=2) * torch.linalg.matrix_norm(mlp[2].weight, ord=2)
    assert float(bound.detach()) == pytest.approx(float(expected.detach()), rel=1e-9)
    out = margin_logits(logits, y, mlp, epsilon=0.5, lipschitz=1.0)
    assert float((out - logits).detach()[0, 1]) == pytest.approx(2**0.5 * 0.5 * float(expected), rel=1e-9)
    assert float((out - logits).detach()[0, 0]) == 0.0
    with pytest.raises(InputTypeError, match="nn.Linear and nn.ReLU"):
        head_lipschitz(nn.Sequential(nn.Linear(6, 4), nn.Tanh()))


def test_head_only_training_leaves_the_backbone_untouched(tmp_path):
    data = get_dataset("embedded", split="train").subset(range(64))
    model = _tiny_sll(seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    meta = CheckpointMeta(arch="sll-small", arch_kwargs={"width": 8, "features": 16}, dataset="embedded",
                          num_classes=10, in_channels=1, input_size=28, mean=[0.1307], std=[0.3081],
                          noise="none", sigma=0.0)
    method = get_method("lipschitz-margin", epsilon=0.1, freeze_backbone=True)
    train(model, data, method=method, noise=get_noise("gaussian", sigma=0.25), meta=meta,
          checkpoint=tmp_path / "m.pt", config=TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=0), progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"1.head.weight", "1.head.bias"}
    with pytest.raises(InputTypeError, match="declares no Lipschitz backbone"):
        method.loss(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), torch.rand(2, 1, 28, 28), torch.tensor([0, 1]),
                    noise=get_noise("gaussian", sigma=0.25), generator=None)
