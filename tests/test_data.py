"""Tests of smoothcert.data: every loader on real or faithfully faked files, and every error path."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from repo_scripts import load_script

from smoothcert import data
from smoothcert.data import (
    ArrayDataset,
    DatasetInfo,
    DownloadError,
    dataset_info,
    embedded_metadata,
    get_dataset,
    list_datasets,
    make_loader,
    read_idx,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
MNIST_RAW = SHARED / "data" / "MNIST" / "raw"
FASHION_RAW = SHARED / "data" / "FashionMNIST" / "raw"
SAMPLES = SHARED / "data" / "samples"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path


def _write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    """Write ``array`` (uint8) in idx format: 00 00 08 <ndim>, big-endian int32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def _fake_mnist(
    raw: Path, *, n_train: int = 12, n_test: int = 7, compress: bool = True
) -> dict[str, np.ndarray]:
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    for base, array in arrays.items():
        _write_idx(raw / (base + (".gz" if compress else "")), array, compress=compress)
    return arrays


# ------------------------------------------------------------------ registry and info


def test_registry_lists_every_dataset_with_consistent_info() -> None:
    names = list_datasets()
    expected = ("embedded", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagenet", "folder", "samples")
    assert set(expected) <= set(names)
    for name in names:
        info = dataset_info(name, subset="mnist") if name == "samples" else dataset_info(name)
        c = info.input_shape[0]
        assert len(info.mean) == len(info.std) == c
        assert all(0 < s < 1 for s in info.std) and all(0 < m < 1 for m in info.mean)
        if info.class_names is not None:
            assert len(info.class_names) == info.num_classes
    assert dataset_info("cifar10").input_shape == (3, 32, 32)
    assert dataset_info("imagenet").mean == (0.485, 0.456, 0.406)
    assert dataset_info("samples", subset="cifar100").num_classes == 100
    with pytest.raises(ValueError, match="known: .*mnist"):
        get_dataset("mnsit", split="test")
    with pytest.raises(ValueError, match="subset"):
        dataset_info("samples")


def test_dataset_info_validates_and_round_trips() -> None:
    info = dataset_info("cifar10")
    assert DatasetInfo.from_dict(info.to_dict()) == info
    with pytest.raises(ValueError, match="one value per channel"):
        DatasetInfo(name="x", num_classes=2, input_shape=(3, 8, 8), mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="std must be positive"):
        DatasetInfo(name="x", num_classes=2, input_shape=(1, 8, 8), mean=(0.5,), std=(0.0,))
    with pytest.raises(ValueError, match="class names"):
        DatasetInfo(
            name="x", num_classes=3, input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,), class_names=("a",)
        )


def test_bad_split_is_refused() -> None:
    with pytest.raises(ValueError, match="split"):
        get_dataset("embedded", split="validation")
    with pytest.raises(TypeError, match="split"):
        get_dataset("embedded", split=True)  # type: ignore[arg-type]


# ------------------------------------------------------------------ embedded


def test_embedded_loads_without_root_with_documented_shapes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No data root anywhere: the embedded set must not look at the file system outside the package.
    monkeypatch.setenv(data.ENV_DATA_ROOT, str(tmp_path / "nothing-here"))
    monkeypatch.chdir(tmp_path)
    train, test = get_dataset(split="train"), get_dataset("embedded", split="test")
    assert (len(train), len(test)) == (10000, 1000)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.ndim == 0
    xs, ys = train.tensors()
    assert xs.shape == (10000, 1, 28, 28) and xs.dtype == torch.float32 and ys.dtype == torch.int64
    assert xs.min() == 0.0 and xs.max() == 1.0  # uint8 0..255 mapped onto [0, 1] exactly
    # The mean pixel of real MNIST digits is ~0.13; random or blank data would be far off.
    assert abs(float(xs.mean()) - 0.1307) < 0.01
    assert torch.equal(xs[0], x) and int(ys[0]) == int(y)
    assert torch.bincount(ys, minlength=10).tolist() == [1000] * 10  # balanced by design
    assert torch.equal(test.source_indices, torch.arange(1000))
    src = train.source_indices
    assert bool((src[1:] > src[:-1]).all())  # original MNIST order, no duplicates
    assert train.info.name == "embedded" and train.info.mean == (0.1307,)


