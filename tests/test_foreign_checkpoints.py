"""Importing the field's released checkpoints (Cohen et al. 2019 layout) as smoothcert checkpoints.

The real files cannot be downloaded here; these tests build files in the same layouts: a dict
``{"epoch", "arch", "state_dict", "optimizer"}`` whose state dict is that of
``Sequential(NormalizeLayer, DataParallel(net))`` (keys ``1.module.*``, bearpaw's ``downsample``
shortcut names, no normalization keys). The imported model is checked against an independent
functional forward pass written from the 2019 code's layer order, reading the file's own keys.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smoothcert.errors import CheckpointError, InputError
from smoothcert.models import (
    COHEN2019_NORMALIZATION,
    build_model,
    import_checkpoint,
    infer_sigma,
    load_checkpoint,
    save_checkpoint,
)


def _cohen_state(depth: int = 20, *, seed: int = 0, prefix: str = "1.module.") -> dict[str, torch.Tensor]:
    """A state dict in the 2019 layout, with random weights and non-trivial batchnorm statistics."""
    torch.manual_seed(seed)
    mean, std = COHEN2019_NORMALIZATION["cifar10"]
    ours = build_model(f"resnet{depth}", num_classes=10, in_channels=3, mean=mean, std=std)[1]
    state = {}
    for key, value in ours.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # torch < 1.0 files have none
        if key.endswith("running_var"):
            value = torch.rand_like(value) + 0.5
        elif key.endswith(("running_mean", "bias")) or (".bn" in key or key.startswith("bn")) and key.endswith("weight"):
            value = torch.randn_like(value) * 0.1 + (1.0 if key.endswith("weight") else 0.0)
        state[prefix + key.replace(".shortcut.", ".downsample.")] = value.clone()
    return state


def _write(path, state, *, arch="cifar_resnet20", **extra):
    torch.save({"epoch": 90, "arch": arch, "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
                **extra}, path)
    return path


def _bn(x, s, name):
    return F.batch_norm(x, s[name + ".running_mean"], s[name + ".running_var"], s[name + ".weight"],
                        s[name + ".bias"], training=False, eps=1e-5)


def _reference_forward(x: torch.Tensor, state: dict[str, torch.Tensor], depth: int) -> torch.Tensor:
    """bearpaw/Cohen ``cifar_resnet`` forward written out from its layer order, on the file's keys."""
    s = {k.removeprefix("1.module."): v for k, v in state.items()}
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in COHEN2019_NORMALIZATION["cifar10"])
    out = (x - mean) / std  # NormalizeLayer
    out = F.relu(_bn(F.conv2d(out, s["conv1.weight"], padding=1), s, "bn1"))
    for stage in (1, 2, 3):
        for block in range((depth - 2) // 6):
            p = f"layer{stage}.{block}."
            stride = 2 if stage > 1 and block == 0 else 1
            y = F.relu(_bn(F.conv2d(out, s[p + "conv1.weight"], stride=stride, padding=1), s, p + "bn1"))
            y = _bn(F.conv2d(y, s[p + "conv2.weight"], padding=1), s, p + "bn2")
            if p + "downsample.0.weight" in s:
                out = _bn(F.conv2d(out, s[p + "downsample.0.weight"], stride=stride), s, p + "downsample.1")
            out = F.relu(y + out)
    out = F.avg_pool2d(out, 8).flatten(1)  # nn.AvgPool2d(8) on the 8x8 maps
    return F.linear(out, s["fc.weight"], s["fc.bias"])


def test_cohen2019_resnet_matches_the_source_forward_and_keeps_its_normalization(tmp_path):
    state = _cohen_state(20)
    path = _write(tmp_path / "checkpoint.pth.tar", state)
    imported = import_checkpoint(path, source_format="cohen2019", dataset="cifar10", sigma=0.25)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _reference_forward(x, state, 20)
        got = imported.model(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    meta = imported.meta
    assert meta.arch == "resnet20" and meta.dataset == "cifar10" and meta.num_classes == 10
    assert meta.mean == [0.4914, 0.4822, 0.4465] and meta.std == [0.2023, 0.1994, 0.2010]  # not ours
    assert meta.noise == "gaussian" and meta.sigma == 0.25 and meta.epoch == 90
    assert meta.training["method"] == "imported" and meta.training["source_format"] == "cohen2019"
    assert meta.training["source_arch"] == "cifar_resnet20" and len(meta.training["source_sha256"]) == 64
    # Written as a smoothcert checkpoint, it loads back to the same function with the provenance.
    out = save_checkpoint(tmp_path / "model.pt", imported.model, meta=imported.meta)
    model, loaded = load_checkpoint(out)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    assert loaded.training == meta.training and loaded.std == meta.std


@pytest.mark.parametrize("prefix", ["1.", "1.module.", "module.1.", "module.1.module."])
def test_prefix_layouts_are_all_read(tmp_path, prefix):
    path = _write(tmp_path / "c.pth", _cohen_state(20, prefix=prefix))
    imported = import_checkpoint(path, source_format="cohen2019", dataset="cifar10", sigma=0.5, arch="resnet20")
    assert imported.meta.arch == "resnet20" and imported.meta.sigma == 0.5


def test_saved_normalization_constants_are_kept_exactly(tmp_path):
    state = _cohen_state(20)
    state["0.means"] = torch.tensor([0.5, 0.5, 0.5])
    state["0.sds"] = torch.tensor([0.25, 0.5, 0.125])
    imported = import_checkpoint(_write(tmp_path / "c.pth", state), source_format="cohen2019",
                                 dataset="cifar10", sigma=0.25)
    assert imported.meta.mean == [0.5, 0.5, 0.5] and imported.meta.std == [0.25, 0.5, 0.125]


def test_unknown_and_missing_keys_are_named(tmp_path):
    state = _cohen_state(20)
    state["1.module.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unknown keys extra_head\.weight"):
        import_checkpoint(_write(tmp_path / "a.pth", state), source_format="cohen2019", dataset="cifar10", sigma=0.25)
    state = _cohen_state(20)
    del state["1.module.fc.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys fc\.bias"):
        import_checkpoint(_write(tmp_path / "b.pth", state), source_format="cohen2019", dataset="cifar10", sigma=0.25)
    state = _cohen_state(20)
    state["2.module.fc.bias"] = torch.zeros(10)
    with pytest.raises(CheckpointError, match=r"cannot map 1 key\(s\).*2\.module\.fc\.bias"):
        import_checkpoint(_write(tmp_path / "c.pth", state), source_format="cohen2019", dataset="cifar10", sigma=0.25)
    # the right keys with a depth that does not fit: shape/missing keys named, nothing loaded
    with pytest.raises(CheckpointError, match=r"do not fit resnet56: missing keys"):
        import_checkpoint(_write(tmp_path / "d.pth", _cohen_state(20)), source_format="cohen2019",
                          dataset="cifar10", sigma=0.25, arch="cifar_resnet56")


def test_bad_inputs_are_refused(tmp_path):
    path = _write(tmp_path / "c.pth", _cohen_state(20), arch="wrn28_10")
    with pytest.raises(InputError, match="cannot map architecture 'wrn28_10'"):
        import_checkpoint(path, source_format="cohen2019", dataset="cifar10", sigma=0.25)
    with pytest.raises(InputError, match="unknown source format"):
        import_checkpoint(path, source_format="macer2021", dataset="cifar10", sigma=0.25)
    with pytest.raises(InputError, match="dataset 'imagenet' does not fit"):
        import_checkpoint(path, source_format="cohen2019", dataset="imagenet", sigma=0.25, arch="cifar_resnet20")
    with pytest.raises(InputError, match="checkpoints are for"):
        import_checkpoint(path, source_format="cohen2019", dataset="mnist", sigma=0.25)
    torch.save({"model": {}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="no 'state_dict' entry"):
        import_checkpoint(tmp_path / "x.pth", source_format="cohen2019", dataset="cifar10", sigma=0.25)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        import_checkpoint(tmp_path / "missing.pth", source_format="cohen2019", dataset="cifar10", sigma=0.25)


def test_infer_sigma_from_the_release_directory_layout():
    assert infer_sigma("models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar") == 0.25
    assert infer_sigma("models/imagenet/resnet50/noise_1.00/checkpoint.pth.tar") == 1.0
    assert infer_sigma("checkpoint.pth.tar") is None


def test_cli_import_checkpoint_writes_a_loadable_checkpoint(tmp_path, capsys):
    from smoothcert.cli import main

    source = tmp_path / "models" / "cifar10" / "resnet20" / "noise_0.50"
    source.mkdir(parents=True)
    state = _cohen_state(20)
    _write(source / "checkpoint.pth.tar", state)
    out = tmp_path / "model.pt"
    assert main(["import-checkpoint", str(source / "checkpoint.pth.tar"), "--from", "cohen2019",
                 "--dataset", "cifar10", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "sigma 0.5 read from the path" in captured.err and "resnet20 for cifar10" in captured.out
    model, meta = load_checkpoint(out)
    assert meta.sigma == 0.5 and meta.std == [0.2023, 0.1994, 0.2010]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_forward(x, state, 20), rtol=1e-4, atol=1e-4)
    # no sigma anywhere: refused with the flag to pass, exit status 2, nothing written
    flat = _write(tmp_path / "c.pth", state)
    assert main(["import-checkpoint", str(flat), "--dataset", "cifar10", "--out", str(tmp_path / "m2.pt")]) == 2
    assert "pass --sigma" in capsys.readouterr().err and not (tmp_path / "m2.pt").exists()


@pytest.mark.slow
def test_torchvision_resnet50_state_dict_is_imported_with_imagenet_normalization(tmp_path):
    # A torchvision-layout ResNet-50 state dict (our resnet50 has torchvision's key names).
    torch.manual_seed(0)
    net = build_model("resnet50", num_classes=1000, in_channels=3, mean=[0, 0, 0], std=[1, 1, 1])[1]
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "rn50.pth")
    imported = import_checkpoint(tmp_path / "rn50.pth", source_format="torchvision", dataset="imagenet",
                                 sigma=0.0, arch="resnet50")
    assert imported.meta.mean == [0.485, 0.456, 0.406] and imported.meta.std == [0.229, 0.224, 0.225]
    assert imported.meta.noise == "none"
    x = torch.rand(1, 3, 64, 64)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in COHEN2019_NORMALIZATION["imagenet"])
    with torch.no_grad():
        torch.testing.assert_close(imported.model(x), net.eval()((x - mean) / std))
