"""Tests for smoothcert.models: every registered architecture, Normalize, the registry, checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from smoothcert.models import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    Bottleneck,
    CheckpointError,
    CheckpointMeta,
    CifarResNet,
    ImageNetResNet,
    LeNet,
    Normalize,
    build_model,
    get_model,
    list_models,
    load_checkpoint,
    model_input_size,
    read_checkpoint,
    register_model,
    save_checkpoint,
)
from smoothcert.models import checkpoint as checkpoint_module

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2470, 0.2435, 0.2616]


# --------------------------------------------------------------------------- every registered model


def test_registry_lists_the_builtin_models() -> None:
    names = list_models()
    assert {"lenet", "lenet-small", "resnet20", "resnet50", "resnet56", "resnet110"} <= set(names)
    assert names == sorted(names)
    assert model_input_size("lenet") == 28
    assert model_input_size("ResNet110") == 32  # names are case-insensitive


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(("num_classes", "in_channels"), [(10, 3), (7, 1)])
def test_every_model_shapes_gradients_determinism(name: str, num_classes: int, in_channels: int) -> None:
    torch.manual_seed(0)
    size = model_input_size(name)
    net = get_model(name, num_classes=num_classes, in_channels=in_channels)
    assert isinstance(net, nn.Module)
    assert not any(isinstance(m, Normalize) for m in net.modules()), "get_model returns the bare network"

    x = torch.rand(2, in_channels, size, size, requires_grad=True)
    net.train()
    out = net(x)
    assert out.shape == (2, num_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()

    out[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert params
    no_grad = [n for n, p in params if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    assert sum(float(p.grad.abs().sum()) for _, p in params) > 0

    net.eval()
    with torch.no_grad():
        y1 = net(x.detach())
        y2 = net(x.detach())
    assert torch.equal(y1, y2)
    # Eval mode is per-sample: an input's logits do not depend on the rest of the batch.
    with torch.no_grad():
        single = net(x.detach()[:1])
    torch.testing.assert_close(single, y1[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_with_normalization_and_roundtrips(name: str, tmp_path: Path) -> None:
    in_channels = 3
    size = model_input_size(name)
    kwargs = {"input_size": size} if name.startswith("lenet") else {}
    model = build_model(name, num_classes=5, in_channels=in_channels, mean=CIFAR_MEAN, std=CIFAR_STD, **kwargs)
    assert isinstance(model, nn.Sequential) and isinstance(model[0], Normalize)
    meta = CheckpointMeta(
        arch=name,
        arch_kwargs=kwargs,
        dataset="cifar10",
        num_classes=5,
        in_channels=in_channels,
        input_size=size,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        noise="gaussian",
        sigma=0.25,
    )
    path = save_checkpoint(tmp_path / f"{name}.pt", model.eval(), meta=meta)
    loaded, loaded_meta = load_checkpoint(path)
    x = torch.rand(1, in_channels, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded_meta == meta


# --------------------------------------------------------------------------- architectures


@pytest.mark.parametrize(
    ("depth", "paper_params"),
    [(20, 0.27e6), (56, 0.85e6), (110, 1.7e6)],
)
@pytest.mark.parametrize("shortcut", ["projection", "padding"])
def test_resnet_depth_and_parameter_count_match_he_et_al(depth: int, paper_params: float, shortcut: str) -> None:
    net = CifarResNet(depth=depth, num_classes=10, in_channels=3, shortcut=shortcut)  # type: ignore[arg-type]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == depth  # "depth" counts the weighted 3x3 convs and the fc layer
    n_params = sum(p.numel() for p in net.parameters())
    # Table 6 of He et al. 2016 (rounded): 0.27M, 0.85M, 1.7M.
    assert abs(n_params - paper_params) / paper_params < 0.02
    assert get_model(f"resnet{depth}", num_classes=10, in_channels=3).depth == depth


def test_resnet_rejects_bad_depth_and_shortcut() -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=21)
    with pytest.raises(ValueError, match="shortcut"):
        CifarResNet(depth=20, shortcut="conv")  # type: ignore[arg-type]


def test_padding_shortcut_block_matches_option_a() -> None:
    # Option A: the shortcut of a downsampling block is x[:, :, ::2, ::2] with zero channels added.
    net = CifarResNet(depth=8, shortcut="padding").eval()
    block = net.layer2[0]
    for m in (block.conv1, block.conv2):
        nn.init.zeros_(m.weight)  # residual branch outputs bn(0) = bias = 0
    x = torch.rand(2, 16, 8, 8)
    with torch.no_grad():
        out = block(x)
    expected = torch.zeros(2, 32, 4, 4)
    expected[:, 8:24] = x[:, :, ::2, ::2]
    torch.testing.assert_close(out, expected)


def test_lenet_input_sizes_and_clear_error() -> None:
    net32 = LeNet(num_classes=10, in_channels=1, input_size=32).eval()
    assert net32(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    net28 = get_model("lenet", num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="input_size"):
        net28(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="input_size"):
        LeNet(input_size=2)


def test_resnet50_matches_he_et_al() -> None:
    torch.manual_seed(0)
    net = get_model("resnet50", num_classes=1000, in_channels=3)
    assert isinstance(net, ImageNetResNet)
    assert model_input_size("resnet50") == 224
    # The standard ResNet-50 figure for 1000 classes (He et al. 2016 report "25.6M").
    assert sum(p.numel() for p in net.parameters()) == 25_557_032
    # Depth 50: the weighted layers on the main path (3 per bottleneck, 3+4+6+3 blocks), conv1 and fc.
    blocks = [m for m in net.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16 and 3 * len(blocks) + 2 == 50
    projections = [b for b in blocks if b.downsample is not None]
    assert len(projections) == 4, "one projection shortcut per stage, where the shape changes"
    # The common key layout, so ResNet-50 state dicts in that layout load as they are.
    keys = set(net.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer4.2.conv3.weight", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.weight", "fc.weight", "fc.bias"} <= keys

    stage_shapes = []
    hooks = [getattr(net, f"layer{i}").register_forward_hook(
        lambda _m, _i, out: stage_shapes.append(tuple(out.shape[1:]))) for i in range(1, 5)]
    with torch.no_grad():
        out = net.eval()(torch.rand(2, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    # Table 1 of He et al.: conv2_x..conv5_x at 56, 28, 14, 7 pixels with 256..2048 channels.
    assert stage_shapes == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]

    assert sum(p.numel() for p in get_model("resnet50", num_classes=10, in_channels=3).parameters()) == (
        25_557_032 - 2048 * 990 - 990
    )
    with pytest.raises(ValueError, match="four positive integers"):
        ImageNetResNet(blocks=(3, 4, 6))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        net(torch.rand(3, 224, 224))


# --------------------------------------------------------------------------- Normalize and build_model


def test_normalize_math_and_shapes() -> None:
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.25, 0.5]
    layer = Normalize(mean, std)
    x = torch.rand(4, 3, 5, 6)
    out = layer(x)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (x[:, c] - mean[c]) / std[c])
    torch.testing.assert_close(layer(x[0]), out[0])  # a single [C, H, W] image
    # Exact values: pixels equal to the mean map to 0, mean + std maps to 1.
    probe = torch.tensor(mean).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.equal(layer(probe), torch.zeros(1, 3, 2, 2))
    torch.testing.assert_close(layer(probe + torch.tensor(std).view(1, 3, 1, 1)), torch.ones(1, 3, 2, 2))


def test_normalize_buffers_follow_dtype_and_state_dict() -> None:
    layer = Normalize([0.5], [0.25])
    assert set(layer.state_dict()) == {"mean", "std"}
    layer64 = layer.to(torch.float64)
    assert layer64.mean.dtype == torch.float64
    x = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    assert layer64(x).dtype == torch.float64
    assert Normalize([0.5], [0.25])(x.to(torch.bfloat16)).dtype == torch.bfloat16  # no silent promotion


def test_normalize_errors_and_repr() -> None:
    layer = Normalize([0.4914, 0.4822, 0.4465], [0.247, 0.2435, 0.2616])
    text = repr(layer)
    assert text.startswith("Normalize(") and "0.4914" in text and "0.2616" in text
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\[2, 1, 4, 4\]"):
        layer(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="std"):
        Normalize([0.5], [0.0])
    with pytest.raises(ValueError, match="channels"):
        Normalize([0.5, 0.5], [0.2])


def test_build_model_is_normalize_then_net() -> None:
    torch.manual_seed(1)
    model = build_model("lenet", num_classes=10, in_channels=1, mean=[0.1307], std=[0.3081]).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model[1]((x - 0.1307) / 0.3081))
    with pytest.raises(ValueError, match="one value per input channel"):
        build_model("resnet20", num_classes=10, in_channels=3, mean=[0.5], std=[0.5])
    with pytest.raises(ValueError, match="unknown model 'resnet7'.*resnet110"):
        get_model("resnet7", num_classes=10, in_channels=3)


def test_register_model_adds_an_entry_and_refuses_duplicates() -> None:
    from smoothcert.models import MODELS

    name = "_test_linear_model"
    try:

        @register_model(name, input_size=4)
        def tiny(*, num_classes: int, in_channels: int) -> nn.Module:
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 16, num_classes))

        assert name in list_models() and model_input_size(name) == 4
        assert get_model(name, num_classes=3, in_channels=2)(torch.rand(2, 2, 4, 4)).shape == (2, 3)
        with pytest.raises(ValueError, match="already registered"):
            register_model(name)(tiny)
    finally:
        MODELS._entries.pop(name, None)


# --------------------------------------------------------------------------- checkpoints


def _meta(**changes: object) -> CheckpointMeta:
    values: dict[str, object] = dict(
        arch="resnet20",
        dataset="cifar10",
        num_classes=10,
        in_channels=3,
        input_size=32,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        noise="gaussian",
        sigma=0.5,
        training={"method": "gaussian", "lr": 0.1, "epochs": 90},
        epoch=3,
    )
    values.update(changes)
    return CheckpointMeta(**values)  # type: ignore[arg-type]


def _trained_resnet20() -> nn.Sequential:
    """A resnet20 whose batchnorm running statistics differ from their initial values."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=3, mean=CIFAR_MEAN, std=CIFAR_STD)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))
    return model.eval()