def test_embedded_metadata_attributes_mnist() -> None:
    meta = embedded_metadata()
    assert "LeCun" in meta["authors"] and "CC BY-SA 3.0" in meta["license"]
    assert meta["source_files"]["t10k-images-idx3-ubyte.gz"] == "9fb629c4189551a2d022fa330f9573f3"
    assert meta["train_per_class"] == 1000 and meta["test_count"] == 1000
    size = (REPO / "src" / "smoothcert" / "_data" / "mnist_subset.npz").stat().st_size
    assert size < 2_500_000


def test_embedded_matches_the_standard_mnist_files() -> None:
    raw = _need(MNIST_RAW)
    test_images = read_idx(raw / "t10k-images-idx3-ubyte.gz")
    test_labels = read_idx(raw / "t10k-labels-idx1-ubyte.gz")
    train_labels = read_idx(raw / "train-labels-idx1-ubyte.gz")
    train_images = read_idx(raw / "train-images-idx3-ubyte.gz")
    test, train = get_dataset(split="test"), get_dataset(split="train")
    # Test item i is MNIST test image i.
    assert np.array_equal(test.images_uint8[:, 0].numpy(), test_images[:1000])
    assert np.array_equal(test.labels.numpy(), test_labels[:1000])
    # Train items are the first 1000 images of each digit, with their true labels and pixels.
    src = train.source_indices.numpy()
    expected = np.sort(np.concatenate([np.flatnonzero(train_labels == c)[:1000] for c in range(10)]))
    assert np.array_equal(src, expected)
    assert np.array_equal(train.labels.numpy(), train_labels[src])
    assert np.array_equal(train.images_uint8[:, 0].numpy(), train_images[src])


# ------------------------------------------------------------------ mnist / fashion-mnist


@pytest.mark.parametrize(
    ("name", "raw", "mean", "std"),
    [("mnist", MNIST_RAW, 0.1307, 0.3081), ("fashion-mnist", FASHION_RAW, 0.2860, 0.3530)],
)
def test_idx_datasets_from_shared_raw_files(name: str, raw: Path, mean: float, std: float) -> None:
    root = _need(raw).parents[1]
    train, test = get_dataset(name, split="train", root=root), get_dataset(name, split="test", root=root)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images_uint8.shape == (60000, 1, 28, 28)
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    # The normalization constants in DatasetInfo are the training-set statistics.
    xs = train.images_uint8.to(torch.float64) / 255
    assert abs(float(xs.mean()) - mean) < 5e-4 and abs(float(xs.std()) - std) < 5e-4
    assert dataset_info(name).mean == (mean,) and dataset_info(name).std == (std,)
    assert int(test.labels[0]) == (7 if name == "mnist" else 9)  # first test image: digit 7 / ankle boot


