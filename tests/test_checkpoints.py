"""One checkpoint core for classifiers and denoisers, one training loop for both, and the checkpoints
written before the refactor (tests/data/legacy): they load, and they resume for one more epoch."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import smoothcert.denoise.train as denoise_train
from smoothcert.checkpoints import CheckpointKind, checkpoint_kinds, read_any
from smoothcert.cli import main
from smoothcert.data import get_dataset
from smoothcert.denoise import DenoiserMeta, build_denoiser, load_denoiser, sigma_ladder, train_denoiser
from smoothcert.denoise.checkpoint import DENOISER_CHECKPOINT
from smoothcert.errors import CheckpointError
from smoothcert.models import CLASSIFIER_CHECKPOINT, CheckpointMeta, build_model, load_checkpoint, save_checkpoint
from smoothcert.noise import get_noise
from smoothcert.train import TrainConfig, get_method, loop, train

LEGACY = Path(__file__).parent / "data" / "legacy"

#: The commands that wrote the legacy checkpoints (tests/data/legacy/README.md), on the CPU.
LEGACY_COMMANDS = {
    "model.pt": ["train", "--dataset", "embedded", "--arch", "lenet-small", "--sigma", "0.25", "--limit", "256",
                 "--batch", "64", "--lr", "0.02"],
    "dncnn.pt": ["train-denoiser", "--dataset", "embedded", "--kind", "dncnn", "--arch-arg", "depth=3",
                 "--arch-arg", "width=8", "--sigma", "0.25", "--limit", "64", "--batch", "32"],
    "score.pt": ["train-denoiser", "--dataset", "embedded", "--kind", "scorenet", "--loss", "dsm", "--arch-arg",
                 "width=8", "--limit", "64", "--batch", "32", "--ladder", "1.0", "0.1", "3"],
}
KINDS = {"model.pt": CLASSIFIER_CHECKPOINT, "dncnn.pt": DENOISER_CHECKPOINT, "score.pt": DENOISER_CHECKPOINT}


def _classifier(tmp_path: Path) -> Path:
    model = build_model("lenet-small", num_classes=10, in_channels=1, mean=[0.5], std=[0.25])
    meta = CheckpointMeta(arch="lenet-small", dataset="embedded", num_classes=10, in_channels=1, input_size=28,
                          mean=[0.5], std=[0.25], noise="gaussian", sigma=0.25)
    return save_checkpoint(tmp_path / "c.pt", model, meta=meta)


def _denoiser(tmp_path: Path) -> Path:
    net = build_denoiser("dncnn", in_channels=1, depth=3, width=8)
    meta = DenoiserMeta(arch="dncnn", arch_kwargs={"depth": 3, "width": 8}, dataset="embedded", in_channels=1,
                        input_size=28, noise="gaussian", sigma=0.25)
    return DENOISER_CHECKPOINT.save(tmp_path / "d.pt", net, meta=meta)


# ---------------------------------------------------------------- one core, two kinds of metadata


def test_one_core_reads_both_kinds(tmp_path: Path) -> None:
    assert {CLASSIFIER_CHECKPOINT, DENOISER_CHECKPOINT} <= set(checkpoint_kinds())
    assert CLASSIFIER_CHECKPOINT.meta_type is CheckpointMeta and DENOISER_CHECKPOINT.meta_type is DenoiserMeta
    classifier, denoiser = _classifier(tmp_path), _denoiser(tmp_path)
    for path, kind, meta_type in ((classifier, CLASSIFIER_CHECKPOINT, CheckpointMeta),
                                  (denoiser, DENOISER_CHECKPOINT, DenoiserMeta)):
        found, payload = read_any(path)
        assert found is kind and isinstance(kind.meta_of(payload, path), meta_type)
        net, meta = kind.load(path)
        assert isinstance(meta, meta_type) and not net.training
    # Each kind refuses the other's file and names the loader to use.
    with pytest.raises(CheckpointError, match="denoiser checkpoint; load it with smoothcert.denoise.load_denoiser"):
        load_checkpoint(denoiser)
    with pytest.raises(CheckpointError, match="load it with smoothcert.models.load_checkpoint"):
        load_denoiser(classifier)


def test_a_new_kind_is_a_metadata_class_and_a_build_function(tmp_path: Path) -> None:
    from dataclasses import dataclass, field
    from typing import Any

    from smoothcert.checkpoints import MetaRecord

    @dataclass(kw_only=True)
    class LinearMeta(MetaRecord):
        arch: str = "linear"
        arch_kwargs: dict[str, Any] = field(default_factory=dict)
        width: int
        training: dict[str, Any] = field(default_factory=dict)
        epoch: int = 0

    kind = CheckpointKind(label="linear checkpoint", format="test-linear", version=1, meta_type=LinearMeta,
                          build=lambda meta: torch.nn.Linear(meta.width, 2), loader="kind.load")
    net = torch.nn.Linear(3, 2)
    kind.save(tmp_path / "l.pt", net, meta=LinearMeta(width=3), extra={"note": "x"})
    loaded, meta = kind.load(tmp_path / "l.pt")
    assert meta == LinearMeta(width=3) and torch.equal(loaded.weight, net.weight)
    with pytest.raises(CheckpointError, match=r"does not match the architecture.*shape mismatches: weight"):
        kind.save(tmp_path / "x.pt", net, meta=LinearMeta(width=4))
    with pytest.raises(CheckpointError, match="is a smoothcert linear checkpoint; load it with kind.load"):
        load_checkpoint(tmp_path / "l.pt")
    assert not (tmp_path / "x.pt").exists()


# ---------------------------------------------------------------- one loop for both trainers


def test_both_trainers_run_the_one_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert denoise_train.run_epochs is loop.run_epochs
    calls: list[str] = []
    real = loop.run_epochs

    def spy(model, data, **kwargs):
        calls.append(type(kwargs["optimizer"]).__name__)
        return real(model, data, **kwargs)

    monkeypatch.setattr(loop, "run_epochs", spy)
    monkeypatch.setattr(denoise_train, "run_epochs", spy)
    data = get_dataset("embedded", split="train").subset(range(32))
    model = build_model("lenet-small", num_classes=10, in_channels=1, mean=[0.5], std=[0.25])
    meta = CheckpointMeta(arch="lenet-small", dataset="embedded", num_classes=10, in_channels=1, input_size=28,
                          mean=[0.5], std=[0.25], noise="none", sigma=0.0)
    train(model, data, method=get_method("gaussian"), noise=get_noise("gaussian", sigma=0.25), meta=meta,
          config=TrainConfig(epochs=1, batch_size=16, lr=0.01), checkpoint=tmp_path / "c.pt", progress=False)
    net = build_denoiser("dncnn", in_channels=1, depth=3, width=8)
    train_denoiser(net, data, loss="mse", noise=get_noise("gaussian", sigma=0.25), epochs=1, batch_size=16)
    assert calls == ["SGD", "Adam"]


def test_an_interrupted_score_network_run_resumes_exactly(tmp_path: Path) -> None:
    x = get_dataset("embedded", split="train").subset(range(48))
    ladder = sigma_ladder(1.0, 0.1, num_levels=3)
    meta = DenoiserMeta(arch="scorenet", arch_kwargs={"width": 8}, dataset="embedded", in_channels=1,
                        input_size=28)

    def run(epochs: int, name: str, resume: bool = False):
        torch.manual_seed(0)
        net = build_denoiser("scorenet", in_channels=1, width=8)
        history = train_denoiser(net, x, loss="dsm", ladder=ladder, epochs=epochs, batch_size=16, seed=2,
                                 checkpoint=tmp_path / name, meta=meta, resume=resume, test_set=x)
        return net, history

    straight, hist = run(2, "a.pt")
    run(1, "b.pt")
    resumed, hist_b = run(2, "b.pt", resume=True)
    assert [h["epoch"] for h in hist_b] == [1, 2] and "test_dsm" in hist_b[1]
    assert [(h["loss"], h["test_dsm"]) for h in hist_b] == [(h["loss"], h["test_dsm"]) for h in hist]
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)


# ---------------------------------------------------------------- checkpoints written before the refactor


@pytest.mark.parametrize("name", sorted(LEGACY_COMMANDS))
def test_legacy_checkpoints_load(name: str) -> None:
    kind, payload = read_any(LEGACY / name)
    assert kind is KINDS[name] and payload["versions"]["smoothcert"] == "0.1.0"
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        if name == "model.pt":
            model, meta = load_checkpoint(LEGACY / name)
            assert meta.arch == "lenet-small" and meta.sigma == 0.25 and meta.epoch == 1
            assert model(x).shape == (2, 10)
        else:
            net, meta = load_denoiser(LEGACY / name)
            assert meta.epoch == 1
            out = net(x) if meta.kind == "denoiser" else net(x, 0.5)
            assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(LEGACY_COMMANDS))
def test_legacy_checkpoints_resume_for_one_more_epoch(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    shutil.copy(LEGACY / name, path)
    kind = KINDS[name]
    before = kind.read(path)
    command = [*LEGACY_COMMANDS[name], "--quiet", "--device", "cpu", "--out", str(path)]
    assert main([*command, "--epochs", "2", "--resume"]) == 0
    after = kind.read(path)
    assert after["meta"]["epoch"] == 2
    history = after["extra"]["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == before["extra"]["history"][0]
    assert after["meta"]["training"] == before["meta"]["training"] | {"epochs": 2}
    assert any(not torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    # The same command without more epochs finds the run finished and leaves it alone.
    assert main([*command, "--epochs", "2", "--resume"]) == 0
    assert kind.read(path)["extra"]["history"] == history


@pytest.mark.parametrize("name", sorted(LEGACY_COMMANDS))
def test_legacy_checkpoints_are_what_the_current_loop_writes(name: str, tmp_path: Path) -> None:
    # The loop and the checkpoint core were rewritten, not the training: on the torch version that wrote
    # the legacy files, today's command gives the same weights after one epoch.
    legacy = KINDS[name].read(LEGACY / name)
    if legacy["versions"]["torch"] != torch.__version__:
        pytest.skip(f"legacy files were written with torch {legacy['versions']['torch']}")
    path = tmp_path / name
    # The files were written with 2 CPU threads; CPU kernels reduce in an order that depends on the
    # thread count (1 thread put score.pt's weights 1% apart after this epoch), so pin it.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main([*LEGACY_COMMANDS[name], "--quiet", "--device", "cpu", "--epochs", "1", "--out", str(path)]) == 0
    finally:
        torch.set_num_threads(threads)
    fresh = KINDS[name].read(path)
    assert fresh["meta"] == legacy["meta"]
    for k, v in legacy["state_dict"].items():
        torch.testing.assert_close(fresh["state_dict"][k], v, rtol=0, atol=0)
