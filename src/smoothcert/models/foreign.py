"""Checkpoints released by the field's 2019-2021 code bases, turned into smoothcert checkpoints.

Cohen, Rosenfeld & Kolter 2019 (locuslab/smoothing) saved their models as
``torch.save({"epoch": ..., "arch": "cifar_resnet110", "state_dict": model.state_dict(),
"optimizer": ...})`` where ``model`` is ``Sequential(NormalizeLayer, net)`` (``architectures.py``,
``get_architecture``); code bases that reuse that ``architectures.py`` and training script
(smoothing-adversarial, consistency training, denoised-smoothing's classifiers) write the same
layout. MACER's release builds its networks with its own model code: its files are not read here
(a dict without ``state_dict`` and ``arch`` is refused with its keys named).
Their files therefore differ from a smoothcert checkpoint in four ways, all handled here:

* the network is named by a string of theirs (``cifar_resnet20``, ``cifar_resnet110``,
  ``resnet50``): :data:`COHEN2019_ARCHS` maps it onto this project's registry;
* keys carry ``1.`` (the Sequential's second entry) and often ``module.`` from DataParallel, in
  either order, and the CIFAR blocks call their projection shortcut ``downsample`` (ours:
  ``shortcut``; same 1x1 conv + batchnorm, He et al.'s option B);
* ``NormalizeLayer`` held its constants as plain attributes, so they are *not* in the state dict:
  they are the source code's (:data:`COHEN2019_NORMALIZATION`), CIFAR-10's std being
  (0.2023, 0.1994, 0.2010), not the (0.247, 0.2435, 0.2616) this project computes for its own
  training. A fork that did save them (``0.means``/``0.sds``) has its saved values used instead;
* files written by torch < 1.0 lack the batchnorm ``num_batches_tracked`` counters (unused in
  eval mode); they are filled with zeros.

Any other key, a missing key or a shape that does not fit is refused with the keys named: a
partially loaded network would certify a different classifier without a word.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..files import file_sha256
from .checkpoint import CheckpointMeta
from .registry import build_model

__all__ = [
    "COHEN2019_ARCHS",
    "COHEN2019_NORMALIZATION",
    "SOURCE_FORMATS",
    "ImportedCheckpoint",
    "convert_state_dict",
    "import_checkpoint",
    "infer_sigma",
]

#: Source formats :func:`import_checkpoint` reads. ``cohen2019``: locuslab/smoothing's layout,
#: also written by code bases reusing its ``architectures.py`` and training script
#: (smoothing-adversarial, consistency training, denoised-smoothing's base classifiers; each fork's
#: extra architectures are refused by name). ``torchvision``: a bare
#: torchvision-style ImageNet state dict (``--arch resnet50``), with the normalization its weights expect.
SOURCE_FORMATS = ("cohen2019", "torchvision")

#: Their architecture names -> this project's registered model (same layers, same order).
COHEN2019_ARCHS: dict[str, str] = {
    "cifar_resnet20": "resnet20",
    "cifar_resnet56": "resnet56",
    "cifar_resnet110": "resnet110",
    "resnet50": "resnet50",
}

#: (mean, std) per dataset exactly as in locuslab/smoothing ``code/datasets.py`` (``_CIFAR10_MEAN``,
#: ``_CIFAR10_STDDEV``, ``_IMAGENET_MEAN``, ``_IMAGENET_STDDEV``); torchvision's ImageNet weights
#: expect the same ImageNet constants.
COHEN2019_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

#: (num_classes, in_channels, input_size) of the datasets those checkpoints were trained on.
_DATASETS: dict[str, tuple[int, int, int]] = {"cifar10": (10, 3, 32), "imagenet": (1000, 3, 224)}

_NORMALIZE_KEYS = {"means": "mean", "sds": "std"}


@dataclass(frozen=True)
class ImportedCheckpoint:
    """The result of :func:`import_checkpoint`: ``model`` (``build_model`` of ``meta``, eval mode,
    CPU, the source weights loaded) and ``meta`` (``meta.training`` holds the provenance:
    ``method`` "imported", ``source_format``, ``source_arch``, ``source_sha256``, ``source_file``,
    ``source_epoch``). Also the result of :func:`smoothcert.models.load_external` (``method``
    "external": a torchvision/timm network, which ``build_model`` cannot rebuild)."""

    model: nn.Sequential
    meta: CheckpointMeta


def _strip(key: str) -> str:
    """``key`` without the ``module.`` of DataParallel wherever it sits before the network's own names."""
    parts = key.split(".")
    while parts and parts[0] == "module":
        parts.pop(0)
    if len(parts) > 1 and parts[0] in ("0", "1") and parts[1] == "module":
        parts.pop(1)
    return ".".join(parts)


