"""Moving a trained Lipschitz backbone under another head (FaRS: sll-small -> sll-small-mlp):
``smoothcert.models.transfer_backbone`` and ``smoothcert train --init-backbone``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothcert.cli import main
from smoothcert.errors import ConfigMismatchError, InputError, InputTypeError
from smoothcert.files import file_sha256
from smoothcert.models import CheckpointMeta, build_model, load_checkpoint, save_checkpoint, transfer_backbone
from smoothcert.runs import TrainRun

MEAN, STD = (0.1307,), (0.3081,)
TRAIN = ["train", "--dataset", "embedded", "--batch", "16", "--lr", "0.05", "--limit", "32", "--quiet",
         "--device", "cpu", "--epochs", "1", "--sigma", "0.5", "--method", "lipschitz-margin"]
HEAD_ONLY = ["--hparam", "freeze_backbone=true", "--hparam", "feature_noise=true"]


def _model(arch: str, *, seed: int = 0, mean=MEAN, std=STD, **kw) -> nn.Sequential:
    torch.manual_seed(seed)
    return build_model(arch, num_classes=10, in_channels=kw.pop("in_channels", 1), mean=mean, std=std, **kw)


def _saved(tmp_path, arch: str, *, name: str | None = None, in_channels: int = 1, input_size: int = 28,
           **kw) -> str:
    """An untrained checkpoint (no training: fast), with the embedded MNIST set's normalization."""
    mean, std = MEAN * in_channels, STD * in_channels
    model = _model(arch, seed=3, mean=mean, std=std, in_channels=in_channels, input_size=input_size, **kw)
    meta = CheckpointMeta(arch=arch, arch_kwargs={"input_size": input_size, **kw}, dataset="embedded",
                          num_classes=10, in_channels=in_channels, input_size=input_size, mean=list(mean),
                          std=list(std), noise="none", sigma=0.0)
    path = tmp_path / f"{name or arch}.pt"
    save_checkpoint(path, model, meta=meta)
    return str(path)


def _backbone_state(model: nn.Sequential) -> dict[str, torch.Tensor]:
    return model[1].backbone.state_dict()


def test_transfer_copies_the_backbone_exactly_and_leaves_the_head():
    source, target = _model("sll-small", seed=0).eval(), _model("sll-small-mlp", seed=1).eval()
    head_before = {k: v.clone() for k, v in target[1].head.state_dict().items()}
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # eval + no_grad: the layers cache T and the normalized weights ...
        assert not torch.equal(source[1].features(source[0](x)), target[1].features(target[0](x)))
    transfer_backbone(source, target)
    for key, value in _backbone_state(source).items():
        assert torch.equal(_backbone_state(target)[key], value), key
    assert all(torch.equal(v, head_before[k]) for k, v in target[1].head.state_dict().items())
    with torch.no_grad():  # ... which the copy invalidates: the same features, Normalize included
        assert torch.equal(source[1].features(source[0](x)), target[1].features(target[0](x)))
    assert target[1].backbone_lipschitz() == source[1].backbone_lipschitz() == 1.0
    # A copy, not shared storage: training the target does not move the source.
    with torch.no_grad():
        next(target[1].backbone.parameters()).add_(1.0)
    assert not torch.equal(next(target[1].backbone.parameters()), next(source[1].backbone.parameters()))


