"""Training: every noise trains through the same loop; checkpoints carry the method and noise."""

import pytest
import torch

from smoothcert.data import ArrayDataset, DatasetInfo, get_dataset, iter_batches
from smoothcert.models import CheckpointMeta, build_model, load_checkpoint
from smoothcert.noise import get_noise, list_noises
from smoothcert.train import TrainConfig, get_method, list_methods, noisy_accuracy, train


def _setup(noise_name: str):
    data = get_dataset("embedded", split="train").subset(range(512))
    info = data.info
    torch.manual_seed(0)
    model = build_model("lenet-small", num_classes=10, in_channels=1, mean=list(info.mean), std=list(info.std))
    meta = CheckpointMeta(arch="lenet-small", dataset="embedded", num_classes=10, in_channels=1, input_size=28,
                          mean=list(info.mean), std=list(info.std), noise="none", sigma=0.0)
    return data, model, meta, get_noise(noise_name, sigma=0.25)


def test_registry():
    assert "gaussian" in list_methods()
    with pytest.raises(ValueError, match="known: "):
        get_method("smoothadv-typo")


@pytest.mark.parametrize("noise_name", list_noises())
def test_loss_decreases_and_metadata_is_recorded(noise_name, tmp_path):
    data, model, meta, noise = _setup(noise_name)
    before = noisy_accuracy(model, data, noise=noise)
    config = TrainConfig(epochs=3, batch_size=32, lr=0.05, schedule="cosine", seed=1)
    history = train(model, data, method=get_method("gaussian"), noise=noise, config=config, meta=meta,
                    checkpoint=tmp_path / "m.pt", progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert noisy_accuracy(model, data, noise=noise) > before + 0.3
    loaded, saved = load_checkpoint(tmp_path / "m.pt")
    assert saved.noise == noise_name and saved.sigma == 0.25 and saved.epoch == 3
    assert saved.training["method"] == "gaussian" and saved.training["lr"] == 0.05
    x = data.tensors()[0][:4]
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_resume_refuses_other_settings(tmp_path):
    data, model, meta, noise = _setup("gaussian")
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, seed=1)
    train(model, data, method=get_method("gaussian"), noise=noise, config=config, meta=meta,
          checkpoint=tmp_path / "m.pt", progress=False)
    with pytest.raises(ValueError, match="cannot resume"):
        train(model, data, method=get_method("gaussian"), noise=get_noise("gaussian", sigma=0.5),
              config=TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=1), meta=meta,
              checkpoint=tmp_path / "m.pt", resume=True, progress=False)


def test_config_validation():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0.0)


def test_learning_rate_schedules():
    from smoothcert.train import learning_rate

    step = TrainConfig(epochs=90, lr=0.1, schedule="step", step_size=30, gamma=0.1)
    assert [learning_rate(step, e) for e in (0, 29, 30, 89)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    cos = TrainConfig(epochs=4, lr=0.1, schedule="cosine")
    assert [learning_rate(cos, e) for e in range(4)] == pytest.approx([0.1, 0.085355, 0.05, 0.014645], rel=1e-4)


class RawBytes(torch.utils.data.Dataset):
    """A plain map-style dataset yielding uint8 images 0..255, as a user's own dataset might."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


def test_iter_batches_scales_uint8_on_both_paths_and_shuffles_reproducibly():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 1, 3, 3), dtype=torch.uint8, generator=g)
    labels = torch.arange(10) % 3
    info = DatasetInfo(name="tiny", input_shape=(1, 3, 3), num_classes=3, mean=(0.5,), std=(0.25,))
    expected = images.float() / 255
    for data in (ArrayDataset(images, labels, info=info), RawBytes(images, labels)):
        batches = list(iter_batches(data, 4, shuffle=False))
        assert [len(y) for _, y in batches] == [4, 4, 2]
        x = torch.cat([b[0] for b in batches])
        assert x.dtype == torch.float32 and torch.equal(x, expected)  # 0..255 became [0, 1]
        assert torch.equal(torch.cat([b[1] for b in batches]), labels)
        a = torch.cat([y for _, y in iter_batches(data, 3, shuffle=True, generator=torch.Generator().manual_seed(4))])
        b = torch.cat([y for _, y in iter_batches(data, 3, shuffle=True, generator=torch.Generator().manual_seed(4))])
        assert torch.equal(a, b) and sorted(a.tolist()) == sorted(labels.tolist())
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_batches(RawBytes(images, labels), 0, shuffle=False))