def convert_state_dict(
    state: Mapping[str, Any], *, arch: str, source_format: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(network state, normalization state)`` of a source state dict, keys renamed for this
    project's ``arch`` (registered name). The network state has the keys of ``get_model(arch)``
    (no ``1.`` prefix); the normalization state holds ``mean``/``std`` if the file saved them.
    Raises :class:`CheckpointError` naming keys it cannot map."""
    if source_format not in SOURCE_FORMATS:
        raise InputError(f"unknown source format {source_format!r}; known: {', '.join(SOURCE_FORMATS)}")
    keys = [_strip(str(k)) for k in state]
    sequential = any(k.startswith("1.") for k in keys)
    net: dict[str, torch.Tensor] = {}
    norm: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for original, key in zip(state, keys):
        value = state[original]
        if not isinstance(value, torch.Tensor):
            unknown.append(str(original))
            continue
        if sequential:
            head, _, rest = key.partition(".")
            if head == "0" and rest in _NORMALIZE_KEYS:
                norm[_NORMALIZE_KEYS[rest]] = value
                continue
            if head != "1":
                unknown.append(str(original))
                continue
            key = rest
        if arch in ("resnet20", "resnet56", "resnet110"):
            key = key.replace(".downsample.", ".shortcut.")  # bearpaw's name for He's option-B shortcut
        net[key] = value
    if unknown:
        raise CheckpointError(
            f"cannot map {len(unknown)} key(s) of the {source_format} checkpoint onto {arch}: "
            + ", ".join(unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        )
    return net, norm


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        # weights_only: a foreign file is never unpickled as code (their payloads are tensors,
        # ints, strings and the optimizer's plain state dict).
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many types
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path} is not a readable torch file ({type(err).__name__}: {first})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a checkpoint dict")
    return payload


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], *, arch: str, source_format: str) -> None:
    expected = net.state_dict()
    for key, tensor in expected.items():
        # torch < 1.0 did not save batchnorm's step counter; it does not affect eval-mode outputs.
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(tensor)
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    problems = []
    if unknown:
        problems.append(f"unknown keys {', '.join(unknown[:10])}{', ...' if len(unknown) > 10 else ''}")
    if missing:
        problems.append(f"missing keys {', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}")
    if wrong:
        problems.append("shape mismatches " + ", ".join(
            f"{k} {list(state[k].shape)} vs {list(expected[k].shape)}" for k in wrong[:5]))
    if problems:
        raise CheckpointError(f"the {source_format} weights do not fit {arch}: " + "; ".join(problems))
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def import_checkpoint(
    path: str | os.PathLike[str],
    *,
    source_format: str,
    dataset: str,
    sigma: float,
    arch: str | None = None,
    noise: str = "gaussian",
) -> ImportedCheckpoint:
    """Rebuild the classifier saved at ``path`` by another code base as a smoothcert model.

    Args:
        path: the file (``torch.load`` with ``weights_only=True``; never unpickles code).
        source_format: one of :data:`SOURCE_FORMATS`.
        dataset: ``"cifar10"`` or ``"imagenet"``: decides the classes, input size and the
            normalization constants of the source code (:data:`COHEN2019_NORMALIZATION`).
        sigma: the noise level the model was trained with (their files do not record it; their
            directory names do, e.g. ``noise_0.25``). ``noise``: its family (theirs: Gaussian).
        arch: their architecture name (``cifar_resnet110``) or this project's (``resnet110``);
            default: the file's ``arch`` entry.

    Returns an :class:`ImportedCheckpoint` whose model maps ``[B, 3, H, W]`` inputs in [0,1] to
    logits exactly as ``Sequential(NormalizeLayer, net)`` did in the source code. Raises
    :class:`CheckpointError` for a file it cannot map (the keys named) and :class:`InputError`
    for unknown formats, datasets or architectures.
    """
    if source_format not in SOURCE_FORMATS:
        raise InputError(f"unknown source format {source_format!r}; known: {', '.join(SOURCE_FORMATS)}")
    if dataset not in _DATASETS:
        raise InputError(f"{source_format} checkpoints are for {', '.join(_DATASETS)}; got dataset {dataset!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise InputError(f"sigma must be a finite number >= 0, got {sigma!r}")
    path = Path(path)
    payload = _read(path)
    if source_format == "cohen2019":
        if "state_dict" not in payload:
            raise CheckpointError(f"{path} has no 'state_dict' entry (keys: {', '.join(map(str, payload))}); "
                                  "a cohen2019 checkpoint is {'arch': ..., 'state_dict': ...}")
        state = payload["state_dict"]
        source_arch = arch or payload.get("arch")
    else:
        state = payload.get("state_dict", payload)
        source_arch = arch
    if not isinstance(source_arch, str) or not source_arch:
        raise InputError(f"{path} names no architecture: give it (e.g. arch='cifar_resnet110')")
    target = COHEN2019_ARCHS.get(source_arch, source_arch if source_arch in COHEN2019_ARCHS.values() else None)
    if target is None:
        raise InputError(f"cannot map architecture {source_arch!r}; known: {', '.join(COHEN2019_ARCHS)}")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict of tensors")
    num_classes, in_channels, size = _DATASETS[dataset]
    if target == "resnet50" and dataset != "imagenet" or target != "resnet50" and dataset != "cifar10":
        raise InputError(f"{source_arch} is a {'ImageNet' if target == 'resnet50' else 'CIFAR'} architecture; "
                         f"dataset {dataset!r} does not fit it")
    net_state, norm_state = convert_state_dict(state, arch=target, source_format=source_format)
    mean, std = (list(v) for v in COHEN2019_NORMALIZATION[dataset])
    if norm_state:  # a fork that saved its constants: keep exactly those
        if set(norm_state) != {"mean", "std"}:
            raise CheckpointError(f"{path} saves only {', '.join(norm_state)} of its normalization layer")
        mean = [float(v) for v in norm_state["mean"].flatten()]
        std = [float(v) for v in norm_state["std"].flatten()]
    epoch = payload.get("epoch", 0) if source_format == "cohen2019" else 0
    epoch = int(epoch) if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0 else 0
    meta = CheckpointMeta(
        arch=target, dataset=dataset, num_classes=num_classes, in_channels=in_channels, input_size=size,
        mean=mean, std=std, noise=noise if sigma > 0 else "none", sigma=float(sigma), epoch=epoch,
        training={"method": "imported", "source_format": source_format, "source_arch": source_arch,
                  "source_sha256": file_sha256(path), "source_file": path.name, "source_epoch": epoch},
    )
    model = build_model(target, num_classes=num_classes, in_channels=in_channels, mean=mean, std=std)
    _load_into(model[1], net_state, arch=target, source_format=source_format)
    return ImportedCheckpoint(model.eval(), meta)


def infer_sigma(path: str | os.PathLike[str]) -> float | None:
    """The noise level named by a ``noise_<sigma>`` directory on ``path`` (the 2019 release's
    layout, ``models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar``), or None."""
    for part in reversed(Path(path).parts):
        match = re.fullmatch(r"noise_(\d+(?:\.\d+)?)", part)
        if match:
            return float(match.group(1))
    return None