def test_idx_dataset_reads_uncompressed_files_from_env_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    arrays = _fake_mnist(tmp_path / "MNIST" / "raw", compress=False)
    monkeypatch.setenv(data.ENV_DATA_ROOT, str(tmp_path))
    ds = get_dataset("mnist", split="test")
    assert len(ds) == 7
    assert np.array_equal(ds.images_uint8[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(ds.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    x, _ = ds[3]
    assert torch.allclose(x[0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"][3]).float() / 255)


def test_missing_idx_files_name_the_expected_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("fashion-mnist", split="train", root=tmp_path)
    message = str(err.value)
    raw = tmp_path.absolute() / "FashionMNIST" / "raw"
    assert str(raw / "train-images-idx3-ubyte.gz") in message
    assert str(raw / "train-labels-idx1-ubyte.gz") in message
    assert "download=True" in message and "--data-root" in message


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x00\x00\x08", "not an idx file"),  # shorter than a magic number
        (b"\x00\x01\x08\x01" + b"\x00" * 8, "not an idx file"),  # bad magic
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "truncated"),  # 5 bytes announced, 3 present
        (gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x02ab")[:-6], "corrupt gzip"),
    ],
)
def test_corrupt_idx_files_give_clear_errors(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad-idx1-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_handles_wider_types(tmp_path: Path) -> None:
    values = np.array([[1, -2, 300], [4, 5, -600]], dtype=">i4")
    path = tmp_path / "ints.idx"
    path.write_bytes(bytes([0, 0, 0x0C, 2]) + np.array([2, 3], ">i4").tobytes() + values.tobytes())
    out = read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative and out.tolist() == values.tolist()


def test_corrupt_file_inside_a_dataset_reports_its_path(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    _fake_mnist(raw)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09ab"))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz.*truncated"):
        get_dataset("mnist", split="test", root=tmp_path)


# ------------------------------------------------------------------ downloads (network replaced)


def test_mnist_download_fetches_canonical_files_and_checks_md5(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = _need(MNIST_RAW)
    urls: list[str] = []

    def fetch(url: str, destination: Path, **_: object) -> None:
        urls.append(url)
        if "ossci" in url and "t10k-images" in url:
            raise urllib.error.URLError("simulated outage")  # the second mirror must take over
        shutil.copyfile(source / url.rsplit("/", 1)[1], destination)

    monkeypatch.setattr(data.download, "_fetch", fetch)
    ds = get_dataset("mnist", split="test", root=tmp_path, download=True)
    assert len(ds) == 10000 and int(ds.labels[0]) == 7
    names = sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir())
    assert names == sorted(data.idx._MNIST_SOURCE_FILES.md5)  # all four, no .part leftovers
    assert urls[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"
    assert "http://yann.lecun.com/exdb/mnist/t10k-images-idx3-ubyte.gz" in urls
    # Present files are not fetched again.
    urls.clear()
    get_dataset("mnist", split="train", root=tmp_path, download=True)
    assert urls == []


def test_download_with_wrong_md5_leaves_no_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fetch(url: str, destination: Path, **_: object) -> None:
        destination.write_bytes(b"<html>not the file</html>")

    monkeypatch.setattr(data.download, "_fetch", fetch)
    with pytest.raises(DownloadError, match="md5"):
        get_dataset("fashion-mnist", split="test", root=tmp_path, download=True)
    assert list((tmp_path / "FashionMNIST" / "raw").iterdir()) == []


def test_idx_download_with_local_synthetic_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Runs without ../shared: serve synthetic files and pin their md5 in the resource table.
    served = tmp_path / "server"
    arrays = _fake_mnist(served)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
    table = data.idx._IdxSource(folder="FashionMNIST", mirrors=("https://example.invalid/",), md5=md5)
    monkeypatch.setattr(data.idx, "_FASHION_SOURCE_FILES", table)
    def fetch(url: str, destination: Path, **_: object) -> None:
        shutil.copyfile(served / url.rsplit("/", 1)[1], destination)

    monkeypatch.setattr(data.download, "_fetch", fetch)
    ds = get_dataset("fashion-mnist", split="train", root=tmp_path / "root", download=True)
    assert np.array_equal(ds.labels.numpy(), arrays["train-labels-idx1-ubyte"])


# ------------------------------------------------------------------ cifar (fake pickles)


def _cifar_batch(n: int, offset: int) -> dict[bytes, object]:
    # Red plane = 10 + i, green = 100, blue = 200: checks the plane order of the 3072-byte rows.
    rows = np.empty((n, 3, 1024), dtype=np.uint8)
    rows[:, 0] = (10 + offset + np.arange(n))[:, None]
    rows[:, 1], rows[:, 2] = 100, 200
    return {
        b"batch_label": b"fake",
        b"labels": [int((offset + i) % 10) for i in range(n)],
        b"data": rows.reshape(n, 3072),
        b"filenames": [b"x.png"] * n,
    }


def _write_cifar(root: Path, *, variant: str = "protocol2") -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for k in range(5):
        blob = pickle.dumps(_cifar_batch(4, 4 * k), protocol=5 if variant == "protocol5" else 2)
        if variant == "numpy1":  # the real files name numpy.core (written with numpy 1.x)
            blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / f"data_batch_{k + 1}").write_bytes(blob)
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batch(3, 50), protocol=2))
    return folder


@pytest.mark.parametrize("variant", ["protocol2", "numpy1", "protocol5"])
def test_cifar10_reads_the_python_pickle_layout(tmp_path: Path, variant: str) -> None:
    _write_cifar(tmp_path, variant=variant)
    train = get_dataset("cifar10", split="train", root=tmp_path)
    test = get_dataset("cifar10", split="test", root=tmp_path)
    assert (len(train), len(test)) == (20, 3)
    xs, ys = train.tensors()
    assert xs.shape == (20, 3, 32, 32) and xs.dtype == torch.float32
    assert ys.tolist() == [i % 10 for i in range(20)]  # batches concatenated in order 1..5
    assert torch.allclose(xs[:, 0, 5, 7], (10 + torch.arange(20)).float() / 255)
    assert bool((xs[:, 1] == 100 / 255).all() and (xs[:, 2] == 200 / 255).all())
    assert test.info.class_names[3] == "cat"


def test_cifar10_missing_and_malicious_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("cifar10", split="train", root=tmp_path)
    for k in range(1, 6):
        assert str(tmp_path.absolute() / "cifar-10-batches-py" / f"data_batch_{k}") in str(err.value)
    folder = _write_cifar(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": os.getcwd}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load"):
        get_dataset("cifar10", split="test", root=tmp_path)


def _cifar_tarball(tmp_path: Path) -> Path:
    staging = tmp_path / "staging"
    _write_cifar(staging)
    archive = tmp_path / "served" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_cifar10_download_extracts_the_verified_tarball(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    archive = _cifar_tarball(tmp_path)
    urls: list[str] = []

    def fetch(url: str, destination: Path, **_: object) -> None:
        urls.append(url)
        shutil.copyfile(archive, destination)

    source = data.cifar._CIFAR10_SOURCE
    # The canonical URL and md5 stay in the code; the fake tarball gets its own md5.
    assert source.url_dir + source.archive == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert source.md5 == "c58f30108f718f92721af3b95e74349a"
    monkeypatch.setattr(data.download, "_fetch", fetch)
    with pytest.raises(DownloadError, match="md5"):
        get_dataset("cifar10", split="test", root=tmp_path / "root", download=True)
    fake = data.cifar._CifarSource(**{**source.__dict__, "md5": hashlib.md5(archive.read_bytes()).hexdigest()})
    monkeypatch.setattr(data.cifar, "_CIFAR10_SOURCE", fake)
    ds = get_dataset("cifar10", split="test", root=tmp_path / "root", download=True)
    assert len(ds) == 3 and ds.labels.tolist() == [0, 1, 2]
    assert urls[-1] == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def test_tar_extraction_refuses_path_traversal(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "dest").mkdir()
    with pytest.raises(ValueError, match="refusing to extract"):
        data.cifar._safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()


# ------------------------------------------------------------------ samples


@pytest.mark.parametrize(
    ("subset", "shape", "first_labels"),
    [
        ("cifar10", (3, 32, 32), [3, 8, 8, 0]),
        ("cifar100", (3, 32, 32), [49, 33, 72, 51]),
        ("mnist", (1, 28, 28), [7, 2, 1, 0]),
        ("fashion-mnist", (1, 28, 28), [9, 2, 1, 1]),
        ("imagenet", (3, 224, 224), [243, 559, 438, 990]),
    ],
)
def test_samples_subsets(subset: str, shape: tuple[int, int, int], first_labels: list[int]) -> None:
    root = _need(SAMPLES)
    ds = get_dataset("samples", split="test", root=root, subset=subset)
    assert len(ds) == 20 and ds.name == f"samples/{subset}"
    assert torch.equal(ds.source_indices, torch.arange(20))
    xs, ys = ds.tensors()
    assert xs.shape == (20, *shape) and xs.dtype == torch.float32
    assert 0.0 <= float(xs.min()) and float(xs.max()) <= 1.0 and float(xs.std()) > 0.05
    assert ys.tolist()[:4] == first_labels
    assert ds.info == dataset_info(subset)  # models trained on the full dataset apply unchanged


def test_mnist_samples_are_the_first_mnist_test_images() -> None:
    root = _need(SAMPLES)
    samples = get_dataset("samples", split="test", root=root, subset="mnist")
    embedded = get_dataset(split="test")
    assert torch.equal(samples.images_uint8, embedded.images_uint8[:20])
    assert torch.equal(samples.labels, embedded.labels[:20])


def test_samples_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="subset"):
        get_dataset("samples", split="test", root=tmp_path)
    with pytest.raises(ValueError, match="subset"):
        get_dataset("samples", split="test", root=tmp_path, subset="svhn")
    with pytest.raises(ValueError, match="split"):
        get_dataset("samples", split="train", root=tmp_path, subset="mnist")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        get_dataset("samples", split="test", root=tmp_path / "missing", subset="mnist")
    with pytest.raises(FileNotFoundError, match="mnist_<index>_<label>"):
        get_dataset("samples", split="test", root=tmp_path, subset="mnist")


def test_samples_root_comes_from_arguments_or_the_environment_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Without a root, samples looks in $SMOOTHCERT_DATA/samples and ./data/samples, never beside the
    # installed package (a source checkout's ../shared/data/samples is found only when passed).
    monkeypatch.setenv(data.ENV_DATA_ROOT, str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as missing:
        get_dataset("samples", split="test", subset="mnist")
    assert "shared" not in str(missing.value)
    assert data.samples._default_samples_dirs() == [tmp_path / "env" / "samples", tmp_path / "data" / "samples"]
    from PIL import Image

    folder = tmp_path / "env" / "samples"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((28, 28), 255, dtype=np.uint8), mode="L").save(folder / "mnist_3_5.png")
    ds = get_dataset("samples", split="test", subset="mnist")
    assert len(ds) == 1 and ds.source_indices.tolist() == [3] and ds.labels.tolist() == [5]
    monkeypatch.delenv(data.ENV_DATA_ROOT)
    assert data.samples._default_samples_dirs() == [tmp_path / "data" / "samples"]


def test_imagenet_samples_resize_geometry(tmp_path: Path) -> None:
    # A 300x600 image with a marker square at its centre: after shorter side → 256 and centre crop
    # 224, the marker must still sit at the centre.
    from PIL import Image

    canvas = np.zeros((600, 300, 3), dtype=np.uint8)
    canvas[290:310, 140:160] = 255
    Image.fromarray(canvas).save(tmp_path / "imagenet_00_5.png")
    ds = get_dataset("samples", split="test", root=tmp_path, subset="imagenet")
    x, y = ds[0]
    assert x.shape == (3, 224, 224) and int(y) == 5
    rows, cols = torch.nonzero(x[0] > 0.5, as_tuple=True)
    assert abs(float(rows.float().mean()) - 111.5) < 1.5 and abs(float(cols.float().mean()) - 111.5) < 1.5


# ------------------------------------------------------------------ dataset object and loaders


def _small() -> ArrayDataset:
    images = (torch.arange(10 * 2 * 3 * 3) % 256).to(torch.uint8).reshape(10, 2, 3, 3)
    info = DatasetInfo(name="toy", num_classes=4, input_shape=(2, 3, 3), mean=(0.5, 0.5), std=(0.2, 0.2))
    return ArrayDataset(images, torch.arange(10) % 4, info=info, split="train")


def test_subset_keeps_items_and_source_indices() -> None:
    ds = _small()
    sub = ds.subset([7, 2, 2])
    assert len(sub) == 3
    assert torch.equal(sub[0][0], ds[7][0]) and int(sub[1][1]) == int(ds[2][1])
    assert sub.source_indices.tolist() == [7, 2, 2]
    assert sub.subset(np.array([0])).source_indices.tolist() == [7]  # positions compose
    assert len(ds.subset(range(0, 10, 3))) == 4
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        ds.subset([10])
    with pytest.raises(TypeError, match="mask"):
        ds.subset(torch.ones(10, dtype=torch.bool))


def test_array_dataset_validates_its_input() -> None:
    info = DatasetInfo(name="toy", num_classes=2, input_shape=(1, 2, 2), mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="input_shape"):
        ArrayDataset(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), [0, 1, 0], info=info)
    with pytest.raises(ValueError, match="labels must lie"):
        ArrayDataset(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), [0, 1, 2], info=info)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ArrayDataset(torch.full((3, 1, 2, 2), 1.5), [0, 1, 0], info=info)
    floats = ArrayDataset(torch.full((3, 1, 2, 2), 0.25, dtype=torch.float64), [0, 1, 0], info=info)
    assert floats[0][0].dtype == torch.float32 and float(floats.tensors()[0].max()) == 0.25


