"""Denoiser checkpoints: the metadata that rebuilds a denoiser or score network and says what it was trained for.

A denoiser checkpoint is the generic payload of :mod:`smoothcert.checkpoints` (the same core as a
classifier checkpoint) with its own format marker, so neither loader takes the other's file::

    {"format": "smoothcert-denoiser", "version": 1,
     "meta": DenoiserMeta.to_dict(),     # architecture, data, noise and sigma or ladder, training
     "state_dict": {...},                # of build_denoiser(meta.arch, ...)
     "optimizer_state": {...}, "extra": {...},          # only if given
     "versions": {"smoothcert": ..., "torch": ...}}

This module defines the metadata (:class:`DenoiserMeta`), how a network is rebuilt from it, and the
kind :data:`DENOISER_CHECKPOINT`; ``save_denoiser``/``read_denoiser_checkpoint``/``load_denoiser``
are that kind's ``save``/``read``/``load``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import CheckpointKind, MetaRecord
from ..errors import InputError
from .nets import DENOISERS, build_denoiser, denoiser_kind
from .score import check_ladder

__all__ = [
    "DENOISER_CHECKPOINT",
    "DENOISER_FORMAT",
    "DENOISER_VERSION",
    "DenoiserMeta",
    "load_denoiser",
    "read_denoiser_checkpoint",
    "save_denoiser",
]

DENOISER_FORMAT = "smoothcert-denoiser"
DENOISER_VERSION = 1


@dataclass(kw_only=True)
class DenoiserMeta(MetaRecord):
    """Everything needed to rebuild a denoiser or score network and to use it as trained.

    ``arch``/``arch_kwargs``/``in_channels`` rebuild the network through
    :func:`~smoothcert.denoise.build_denoiser`; ``input_size`` is the square side (int) or
    ``[H, W]`` of the training images (in [0, 1]); a denoiser (kind ``"denoiser"``) records the
    ``noise`` and ``sigma`` it was trained for, a score network (kind ``"score"``) records
    ``noise="none"``, ``sigma=0.0`` and its training ``ladder``. ``training`` holds the loss and
    optimiser settings (and, for classifier-guided losses, a fingerprint of the frozen
    classifier); ``epoch`` is the number of finished epochs.
    """

    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str
    in_channels: int
    input_size: int | list[int]
    noise: str = "none"
    sigma: float = 0.0
    ladder: list[float] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0

    def __post_init__(self) -> None:
        self._check_names("arch", "dataset", "noise")
        self._check_counts("in_channels")
        self._check_counts("epoch", minimum=0)
        self._check_dicts("arch_kwargs", "training")
        self._check_input_size()
        self._check_sigma()
        self.ladder = list(check_ladder(self.ladder)) if len(self.ladder) else []

    @property
    def kind(self) -> str:
        """``"denoiser"`` or ``"score"``, from the registered architecture."""
        return denoiser_kind(self.arch)


def _build(meta: DenoiserMeta) -> nn.Module:
    """``build_denoiser`` of the architecture ``meta`` names (untrained)."""
    if meta.arch not in DENOISERS:
        raise InputError(
            f"unknown denoiser architecture {meta.arch!r}; known: {', '.join(DENOISERS.names())}. "
            "Register your own network with smoothcert.denoise.register_denoiser before loading."
        )
    try:
        return build_denoiser(meta.arch, in_channels=meta.in_channels, **meta.arch_kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(f"cannot build {meta.arch!r} with arch_kwargs={meta.arch_kwargs}: {err}") from None


def _check(meta: DenoiserMeta, state: Mapping[str, Any]) -> str:
    if meta.kind == "score" and not meta.ladder:
        return "a score network's metadata needs the ladder it was trained on"
    return ""


#: The denoiser checkpoint format (the generic core of :mod:`smoothcert.checkpoints`, with this metadata).
DENOISER_CHECKPOINT: CheckpointKind[DenoiserMeta] = CheckpointKind(
    label="denoiser checkpoint",
    format=DENOISER_FORMAT,
    version=DENOISER_VERSION,
    meta_type=DenoiserMeta,
    build=_build,
    check=_check,
    loader="smoothcert.denoise.load_denoiser",
)


def save_denoiser(
    path: str | os.PathLike[str],
    net: nn.Module,
    *,
    meta: DenoiserMeta | Mapping[str, Any],
    optimizer_state: Mapping[str, Any] | torch.optim.Optimizer | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``net`` (built by :func:`~smoothcert.denoise.build_denoiser`) with ``meta``, atomically.

    The network rebuilt from ``meta`` must have exactly ``net``'s state-dict keys and shapes, and
    a score network needs its ``ladder``, so every file written here loads back with
    :func:`load_denoiser`. Written to a temporary file and renamed over ``path``: an interrupted
    save leaves the previous file intact. Raises ``CheckpointError``.
    """
    return DENOISER_CHECKPOINT.save(path, net, meta=meta, optimizer_state=optimizer_state, extra=extra)


def read_denoiser_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """The raw payload of a denoiser checkpoint (for resuming), format and version checked."""
    return DENOISER_CHECKPOINT.read(path, map_location=map_location)


def load_denoiser(
    path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu"
) -> tuple[nn.Module, DenoiserMeta]:
    """Rebuild the network saved at ``path`` and load its weights: ``(net, meta)``, ``net`` in eval
    mode, on ``map_location``, in the floating dtype it was saved in. What it was trained for is in
    ``meta`` only, nothing is noted on ``net``: pass it on (``denoiser_for_noise(net, meta, noise)``,
    ``Denoised(f, net, trained_for=trained_noise(meta))``). Raises ``CheckpointError``."""
    return DENOISER_CHECKPOINT.load(path, map_location=map_location)