def test_meta_dict_roundtrip_and_validation() -> None:
    meta = _meta(input_size=(32, 32), mean=tuple(CIFAR_MEAN))
    data = meta.to_dict()
    assert data["input_size"] == [32, 32] and isinstance(data["mean"], list)
    assert CheckpointMeta.from_dict(data) == meta
    assert set(CheckpointMeta.required_keys()) == {
        "arch", "dataset", "num_classes", "in_channels", "input_size", "mean", "std", "noise", "sigma"
    }
    data.pop("std")
    with pytest.raises(ValueError, match=r"missing required keys \['std'\]"):
        CheckpointMeta.from_dict(data)
    with pytest.raises(ValueError, match="unknown metadata keys.*'sgima'"):
        CheckpointMeta.from_dict({**meta.to_dict(), "sgima": 0.5})
    with pytest.raises(ValueError, match="mean has 1 values but in_channels=3"):
        _meta(mean=[0.5])
    with pytest.raises(ValueError, match="sigma"):
        _meta(sigma=-1.0)


def test_checkpoint_roundtrip_outputs_identical(tmp_path: Path) -> None:
    model = _trained_resnet20()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    optimizer.step()
    model.eval()

    path = save_checkpoint(
        tmp_path / "sub" / "model.pt",
        model,
        meta=_meta().to_dict(),  # a dict is accepted too
        optimizer_state=optimizer.state_dict(),
        extra={"best_acc": 0.81, "history": [1.0, 0.5]},
    )
    assert path.is_file()

    loaded, meta = load_checkpoint(path)
    assert meta == _meta()
    assert not loaded.training, "load_checkpoint returns an eval-mode model"
    assert isinstance(loaded[0], Normalize)
    torch.testing.assert_close(loaded[0].mean.flatten(), torch.tensor(CIFAR_MEAN))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))

    payload = read_checkpoint(path)
    assert payload["format"] == CHECKPOINT_FORMAT and payload["version"] == CHECKPOINT_VERSION
    assert payload["meta"]["epoch"] == 3 and payload["extra"] == {"best_acc": 0.81, "history": [1.0, 0.5]}
    # The optimizer state is usable for resuming: momentum buffers come back unchanged.
    resumed = torch.optim.SGD(loaded.parameters(), lr=0.1, momentum=0.9)
    resumed.load_state_dict(payload["optimizer_state"])
    first = next(iter(optimizer.state.values()))["momentum_buffer"]
    assert torch.equal(next(iter(resumed.state.values()))["momentum_buffer"], first)