class _UndeclaredBackbone(nn.Module):
    """Backbone + head in shape, but the backbone has no proven Lipschitz bound."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(784, 128))
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.backbone(x))


def test_transfer_refuses_what_does_not_match():
    target = _model("sll-small-mlp")
    for source in (_model("lenet"), _UndeclaredBackbone()):
        with pytest.raises(InputTypeError, match="source model: .* declares no Lipschitz backbone"):
            transfer_backbone(source, target)
    with pytest.raises(InputTypeError, match="target model: LeNet declares no Lipschitz backbone"):
        transfer_backbone(_model("sll-small"), _model("lenet"))
    with pytest.raises(ConfigMismatchError, match=r"PadChannels\(4 -> 8\) vs target .*PadChannels\(4 -> 16\)"):
        transfer_backbone(_model("sll-small", width=8), target)
    # 32x32 inputs: the same layer types, but the flattened features are wider.
    with pytest.raises(ConfigMismatchError, match=r"NormalizedLinear\(4096 -> 128\) vs target .*\(3136 -> 128\)"):
        transfer_backbone(_model("sll-small", input_size=32), target)
    with pytest.raises(ConfigMismatchError, match="Normalize std differs"):
        transfer_backbone(_model("sll-small", std=(1.0,)), target)
    with pytest.raises(ConfigMismatchError, match="Normalize layer in front"):
        transfer_backbone(_model("sll-small")[1], target)
    before = {k: v.clone() for k, v in _backbone_state(target).items()}
    with pytest.raises(ConfigMismatchError):
        transfer_backbone(_model("sll-small", features=64), target)
    assert all(torch.equal(v, before[k]) for k, v in _backbone_state(target).items())  # refused: untouched


def test_cli_head_only_training_on_a_transferred_backbone(tmp_path, capsys):
    source_path = _saved(tmp_path, "sll-small")
    source, source_meta = load_checkpoint(source_path)
    out = tmp_path / "mlp.pt"
    assert main([*TRAIN, *HEAD_ONLY, "--arch", "sll-small-mlp", "--init-backbone", source_path,
                 "--out", str(out)]) == 0
    model, meta = load_checkpoint(out)
    assert meta.arch == "sll-small-mlp" and meta.epoch == 1
    # The frozen backbone is the source's, bit for bit, after a head-only epoch ...
    for key, value in _backbone_state(source).items():
        assert torch.equal(_backbone_state(model)[key], value), key
    # ... the head did train (it left its seeded initialisation) ...
    fresh = _model("sll-small-mlp", seed=0)  # run_train seeds the initialisation with --seed 0
    assert any(not torch.equal(v, fresh[1].head.state_dict()[k]) for k, v in model[1].head.state_dict().items())
    # ... and the checkpoint says where its backbone came from, with the source's normalization.
    record = meta.training["init_backbone"]
    assert record["sha256"] == file_sha256(source_path) and record["path"] == str(tmp_path / "sll-small.pt")
    assert (meta.mean, meta.std) == (source_meta.mean, source_meta.std)
    assert meta.training["hparams"]["freeze_backbone"] is True


def test_cli_refuses_a_backbone_that_does_not_fit(tmp_path, capsys):
    cases = [
        (_saved(tmp_path, "sll-small", name="narrow", width=8), "PadChannels"),
        (_saved(tmp_path, "lenet"), "declares no Lipschitz backbone"),
        (_saved(tmp_path, "sll-small", name="rgb32", in_channels=3, input_size=32), "gives (1, 28, 28)"),
    ]
    for path, message in cases:
        capsys.readouterr()
        assert main([*TRAIN, "--arch", "sll-small-mlp", "--init-backbone", path,
                     "--out", str(tmp_path / "refused.pt")]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--init-backbone" in err and message in err, err
        assert not (tmp_path / "refused.pt").exists()
    good = _saved(tmp_path, "sll-small")
    with pytest.raises(InputError, match="not both"):
        TrainRun(out=tmp_path / "x.pt", sigma=0.5, init=good, init_backbone=good)
    capsys.readouterr()
    assert main([*TRAIN, "--arch", "sll-small-mlp", "--init", good, "--init-backbone", good,
                 "--out", str(tmp_path / "refused.pt")]) == 2
    assert "not both" in capsys.readouterr().err


def test_cli_init_of_other_channels_still_gets_the_fine_tuning_message(tmp_path, capsys):
    # The checkpoint's mean/std now build the network: the fine-tuning check must come first.
    rgb = _saved(tmp_path, "sll-small", name="rgb", in_channels=3, input_size=28)
    assert main([*TRAIN, "--init", rgb, "--out", str(tmp_path / "refused.pt")]) == 2
    assert "Fine-tuning needs the same network" in capsys.readouterr().err
