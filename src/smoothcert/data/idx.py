"""MNIST and Fashion-MNIST from their idx files (torchvision's layout ``<root>/MNIST/raw/*.gz``).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, MissingFileError
from .core import (
    ArrayDataset,
    Dataset,
    DatasetInfo,
    PathLike,
    _check_split,
    _data_root,
    _missing_message,
    register_dataset,
)
from .download import _download_verified

_DIGITS = tuple(str(d) for d in range(10))
_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

# Normalization constants: mean and std of all training pixels, per channel, in [0, 1] units.
# MNIST and Fashion-MNIST were recomputed from the standard training files (60000 images):
# MNIST 0.13066 / 0.30811, Fashion-MNIST 0.28604 / 0.35302 (tests/test_data.py checks them).
# CIFAR-10's std is the true per-pixel std; Cohen et al. 2019 used (0.2023, 0.1994, 0.2010)
# (a per-image-std average), so their checkpoints need their own constants.
_MNIST_SOURCE = "MNIST by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (CC BY-SA 3.0)"
_MNIST_INFO = DatasetInfo(
    name="mnist", num_classes=10, input_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,),
    class_names=_DIGITS, source=_MNIST_SOURCE,
)  # fmt: skip
_FASHION_INFO = DatasetInfo(
    name="fashion-mnist", num_classes=10, input_shape=(1, 28, 28), mean=(0.2860,), std=(0.3530,),
    class_names=_FASHION_CLASSES,
    source="Fashion-MNIST by Han Xiao, Kashif Rasul and Roland Vollgraf, Zalando Research (MIT)",
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# idx files (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------

# Third byte of an idx file's magic number → element type (stored big-endian).
_IDX_TYPES = {
    0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32, 0x0D: np.float32, 0x0E: np.float64,
}  # fmt: skip


def read_idx(path: PathLike) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format), gzip-compressed or not, into a native-endian array.

    The gzip case is detected from the content, not the extension. Raises ValueError naming the
    file if it is not an idx file, is truncated or has trailing bytes.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(f"{path}: corrupt gzip data ({err}); delete the file and fetch it again") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise InputError(
            f"{path}: not an idx file (magic bytes {data[:4].hex() or 'missing'}; expected 0000 followed "
            "by a type code 08/09/0b/0c/0d/0e and the number of dimensions)"
        )
    dtype = np.dtype(_IDX_TYPES[data[2]]).newbyteorder(">")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise InputError(f"{path}: idx header truncated or with {ndim} dimensions")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise InputError(
            f"{path}: idx header announces shape {dims} ({expected} bytes of data) but the file holds "
            f"{len(data) - header} bytes; the file is truncated or corrupt — delete it and fetch it again"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


@dataclass(frozen=True)
class _IdxSource:
    folder: str  # sub-directory of the data root, torchvision's name
    mirrors: tuple[str, ...]
    md5: dict[str, str]  # compressed file name → md5 of the canonical .gz


_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# md5 of the canonical .gz files (the same values torchvision checks); the MNIST ones were
# confirmed on the copies in ../shared/data.
_MNIST_SOURCE_FILES = _IdxSource(
    folder="MNIST",
    mirrors=(
        # PyTorch's mirror first: LeCun's site has often refused scripted downloads.
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
)
_FASHION_SOURCE_FILES = _IdxSource(
    folder="FashionMNIST",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
)


def _find_idx(raw: Path, base: str) -> Path | None:
    # torchvision keeps both the .gz and its extraction; the uncompressed file reads faster.
    for candidate in (raw / base, raw / (base + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_dataset(
    info: DatasetInfo, source: _IdxSource, *, split: str, root: Path | None, download: bool
) -> ArrayDataset:
    _check_split(info.name, split)
    raw = _data_root(root) / source.folder / "raw"
    if download:
        for name, md5 in source.md5.items():
            if _find_idx(raw, name.removesuffix(".gz")) is None:
                _download_verified(name, source.mirrors, md5, raw)
    image_base, label_base = _IDX_FILES[split]
    image_path, label_path = _find_idx(raw, image_base), _find_idx(raw, label_base)
    if image_path is None or label_path is None:
        expected = [f"{raw / b}.gz (or uncompressed {raw / b})" for b in (image_base, label_base)]
        raise MissingFileError(_missing_message(f"{info.name} {split} split", expected, downloadable=True))
    images, labels = read_idx(image_path), read_idx(label_path)
    c, h, w = info.input_shape
    if images.dtype != np.uint8 or images.shape[1:] != (h, w):
        raise InputError(
            f"{image_path}: expected uint8 images [N, {h}, {w}], got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise InputError(
            f"{label_path}: expected {images.shape[0]} uint8 labels, got {labels.dtype} {labels.shape}"
        )
    return ArrayDataset(
        torch.from_numpy(images).unsqueeze(1), labels.astype(np.int64), info=info, split=split
    )


@register_dataset("mnist", info=_MNIST_INFO)
def _load_mnist(*, split: str, root: Path | None = None, download: bool = False) -> Dataset:
    """MNIST from ``<root>/MNIST/raw/`` (60000 train / 10000 test images, 1x28x28)."""
    return _load_idx_dataset(_MNIST_INFO, _MNIST_SOURCE_FILES, split=split, root=root, download=download)


@register_dataset("fashion-mnist", info=_FASHION_INFO)
def _load_fashion_mnist(*, split: str, root: Path | None = None, download: bool = False) -> Dataset:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw/`` (60000 train / 10000 test images, 1x28x28)."""
    return _load_idx_dataset(_FASHION_INFO, _FASHION_SOURCE_FILES, split=split, root=root, download=download)


