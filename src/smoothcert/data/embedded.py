"""The MNIST subset shipped inside the package (the default dataset: no root, no download).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MissingFileError
from .core import ArrayDataset, Dataset, DatasetInfo, _check_split, register_dataset
from .idx import _DIGITS, _MNIST_SOURCE

_EMBEDDED_INFO = DatasetInfo(
    name="embedded", num_classes=10, input_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,),
    class_names=_DIGITS,
    source=_MNIST_SOURCE + "; subset: first 1000 training images of each digit and the first "
    "1000 test images (details: smoothcert.data.embedded_metadata())",
)  # fmt: skip


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


