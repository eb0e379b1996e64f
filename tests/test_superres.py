"""Super-resolution pieces: U-Net, data (degradation, crops), regressor attacks, training, resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from smoothcert.attacks_regression import eot_pgd_regression, pgd_regression, relative_eps
from smoothcert.data.superres import center_crop, degrade, load_folder, random_crops
from smoothcert.errors import CheckpointError, InputError
from smoothcert.models.unet import UNet, load_unet, save_unet
from smoothcert.noise import get_noise
from smoothcert.regression import SmoothedRegressor, center_from_draws, median_bounds_from_draws
from smoothcert.train.superres import SRTrainConfig, train_superres


def small_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(channels=(4, 8), residual=True).eval()


@pytest.mark.parametrize("shape", [(1, 3, 7, 5), (2, 3, 16, 16), (1, 3, 1, 1)])
def test_unet_any_size(shape):
    net = UNet().eval()  # the thesis's 8/16/32/64/128
    assert net(torch.rand(*shape)).shape == shape


def test_residual_unet_starts_as_the_identity():
    y = torch.rand(2, 3, 10, 6)
    torch.testing.assert_close(UNet(channels=(4, 8), residual=True).eval()(y), y, rtol=0, atol=0)


def test_unet_rejects_wrong_channels():
    with pytest.raises(InputError, match="3, H, W"):
        UNet()(torch.rand(1, 1, 8, 8))


def test_unet_checkpoint_roundtrip(tmp_path):
    net = small_unet()
    save_unet(tmp_path / "m.pt", net, training={"method": "standard"}, info={"name": "m"})
    back, meta = load_unet(tmp_path / "m.pt")
    x = torch.rand(1, 3, 9, 9)
    torch.testing.assert_close(back(x), net(x))
    assert (meta.training, meta.info, meta.arch_kwargs) == ({"method": "standard"}, {"name": "m"}, net.config())
    assert back.config() == net.config() and back.residual
    torch.save({"state_dict": net.state_dict()}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a smoothcert U-Net checkpoint"):
        load_unet(tmp_path / "bare.pt")


def test_degrade_shapes_and_constant_image():
    x = torch.full((2, 3, 9, 7), 0.3)
    y = degrade(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x)  # a constant image survives bilinear down/up exactly
    with pytest.raises(InputError, match="channels"):
        degrade(torch.rand(1, 4, 8, 8))
    with pytest.raises(InputError, match="smaller"):
        degrade(torch.rand(1, 3, 1, 5))


def test_crops(tmp_path):
    import numpy as np
    from PIL import Image
    Image.fromarray((np.random.default_rng(0).random((20, 30, 3)) * 255).astype("uint8")).save(tmp_path / "a.png")
    Image.fromarray((np.random.default_rng(1).random((25, 21)) * 255).astype("uint8")).save(tmp_path / "b.jpg")
    ims = load_folder(tmp_path)
    assert [tuple(i.shape) for i in ims] == [(3, 20, 30), (3, 25, 21)]
    g = torch.Generator().manual_seed(0)
    c = random_crops(ims, size=11, count=5, generator=g)
    assert c.shape == (5, 3, 11, 11) and c.min() >= 0 and c.max() <= 1
    assert center_crop(ims[0], 7).shape == (3, 7, 7)
    with pytest.raises(InputError, match="larger than the image"):
        random_crops(ims, size=21, count=1, generator=g)
    with pytest.raises(InputError, match="larger than the image"):
        center_crop(ims[0], 31)


def test_relative_eps():
    assert relative_eps(0.1, (3, 4, 12)) == pytest.approx(0.1 * 12)
    assert relative_eps(0.1, (5, 3, 4, 12)) == pytest.approx(0.1 * 12)  # batch not counted
    with pytest.raises(InputError):
        relative_eps(-0.1, (3, 4, 4))


@pytest.mark.parametrize("attack", ["pgd", "eot"])
@pytest.mark.parametrize("batch", [1, 3])
def test_pgd_within_budget_and_increases_error(attack, batch):
    net = small_unet()
    x = torch.rand(batch, 3, 9, 11)
    y = degrade(x)
    eps = 0.5
    if attack == "pgd":
        adv = pgd_regression(net, y, x, eps=eps, steps=5, generator=0)
    else:
        adv = eot_pgd_regression(net, y, x, noise=get_noise("gaussian", sigma=0.1), eps=eps, steps=5, samples=3,
                                 generator=0)
    assert ((adv - y).flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all()
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert ((net(adv) - x).pow(2).sum() > (net(y) - x).pow(2).sum())


def test_pgd_on_identity_reaches_the_budget():
    # f = identity, target = y: the loss is ‖e‖², maximised on the sphere ‖e‖ = eps (no clipping).
    y = torch.full((2, 3, 5, 5), 0.5)
    adv = pgd_regression(nn.Identity(), y, y, eps=0.3, steps=3, random_start=True, clip=False, generator=1)
    torch.testing.assert_close((adv - y).flatten(1).norm(dim=1), torch.full((2,), 0.3))
    assert torch.equal(pgd_regression(nn.Identity(), y, y, eps=0.0, steps=2), y)
    with pytest.raises(InputError, match="eps"):
        pgd_regression(nn.Identity(), y, y, eps=-1.0, steps=2)


def test_certified_sets_contain_attacked_smoothed_outputs():
    # The end-to-end check of the benchmark in miniature: the attacked median stays inside the
    # certified box, the attacked centre inside the certified ball.
    net = small_unet()
    sigma, eps = 0.25, 0.2
    x = torch.rand(2, 3, 8, 8)
    y = degrade(x)
    sr = SmoothedRegressor(net, noise=get_noise("gaussian", sigma=sigma))
    d0, d = sr.samples(y, n=40, batch_size=256, generator=0), sr.samples(y, n=600, batch_size=256, generator=1)
    box = median_bounds_from_draws(d, sigma=sigma, eps=eps, alpha=0.05)
    ball = center_from_draws(d0, d, sigma=sigma, eps=eps, alpha=0.05, delta=0.1)
    adv = eot_pgd_regression(net, y, x, noise=sr.noise, eps=eps, steps=3, samples=4, generator=2)
    d0a, da = sr.samples(adv, n=40, batch_size=256, generator=3), sr.samples(adv, n=600, batch_size=256, generator=4)
    med_adv = median_bounds_from_draws(da, sigma=sigma, eps=eps, alpha=0.05).median
    assert ((med_adv >= box.lower) & (med_adv <= box.upper)).all()
    centre_adv = center_from_draws(d0a, da, sigma=sigma, eps=eps, alpha=0.05, delta=0.1).center
    assert ((centre_adv - ball.center).flatten(1).norm(dim=1) <= ball.radius).all()
    assert torch.isfinite(ball.radius).all()


def test_training_reduces_error_and_resumes(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 24, 24, generator=g) for _ in range(2)]
    cfg = SRTrainConfig(method="noise", sigma_f=0.1, steps=4, batch_size=2, crop=8, save_every=2, lr=1e-2)
    full = small_unet()
    hist = train_superres(full, images, config=cfg, checkpoint=tmp_path / "full.pt")
    assert [h["step"] for h in hist] == [2, 4] and [h["epoch"] for h in hist] == [1, 2]
    assert load_unet(tmp_path / "full.pt")[1].epoch == 2
    # Interrupted after 2 steps, then resumed: the same weights and history as the uninterrupted run.
    half = small_unet()
    train_superres(half, images, config=cfg, checkpoint=tmp_path / "h.pt", stop_at=2)
    resumed = small_unet()
    hist2 = train_superres(resumed, images, config=cfg, checkpoint=tmp_path / "h.pt", resume=True)
    assert [h["step"] for h in hist2] == [2, 4]
    assert [h["loss"] for h in hist2] == [h["loss"] for h in hist]
    for a, b in zip(resumed.state_dict().values(), full.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(InputError, match="cannot resume"):
        train_superres(small_unet(), images, config=SRTrainConfig(**{**cfg.__dict__, "lr": 0.5}),
                       checkpoint=tmp_path / "h.pt", resume=True)
    # A finished run asked again returns at once with its weights loaded.
    again = small_unet()
    assert train_superres(again, images, config=cfg, checkpoint=tmp_path / "full.pt", resume=True) == hist
    for a, b in zip(again.state_dict().values(), full.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(InputError, match="multiple of save_every"):
        train_superres(small_unet(), images, config=cfg, checkpoint=tmp_path / "x.pt", stop_at=3)


def test_adversarial_training_step_runs(tmp_path):
    images = [torch.rand(3, 16, 16)]
    cfg = SRTrainConfig(method="adversarial", eps_rel=0.02, pgd_steps=2, steps=2, batch_size=2, crop=8, save_every=1)
    hist = train_superres(small_unet(), images, config=cfg, checkpoint=tmp_path / "a.pt")
    assert len(hist) == 2 and all(math.isfinite(h["loss"]) for h in hist)
    with pytest.raises(InputError, match="eps_rel"):
        SRTrainConfig(method="adversarial")
    with pytest.raises(InputError, match="larger than the image"):
        train_superres(small_unet(), images, config=SRTrainConfig(crop=32, steps=1), checkpoint=tmp_path / "b.pt")


def test_sr_row_schemas_come_from_results():
    from smoothcert import results
    from smoothcert.results import superres as sr_rows

    assert results.sr_attack_schema is sr_rows.sr_attack_schema and results.sr_certify_schema is sr_rows.sr_certify_schema
    attack = results.sr_attack_schema([0, 0.05])
    assert attack.kind == results.SR_ATTACK_KIND == "sr_attack"
    assert attack.columns[:10] == ("idx", "image", "mse@0.0", "psnr@0.0", "ssim@0.0", "l2@0.0", "mse@0.05",
                                   "psnr@0.05", "ssim@0.05", "l2@0.05")
    cert = results.sr_certify_schema([0.25])
    assert cert.kind == results.SR_CERTIFY_KIND and cert.columns[4:7] == (
        "median_cert_psnr@0.25", "center_radius@0.25", "center_cert_psnr@0.25")
    with pytest.raises(InputError, match="missing"):
        cert.row({"idx": 0})
