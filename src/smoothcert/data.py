"""Datasets: an embedded MNIST subset (the default), MNIST, Fashion-MNIST, CIFAR-10/100,
ImageNet-style folders and a handful of labelled sample images.

Every dataset yields ``(x, y)``: ``x`` a float32 tensor ``[C, H, W]`` with values in [0, 1] and
``y`` an int64 scalar tensor. Nothing here normalizes: normalization is a layer inside the model,
and its constants travel with the dataset as :class:`DatasetInfo` (``mean``, ``std``) so a model
built for a dataset can take them from here and store them in its checkpoint.

In-memory datasets (:class:`ArrayDataset`) keep images as uint8 ``[N, C, H, W]`` (a quarter of the
memory of float32) and convert per item or per batch; :meth:`Dataset.tensors` returns the whole set
as one float tensor for fast full-batch work on small sets.

Data locations: ``root`` defaults to the environment variable ``SMOOTHCERT_DATA`` or ``./data``
and uses torchvision's layout (``<root>/MNIST/raw/*.gz``, ``<root>/cifar-10-batches-py/``), so a
directory already filled by torchvision works as is. The embedded set needs no root at all.

Sources and licences (for attribution):

- MNIST: Yann LeCun, Corinna Cortes, Christopher J.C. Burges; CC BY-SA 3.0. The embedded subset
  (``smoothcert/_data/mnist_subset.npz``) is built from the standard files by
  ``scripts/build_embedded_mnist.py``; its provenance is in :func:`embedded_metadata`.
- Fashion-MNIST: Zalando Research (Han Xiao, Kashif Rasul, Roland Vollgraf); MIT.
- CIFAR-10/100: Alex Krizhevsky, Vinod Nair, Geoffrey Hinton (University of Toronto).
- ImageNet (ILSVRC 2012): obtained by the user under its own terms; never downloaded here.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import operator
import os
import pickle
import re
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from smoothcert.registry import Registry

from .errors import InputError, InputTypeError, MissingFileError, SmoothcertError

__all__ = [
    "DatasetInfo",
    "Dataset",
    "ArrayDataset",
    "FolderDataset",
    "DownloadError",
    "DATASETS",
    "register_dataset",
    "get_dataset",
    "dataset_info",
    "list_datasets",
    "make_loader",
    "iter_batches",
    "read_idx",
    "default_data_root",
    "embedded_metadata",
    "ENV_DATA_ROOT",
    "SAMPLE_SUBSETS",
]

PathLike = Union[str, "os.PathLike[str]"]
Indices = Union[Sequence[int], np.ndarray, Tensor, range]

#: Environment variable naming the default data root (fallback: ``./data``).
ENV_DATA_ROOT = "SMOOTHCERT_DATA"

_SPLITS = ("train", "test")


# --------------------------------------------------------------------------------------------
# Dataset description
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data.

    Attributes:
        name: registry name of the dataset.
        num_classes: number of labels, or None where it depends on the files (generic folders).
        input_shape: ``(C, H, W)`` of one image as the dataset yields it.
        mean, std: per-channel normalization constants (length C) for the model's ``Normalize``
            layer; data stays in [0, 1].
        class_names: label names in label order, if known.
        source: provenance and licence, for attribution.
    """

    name: str
    num_classes: int | None
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"input_shape must be (C, H, W) with positive sizes, got {self.input_shape}")
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        channels = shape[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise InputError(
                f"mean and std need one value per channel ({channels}), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if min(self.std) <= 0:
            raise InputError(f"std must be positive, got {self.std}")
        if self.num_classes is not None and self.num_classes < 1:
            raise InputError(f"num_classes must be >= 1 or None, got {self.num_classes}")
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
            if self.num_classes is not None and len(self.class_names) != self.num_classes:
                raise InputError(
                    f"{len(self.class_names)} class names given for {self.num_classes} classes"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, e.g. for checkpoint metadata."""
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        out["class_names"] = None if self.class_names is None else list(self.class_names)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetInfo:
        """Inverse of :meth:`to_dict`."""
        names = data.get("class_names")
        return cls(
            name=data["name"],
            num_classes=data["num_classes"],
            input_shape=tuple(data["input_shape"]),  # type: ignore[arg-type]
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            class_names=None if names is None else tuple(names),
            source=data.get("source", ""),
        )


_DIGITS = tuple(str(d) for d in range(10))
_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
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
_EMBEDDED_INFO = DatasetInfo(
    name="embedded", num_classes=10, input_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,),
    class_names=_DIGITS,
    source=_MNIST_SOURCE + "; subset: first 1000 training images of each digit and the first "
    "1000 test images (details: smoothcert.data.embedded_metadata())",
)  # fmt: skip
_FASHION_INFO = DatasetInfo(
    name="fashion-mnist", num_classes=10, input_shape=(1, 28, 28), mean=(0.2860,), std=(0.3530,),
    class_names=_FASHION_CLASSES,
    source="Fashion-MNIST by Han Xiao, Kashif Rasul and Roland Vollgraf, Zalando Research (MIT)",
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
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGENET_INFO = DatasetInfo(
    name="imagenet", num_classes=1000, input_shape=(3, 224, 224),
    mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
    source="ImageNet ILSVRC 2012 (user-supplied; labels are the sorted synset folder order)",
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Dataset classes
# --------------------------------------------------------------------------------------------


def _as_index_tensor(indices: Indices, length: int) -> Tensor:
    """Validate ``indices`` (ints in [0, length)) and return them as an int64 tensor ``[K]``."""
    if isinstance(indices, Tensor):
        idx = indices.detach().to("cpu")
    else:
        idx = torch.as_tensor(np.asarray(list(indices) if isinstance(indices, range) else indices))
    if idx.dtype == torch.bool:
        raise InputTypeError("subset takes integer indices, not a boolean mask (use mask.nonzero())")
    if idx.numel() and (idx.is_floating_point() or idx.is_complex()):
        raise InputTypeError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.reshape(-1).to(torch.int64)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= length):
        raise IndexError(
            f"indices must lie in [0, {length}); got min {int(idx.min())}, max {int(idx.max())}"
        )
    return idx


class Dataset(torch.utils.data.Dataset):
    """Base class of smoothcert datasets: a torch map-style dataset plus metadata.

    Items are ``(x, y)`` with ``x`` float32 ``[C, H, W]`` in [0, 1] and ``y`` an int64 scalar.

    Attributes:
        name: what was loaded, e.g. ``"mnist"`` or ``"samples/cifar10"``.
        split: ``"train"``, ``"test"`` (or a folder name for generic folders).
        info: :class:`DatasetInfo` — shape, number of classes, normalization constants.
    """

    name: str
    split: str
    info: DatasetInfo

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @property
    def labels(self) -> Tensor:
        """All labels, int64 ``[N]`` (cheap: no image is decoded)."""
        raise NotImplementedError

    @property
    def source_indices(self) -> Tensor:
        """int64 ``[N]``: position of each item in the original split's standard order.

        For the embedded test set and the sample images this is the official test index (the
        ``idx`` column of certification logs); a :meth:`subset` keeps the original positions.
        """
        raise NotImplementedError

    def subset(self, indices: Indices) -> Dataset:
        """A dataset of the items at ``indices`` (positions in this dataset), in that order."""
        raise NotImplementedError

    def tensors(self, *, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """All items at once: images float32 ``[N, C, H, W]`` in [0, 1] and labels int64 ``[N]``.

        Meant for small sets (the embedded MNIST subset is 31 MB as float32); large folders
        decode every image.
        """
        if len(self) == 0:
            c, h, w = self.info.input_shape
            return torch.empty(0, c, h, w, device=device), torch.empty(0, dtype=torch.int64, device=device)
        xs, ys = zip(*(self[i] for i in range(len(self))))
        return torch.stack(xs).to(device), torch.stack(ys).to(device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape={self.info.input_shape}, num_classes={self.info.num_classes})"
        )


class ArrayDataset(Dataset):
    """An in-memory image dataset.

    Args:
        images: ``[N, C, H, W]`` uint8 (0..255, stored as is and divided by 255 on access) or
            floating point already in [0, 1] (stored as float32).
        labels: ``[N]`` integers in ``[0, info.num_classes)``.
        info: description; ``info.input_shape`` must equal ``images.shape[1:]``.
        name: defaults to ``info.name``.
        split: which split these images are.
        source_indices: ``[N]`` positions in the original split; defaults to ``0..N-1``.
    """

    def __init__(
        self,
        images: Tensor | np.ndarray,
        labels: Tensor | np.ndarray | Sequence[int],
        *,
        info: DatasetInfo,
        name: str | None = None,
        split: str = "test",
        source_indices: Tensor | np.ndarray | Sequence[int] | None = None,
    ) -> None:
        x = torch.as_tensor(images)
        y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
        if x.ndim != 4:
            raise InputError(f"images must be [N, C, H, W], got shape {tuple(x.shape)}")
        if tuple(x.shape[1:]) != info.input_shape:
            raise InputError(
                f"images have shape {tuple(x.shape[1:])} per item but info.input_shape is {info.input_shape}"
            )
        if x.dtype != torch.uint8:
            if not x.is_floating_point():
                raise InputTypeError(f"images must be uint8 or floating point in [0, 1], got {x.dtype}")
            x = x.to(torch.float32)
            if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
                raise InputError("floating-point images must be finite and lie in [0, 1]")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise InputError(f"labels must be [N] with N={x.shape[0]}, got shape {tuple(y.shape)}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise InputTypeError(f"labels must be integers, got {y.dtype}")
        y = y.to(torch.int64)
        too_big = info.num_classes is not None and y.numel() and int(y.max()) >= info.num_classes
        if y.numel() and (int(y.min()) < 0 or too_big):
            raise InputError(
                f"labels must lie in [0, {info.num_classes}); got min {int(y.min())}, max {int(y.max())}"
            )
        if source_indices is None:
            src = torch.arange(x.shape[0], dtype=torch.int64)
        else:
            src = torch.as_tensor(np.asarray(source_indices)).to(torch.int64).reshape(-1)
            if src.shape[0] != x.shape[0]:
                raise InputError(f"source_indices has {src.shape[0]} entries for {x.shape[0]} images")
        self._images = x.contiguous()
        self._labels = y.contiguous()
        self._source = src
        self.info = info
        self.name = info.name if name is None else name
        self.split = split

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def _to_float(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            return x.to(torch.float32).div_(255.0)
        return x.clone()

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        i = operator.index(index)
        return self._to_float(self._images[i]), self._labels[i].clone()

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
        # DataLoader calls this with a whole batch of indices: one gather and one conversion
        # instead of one per item; the result stays a list of samples for any collate_fn.
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        xs = self._to_float(self._images.index_select(0, idx))
        ys = self._labels.index_select(0, idx)
        return list(zip(xs.unbind(0), ys.unbind(0)))

    @property
    def labels(self) -> Tensor:
        return self._labels.clone()

    @property
    def source_indices(self) -> Tensor:
        return self._source.clone()

    @property
    def images_uint8(self) -> Tensor | None:
        """The stored uint8 images ``[N, C, H, W]`` (a view, do not modify), or None if stored as float."""
        return self._images if self._images.dtype == torch.uint8 else None

    def subset(self, indices: Indices) -> ArrayDataset:
        idx = _as_index_tensor(indices, len(self))
        return ArrayDataset(
            self._images.index_select(0, idx),
            self._labels.index_select(0, idx),
            info=self.info,
            name=self.name,
            split=self.split,
            source_indices=self._source.index_select(0, idx),
        )

    def tensors(self, *, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        x = self._images.to(device)
        x = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x.clone()
        return x, self._labels.to(device, copy=True)


def _require_torchvision() -> Any:
    try:
        import torchvision  # noqa: F401  (optional dependency, imported only when needed)
    except ImportError as err:
        raise ImportError(
            "image-folder datasets need torchvision: pip install smoothcert[vision] "
            "(or install torchvision matching your torch build)"
        ) from err
    return torchvision


class FolderDataset(Dataset):
    """Images on disk in ImageFolder layout: ``<directory>/<class name>/<image file>``.

    Labels are the class folders in sorted order (for ImageNet: the standard synset order).
    Each image is decoded on access, resized so its shorter side is ``resize`` pixels, centre
    cropped to ``crop`` x ``crop`` and converted to float32 ``[3, crop, crop]`` in [0, 1]; no
    normalization. Needs torchvision (``pip install smoothcert[vision]``).
    """

    def __init__(
        self,
        directory: PathLike,
        *,
        name: str = "folder",
        split: str = "test",
        resize: int = 256,
        crop: int = 224,
        mean: Sequence[float] = _IMAGENET_MEAN,
        std: Sequence[float] = _IMAGENET_STD,
        expected_classes: int | None = None,
    ) -> None:
        tv = _require_torchvision()
        from torchvision import transforms

        if crop > resize:
            raise InputError(f"crop ({crop}) must not exceed resize ({resize})")
        directory = Path(directory)
        if not directory.is_dir():
            raise MissingFileError(f"image folder {directory} does not exist")
        transform = transforms.Compose(
            [transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor()]
        )
        folder = tv.datasets.ImageFolder(str(directory), transform=transform)
        if expected_classes is not None and len(folder.classes) != expected_classes:
            raise InputError(
                f"{directory} has {len(folder.classes)} class folders, expected {expected_classes}; "
                "labels would not match a model trained on the full set "
                "(use the 'folder' dataset for other layouts)"
            )
        self._folder = folder
        self._index = torch.arange(len(folder), dtype=torch.int64)
        self._targets = torch.as_tensor(folder.targets, dtype=torch.int64)
        self.directory = directory
        self.name = name
        self.split = split
        self.info = DatasetInfo(
            name=name,
            num_classes=len(folder.classes),
            input_shape=(3, crop, crop),
            mean=tuple(mean),
            std=tuple(std),
            class_names=tuple(folder.classes),
            source=_IMAGENET_INFO.source if name == "imagenet" else f"image folder {directory}",
        )

    def __len__(self) -> int:
        return int(self._index.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        j = int(self._index[operator.index(index)])
        x, _ = self._folder[j]
        return x.to(torch.float32), self._targets[j].clone()

    @property
    def labels(self) -> Tensor:
        return self._targets.index_select(0, self._index)

    @property
    def source_indices(self) -> Tensor:
        return self._index.clone()

    def subset(self, indices: Indices) -> FolderDataset:
        idx = _as_index_tensor(indices, len(self))
        out = object.__new__(FolderDataset)
        out.__dict__.update(self.__dict__)
        out._index = self._index.index_select(0, idx)
        return out


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

#: Dataset loaders by name; each is called as ``loader(split=..., root=..., download=..., **options)``.
DATASETS: Registry[Dataset] = Registry("dataset")
_INFOS: dict[str, DatasetInfo | Callable[..., DatasetInfo]] = {}


def register_dataset(
    name: str, *, info: DatasetInfo | Callable[..., DatasetInfo]
) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Decorator adding a dataset loader.

    The loader is called with keywords ``split`` (str), ``root`` (Path or None), ``download``
    (bool) and any dataset-specific options, and returns a :class:`Dataset`. ``info`` is the
    dataset's :class:`DatasetInfo`, or a function of the options returning it.
    """

    def add(loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
        DATASETS.register(name)(loader)
        _INFOS[name.lower()] = info
        return loader

    return add


def get_dataset(
    name: str = "embedded",
    *,
    split: str,
    root: PathLike | None = None,
    download: bool = False,
    **options: Any,
) -> Dataset:
    """Load a registered dataset.

    Args:
        name: one of :func:`list_datasets`; default ``"embedded"`` (real MNIST images shipped with
            the package, no root needed).
        split: ``"train"`` or ``"test"`` (folders: any sub-folder name).
        root: data directory; default ``$SMOOTHCERT_DATA`` or ``./data``. For ``samples`` it is
            the directory holding the sample images (default: ``samples`` inside the default root).
        download: fetch missing files from the canonical mirrors (mnist, fashion-mnist, cifar10,
            cifar100); md5 checked.
        **options: dataset-specific, e.g. ``subset="cifar10"`` for ``samples``.

    Returns:
        A :class:`Dataset` yielding ``(x float32 [C, H, W] in [0, 1], y int64 scalar)``.

    Raises:
        ValueError: unknown name or split. FileNotFoundError: data absent (the message names the
        expected paths). ValueError: corrupt files.
    """
    if not isinstance(split, str):
        raise InputTypeError(f"split must be a string such as 'train' or 'test', got {type(split).__name__}")
    loader = DATASETS.factory(name)
    return loader(split=split, root=None if root is None else Path(root), download=bool(download), **options)


def dataset_info(name: str, **options: Any) -> DatasetInfo:
    """The :class:`DatasetInfo` of a registered dataset without loading it.

    ``samples`` needs ``subset=...`` and returns the info of that dataset (the sample images are
    test images of it, so models trained on it apply unchanged).
    """
    DATASETS.factory(name)  # the registry's error lists the known names
    info = _INFOS[name.lower()]
    return info(**options) if callable(info) else info


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return DATASETS.names()


def make_loader(
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader yielding ``(x [B, C, H, W] float32, y [B] int64)`` batches.

    Pass a seeded ``generator`` for a reproducible shuffle order; without it, the order follows
    torch's global random state.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if num_workers < 0:
        raise InputError(f"num_workers must be >= 0, got {num_workers}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=drop_last,
    )


def iter_batches(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches ``(x [b, C, H, W] float32 in [0, 1], y [b] int64)`` of ``dataset``, on the CPU.

    :class:`ArrayDataset` is batched by indexing its stored tensors (no Python call per image; uint8
    images are converted one batch at a time); any other map-style dataset goes through a
    DataLoader (:func:`make_loader`), whose uint8 images are divided by 255 as well, so a dataset
    yielding raw 0..255 bytes trains on [0, 1] like the built-in ones.

    Args:
        batch_size: the last batch may be smaller.
        shuffle: a random order (a new one each call), drawn from ``generator`` (a CPU generator;
            None: torch's global RNG); else the dataset's order.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(dataset, ArrayDataset):
        images = dataset.images_uint8
        if images is None:
            images = dataset.tensors()[0]
        labels = dataset.labels
        n = len(labels)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            yield _float_images(images[idx]), labels[idx]
        return
    for x, y in make_loader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator):
        yield _float_images(torch.as_tensor(x)), torch.as_tensor(y).long()


def _float_images(x: Tensor) -> Tensor:
    """uint8 images scaled to [0, 1]; float images as float32."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def default_data_root() -> Path:
    """``$SMOOTHCERT_DATA`` if set, else ``./data`` (relative to the working directory)."""
    env = os.environ.get(ENV_DATA_ROOT)
    return Path(env).expanduser() if env else Path("data")


def _data_root(root: Path | None) -> Path:
    return (default_data_root() if root is None else Path(root).expanduser()).absolute()


def _check_split(name: str, split: str, allowed: Sequence[str] = _SPLITS) -> None:
    if split not in allowed:
        raise InputError(f"{name} has splits {', '.join(map(repr, allowed))}; got split={split!r}")


def _missing_message(what: str, paths: Sequence[str], *, downloadable: bool) -> str:
    lines = [f"{what} not found; expected:"] + [f"  {p}" for p in paths]
    hint = "Pass download=True (CLI: --download) to fetch it, or point" if downloadable else "Point"
    lines.append(
        f"{hint} root (CLI: --data-root, or the environment variable {ENV_DATA_ROOT}) "
        "at the directory that holds it."
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------


class DownloadError(SmoothcertError, RuntimeError):
    """No mirror delivered a file with the expected checksum."""


def _fetch(url: str, destination: Path, *, timeout: float = 60.0) -> None:
    """Download ``url`` to ``destination`` (overwritten). The only code here that uses the network."""
    # Some mirrors refuse urllib's default user agent.
    request = urllib.request.Request(url, headers={"User-Agent": "smoothcert (python urllib)"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_verified(filename: str, mirrors: Sequence[str], md5: str, directory: Path) -> Path:
    """Fetch ``filename`` from the first mirror that delivers it with the right md5.

    An existing file with the right md5 is kept. A partial or wrong download never appears under
    the final name: it is written to ``<name>.part`` and renamed only after the checksum passes.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / filename
    if target.is_file() and _md5(target) == md5:
        return target
    partial = directory / (filename + ".part")
    failures = []
    for mirror in mirrors:
        url = mirror + filename
        print(f"smoothcert: downloading {url}", file=sys.stderr)
        try:
            _fetch(url, partial)
        except (OSError, urllib.error.URLError, ValueError) as err:
            failures.append(f"{url}: {err}")
            partial.unlink(missing_ok=True)
            continue
        got = _md5(partial)
        if got != md5:
            failures.append(f"{url}: md5 {got} does not match the expected {md5}")
            partial.unlink(missing_ok=True)
            continue
        partial.replace(target)
        return target
    raise DownloadError(
        f"could not download {filename}:\n  "
        + "\n  ".join(failures)
        + f"\nFetch it by hand (md5 {md5}) into {directory}."
    )


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


# --------------------------------------------------------------------------------------------
# Embedded MNIST subset
# --------------------------------------------------------------------------------------------

_EMBEDDED_FILE = ("_data", "mnist_subset.npz")


def _embedded_arrays(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref = resources.files("smoothcert").joinpath(*_EMBEDDED_FILE)
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise MissingFileError(
                f"embedded MNIST subset missing at {path}; rebuild it with "
                "python scripts/build_embedded_mnist.py --raw-dir <dir with the MNIST .gz files>"
            )
        with np.load(path, allow_pickle=False) as z:
            return z[f"{split}_images"], z[f"{split}_labels"], z[f"{split}_indices"]


def embedded_metadata() -> dict[str, Any]:
    """Provenance of the embedded MNIST subset: source files and md5, selection rule, licence."""
    ref = resources.files("smoothcert").joinpath(*_EMBEDDED_FILE)
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["metadata"]))


@register_dataset("embedded", info=_EMBEDDED_INFO)
def _load_embedded(*, split: str, root: Path | None = None, download: bool = False) -> Dataset:
    """Real MNIST images shipped inside the package (no files, no network).

    train: the first 1000 training images of each digit (10000, in original order); test: the
    first 1000 MNIST test images, so item i is MNIST test image i. ``root`` and ``download`` are
    accepted for a uniform call signature and ignored.
    """
    _check_split("embedded", split)
    images, labels, indices = _embedded_arrays(split)
    return ArrayDataset(
        torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1),
        labels.astype(np.int64),
        info=_EMBEDDED_INFO,
        split=split,
        source_indices=indices.astype(np.int64),
    )


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


# --------------------------------------------------------------------------------------------
# Image folders (ImageNet and any ImageFolder layout)
# --------------------------------------------------------------------------------------------


def _split_dir(base: Path, split: str) -> Path | None:
    # ImageNet's labelled evaluation set is "val" (test labels were never released).
    names = [split] + (["val"] if split == "test" else [])
    for name in names:
        if (base / name).is_dir():
            return base / name
    return None


@register_dataset("imagenet", info=_IMAGENET_INFO)
def _load_imagenet(*, split: str, root: Path | None = None, download: bool = False) -> Dataset:
    """ImageNet from ``<root>/imagenet/{train,val}/<synset>/*.JPEG`` (or ``<root>/{train,val}``).

    split "test" reads the ``val`` folder. Images: shorter side 256, centre crop 224, [0, 1].
    All 1000 class folders must be present, so labels match the standard indices.
    """
    _check_split("imagenet", split)
    if download:
        raise InputError("ImageNet cannot be downloaded automatically; obtain it from image-net.org")
    base = _data_root(root)
    for candidate in (base / "imagenet", base):
        directory = _split_dir(candidate, split)
        if directory is not None:
            return FolderDataset(directory, name="imagenet", split=split, expected_classes=1000)
    sub = "{test,val}" if split == "test" else split
    expected = [f"{base / 'imagenet' / sub}/<synset>/<image>", f"{base / sub}/<synset>/<image>"]
    raise MissingFileError(_missing_message(f"imagenet {split} split", expected, downloadable=False))


@register_dataset(
    "folder",
    info=DatasetInfo(
        name="folder", num_classes=None, input_shape=(3, 224, 224),
        mean=_IMAGENET_MEAN, std=_IMAGENET_STD, source="user image folder",
    ),
)  # fmt: skip
def _load_folder(
    *,
    split: str,
    root: Path | None = None,
    download: bool = False,
    resize: int = 256,
    crop: int = 224,
    mean: Sequence[float] = _IMAGENET_MEAN,
    std: Sequence[float] = _IMAGENET_STD,
) -> Dataset:
    """Any ImageFolder directory ``<root>/<split>/<class>/<image>``; "test" falls back to "val".

    Normalization constants default to ImageNet's; pass ``mean``/``std`` for other data.
    """
    if root is None:
        raise InputError("the 'folder' dataset needs root=<directory containing <split>/<class>/<image>>")
    if download:
        raise InputError("the 'folder' dataset cannot be downloaded")
    base = Path(root).expanduser().absolute()
    directory = _split_dir(base, split)
    if directory is None:
        expected = [f"{base / split}/<class>/<image>"]
        raise MissingFileError(_missing_message(f"folder split {split!r}", expected, downloadable=False))
    return FolderDataset(directory, name="folder", split=split, resize=resize, crop=crop, mean=mean, std=std)


# --------------------------------------------------------------------------------------------
# Sample images (first test images of standard datasets, label in the file name)
# --------------------------------------------------------------------------------------------

#: ``samples`` subsets → (file-name prefix, PIL mode, dataset whose info applies).
SAMPLE_SUBSETS: dict[str, tuple[str, str, str]] = {
    "cifar10": ("cifar10", "RGB", "cifar10"),
    "cifar100": ("cifar100", "RGB", "cifar100"),
    "mnist": ("mnist", "L", "mnist"),
    "fashion-mnist": ("fashionMNIST", "L", "fashion-mnist"),
    "imagenet": ("imagenet", "RGB", "imagenet"),
}


def _samples_info(subset: str | None = None) -> DatasetInfo:
    if subset is None or subset not in SAMPLE_SUBSETS:
        raise InputError(f"samples needs subset= one of {', '.join(SAMPLE_SUBSETS)}; got {subset!r}")
    return dataset_info(SAMPLE_SUBSETS[subset][2])


def _default_samples_dirs() -> list[Path]:
    """Where ``samples`` looks without a root, in order: ``$SMOOTHCERT_DATA/samples`` (if set), then
    ``./data/samples``. Data roots come from arguments or the environment only, never from where
    the package is installed."""
    env = os.environ.get(ENV_DATA_ROOT)
    candidates = [Path(env).expanduser() / "samples"] if env else []
    candidates.append(Path("data") / "samples")
    return [c.absolute() for c in candidates]


def _resize_center_crop(image: Any, *, resize: int, crop: int) -> Any:
    """Shorter side to ``resize`` (bilinear, antialiased), then the central ``crop`` x ``crop``.

    Same geometry as torchvision's Resize(resize) + CenterCrop(crop) on PIL images.
    """
    from PIL import Image

    w, h = image.size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    image = image.resize((new_w, new_h), bilinear)
    left, top = int(round((new_w - crop) / 2.0)), int(round((new_h - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


@register_dataset("samples", info=_samples_info)
def _load_samples(
    *, split: str = "test", root: Path | None = None, download: bool = False, subset: str | None = None
) -> Dataset:
    """The labelled sample images ``<prefix>_<test index>_<label>.<png|jpg>`` as a tiny test set.

    ``subset`` picks the dataset (cifar10, cifar100, mnist, fashion-mnist, imagenet); items are
    sorted by test index, and ``source_indices`` holds those indices. MNIST-like images are
    1x28x28, CIFAR 3x32x32, ImageNet resized (shorter side 256) and centre-cropped to 3x224x224.
    """
    info = _samples_info(subset)
    assert subset is not None
    _check_split("samples", split, ("test",))
    if root is not None:
        directory: Path | None = Path(root).expanduser().absolute()
        searched = [directory]
        if not directory.is_dir():
            directory = None
    else:
        searched = _default_samples_dirs()
        directory = next((d for d in searched if d.is_dir()), None)
    if directory is None:
        raise MissingFileError(
            _missing_message("sample image directory", [str(d) for d in searched], downloadable=False)
        )
    prefix, mode, _ = SAMPLE_SUBSETS[subset]
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)_(\d+)\.(png|jpe?g)$", re.IGNORECASE)
    found: dict[int, tuple[int, Path]] = {}
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match:
            index, label = int(match.group(1)), int(match.group(2))
            if index in found:
                raise InputError(
                    f"two sample files for {subset} test index {index}: {found[index][1]}, {path}"
                )
            found[index] = (label, path)
    if not found:
        raise MissingFileError(f"no {prefix}_<index>_<label>.png/.jpg files in {directory}")

    from PIL import Image

    c, h, w = info.input_shape
    images = []
    for index in sorted(found):
        path = found[index][1]
        with Image.open(path) as img:
            img = img.convert(mode)
            if subset == "imagenet":
                img = _resize_center_crop(img, resize=256, crop=h)
            if img.size != (w, h):
                raise InputError(f"{path}: expected a {w}x{h} image, got {img.size[0]}x{img.size[1]}")
            array = np.asarray(img, dtype=np.uint8)
        images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    indices = sorted(found)
    return ArrayDataset(
        torch.from_numpy(np.stack(images)),
        [found[i][0] for i in indices],
        info=info,
        name=f"samples/{subset}",
        split="test",
        source_indices=indices,
    )
