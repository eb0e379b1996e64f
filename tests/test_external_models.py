"""torchvision / timm classifiers by name with a weights file (``--arch torchvision:NAME --weights FILE``).

Neither package is installed in CI: fake ``torchvision`` and ``timm`` modules are put into
``sys.modules`` with the calls smoothcert makes (``torchvision.models.get_model`` /
``list_models``, ``timm.create_model`` / ``is_model``) returning tiny networks. The real path is
tested against the installed torchvision when there is one (skipped otherwise).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smoothcert.cli import main
from smoothcert.errors import CheckpointError, InputError, MissingFileError
from smoothcert.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalize,
    is_external_arch,
    load_external,
    parse_external_arch,
)
from smoothcert.runs import ClassifierSpec, DataSpec, load_base, run_facts


class Tiny(nn.Module):
    """A small classifier with batchnorm (so the state dict holds buffers and a step counter)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))


def _tiny(in_channels: int, num_classes: int, seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    net = Tiny(in_channels, num_classes)
    with torch.no_grad():  # non-trivial batchnorm statistics, so a wrongly loaded buffer shows
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture
def fake_torchvision(monkeypatch):
    """``torchvision`` with ``models.get_model``: "tiny" (1 channel, as the embedded MNIST) and
    "tiny_rgb" (3 channels), both classification models; "fasterrcnn_tiny" is a detection model."""
    calls: list[tuple[str, object, int]] = []
    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.99-fake"
    models = types.ModuleType("torchvision.models")
    builders = {"tiny": 1, "tiny_rgb": 3}

    def list_models(module=None):
        return sorted(builders) if module is models else sorted(builders) + ["fasterrcnn_tiny"]

    def get_model(name, *, weights=None, num_classes=1000):
        calls.append((name, weights, num_classes))
        if name not in builders:
            raise ValueError(f"Unknown model {name}")
        return Tiny(builders[name], num_classes)

    models.list_models, models.get_model = list_models, get_model
    tv.models = models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return calls


@pytest.fixture
def fake_timm(monkeypatch):
    """``timm`` with ``create_model``: "tinynet" (its pretrained_cfg states mean/std 0.5) and
    "bare" (no configuration)."""
    calls: list[dict] = []
    timm = types.ModuleType("timm")
    timm.__version__ = "9.9-fake"

    def create_model(name, pretrained=False, num_classes=1000, in_chans=3):
        calls.append({"name": name, "pretrained": pretrained, "num_classes": num_classes, "in_chans": in_chans})
        net = Tiny(in_chans, num_classes)
        if name.split(".")[0] == "tinynet":
            net.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (3, 8, 8)}
        return net

    timm.create_model = create_model
    timm.is_model = lambda name: name.split(".")[0] in ("tinynet", "bare")
    timm.list_models = lambda: ["bare", "tinynet"]
    monkeypatch.setitem(sys.modules, "timm", timm)
    return calls


def _save(net: nn.Module, path: Path, *, prefix: str = "") -> Path:
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)
    return path


# ------------------------------------------------------------------------------------- names


def test_arch_names_are_provider_colon_name():
    assert is_external_arch("torchvision:resnet50") and is_external_arch("timm:resnet50.a1_in1k")
    assert not is_external_arch("resnet50") and not is_external_arch("keras:resnet50")
    assert not is_external_arch("torchvision:") and not is_external_arch(None)
    arch = parse_external_arch("timm:resnet50.a1_in1k")
    assert (arch.provider, arch.name, str(arch)) == ("timm", "resnet50.a1_in1k", "timm:resnet50.a1_in1k")
    with pytest.raises(InputError, match="torchvision:NAME or timm:NAME"):
        parse_external_arch("resnet50")


# ---------------------------------------------------------------------- models layer: loading


def test_torchvision_model_gets_the_file_weights_and_imagenet_normalization(fake_torchvision, tmp_path):
    source = _tiny(3, 10, seed=1)
    weights = _save(source, tmp_path / "w.pt", prefix="module.")  # DataParallel prefix stripped
    loaded = load_external("torchvision:tiny_rgb", weights, dataset="cifar10", num_classes=10, input_shape=(3, 8, 8))
    assert fake_torchvision == [("tiny_rgb", None, 10)]  # random init, nothing downloaded, our classes
    model, meta = loaded.model, loaded.meta
    assert isinstance(model[0], Normalize) and not model.training
    x = torch.rand(5, 3, 8, 8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source((x - mean) / std), rtol=0, atol=1e-6)
    assert meta.arch == "torchvision:tiny_rgb" and meta.num_classes == 10 and meta.input_shape == (3, 8, 8)
    assert meta.mean == pytest.approx([0.485, 0.456, 0.406]) and meta.std == pytest.approx([0.229, 0.224, 0.225])
    assert meta.noise == "none" and meta.training["provider"] == "torchvision"
    assert meta.training["provider_version"] == "0.99-fake" and meta.training["normalization"].startswith("torchvision")
    assert len(meta.training["source_sha256"]) == 64 and meta.training["source_file"] == "w.pt"


