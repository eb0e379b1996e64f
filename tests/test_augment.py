"""Random crop + flip on batches: exact against a per-image reference, uniform offsets, seeded, in the loop."""

import pytest
import torch
import torch.nn.functional as F

from smoothcert.data import get_dataset
from smoothcert.models import CheckpointMeta, build_model, read_checkpoint
from smoothcert.noise import get_noise
from smoothcert.train import RandomCropFlip, TrainConfig, get_method, random_crop_flip, train


def _reference(x: torch.Tensor, dy: int, dx: int, mirror: bool, padding: int) -> torch.Tensor:
    """One image [C, H, W]: zero-pad, slice the crop window, mirror — the definition, by slicing."""
    h, w = x.shape[-2:]
    crop = F.pad(x, (padding,) * 4)[:, dy : dy + h, dx : dx + w]
    return crop.flip(-1) if mirror else crop


def _position_image(h: int, w: int) -> torch.Tensor:
    """[1, H, W] with distinct positive pixels, value (r * w + c + 1) / (h * w + 1): position readable."""
    return ((torch.arange(h * w, dtype=torch.float64) + 1) / (h * w + 1)).reshape(1, h, w)


@pytest.mark.parametrize("padding", [0, 1, 4])
@pytest.mark.parametrize("shape", [(5, 3, 32, 32), (3, 1, 7, 9)])
def test_each_output_is_one_padded_crop_or_its_mirror(padding, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    out = random_crop_flip(x, padding=padding, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    span = range(2 * padding + 1)
    for i in range(shape[0]):
        matches = [(dy, dx, m) for dy in span for dx in span for m in (False, True)
                   if torch.equal(out[i], _reference(x[i], dy, dx, m, padding))]
        assert matches, f"image {i} is no crop of the padded input"


def test_offsets_are_uniform_and_flips_fair():
    # Read each image's offset and flip from two known pixels of a position-coded image.
    h = w = 32
    p, n = 4, 8100
    base = _position_image(h, w)
    out = random_crop_flip(base.expand(n, 1, h, w), padding=p, generator=torch.Generator().manual_seed(3))
    code = (out[:, 0, h // 2, w // 2 : w // 2 + 2] * (h * w + 1)).round().long() - 1  # [n, 2] positions
    mirrored = code[:, 1] < code[:, 0]
    row, col = code[:, 0] // w, code[:, 0] % w
    dy = row - h // 2 + p
    dx = torch.where(mirrored, col - (w - 1 - w // 2) + p, col - w // 2 + p)
    counts = torch.bincount(dy * (2 * p + 1) + dx, minlength=(2 * p + 1) ** 2).double()
    assert counts.numel() == 81 and counts.min() > 0
    # Pearson chi-square, 80 degrees of freedom: P(chi2 > 130) < 3e-4 under uniform offsets.
    expected = n / 81
    assert float(((counts - expected) ** 2 / expected).sum()) < 130
    # Flip frequency: 4 binomial standard deviations (sqrt(n / 4) = 45) around n / 2.
    assert abs(int(mirrored.sum()) - n / 2) < 4 * 45


def test_identity_settings_and_determinism():
    x = torch.rand(4, 3, 8, 8)
    assert random_crop_flip(x, padding=0, flip=False) is x
    no_flip = random_crop_flip(x, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(o, x[i]) or torch.equal(o, x[i].flip(-1)) for i, o in enumerate(no_flip))
    a = random_crop_flip(x, generator=torch.Generator().manual_seed(5))
    b = random_crop_flip(x, generator=torch.Generator().manual_seed(5))
    c = random_crop_flip(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_uint8_and_bad_input():
    x = torch.randint(1, 256, (6, 3, 10, 10), dtype=torch.uint8)
    out = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        random_crop_flip(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="padding"):
        RandomCropFlip(padding=-1)
    with pytest.raises(ValueError, match="flip must be True or False"):
        RandomCropFlip(flip="no")  # a truthy string would silently flip
    with pytest.raises(ValueError, match="flip must be True or False"):
        random_crop_flip(x, flip=1)
    aug = RandomCropFlip(padding=2, flip=False)
    assert repr(aug) == "RandomCropFlip(padding=2, flip=False)" and aug.hparams() == {"padding": 2, "flip": False}


def test_an_int_seed_is_a_generator_on_the_inputs_device():
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(random_crop_flip(x, generator=5), random_crop_flip(x, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(RandomCropFlip()(x, generator=5), random_crop_flip(x, generator=5))


def _setup():
    data = get_dataset("embedded", split="train").subset(range(96))
    info = data.info
    torch.manual_seed(0)
    model = build_model("lenet-small", num_classes=10, in_channels=1, mean=list(info.mean), std=list(info.std))
    meta = CheckpointMeta(arch="lenet-small", dataset="embedded", num_classes=10, in_channels=1, input_size=28,
                          mean=list(info.mean), std=list(info.std), noise="none", sigma=0.0)
    return data, model, meta


def test_train_records_augmentation_and_resumes_exactly(tmp_path):
    noise, method = get_noise("gaussian", sigma=0.25), get_method("gaussian")
    seen: list[torch.Tensor] = []

    class Spy(RandomCropFlip):
        def __call__(self, x, *, generator=None):
            out = super().__call__(x, generator=generator)
            seen.append(out)
            return out

    data, model, meta = _setup()
    run = {"method": method, "noise": noise, "meta": meta, "progress": False}
    train(model, data, config=TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=1), checkpoint=tmp_path / "a.pt",
          augment=Spy(), **run)
    assert len(seen) == 6 and all(s.shape == (32, 1, 28, 28) for s in seen)
    full = read_checkpoint(tmp_path / "a.pt")
    assert full["meta"]["training"]["augment"] == {"name": "crop-flip", "padding": 4, "flip": True}

    data, model, meta = _setup()
    train(model, data, config=TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=1), checkpoint=tmp_path / "b.pt",
          augment=RandomCropFlip(), **run)
    with pytest.raises(ValueError, match="cannot resume"):  # another augmentation is another run
        train(model, data, config=TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=1), checkpoint=tmp_path / "b.pt",
              augment=RandomCropFlip(flip=False), resume=True, **run)
    train(model, data, config=TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=1), checkpoint=tmp_path / "b.pt",
          augment=RandomCropFlip(), resume=True, **run)
    resumed = read_checkpoint(tmp_path / "b.pt")["state_dict"]
    assert all(torch.equal(full["state_dict"][k], resumed[k]) for k in resumed)


def test_no_augmentation_leaves_no_record(tmp_path):
    data, model, meta = _setup()
    train(model, data, method=get_method("gaussian"), noise=get_noise("gaussian", sigma=0.25), meta=meta,
          config=TrainConfig(epochs=1, batch_size=48, lr=0.05), checkpoint=tmp_path / "m.pt", progress=False)
    assert "augment" not in read_checkpoint(tmp_path / "m.pt")["meta"]["training"]
