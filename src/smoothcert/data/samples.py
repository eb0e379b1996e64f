"""A handful of labelled sample images: the first test images of standard datasets, label in the file name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, MissingFileError
from .core import (
    ENV_DATA_ROOT,
    ArrayDataset,
    Dataset,
    DatasetInfo,
    _check_split,
    _missing_message,
    dataset_info,
    register_dataset,
)

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