def test_a_state_dict_wrapper_and_missing_step_counters_are_accepted(fake_torchvision, tmp_path):
    source = _tiny(3, 4)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    loaded = load_external("torchvision:tiny_rgb", tmp_path / "w.pt", dataset="d", num_classes=4, input_shape=(3, 6, 6))
    torch.testing.assert_close(loaded.model[1].fc.weight, source.fc.weight)


def test_explicit_normalization_overrides_and_one_value_serves_every_channel(fake_torchvision, tmp_path):
    weights = _save(_tiny(3, 10), tmp_path / "w.pt")
    loaded = load_external("torchvision:tiny_rgb", weights, dataset="d", num_classes=10, input_shape=(3, 8, 8),
                           mean=(0.5,), std=(0.25,))
    assert loaded.meta.mean == [0.5] * 3 and loaded.meta.std == [0.25] * 3
    assert loaded.meta.training["normalization"] == "given"
    torch.testing.assert_close(loaded.model[0].std.flatten(), torch.full((3,), 0.25))


def test_timm_model_uses_its_pretrained_cfg(fake_timm, tmp_path):
    source = _tiny(3, 7, seed=2)
    weights = _save(source, tmp_path / "w.pt")
    loaded = load_external("timm:tinynet.a1_in1k", weights, dataset="d", num_classes=7, input_shape=(3, 8, 8))
    assert fake_timm == [{"name": "tinynet.a1_in1k", "pretrained": False, "num_classes": 7, "in_chans": 3}]
    assert loaded.meta.mean == [0.5] * 3 and loaded.meta.std == [0.5] * 3
    assert loaded.meta.training["normalization"] == "timm pretrained_cfg of tinynet.a1_in1k"
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), source((x - 0.5) / 0.5), rtol=0, atol=1e-6)


def test_timm_model_without_a_configuration_needs_explicit_normalization(fake_timm, tmp_path):
    weights = _save(_tiny(1, 10), tmp_path / "w.pt")
    with pytest.raises(InputError, match="no mean/std.*--normalize-mean"):
        load_external("timm:bare", weights, dataset="d", num_classes=10, input_shape=(1, 8, 8))
    loaded = load_external("timm:bare", weights, dataset="d", num_classes=10, input_shape=(1, 8, 8),
                           mean=[0.1307], std=[0.3081])
    assert fake_timm[-1]["in_chans"] == 1 and loaded.meta.mean == [0.1307]


# ----------------------------------------------------------------------------- errors, by name


def test_missing_package_names_the_extra(monkeypatch, tmp_path):
    weights = _save(_tiny(3, 10), tmp_path / "w.pt")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(InputError, match=r"'torchvision'.*not installed.*smoothcert\[vision\]"):
        load_external("torchvision:resnet50", weights, dataset="d", num_classes=10, input_shape=(3, 8, 8))
    with pytest.raises(InputError, match=r"'timm'.*not installed.*smoothcert\[timm\]"):
        load_external("timm:resnet50", weights, dataset="d", num_classes=10, input_shape=(3, 8, 8))


def test_unknown_and_non_classification_names_are_refused(fake_torchvision, fake_timm, tmp_path):
    weights = _save(_tiny(3, 10), tmp_path / "w.pt")
    kw = {"dataset": "d", "num_classes": 10, "input_shape": (3, 8, 8)}
    with pytest.raises(InputError, match="no classification model 'tiny_rbg'; did you mean tiny_rgb"):
        load_external("torchvision:tiny_rbg", weights, **kw)
    with pytest.raises(InputError, match="no classification model 'fasterrcnn_tiny'"):
        load_external("torchvision:fasterrcnn_tiny", weights, **kw)
    with pytest.raises(InputError, match="timm has no classification model 'tinynett'; did you mean tinynet"):
        load_external("timm:tinynett", weights, **kw)
    assert fake_torchvision == [] and fake_timm == []  # refused before anything is built


