"""The CIFAR-10 path end to end through the CLI: a local copy in the official pickle layout
(``<root>/cifar-10-batches-py/``), per-dataset training defaults (ResNet-110, Cohen et al.'s
schedule, crop + flip augmentation), certification and analysis.

The copies are tiny: the 20 CIFAR-10 sample images of ../shared/data/samples, or random images.
"""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothcert.analysis import load_results
from smoothcert.cli import main
from smoothcert.data import get_dataset
from smoothcert.models import read_checkpoint
from smoothcert.runs import train_defaults

CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]


def write_cifar10(root: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Path:
    """Write images uint8 [N, 3, 32, 32] and labels [N] as ``root/cifar-10-batches-py`` in the
    official format: pickled dicts with bytes keys (the originals are Python 2 pickles, read with
    ``encoding="bytes"``), ``data`` uint8 [N, 3072] (red plane, green, blue; each row-major),
    ``labels`` a list of ints; the training images split over ``data_batch_1`` .. ``data_batch_5``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_parts = zip(np.array_split(train[0], 5), np.array_split(train[1], 5))
    files = {f"data_batch_{i + 1}": part for i, part in enumerate(train_parts)} | {"test_batch": test}
    for name, (images, labels) in files.items():
        entry = {
            b"batch_label": f"{name} of a tiny test copy".encode(),
            b"labels": [int(v) for v in labels],
            b"data": np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), 3 * 32 * 32),
            b"filenames": [f"image_{i}.png".encode() for i in range(len(images))],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    meta = {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
                             b"ship", b"truck"], b"num_cases_per_batch": 10000, b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder


def _rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def _without_timing(rows: list[list[str]]) -> list[list[str]]:
    header = rows[0]
    keep = [i for i, name in enumerate(header) if name not in ("time", "seconds")]
    return [[r[i] for i in keep] for r in rows]


CERTIFY = ["certify", "--max", "3", "--n0", "10", "--n", "50", "--batch", "50", "--alpha", "0.01", "--seed", "0",
           "--quiet", "--device", "cpu"]


# The default architecture, ResNet-110, takes ~35 s here on 2 busy CPU cores (slow); ResNet-20 runs
# the same commands in a few seconds.
@pytest.mark.parametrize("arch", [pytest.param(None, marks=pytest.mark.slow, id="resnet110-default"), "resnet20"])
def test_cohen_defaults_on_the_cifar10_samples(arch, shared_dir, tmp_path, capsys):
    samples_dir = shared_dir / "data" / "samples"
    samples = get_dataset("samples", split="test", subset="cifar10", root=samples_dir)  # root: the folder of PNGs itself
    images, labels = samples.images_uint8.numpy(), samples.labels.numpy()
    assert images.shape == (20, 3, 32, 32) and labels[:3].tolist() == [3, 8, 8]  # cifar10_00_3.png, ...
    root = tmp_path / "data"
    write_cifar10(root, (images, labels), (images, labels))  # the 20 images as train and test split
    for split in ("train", "test"):  # the pickled copy holds the PNGs' pixels, channel planes in order
        assert torch.equal(get_dataset("cifar10", split=split, root=root).images_uint8, samples.images_uint8)

    ckpt = tmp_path / "model.pt"
    # No --augment/schedule flags (nor --arch for the default run): the cifar10 defaults apply.
    arch_flag = [] if arch is None else ["--arch", arch]
    assert main(["train", "--dataset", "cifar10", "--data-root", str(root), *arch_flag, "--sigma", "0.25",
                 "--epochs", "1", "--batch", "10", "--device", "cpu", "--out", str(ckpt)]) == 0
    chosen = "--augment" if arch else "--arch resnet110 --augment"
    assert f"defaults for cifar10: {chosen}\n" in capsys.readouterr().err
    meta = read_checkpoint(ckpt)["meta"]
    assert meta["arch"] == (arch or "resnet110") and meta["dataset"] == "cifar10" and meta["epoch"] == 1
    assert meta["input_size"] == [32, 32] and meta["mean"] == pytest.approx(CIFAR10_MEAN)
    training = meta["training"]
    assert training["augment"] == {"name": "crop-flip", "padding": 4, "flip": True}
    assert {k: training[k] for k in ("lr", "momentum", "weight_decay", "schedule", "step_size", "gamma")} == \
        {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "schedule": "step", "step_size": 30, "gamma": 0.1}
    assert training["batch_size"] == 10 and training["train_size"] == 20

    # Certify the first 3 samples as PNGs; the first also from the pickled copy: same pixels, same row.
    from_png, from_pickle = tmp_path / "png.tsv", tmp_path / "pickle.tsv"
    assert main([*CERTIFY, "--checkpoint", str(ckpt), "--dataset", "samples", "--subset", "cifar10",
                 "--data-root", str(samples_dir), "--out", str(from_png)]) == 0
    assert main([*CERTIFY, "--checkpoint", str(ckpt), "--data-root", str(root), "--out", str(from_pickle),
                 "--max", "1"]) == 0
    assert _without_timing(_rows(from_pickle)) == _without_timing(_rows(from_png))[:2]
    res = load_results(from_png)
    assert res.idx.tolist() == [0, 1, 2] and res.label.tolist() == [3, 8, 8] and res.sigma == 0.25
    assert all(-1 <= p < 10 for p in res.predict.tolist()) and (res.radius >= 0).all()
    assert np.array_equal(res.correct, (res.predict == res.label).astype(res.correct.dtype))
    capsys.readouterr()
    assert main(["analyze", str(from_png), "--radii", "0", "0.25"]) == 0
    table = capsys.readouterr().out
    assert "σ = 0.25" in table and "ACR" in table


def _fake_cifar10(root: Path, n_train: int = 10, n_test: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n_train)
    test = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8), np.array([7, 2, 9, 0][:n_test])
    write_cifar10(root, train, test)
    return test


def test_a_local_cifar10_copy_in_the_pickle_layout_trains_and_certifies(tmp_path, capsys):
    root = tmp_path / "data"
    test_images, test_labels = _fake_cifar10(root)
    loaded = get_dataset("cifar10", split="test", root=root)
    assert torch.equal(loaded.images_uint8, torch.from_numpy(test_images))
    assert len(get_dataset("cifar10", split="train", root=root)) == 10

    ckpt, out = tmp_path / "resnet20.pt", tmp_path / "r.tsv"
    assert main(["train", "--dataset", "cifar10", "--data-root", str(root), "--arch", "resnet20", "--sigma", "0.5",
                 "--epochs", "1", "--batch", "5", "--quiet", "--device", "cpu", "--out", str(ckpt)]) == 0
    meta = read_checkpoint(ckpt)["meta"]
    assert meta["arch"] == "resnet20" and meta["training"]["augment"]["name"] == "crop-flip"
    assert meta["training"]["train_size"] == 10
    # The checkpoint names its dataset: certify needs no --dataset.
    assert main([*CERTIFY, "--checkpoint", str(ckpt), "--data-root", str(root), "--out", str(out), "--max", "2"]) == 0
    res = load_results(out)
    assert res.idx.tolist() == [0, 1] and res.label.tolist() == test_labels[:2].tolist() and res.sigma == 0.5
    capsys.readouterr()
    assert main(["analyze", str(out), "--radii", "0", "0.5"]) == 0
    assert "σ = 0.5" in capsys.readouterr().out


def test_per_dataset_defaults_and_explicit_flags_win(tmp_path, capsys):
    resolved = train_defaults
    assert resolved("cifar10") == ("resnet110", True, ["--arch resnet110", "--augment"])
    assert resolved("cifar100")[:2] == ("resnet110", True)
    assert resolved("mnist")[:2] == resolved("fashion-mnist")[:2] == resolved("embedded")[:2] == ("lenet", False)
    assert resolved("imagenet")[:2] == ("resnet50", False)
    assert resolved("cifar10", arch="resnet20", augment=False) == ("resnet20", False, [])
    assert resolved("mnist", augment=True) == ("lenet", True, ["--arch lenet"])

    # Through the command: MNIST-like data keeps LeNet and trains without augmentation.
    ckpt = tmp_path / "lenet.pt"
    assert main(["train", "--dataset", "embedded", "--sigma", "0.25", "--limit", "64", "--batch", "64", "--epochs", "1",
                 "--lr", "0.05", "--device", "cpu", "--out", str(ckpt)]) == 0
    assert "defaults for embedded: --arch lenet --no-augment" in capsys.readouterr().err
    meta = read_checkpoint(ckpt)["meta"]
    assert meta["arch"] == "lenet" and "augment" not in meta["training"]
    # An explicit --no-augment on CIFAR-10 is kept, and resuming with augmentation is refused.
    root = tmp_path / "data"
    _fake_cifar10(root)
    c10 = tmp_path / "c10.pt"
    run = ["train", "--dataset", "cifar10", "--data-root", str(root), "--arch", "resnet20", "--sigma", "0.25",
           "--batch", "10", "--quiet", "--device", "cpu", "--out", str(c10)]
    assert main([*run, "--epochs", "1", "--no-augment"]) == 0
    assert "augment" not in read_checkpoint(c10)["meta"]["training"]
    assert main([*run, "--epochs", "2", "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err
