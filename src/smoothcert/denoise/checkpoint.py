"""Denoiser checkpoints: weights plus what is needed to rebuild the network and use it correctly.

A denoiser checkpoint is ``torch.save`` of a plain dict, like a classifier checkpoint
(:mod:`smoothcert.models.checkpoint`) but with its own format marker, so neither loader takes the
other's file for its own::

    {"format": "smoothcert-denoiser", "version": 1,
     "meta": DenoiserMeta.to_dict(),     # architecture, data, noise and sigma or ladder, training
     "state_dict": {...},                # of build_denoiser(meta.arch, ...)
     "optimizer_state": {...}, "extra": {...},          # only if given
     "versions": {"smoothcert": ..., "torch": ...}}

Only tensors and plain containers go in, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, InputTypeError
from ..models.checkpoint import CheckpointError, MetaRecord, is_int, state_mismatch, unwrap, write_payload
from .nets import DENOISERS, build_denoiser, denoiser_kind
from .score import check_ladder

__all__ = [
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
        for name in ("arch", "dataset", "noise"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InputError(f"DenoiserMeta.{name} must be a non-empty string, got {value!r}")
        if not is_int(self.in_channels) or self.in_channels < 1:
            raise InputError(f"DenoiserMeta.in_channels must be a positive integer, got {self.in_channels!r}")
        if not is_int(self.epoch) or self.epoch < 0:
            raise InputError(f"DenoiserMeta.epoch must be a non-negative integer, got {self.epoch!r}")
        for name in ("arch_kwargs", "training"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise InputError(f"DenoiserMeta.{name} must be a dict with string keys, got {value!r}")
            setattr(self, name, dict(value))
        size = self.input_size
        if is_int(size) and size >= 1:
            pass
        elif isinstance(size, (list, tuple)) and len(size) == 2 and all(is_int(v) and v >= 1 for v in size):
            self.input_size = list(size)
        else:
            raise InputError(f"DenoiserMeta.input_size must be a positive int or [H, W], got {size!r}")
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)):
            raise InputTypeError(f"DenoiserMeta.sigma must be a number, got {self.sigma!r}")
        self.sigma = float(self.sigma)
        if not math.isfinite(self.sigma) or self.sigma < 0:
            raise InputError(f"DenoiserMeta.sigma must be finite and >= 0, got {self.sigma!r}")
        self.ladder = list(check_ladder(self.ladder)) if len(self.ladder) else []

    @property
    def kind(self) -> str:
        """``"denoiser"`` or ``"score"``, from the registered architecture."""
        return denoiser_kind(self.arch)


def _build(meta: DenoiserMeta, where: str) -> nn.Module:
    if meta.arch not in DENOISERS:
        raise CheckpointError(
            f"{where}: unknown denoiser architecture {meta.arch!r}; known: {', '.join(DENOISERS.names())}. "
            "Register your own network with smoothcert.denoise.register_denoiser before loading."
        )
    try:
        return build_denoiser(meta.arch, in_channels=meta.in_channels, **meta.arch_kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: cannot build {meta.arch!r} with arch_kwargs={meta.arch_kwargs}: {err}") from None


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
    path = Path(path)
    if not isinstance(meta, DenoiserMeta):
        try:
            meta = DenoiserMeta.from_dict(meta)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"cannot save denoiser {path}: {err}") from None
    where = f"cannot save denoiser {path}"
    reference = _build(meta, where).state_dict()
    if meta.kind == "score" and not meta.ladder:
        raise CheckpointError(f"{where}: a score network's metadata needs the ladder it was trained on")
    net = unwrap(net)
    state = OrderedDict(
        (k, v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in net.state_dict().items()
    )
    problem = state_mismatch(reference, state)
    if problem:
        raise CheckpointError(
            f"{where}: the network does not match its metadata (arch={meta.arch!r}, "
            f"arch_kwargs={meta.arch_kwargs}, in_channels={meta.in_channels}): {problem}"
        )
    return write_payload(path, fmt=DENOISER_FORMAT, version=DENOISER_VERSION, meta=meta.to_dict(), state=state,
                         optimizer_state=optimizer_state, extra=extra, where=where)


def read_denoiser_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """The raw payload of a denoiser checkpoint (for resuming), format and version checked."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no denoiser checkpoint file at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path} is not a readable torch file ({type(err).__name__}: {first})") from None
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt != DENOISER_FORMAT:
        hint = (
            " It is a classifier checkpoint: load it with smoothcert.models.load_checkpoint."
            if fmt == "smoothcert-checkpoint"
            else ""
        )
        raise CheckpointError(f"{path} is not a smoothcert denoiser checkpoint.{hint}")
    version = payload.get("version")
    if not is_int(version) or not 1 <= version <= DENOISER_VERSION:
        raise CheckpointError(f"{path}: unsupported denoiser checkpoint version {version!r}; upgrade smoothcert")
    for key in ("meta", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path} is a damaged denoiser checkpoint: {key!r} is missing or not a dict")
    return payload


def load_denoiser(
    path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu"
) -> tuple[nn.Module, DenoiserMeta]:
    """Rebuild the network saved at ``path`` and load its weights: ``(net, meta)``, ``net`` in eval
    mode, on ``map_location``, in the floating dtype it was saved in. What it was trained for is in
    ``meta`` only, nothing is noted on ``net``: pass it on (``denoiser_for_noise(net, meta, noise)``,
    ``Denoised(f, net, trained_for=trained_noise(meta))``). Raises ``CheckpointError``."""
    path = Path(path)
    payload = read_denoiser_checkpoint(path, map_location=map_location)
    try:
        meta = DenoiserMeta.from_dict(payload["meta"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid denoiser metadata: {err}") from None
    net = _build(meta, str(path))
    state = payload["state_dict"]
    problem = state_mismatch(net.state_dict(), state)
    if problem:
        raise CheckpointError(f"{path}: the weights do not fit {meta.arch!r} (arch_kwargs={meta.arch_kwargs}): {problem}")
    dtypes = {v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if len(dtypes) == 1:
        net.to(dtype=dtypes.pop())
    net.load_state_dict(state, strict=True)
    if map_location is not None:
        net.to(map_location)
    return net.eval(), meta