def test_make_loader_batches_and_reproducible_shuffle() -> None:
    ds = get_dataset(split="test").subset(range(100))
    batches = list(make_loader(ds, batch_size=32, shuffle=False))
    assert [b[0].shape[0] for b in batches] == [32, 32, 32, 4]
    x, y = batches[0]
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    all_x, all_y = ds.tensors()
    assert torch.equal(torch.cat([b[0] for b in batches]), all_x)
    assert torch.equal(torch.cat([b[1] for b in batches]), all_y)

    def order(seed: int) -> list[int]:
        loader = make_loader(ds, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(seed))
        return torch.cat([b[1] for b in loader]).tolist()

    assert order(1) == order(1) and order(1) != order(2)
    assert sorted(order(1)) == sorted(all_y.tolist())  # a permutation of all labels
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, batch_size=0, shuffle=False)


# ------------------------------------------------------------------ folder (needs torchvision)


def _check_folder_dataset(tmp_path: Path) -> None:
    from PIL import Image

    for cls, value in (("cat", 50), ("dog", 200)):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (300, 260), (value, value, value)).save(tmp_path / "val" / cls / f"{k}.png")
    ds = get_dataset("folder", split="test", root=tmp_path)  # "test" falls back to "val"
    assert len(ds) == 4 and ds.info.class_names == ("cat", "dog") and ds.info.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 1, 1]
    x, y = ds[3]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and int(y) == 1
    assert abs(float(x.mean()) - 200 / 255) < 0.01  # no normalization applied
    sub = ds.subset([2, 0])
    assert sub.labels.tolist() == [1, 0] and sub.source_indices.tolist() == [2, 0]
    xs, ys = sub.tensors()
    assert xs.shape == (2, 3, 224, 224) and ys.tolist() == [1, 0]
    assert abs(float(xs[1].mean()) - 50 / 255) < 0.01
    with pytest.raises(ValueError, match="expected 1000"):
        get_dataset("imagenet", split="test", root=tmp_path)


