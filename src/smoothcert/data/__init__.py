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

# Importing a source module registers its datasets.
from . import cifar, embedded, folders, idx, samples  # noqa: F401 (importing a source registers its datasets)
from .core import (
    DATASETS,
    ENV_DATA_ROOT,
    ArrayDataset,
    Dataset,
    DatasetInfo,
    FolderDataset,
    dataset_info,
    default_data_root,
    get_dataset,
    iter_batches,
    list_datasets,
    make_loader,
    register_dataset,
)
from .download import DownloadError
from .embedded import embedded_metadata
from .idx import read_idx
from .samples import SAMPLE_SUBSETS

__all__ = [
    "DATASETS",
    "ENV_DATA_ROOT",
    "SAMPLE_SUBSETS",
    "ArrayDataset",
    "Dataset",
    "DatasetInfo",
    "DownloadError",
    "FolderDataset",
    "dataset_info",
    "default_data_root",
    "embedded_metadata",
    "get_dataset",
    "iter_batches",
    "list_datasets",
    "make_loader",
    "read_idx",
    "register_dataset",
]