def test_checkpoint_unwraps_dataparallel_and_keeps_dtype(tmp_path: Path) -> None:
    model = _trained_resnet20()
    path = save_checkpoint(tmp_path / "dp.pt", nn.DataParallel(model), meta=_meta())
    assert not any(k.startswith("module.") for k in read_checkpoint(path)["state_dict"])
    path64 = save_checkpoint(tmp_path / "f64.pt", model.double(), meta=_meta())
    loaded, _ = load_checkpoint(path64)
    assert next(loaded.parameters()).dtype == torch.float64


def test_load_refuses_bare_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save(_trained_resnet20().state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "bare state_dict" in message
    assert "missing: arch, dataset" in message and "mean, std" in message
    assert "cannot be guessed" in message and "build_model" in message


def test_load_refuses_foreign_training_checkpoint(tmp_path: Path) -> None:
    # The layout of Cohen et al. 2019's checkpoints: {'epoch', 'arch', 'state_dict', 'optimizer'}.
    path = tmp_path / "cohen.pt"
    torch.save({"epoch": 90, "arch": "cifar_resnet110", "state_dict": {"w": torch.zeros(1)}, "optimizer": {}}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "not a smoothcert checkpoint" in message and "'arch'" in message
    missing = message.split("missing: ")[1].split(")")[0]
    assert "mean" in missing and "std" in missing and "sigma" in missing and "arch" not in missing.split(", ")
    assert "normalization constants" in message


def test_load_refuses_missing_metadata_keys(tmp_path: Path) -> None:
    model = _trained_resnet20()
    path = save_checkpoint(tmp_path / "m.pt", model, meta=_meta())
    payload = read_checkpoint(path)
    del payload["meta"]["mean"], payload["meta"]["sigma"]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"invalid metadata: metadata is missing required keys \['mean', 'sigma'\]"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (os.urandom(2000), "not a readable torch file"),
        (b"", "not a readable torch file"),
        (b"idx\tlabel\tpredict\tradius\tcorrect\ttime\n", "not a readable torch file"),
    ],
)
def test_load_refuses_garbage_files(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)