def test_folder_dataset_with_torchvision(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    _check_folder_dataset(tmp_path)


def test_folder_dataset_with_a_torchvision_stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Exercises FolderDataset's own logic where torchvision is absent: a minimal ImageFolder
    # (sorted class folders, sorted files) and transforms built on PIL.
    import sys
    import types

    from PIL import Image

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("real torchvision installed; test_folder_dataset_with_torchvision covers this")

    class ImageFolder:
        def __init__(self, root: str, transform) -> None:
            self.classes = sorted(d.name for d in Path(root).iterdir() if d.is_dir())
            self.samples = [
                (f, i) for i, c in enumerate(self.classes) for f in sorted((Path(root) / c).iterdir())
            ]
            self.targets = [t for _, t in self.samples]
            self.transform = transform

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, i: int):
            path, target = self.samples[i]
            return self.transform(Image.open(path).convert("RGB")), target

    def compose(steps):
        def run(img):
            for step in steps:
                img = step(img)
            return img

        return run

    transforms = types.SimpleNamespace(
        Compose=compose,
        Resize=lambda size: lambda img: data.samples._resize_center_crop(img, resize=size, crop=size),
        CenterCrop=lambda size: lambda img: data.samples._resize_center_crop(img, resize=min(img.size), crop=size),
        ToTensor=lambda: lambda img: torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1),
    )
    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(ImageFolder=ImageFolder)
    fake.transforms = transforms
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    _check_folder_dataset(tmp_path)


