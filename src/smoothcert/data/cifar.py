"""CIFAR-10 and CIFAR-100 from the python pickle batches (``<root>/cifar-10-batches-py/``).
"""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, MissingFileError
from .core import (
    ArrayDataset,
    Dataset,
    DatasetInfo,
    _check_split,
    _data_root,
    _missing_message,
    register_dataset,
)
from .download import _download_verified

_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# CIFAR-100 fine labels: label k is the k-th name in alphabetical order (the dataset's meta file).
_CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip


_CIFAR10_INFO = DatasetInfo(
    name="cifar10", num_classes=10, input_shape=(3, 32, 32),
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    class_names=_CIFAR10_CLASSES,
    source="CIFAR-10 by Alex Krizhevsky, Vinod Nair and Geoffrey Hinton (University of Toronto)",
)  # fmt: skip
# CIFAR-100: the commonly published training-set statistics (not recomputed here: no local copy).
_CIFAR100_INFO = DatasetInfo(
    name="cifar100", num_classes=100, input_shape=(3, 32, 32),
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    class_names=_CIFAR100_CLASSES,
    source="CIFAR-100 by Alex Krizhevsky, Vinod Nair and Geoffrey Hinton (University of Toronto)",
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# CIFAR (python pickle layout)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CifarSource:
    folder: str
    files: dict[str, tuple[str, ...]]
    label_key: str
    url_dir: str
    archive: str
    md5: str  # of the archive


_CIFAR10_SOURCE = _CifarSource(
    folder="cifar-10-batches-py",
    files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    label_key="labels",
    url_dir="https://www.cs.toronto.edu/~kriz/",
    archive="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
)
_CIFAR100_SOURCE = _CifarSource(
    folder="cifar-100-python",
    files={"train": ("train",), "test": ("test",)},
    label_key="fine_labels",
    url_dir="https://www.cs.toronto.edu/~kriz/",
    archive="cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
)


class _CifarUnpickler(pickle.Unpickler):
    """Loads only what CIFAR batches contain (dicts, lists, bytes and numpy arrays).

    Pickle can run arbitrary code; refusing every other global makes a tampered file fail loudly.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        # Protocol 5 (numpy >= 1.16) rebuilds arrays from a buffer instead.
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Python 3 writes bytes in protocol 2 as _codecs.encode(str, "latin1"): harmless.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: CIFAR batches hold only numpy arrays and lists"
            )
        # Files written with numpy 1.x name numpy.core; numpy 2 moved it to numpy._core.
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch → images uint8 ``[N, 3, 32, 32]`` and labels int64 ``[N]``."""
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: not a readable CIFAR batch ({err})") from err
    if not isinstance(entry, dict):
        raise InputError(f"{path}: expected a dict, got {type(entry).__name__}")

    def field(key: str) -> Any:
        for k in (key.encode(), key):
            if k in entry:
                return entry[k]
        raise InputError(f"{path}: no {key!r} entry (keys: {sorted(map(str, entry))})")

    data = np.asarray(field("data"))
    labels = np.asarray(field(label_key))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise InputError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise InputError(f"{path}: {labels.shape} labels for {data.shape[0]} images")
    # Each row is the red plane, then green, then blue, each 32x32 row-major.
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _safe_extract(archive: Path, destination: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        base = destination.resolve()
        for member in tar.getmembers():
            target = (destination / member.name).resolve()
            if not (member.isfile() or member.isdir()) or not target.is_relative_to(base):
                raise InputError(f"{archive}: refusing to extract unexpected member {member.name!r}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(destination, filter="data")
        else:  # pragma: no cover - Python without tarfile filters; members were checked above
            tar.extractall(destination)


def _load_cifar(
    info: DatasetInfo, source: _CifarSource, *, split: str, root: Path | None, download: bool
) -> ArrayDataset:
    _check_split(info.name, split)
    base = _data_root(root)
    files = [base / source.folder / name for name in source.files[split]]
    if download and not all(f.is_file() for f in files):
        archive = _download_verified(source.archive, (source.url_dir,), source.md5, base)
        _safe_extract(archive, base)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise MissingFileError(_missing_message(f"{info.name} {split} split", missing, downloadable=True))
    parts = [_read_cifar_batch(f, source.label_key) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ArrayDataset(torch.from_numpy(images), labels, info=info, split=split)


@register_dataset("cifar10", info=_CIFAR10_INFO)
def _load_cifar10(*, split: str, root: Path | None = None, download: bool = False) -> Dataset:
    """CIFAR-10 from ``<root>/cifar-10-batches-py/`` (50000 train / 10000 test images, 3x32x32)."""
    return _load_cifar(_CIFAR10_INFO, _CIFAR10_SOURCE, split=split, root=root, download=download)


@register_dataset("cifar100", info=_CIFAR100_INFO)
def _load_cifar100(*, split: str, root: Path | None = None, download: bool = False) -> Dataset:
    """CIFAR-100 (fine labels) from ``<root>/cifar-100-python/`` (50000 train / 10000 test, 3x32x32)."""
    return _load_cifar(_CIFAR100_INFO, _CIFAR100_SOURCE, split=split, root=root, download=download)


