"""ImageNet-style image folders (``<root>/<split>/<class>/*.jpeg``), through torchvision's ImageFolder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError, MissingFileError
from .core import (
    _IMAGENET_INFO,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Dataset,
    DatasetInfo,
    FolderDataset,
    _check_split,
    _data_root,
    _missing_message,
    register_dataset,
)

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
        mean=IMAGENET_MEAN, std=IMAGENET_STD, source="user image folder",
    ),
)  # fmt: skip
def _load_folder(
    *,
    split: str,
    root: Path | None = None,
    download: bool = False,
    resize: int = 256,
    crop: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
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