def test_missing_and_wrong_weights_are_refused_with_the_keys_named(fake_torchvision, tmp_path):
    kw = {"dataset": "d", "num_classes": 10, "input_shape": (3, 8, 8)}
    with pytest.raises(MissingFileError, match="no weights file at .*nope.pt"):
        load_external("torchvision:tiny_rgb", tmp_path / "nope.pt", **kw)
    state = _tiny(3, 10).state_dict()
    torch.save({**state, "head.weight": torch.zeros(2)}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="extra.pt weights do not fit torchvision:tiny_rgb: unknown keys head.weight"):
        load_external("torchvision:tiny_rgb", tmp_path / "extra.pt", **kw)
    torch.save({k: v for k, v in state.items() if k != "fc.bias"}, tmp_path / "short.pt")
    with pytest.raises(CheckpointError, match="missing keys fc.bias"):
        load_external("torchvision:tiny_rgb", tmp_path / "short.pt", **kw)
    _save(_tiny(3, 1000), tmp_path / "imagenet.pt")  # 1000 classes for a 10-class dataset
    with pytest.raises(CheckpointError, match=r"shape mismatches fc.bias \[1000\] vs \[10\], fc.weight \[1000, 4\] vs \[10, 4\] "
                                              r"\(the network was built for the 10 classes of d\)"):
        load_external("torchvision:tiny_rgb", tmp_path / "imagenet.pt", **kw)
    torch.save({"model": _tiny(3, 10), "epoch": 3}, tmp_path / "pickled.pt")  # a whole module, not a state dict
    with pytest.raises(CheckpointError, match="pickled.pt"):
        load_external("torchvision:tiny_rgb", tmp_path / "pickled.pt", **kw)
    (tmp_path / "text.pt").write_text("not torch")
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        load_external("torchvision:tiny_rgb", tmp_path / "text.pt", **kw)


def test_normalization_that_does_not_fit_the_data_is_refused(fake_torchvision, tmp_path):
    weights = _save(_tiny(1, 10), tmp_path / "w.pt")
    with pytest.raises(InputError, match=r"normalization \(the one torchvision:tiny's weights expect\) has 3 "
                                         r"channel\(s\) but the data has 1"):
        load_external("torchvision:tiny", weights, dataset="mnist", num_classes=10, input_shape=(1, 28, 28))
    with pytest.raises(InputError, match="both"):
        load_external("torchvision:tiny", weights, dataset="mnist", num_classes=10, input_shape=(1, 28, 28),
                      mean=[0.1])
    rgb = _save(_tiny(3, 10), tmp_path / "rgb.pt")
    with pytest.raises(InputError, match=r"does not take the mnist inputs \[1, 28, 28\]"):
        load_external("torchvision:tiny_rgb", rgb, dataset="mnist", num_classes=10, input_shape=(1, 28, 28),
                      mean=[0.1], std=[0.3])


# ------------------------------------------------------------------------------ runs settings


def test_classifier_spec_takes_a_checkpoint_or_an_arch_with_weights():
    with pytest.raises(InputError, match="neither"):
        ClassifierSpec()
    with pytest.raises(InputError, match="both"):
        ClassifierSpec(checkpoint="m.pt", arch="torchvision:resnet50", weights="w.pt")
    with pytest.raises(InputError, match="needs its weights: --weights FILE"):
        ClassifierSpec(arch="torchvision:resnet50")
    with pytest.raises(InputError, match="weights belong to --arch"):
        ClassifierSpec(checkpoint="m.pt", weights="w.pt")
    with pytest.raises(InputError, match="--normalize-mean and --normalize-std"):
        ClassifierSpec(arch="timm:resnet50", weights="w.pt", mean=(0.5,))
    with pytest.raises(InputError, match="std must be finite numbers > 0"):
        ClassifierSpec(arch="timm:resnet50", weights="w.pt", mean=(0.5,), std=(0.0,))
    spec = ClassifierSpec(arch="timm:resnet50", weights=Path("w.pt"), mean=[0.5], std=[0.5])
    assert spec.weights == "w.pt" and spec.mean == (0.5,) and spec.std == (0.5,)


def test_load_base_builds_for_the_dataset_and_records_the_normalization(fake_torchvision, tmp_path):
    weights = _save(_tiny(1, 10), tmp_path / "w.pt")
    spec = ClassifierSpec(arch="torchvision:tiny", weights=str(weights), mean=(0.1307,), std=(0.3081,))
    with pytest.raises(InputError, match="needs --dataset"):
        load_base(spec, DataSpec(), torch.device("cpu"))
    data = DataSpec(dataset="embedded")
    model, meta, sha = load_base(spec, data, torch.device("cpu"))
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert meta.input_shape == (1, 28, 28) and meta.num_classes == 10 and sha == meta.training["source_sha256"]
    facts = run_facts(dataset="embedded", data=data, split="test", checkpoint_sha256=sha, meta=meta, denoiser=None)
    assert facts["arch"] == "torchvision:tiny"
    assert facts["normalize"] == {"mean": [pytest.approx(0.1307)], "std": [pytest.approx(0.3081)]}


# ------------------------------------------------------------------------------ command line


