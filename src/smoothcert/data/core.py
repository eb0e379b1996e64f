"""Dataset classes, the dataset registry, batching and data roots.

See :mod:`smoothcert.data` for the conventions (inputs in [0, 1], normalization constants in
:class:`DatasetInfo`, torchvision's folder layout).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..errors import InputError, InputTypeError, MissingFileError
from ..registry import Registry

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



#: torchvision's ImageNet normalization (what its ImageNet classification weights expect too).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMAGENET_INFO = DatasetInfo(
    name="imagenet", num_classes=1000, input_shape=(3, 224, 224),
    mean=IMAGENET_MEAN, std=IMAGENET_STD,
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
        import torchvision
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
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
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


