"""Classifier checkpoints: the metadata that rebuilds a model and says how to smooth it.

A classifier checkpoint is the generic payload of :mod:`smoothcert.checkpoints` with format
``"smoothcert-checkpoint"``, metadata :class:`CheckpointMeta` and the weights of
``build_model(...)`` (keys ``"0.mean"``, ``"0.std"`` of its Normalize layer, ``"1.<net>"``)::

    {"format": "smoothcert-checkpoint", "version": 1,
     "meta": CheckpointMeta.to_dict(),        # architecture, normalization, data, noise, sigma, ...
     "state_dict": {...}, "optimizer_state": {...}, "extra": {...},   # the last two only if given
     "versions": {"smoothcert": ..., "torch": ...}}

Loading rebuilds the model from the metadata; a file without metadata (a bare state_dict, another
project's checkpoint) is refused rather than guessed, because a wrong normalization constant does
not crash: it silently costs accuracy.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import (
    CheckpointKind,
    MetaRecord,
    is_int,
    not_plain,
    state_mismatch,
    unwrap,
    write_payload,
)
from ..errors import CheckpointError, InputError
from .registry import MODELS, build_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CLASSIFIER_CHECKPOINT",
    "CheckpointError",
    "CheckpointMeta",
    "MetaRecord",
    "is_int",
    "load_checkpoint",
    "not_plain",
    "read_checkpoint",
    "save_checkpoint",
    "state_mismatch",
    "unwrap",
    "write_payload",
]

CHECKPOINT_FORMAT = "smoothcert-checkpoint"
CHECKPOINT_VERSION = 1

# Shown in every refusal of a file without metadata; the list of lost information is the reason to refuse.
_HOW_TO_IMPORT = (
    "The normalization constants (mean/std), input size, dataset, noise and sigma cannot be guessed from "
    "weights, and a wrong guess silently costs accuracy. "
    "To use such weights, build the model yourself and record its metadata once: "
    "model = smoothcert.models.build_model(arch, num_classes=..., in_channels=..., mean=..., std=...); "
    "model[1].load_state_dict(weights) (strip wrapper prefixes such as 'module.' first); "
    "smoothcert.models.save_checkpoint(path, model, meta=CheckpointMeta(...))."
)


@dataclass(kw_only=True)
class CheckpointMeta(MetaRecord):
    """Everything needed to rebuild a model and to smooth it as it was trained.

    ``arch``/``arch_kwargs``/``num_classes``/``in_channels`` rebuild the network through the
    model registry; ``mean``/``std`` rebuild its ``Normalize`` layer (one value per channel, for
    inputs in [0,1]); ``input_size`` is the square side (int) or ``[H, W]`` the model was
    trained on; ``noise``/``sigma`` name the training noise (``"none"``/``0.0`` for a model
    trained without noise); ``training`` holds the method name and its hyperparameters,
    e.g. ``{"method": "gaussian", "lr": 0.1, "epochs": 90}``; ``epoch`` is the number of
    finished epochs.
    """

    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str
    num_classes: int
    in_channels: int
    input_size: int | list[int]
    mean: list[float]
    std: list[float]
    noise: str
    sigma: float
    training: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0

    def __post_init__(self) -> None:
        self._check_names("arch", "dataset", "noise")
        self._check_counts("num_classes", "in_channels")
        self._check_counts("epoch", minimum=0)
        self._check_dicts("arch_kwargs", "training")
        self._check_input_size()
        for name in ("mean", "std"):
            value = getattr(self, name)
            try:
                values = [float(v) for v in value]
            except (TypeError, ValueError):
                raise InputError(f"CheckpointMeta.{name} must be a sequence of numbers, got {value!r}") from None
            if len(values) != self.in_channels:
                raise InputError(
                    f"CheckpointMeta.{name} has {len(values)} values but in_channels={self.in_channels}"
                )
            if not all(math.isfinite(v) for v in values) or (name == "std" and min(values) <= 0):
                raise InputError(f"CheckpointMeta.{name} must be finite (std > 0), got {values}")
            setattr(self, name, values)
        self._check_sigma()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The input the model takes, ``(in_channels, H, W)`` (a square ``input_size`` expanded)."""
        size = self.input_size if isinstance(self.input_size, list) else [self.input_size] * 2
        return (self.in_channels, *size)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists, not tuples or tensors) suitable for ``torch.save`` and JSON."""
        out = dataclasses.asdict(self)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        return out


def _build(meta: CheckpointMeta) -> nn.Sequential:
    """``build_model`` of the architecture ``meta`` names (untrained)."""
    if meta.arch not in MODELS:
        raise InputError(
            f"unknown architecture {meta.arch!r}; known: {', '.join(MODELS.names())}. "
            "If it is your own network, register it with smoothcert.models.register_model before loading."
        )
    try:
        return build_model(meta.arch, num_classes=meta.num_classes, in_channels=meta.in_channels,
                           mean=meta.mean, std=meta.std, **meta.arch_kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(f"cannot build {meta.arch!r} with arch_kwargs={meta.arch_kwargs}: {err}") from None


def _check(meta: CheckpointMeta, state: Mapping[str, Any]) -> str:
    """The Normalize layer's constants must be the metadata's mean/std (and be there at all)."""
    if "0.mean" not in state:
        return ("the model has no Normalize layer at index 0: save the model returned by "
                "smoothcert.models.build_model (Normalize + network), not the bare network")
    return _normalization_mismatch(meta, state)


def _normalization_mismatch(meta: CheckpointMeta, state: Mapping[str, Any]) -> str:
    for name in ("mean", "std"):
        saved = state.get(f"0.{name}")
        expected = torch.tensor(getattr(meta, name), dtype=torch.float64)
        if not isinstance(saved, torch.Tensor) or saved.numel() != expected.numel():
            return f"the model's Normalize {name} is missing or has the wrong size"
        if not torch.allclose(saved.detach().double().cpu().flatten(), expected, rtol=1e-5, atol=1e-7):
            return (
                f"the model's Normalize {name} {saved.flatten().tolist()} differs from the metadata "
                f"{name} {getattr(meta, name)}"
            )
    return ""


#: The classifier checkpoint format (the generic core of :mod:`smoothcert.checkpoints`, with this metadata).
CLASSIFIER_CHECKPOINT: CheckpointKind[CheckpointMeta] = CheckpointKind(
    label="checkpoint",
    format=CHECKPOINT_FORMAT,
    version=CHECKPOINT_VERSION,
    meta_type=CheckpointMeta,
    build=_build,
    check=_check,
    loader="smoothcert.models.load_checkpoint",
    how_to_import=_HOW_TO_IMPORT,
)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    meta: CheckpointMeta | Mapping[str, Any],
    optimizer_state: Mapping[str, Any] | torch.optim.Optimizer | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (as built by ``build_model``) with its metadata to ``path``, atomically.

    Before writing, the model is checked against ``meta``: the network rebuilt from the
    metadata must have exactly the model's state-dict keys and shapes, and the model's
    ``Normalize`` constants must equal ``meta.mean``/``meta.std``. So every file written here
    loads back with :func:`load_checkpoint`. ``DataParallel``/``DistributedDataParallel`` and
    ``torch.compile`` wrappers are unwrapped. ``optimizer_state`` (an optimizer or its
    ``state_dict()``) and ``extra`` must hold only tensors and plain Python values.

    The payload goes to a temporary file in the same directory, is flushed to disk and then
    renamed over ``path`` (``os.replace``), so an interrupted save leaves any previous file
    intact and never a partial one. Returns the path written. Raises ``CheckpointError``.
    """
    return CLASSIFIER_CHECKPOINT.save(path, model, meta=meta, optimizer_state=optimizer_state, extra=extra)


def read_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """The raw payload dict of a smoothcert checkpoint (for resuming: optimizer state, epoch).

    Loads with ``torch.load(weights_only=True)`` and checks the format marker and version;
    ``payload["meta"]`` is the metadata dict (see :class:`CheckpointMeta`). Raises
    ``CheckpointError`` for unreadable files, foreign checkpoints and newer format versions.
    """
    return CLASSIFIER_CHECKPOINT.read(path, map_location=map_location)


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu"
) -> tuple[nn.Sequential, CheckpointMeta]:
    """Rebuild the model saved at ``path`` and load its weights.

    Returns ``(model, meta)``: ``model`` is ``build_model(meta.arch, ...)`` =
    ``nn.Sequential(Normalize(meta.mean, meta.std), net)``, taking inputs in [0,1], in eval
    mode, on ``map_location`` and in the floating dtype the weights were saved in. Raises
    ``CheckpointError`` if the file is unreadable or foreign, its metadata is missing or
    invalid, the architecture is not registered, or the weights do not fit the architecture.
    """
    return CLASSIFIER_CHECKPOINT.load(path, map_location=map_location)  # type: ignore[return-value]