def test_folder_and_imagenet_errors_without_torchvision_needed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root"):
        get_dataset("folder", split="train")
    with pytest.raises(FileNotFoundError, match="imagenet"):
        get_dataset("imagenet", split="train", root=tmp_path)
    with pytest.raises(ValueError, match="cannot be downloaded"):
        get_dataset("imagenet", split="train", root=tmp_path, download=True)
    if importlib.util.find_spec("torchvision") is None:
        (tmp_path / "train" / "a").mkdir(parents=True)
        with pytest.raises(ImportError, match=r"smoothcert\[vision\]"):
            get_dataset("folder", split="train", root=tmp_path)


# ------------------------------------------------------------------ build script


def _load_build_script():
    return load_script("scripts/build_embedded_mnist.py")


def test_build_script_selects_first_per_class_and_is_reproducible(tmp_path: Path) -> None:
    script = _load_build_script()
    arrays = _fake_mnist(tmp_path / "raw", n_train=40, n_test=9)
    args = ["--raw-dir", str(tmp_path / "raw"), "--train-per-class", "3", "--test-count", "5"]
    assert script.main([*args, "--out", str(tmp_path / "a.npz")]) == 0
    assert script.main([*args, "--out", str(tmp_path / "b.npz")]) == 0
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        labels = arrays["train-labels-idx1-ubyte"]
        expected = np.sort(np.concatenate([np.flatnonzero(labels == c)[:3] for c in range(10)]))
        assert np.array_equal(z["train_indices"], expected)
        assert np.array_equal(z["train_images"], arrays["train-images-idx3-ubyte"][expected])
        assert np.array_equal(z["test_images"], arrays["t10k-images-idx3-ubyte"][:5])
        assert np.array_equal(z["test_indices"], np.arange(5))
        assert "CC BY-SA 3.0" in str(z["metadata"])
    with pytest.raises(ValueError, match="fewer than"):
        script.main([*args[:2], "--train-per-class", "5", "--test-count", "5", "--out", str(tmp_path / "c")])
