"""Checkpoints that carry what is needed to rebuild and smooth the model correctly.

A smoothcert checkpoint is ``torch.save`` of a plain dict::

    {"format": "smoothcert-checkpoint", "version": 1,
     "meta": CheckpointMeta.to_dict(),        # architecture, normalization, data, noise, sigma, ...
     "state_dict": {...},                     # of build_model(...): keys "0.mean", "0.std", "1.<net>"
     "optimizer_state": {...},                # only if given
     "extra": {...},                          # only if given
     "versions": {"smoothcert": ..., "torch": ...}}

Only tensors and plain Python containers go in, so it loads with
``torch.load(weights_only=True)`` and never executes code from the file. Loading rebuilds the
model from the metadata; a file without metadata (a bare state_dict, another project's
checkpoint) is refused rather than guessed, because a wrong normalization constant does not
crash: it silently costs accuracy.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..files import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
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

# Shown in every "cannot rebuild" message; the list of lost information is the reason to refuse.
_HOW_TO_IMPORT = (
    "To use such weights, build the model yourself and record its metadata once: "
    "model = smoothcert.models.build_model(arch, num_classes=..., in_channels=..., mean=..., std=...); "
    "model[1].load_state_dict(weights) (strip wrapper prefixes such as 'module.' first); "
    "smoothcert.models.save_checkpoint(path, model, meta=CheckpointMeta(...))."
)




class MetaRecord:
    """Dict round trip shared by the checkpoint metadata dataclasses (:class:`CheckpointMeta`, the
    denoisers' ``DenoiserMeta``): a file whose metadata lacks a required key, or has an unknown one,
    is refused with the keys named."""

    @classmethod
    def required_keys(cls) -> list[str]:
        """Metadata keys without a default: a checkpoint lacking any of them is refused."""
        return [
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]

    def to_dict(self) -> dict[str, Any]:
        """A plain dict suitable for ``torch.save`` and JSON."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`; a ``ValueError`` names missing or unknown keys, or a non-dict."""
        if not isinstance(data, Mapping):
            raise InputError(f"{cls.__name__} metadata must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise InputError(f"unknown metadata keys {unknown}; known keys: {sorted(known)}")
        missing = [k for k in cls.required_keys() if k not in data]
        if missing:
            raise InputError(f"metadata is missing required keys {missing}")
        return cls(**data)


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
        for name in ("arch", "dataset", "noise"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InputError(f"CheckpointMeta.{name} must be a non-empty string, got {value!r}")
        for name in ("num_classes", "in_channels"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise InputError(f"CheckpointMeta.{name} must be a positive integer, got {value!r}")
        if not is_int(self.epoch) or self.epoch < 0:
            raise InputError(f"CheckpointMeta.epoch must be a non-negative integer, got {self.epoch!r}")
        for name in ("arch_kwargs", "training"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise InputError(f"CheckpointMeta.{name} must be a dict with string keys, got {value!r}")
            setattr(self, name, dict(value))
        if is_int(self.input_size):
            if self.input_size < 1:
                raise InputError(f"CheckpointMeta.input_size must be positive, got {self.input_size!r}")
        elif (
            isinstance(self.input_size, (list, tuple))
            and len(self.input_size) == 2
            and all(is_int(v) and v >= 1 for v in self.input_size)
        ):
            self.input_size = list(self.input_size)
        else:
            raise InputError(
                f"CheckpointMeta.input_size must be a positive int or [H, W], got {self.input_size!r}"
            )
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
        if isinstance(self.sigma, bool):
            raise InputError(f"CheckpointMeta.sigma must be a number, got {self.sigma!r}")
        try:
            self.sigma = float(self.sigma)
        except (TypeError, ValueError):
            raise InputError(f"CheckpointMeta.sigma must be a number, got {self.sigma!r}") from None
        if not math.isfinite(self.sigma) or self.sigma < 0:
            raise InputError(f"CheckpointMeta.sigma must be finite and >= 0, got {self.sigma!r}")

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
    path = Path(path)
    if not isinstance(meta, CheckpointMeta):
        try:
            meta = CheckpointMeta.from_dict(meta)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"cannot save checkpoint {path}: {err}") from None
    net = unwrap(model)
    state = OrderedDict(
        (k, v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in net.state_dict().items()
    )

    reference = _reference_state(meta)
    problem = state_mismatch(reference, state)
    if problem:
        hint = ""
        if "0.mean" not in state:
            hint = (
                " The model has no Normalize layer at index 0: save the model returned by "
                "smoothcert.models.build_model (Normalize + network), not the bare network."
            )
        raise CheckpointError(
            f"cannot save checkpoint {path}: the model does not match the architecture in its "
            f"metadata (arch={meta.arch!r}, arch_kwargs={meta.arch_kwargs}): {problem}.{hint}"
        )
    problem = _normalization_mismatch(meta, state)
    if problem:
        raise CheckpointError(f"cannot save checkpoint {path}: {problem}")

    return write_payload(path, fmt=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, meta=meta.to_dict(), state=state,
                         optimizer_state=optimizer_state, extra=extra, where=f"cannot save checkpoint {path}")


def read_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """The raw payload dict of a smoothcert checkpoint (for resuming: optimizer state, epoch).

    Loads with ``torch.load(weights_only=True)`` and checks the format marker and version;
    ``payload["meta"]`` is the metadata dict (see :class:`CheckpointMeta`). Raises
    ``CheckpointError`` for unreadable files, foreign checkpoints and newer format versions.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if zipfile.is_zipfile(path):
            detail = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
            detail = detail.split(" was not an allowed global")[0]
            raise CheckpointError(
                f"{path} holds Python objects that safe loading (torch.load(weights_only=True)) refuses"
                f"{': ' + detail if detail else ''}. smoothcert checkpoints contain only tensors and plain "
                "containers; this is not one. " + _HOW_TO_IMPORT
            ) from None
        raise CheckpointError(f"{path} is not a readable torch file (unpickling failed)") from None
    except Exception as err:  # torch.load raises many types (EOFError, RuntimeError, KeyError, ...)
        raise CheckpointError(f"{path} is not a readable torch file ({type(err).__name__}: {err})") from None

    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{path} holds a {type(payload).__name__}, not a smoothcert checkpoint; the architecture, "
            "normalization constants (mean/std), input size, noise and sigma cannot be guessed. " + _HOW_TO_IMPORT
        )
    if payload.get("format") != CHECKPOINT_FORMAT:
        missing = [k for k in CheckpointMeta.required_keys() if k not in payload]
        raise CheckpointError(
            f"{path} is not a smoothcert checkpoint: it is {_describe_foreign(payload)}. "
            f"It lacks the metadata needed to rebuild the model (missing: {', '.join(missing)}); "
            "the normalization constants (mean/std), input size, dataset, noise and sigma cannot be "
            "guessed from weights, and a wrong guess silently costs accuracy. " + _HOW_TO_IMPORT
        )
    version = payload.get("version")
    if not is_int(version) or version < 1:
        raise CheckpointError(f"{path}: invalid checkpoint format version {version!r}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than this smoothcert reads "
            f"({CHECKPOINT_VERSION}); upgrade smoothcert"
        )
    for key in ("meta", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path} is a damaged smoothcert checkpoint: {key!r} is missing or not a dict")
    return payload


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
    from smoothcert.models import MODELS, build_model

    path = Path(path)
    payload = read_checkpoint(path, map_location=map_location)
    try:
        meta = CheckpointMeta.from_dict(payload["meta"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid metadata: {err}. " + _HOW_TO_IMPORT) from None
    if meta.arch not in MODELS:
        raise CheckpointError(
            f"{path}: unknown architecture {meta.arch!r}; known: {', '.join(MODELS.names())}. "
            "If it is your own network, register it with smoothcert.models.register_model before loading."
        )
    try:
        model = build_model(
            meta.arch,
            num_classes=meta.num_classes,
            in_channels=meta.in_channels,
            mean=meta.mean,
            std=meta.std,
            **meta.arch_kwargs,
        )
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: cannot build {meta.arch!r} with arch_kwargs={meta.arch_kwargs}: {err}"
        ) from None

    state = payload["state_dict"]
    problem = state_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(
            f"{path}: the weights do not fit architecture {meta.arch!r} "
            f"(arch_kwargs={meta.arch_kwargs}, num_classes={meta.num_classes}, "
            f"in_channels={meta.in_channels}): {problem}"
        )
    problem = _normalization_mismatch(meta, state)
    if problem:
        raise CheckpointError(f"{path}: inconsistent checkpoint: {problem}")

    float_dtypes = {v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if len(float_dtypes) == 1:
        # Keep the saved precision: it is part of the classifier that was certified.
        model.to(dtype=float_dtypes.pop())
    model.load_state_dict(state, strict=True)
    if map_location is not None:
        model.to(map_location)
    model.eval()
    return model, meta


# --------------------------------------------------------------------------- helpers
# is_int, unwrap, state_mismatch and not_plain are shared with the denoiser checkpoints
# (smoothcert.denoise.checkpoint), which follow the same format rules.


def is_int(value: object) -> bool:
    """Whether ``value`` is an int and not a bool (metadata fields, format versions)."""
    return isinstance(value, int) and not isinstance(value, bool)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DataParallel / DistributedDataParallel / ``torch.compile`` wrappers, so that
    saved state-dict keys carry no wrapper prefix."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile wrapper
            model = model._orig_mod
        else:
            return model


def _reference_state(meta: CheckpointMeta) -> Mapping[str, torch.Tensor]:
    """State dict (keys and shapes) of the model ``meta`` describes, built without allocating memory."""
    from smoothcert.models import MODELS, build_model

    if meta.arch not in MODELS:
        raise CheckpointError(f"unknown architecture {meta.arch!r}; known: {', '.join(MODELS.names())}")
    kwargs = dict(
        num_classes=meta.num_classes, in_channels=meta.in_channels, mean=meta.mean, std=meta.std, **meta.arch_kwargs
    )
    try:
        with torch.device("meta"):
            return build_model(meta.arch, **kwargs).state_dict()
    except Exception:
        pass  # an invalid argument, or a third-party factory that cannot build on the meta device
    try:
        return build_model(meta.arch, **kwargs).state_dict()
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"cannot build {meta.arch!r} with arch_kwargs={meta.arch_kwargs}: {err}") from None


def state_mismatch(reference: Mapping[str, Any], state: Mapping[str, Any], limit: int = 5) -> str:
    """'' if ``state`` has exactly the keys and tensor shapes of ``reference``, else a description."""
    if not isinstance(state, Mapping):
        return f"state_dict is a {type(state).__name__}, not a dict"
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    shapes, not_tensors = [], []
    for key, expected in reference.items():
        if key not in state or not isinstance(expected, torch.Tensor):
            continue
        saved = state[key]
        if not isinstance(saved, torch.Tensor):
            not_tensors.append(key)
        elif saved.shape != expected.shape:
            shapes.append(f"{key}: saved {list(saved.shape)} vs expected {list(expected.shape)}")
    parts = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
        ("non-tensor values", not_tensors),
    ):
        if items:
            shown = ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts)


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


# Exact types: subclasses (e.g. torch's TorchVersion, a str subclass) are refused by weights_only.
_PLAIN_SCALARS = (str, int, float, bool, type(None), torch.Size, torch.dtype, torch.device)


def not_plain(value: Any, where: str) -> str:
    """'' if ``value`` holds only what ``torch.load(weights_only=True)`` accepts, else where it fails."""
    if type(value) in _PLAIN_SCALARS or isinstance(value, torch.Tensor):
        return ""
    if type(value) in (dict, OrderedDict):
        for k, v in value.items():
            if type(k) not in (str, int):
                return f"{where} has a key of type {type(k).__name__} ({k!r})"
            problem = not_plain(v, f"{where}[{k!r}]")
            if problem:
                return problem
        return ""
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        for i, v in enumerate(value):
            problem = not_plain(v, f"{where}[{i}]")
            if problem:
                return problem
        return ""
    return f"{where} is a {type(value).__module__}.{type(value).__qualname__}"


def _describe_foreign(payload: dict[str, Any]) -> str:
    if not payload:
        return "an empty dict"
    if all(isinstance(v, torch.Tensor) for v in payload.values()):
        return f"a bare state_dict ({len(payload)} tensors, no metadata)"
    keys = sorted(str(k) for k in payload)
    shown = ", ".join(repr(k) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
    if "state_dict" in payload and "arch" in payload:
        return f"a checkpoint of another project with keys {shown} (like those of Cohen et al. 2019)"
    return f"a dict with keys {shown}"


def write_payload(
    path: Path,
    *,
    fmt: str,
    version: int,
    meta: dict[str, Any],
    state: Mapping[str, Any],
    optimizer_state: dict[str, Any] | torch.optim.Optimizer | None,
    extra: dict[str, Any] | None,
    where: str,
) -> Path:
    """Write a checkpoint payload (format marker, version, metadata, weights, library versions, optional
    optimiser state and extras) atomically, after checking that it holds only tensors and plain values
    so that it loads with ``torch.load(weights_only=True)``. Shared by classifier and denoiser checkpoints."""
    from smoothcert import __version__ as smoothcert_version  # the package imports this module

    payload: dict[str, Any] = {
        "format": fmt,
        "version": version,
        "meta": meta,
        "state_dict": state,
        "versions": {"smoothcert": str(smoothcert_version), "torch": str(torch.__version__)},
    }
    if optimizer_state is not None:
        if isinstance(optimizer_state, torch.optim.Optimizer):
            optimizer_state = optimizer_state.state_dict()
        payload["optimizer_state"] = optimizer_state
    if extra is not None:
        payload["extra"] = extra
    problem = not_plain(payload, "checkpoint")
    if problem:
        raise CheckpointError(
            f"{where}: {problem}; only tensors and plain Python values (dict, list, tuple, str, int, float, "
            "bool, None) are stored, so that the file loads with torch.load(weights_only=True)"
        )
    atomic_write(path, lambda f: torch.save(payload, f))
    return path