def _certify(weights: Path, out: Path, *extra: str) -> int:
    return main(["certify", "--arch", "torchvision:tiny", "--weights", str(weights), "--dataset", "embedded",
                 "--noise", "gaussian", "--sigma", "0.25", "--n0", "8", "--n", "32", "--alpha", "0.01",
                 "--batch", "40", "--quiet", "--device", "cpu", "--out", str(out), *extra])


def test_cli_certify_with_an_arch_resumes_and_refuses_another_normalization(fake_torchvision, tmp_path, capsys):
    weights = _save(_tiny(1, 10, seed=3), tmp_path / "tiny.pt")
    out = tmp_path / "r.tsv"
    norm = ["--normalize-mean", "0.1307", "--normalize-std", "0.3081"]
    assert _certify(weights, out, "--max", "2", *norm) == 0
    assert len(out.read_text().splitlines()) == 3
    sidecar = json.loads(Path(f"{out}.json").read_text())
    text = json.dumps(sidecar)
    assert "torchvision:tiny" in text and "0.3081" in text
    assert _certify(weights, out, "--max", "3", *norm) == 0  # the same command resumes: one more row
    assert [int(line.split("\t")[0]) for line in out.read_text().splitlines()[1:]] == [0, 1, 2]
    capsys.readouterr()
    assert _certify(weights, out, "--max", "3", "--normalize-mean", "0.5", "--normalize-std", "0.3081") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # the error: one line
    assert last.startswith("error:") and "normalize: file has {'mean': [0.1307]" in last
    other = _save(_tiny(1, 10, seed=4), tmp_path / "other.pt")
    assert _certify(other, out, "--max", "3", *norm) == 2  # other weights: another checkpoint_sha256
    assert "checkpoint_sha256" in capsys.readouterr().err


def test_cli_errors_are_one_line(fake_torchvision, tmp_path, capsys):
    weights = _save(_tiny(1, 10), tmp_path / "tiny.pt")
    out = tmp_path / "r.tsv"
    cases = [
        ([], "the data has 1"),  # torchvision's ImageNet constants on MNIST
        (["--normalize-mean", "0.1"], "both --normalize-mean and --normalize-std"),
    ]
    for extra, message in cases:
        assert _certify(weights, out, "--max", "1", *extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert _certify(tmp_path / "missing.pt", out, "--max", "1") == 2
    assert "no weights file" in capsys.readouterr().err
    assert main(["predict", "--arch", "torchvision:tiny", "--dataset", "embedded", "--out", str(out)]) == 2
    assert "needs its weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: one of --checkpoint / --arch
        main(["certify", "--dataset", "embedded", "--out", str(out)])
    assert not out.exists()


def test_cli_predict_and_attack_take_an_arch(fake_torchvision, tmp_path, capsys):
    weights = _save(_tiny(1, 10), tmp_path / "tiny.pt")
    common = ["--arch", "torchvision:tiny", "--weights", str(weights), "--dataset", "embedded", "--normalize-mean",
              "0.1307", "--normalize-std", "0.3081", "--quiet", "--device", "cpu", "--max", "2"]
    assert main(["predict", *common, "--noise", "gaussian", "--sigma", "0.25", "--n", "20",
                 "--out", str(tmp_path / "p.tsv")]) == 0
    assert len((tmp_path / "p.tsv").read_text().splitlines()) == 3
    assert main(["attack", *common, "--base", "--attack", "pgd", "--eps", "0.5", "--steps", "2",
                 "--out", str(tmp_path / "a.tsv")]) == 0
    assert len((tmp_path / "a.tsv").read_text().splitlines()) == 3


def test_a_run_without_noise_asks_for_it(fake_torchvision, tmp_path, capsys):
    weights = _save(_tiny(1, 10), tmp_path / "tiny.pt")
    code = main(["certify", "--arch", "torchvision:tiny", "--weights", str(weights), "--dataset", "embedded",
                 "--normalize-mean", "0.1307", "--normalize-std", "0.3081", "--quiet", "--device", "cpu",
                 "--out", str(tmp_path / "r.tsv")])
    assert code == 2 and "names no noise; pass --noise and --sigma" in capsys.readouterr().err


# --------------------------------------------------------------------- the real torchvision


def test_real_torchvision_resnet18(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    source = tv.models.resnet18(num_classes=10).eval()
    torch.save(source.state_dict(), tmp_path / "r18.pt")
    loaded = load_external("torchvision:resnet18", tmp_path / "r18.pt", dataset="cifar10", num_classes=10,
                           input_shape=(3, 32, 32))
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), source((x - mean) / std))
    with pytest.raises(InputError, match="no classification model"):
        load_external("torchvision:fasterrcnn_resnet50_fpn", tmp_path / "r18.pt", dataset="cifar10",
                      num_classes=10, input_shape=(3, 32, 32))
