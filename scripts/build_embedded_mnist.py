#!/usr/bin/env python
"""Build the MNIST subset embedded in smoothcert (src/smoothcert/_data/mnist_subset.npz).

MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (http://yann.lecun.com/exdb/mnist/),
licensed CC BY-SA 3.0; the subset keeps that attribution and licence (stored in the file's
``metadata`` entry and returned by ``smoothcert.data.embedded_metadata()``).

Selection (deterministic, no randomness):
  train: the first ``--train-per-class`` images of each digit in the standard training file, kept
         in their original order (so classes stay interleaved as in MNIST);
  test:  the first ``--test-count`` images of the standard test file, so embedded test item i is
         MNIST test image i.
The source index of every image is stored (``train_indices``, ``test_indices``).

Layout of the .npz (a zip of .npy files, readable with ``np.load(..., allow_pickle=False)``):
  train_images uint8 [N, 28, 28], train_labels uint8 [N], train_indices int32 [N],
  test_images uint8 [M, 28, 28], test_labels uint8 [M], test_indices int32 [M],
  metadata: 0-d unicode array holding JSON (source files and md5, selection, licence).
It is written like ``np.savez_compressed`` but with fixed zip timestamps, so rebuilding from the same
files gives a byte-identical file.

Usage:
  python scripts/build_embedded_mnist.py --raw-dir ../shared/data/MNIST/raw
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
try:
    from smoothcert.data import read_idx
except ImportError:  # running from a source checkout without installing the package
    sys.path.insert(0, str(REPO / "src"))
    from smoothcert.data import read_idx

DEFAULT_OUT = REPO / "src" / "smoothcert" / "_data" / "mnist_subset.npz"
SIZE_BUDGET_BYTES = 2_500_000  # keep the wheel small; shrink --train-per-class if exceeded
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _locate(raw_dir: Path, base: str) -> Path:
    for candidate in (raw_dir / (base + ".gz"), raw_dir / base):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{raw_dir / (base + '.gz')} (or uncompressed {raw_dir / base}) not found")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def first_per_class(labels: np.ndarray, per_class: int, num_classes: int = 10) -> np.ndarray:
    """Indices of the first ``per_class`` occurrences of each class, in ascending order."""
    chosen = []
    for c in range(num_classes):
        where = np.flatnonzero(labels == c)
        if where.size < per_class:
            raise ValueError(f"class {c} has only {where.size} images, fewer than {per_class}")
        chosen.append(where[:per_class])
    return np.sort(np.concatenate(chosen))


def build(raw_dir: Path, *, train_per_class: int, test_count: int) -> dict[str, np.ndarray]:
    """The arrays of the embedded file (see the module docstring for the layout)."""
    paths = {key: _locate(raw_dir, base) for key, base in _FILES.items()}
    data = {key: read_idx(path) for key, path in paths.items()}
    if not 0 < test_count <= data["test_images"].shape[0]:
        raise ValueError(f"--test-count must be in [1, {data['test_images'].shape[0]}], got {test_count}")
    train_idx = first_per_class(data["train_labels"], train_per_class)
    test_idx = np.arange(test_count)
    metadata = {
        "dataset": "MNIST",
        "authors": "Yann LeCun, Corinna Cortes, Christopher J.C. Burges",
        "homepage": "http://yann.lecun.com/exdb/mnist/",
        "license": "CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/)",
        "source_files": {path.name: _md5(path) for path in paths.values()},
        "train_selection": (
            f"first {train_per_class} images of each digit of the training file, original order"
        ),
        "test_selection": f"first {test_count} images of the test file (item i = MNIST test image i)",
        "train_per_class": train_per_class,
        "test_count": test_count,
        "built_by": "scripts/build_embedded_mnist.py",
    }
    return {
        "train_images": data["train_images"][train_idx],
        "train_labels": data["train_labels"][train_idx],
        "train_indices": train_idx.astype(np.int32),
        "test_images": data["test_images"][test_idx],
        "test_labels": data["test_labels"][test_idx],
        "test_indices": test_idx.astype(np.int32),
        "metadata": np.array(json.dumps(metadata, sort_keys=True)),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed's format with a fixed timestamp (byte-reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(arrays[name]), allow_pickle=False)
            entry = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, buffer.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--raw-dir", type=Path, required=True, help="folder with the four MNIST idx files (.gz or not)"
    )
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-count", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.train_per_class < 1:
        parser.error("--train-per-class must be >= 1")
    arrays = build(args.raw_dir, train_per_class=args.train_per_class, test_count=args.test_count)
    write_npz(args.out, arrays)
    size = args.out.stat().st_size
    print(
        f"wrote {args.out}: {arrays['train_images'].shape[0]} train + {arrays['test_images'].shape[0]} test "
        f"images, {size / 1e6:.2f} MB"
    )
    if size > SIZE_BUDGET_BYTES:
        print(
            f"warning: {size / 1e6:.2f} MB exceeds the {SIZE_BUDGET_BYTES / 1e6:.1f} MB budget; "
            "use a smaller --train-per-class",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