def test_load_refuses_missing_file_and_pickled_objects(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "absent.pt")
    path = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), path)  # a whole pickled module: code, not data
    with pytest.raises(CheckpointError, match="weights_only=True.*Linear"):
        load_checkpoint(path)


def test_load_refuses_unknown_arch(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", _trained_resnet20(), meta=_meta())
    payload = read_checkpoint(path)
    payload["meta"]["arch"] = "wide_resnet_9000"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="unknown architecture 'wide_resnet_9000'; known: .*resnet20.*register_model"):
        load_checkpoint(path)


def test_load_refuses_weights_that_do_not_fit(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", _trained_resnet20(), meta=_meta())
    payload = read_checkpoint(path)
    payload["meta"]["arch"] = "resnet56"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit architecture 'resnet56'.*missing keys: 1.layer1.3"):
        load_checkpoint(path)

    payload["meta"]["arch"] = "resnet20"
    payload["meta"]["num_classes"] = 100
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"shape mismatches: 1.fc.weight: saved \[10, 64\] vs expected \[100, 64\]"):
        load_checkpoint(path)


def test_load_refuses_normalization_that_disagrees_with_metadata(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", _trained_resnet20(), meta=_meta())
    payload = read_checkpoint(path)
    payload["meta"]["mean"] = [0.5, 0.5, 0.5]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="Normalize mean .* differs from the metadata mean"):
        load_checkpoint(path)


def test_load_refuses_newer_format_version(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", _trained_resnet20(), meta=_meta())
    payload = read_checkpoint(path)
    payload["version"] = CHECKPOINT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="newer than this smoothcert reads"):
        read_checkpoint(path)


def test_save_refuses_inconsistent_model_and_leaves_nothing(tmp_path: Path) -> None:
    model = _trained_resnet20()
    with pytest.raises(CheckpointError, match="does not match the architecture.*arch='resnet56'"):
        save_checkpoint(tmp_path / "a.pt", model, meta=_meta(arch="resnet56"))
    with pytest.raises(CheckpointError, match="not the bare network"):
        save_checkpoint(tmp_path / "a.pt", model[1], meta=_meta())
    with pytest.raises(CheckpointError, match="Normalize std .* differs"):
        save_checkpoint(tmp_path / "a.pt", model, meta=_meta(std=[0.5, 0.5, 0.5]))
    with pytest.raises(CheckpointError, match=r"checkpoint\['extra'\]\['fn'\] is a builtins.builtin_function_or_method"):
        save_checkpoint(tmp_path / "a.pt", model, meta=_meta(), extra={"fn": len})
    with pytest.raises(CheckpointError, match="missing required keys"):
        save_checkpoint(tmp_path / "a.pt", model, meta={"arch": "resnet20"})
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _trained_resnet20()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, meta=_meta(epoch=1))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "no temporary file is left behind"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "permissions follow the umask, not mkstemp's 0600"
    before = path.read_bytes()

    def interrupted_save(obj: object, f: object) -> None:
        f.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, meta=_meta(epoch=2))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert path.read_bytes() == before, "an interrupted save leaves the previous checkpoint intact"
    assert load_checkpoint(path)[1].epoch == 1
