"""One checkpoint core for every kind of network, parameterised by its metadata.

A checkpoint is ``torch.save`` of a plain dict::

    {"format": kind.format, "version": kind.version,
     "meta": Meta.to_dict(),                  # what rebuilds the network and says how to use it
     "state_dict": {...},                     # of kind.build(meta), wrapper prefixes removed
     "optimizer_state": {...},                # only if given
     "extra": {...},                          # only if given (the training loop's resume state)
     "versions": {"smoothcert": ..., "torch": ...}}

A :class:`CheckpointKind` names one such format (classifiers: ``smoothcert.models.checkpoint``,
denoisers: ``smoothcert.denoise.checkpoint``): its format marker and version, its metadata
dataclass and the function that rebuilds the network from that metadata. Everything else is here,
once: writing atomically (an interrupted save leaves the previous file intact), refusing anything
``torch.load(weights_only=True)`` would refuse, reading with format, version and metadata checks
(so a file of one kind is never taken for another, and a file without metadata is refused rather
than guessed), rebuilding the network and checking the weights fit it, and the random-number state
and history that let a training run resume exactly (:func:`training_state`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from ._version import __version__
from .errors import CheckpointError, InputError
from .files import atomic_write

__all__ = [
    "CheckpointError",
    "CheckpointKind",
    "MetaRecord",
    "checkpoint_kinds",
    "is_int",
    "not_plain",
    "read_any",
    "restore_training_state",
    "state_mismatch",
    "training_state",
    "unwrap",
    "write_payload",
]


def is_int(value: object) -> bool:
    """Whether ``value`` is an int and not a bool (metadata fields, format versions)."""
    return isinstance(value, int) and not isinstance(value, bool)


class MetaRecord:
    """Base of the checkpoint metadata dataclasses (``CheckpointMeta``, ``DenoiserMeta``).

    Subclasses are keyword-only dataclasses with at least ``arch: str``, ``arch_kwargs: dict``,
    ``training: dict`` and ``epoch: int`` (finished epochs; the training loop fills it in). This
    class gives them the dict round trip (a file whose metadata lacks a required key, or has an
    unknown one, is refused with the keys named) and the checks of the fields they share.
    """

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
        """Inverse of :meth:`to_dict`; an ``InputError`` names missing or unknown keys, or a non-dict."""
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

    def describe_network(self) -> str:
        """``arch=..., arch_kwargs=...`` (and the sizes that shape the network), for error messages."""
        parts = [f"arch={self.arch!r}", f"arch_kwargs={self.arch_kwargs}"]  # type: ignore[attr-defined]
        parts += [f"{k}={getattr(self, k)}" for k in ("num_classes", "in_channels") if hasattr(self, k)]
        return ", ".join(parts)

    # Field checks shared by the subclasses' __post_init__ (messages name the class and the field).

    def _check_names(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InputError(f"{type(self).__name__}.{name} must be a non-empty string, got {value!r}")

    def _check_counts(self, *names: str, minimum: int = 1) -> None:
        for name in names:
            value = getattr(self, name)
            if not is_int(value) or value < minimum:
                kind = "positive" if minimum == 1 else "non-negative"
                raise InputError(f"{type(self).__name__}.{name} must be a {kind} integer, got {value!r}")

    def _check_dicts(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise InputError(f"{type(self).__name__}.{name} must be a dict with string keys, got {value!r}")
            setattr(self, name, dict(value))

    def _check_input_size(self) -> None:
        """``input_size``: a positive int (square side) or ``[H, W]`` (stored as a list)."""
        size = self.input_size  # type: ignore[attr-defined]
        if is_int(size) and size >= 1:
            return
        if isinstance(size, (list, tuple)) and len(size) == 2 and all(is_int(v) and v >= 1 for v in size):
            self.input_size = list(size)
            return
        raise InputError(f"{type(self).__name__}.input_size must be a positive int or [H, W], got {size!r}")

    def _check_sigma(self) -> None:
        """``sigma``: a finite number >= 0, stored as a float."""
        value = self.sigma  # type: ignore[attr-defined]
        try:
            if isinstance(value, bool):
                raise TypeError
            sigma = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{type(self).__name__}.sigma must be a number, got {value!r}") from None
        if not math.isfinite(sigma) or sigma < 0:
            raise InputError(f"{type(self).__name__}.sigma must be finite and >= 0, got {value!r}")
        self.sigma = sigma


M = TypeVar("M", bound=MetaRecord)

#: Every kind constructed so far, by format marker (for "this is a <kind>, load it with ..." hints).
_KINDS: dict[str, CheckpointKind[Any]] = {}


def _no_check(meta: Any, state: Mapping[str, Any]) -> str:
    return ""


@dataclass(frozen=True, kw_only=True, eq=False)
class CheckpointKind(Generic[M]):
    """One checkpoint format: what its files are called and how their network is rebuilt.

    Attributes:
        label: what a file of this kind is called in messages ("checkpoint", "denoiser checkpoint").
        format: the payload's ``"format"`` marker; a file with another marker is refused.
        version: the newest format version written and read.
        meta_type: the metadata dataclass (a :class:`MetaRecord`).
        build: rebuilds the (untrained) network ``meta`` describes; raises ``InputError`` (or
            ``TypeError``/``ValueError``) with a message naming the problem.
        check: consistency of ``(meta, state_dict)`` beyond keys and shapes ('' if consistent),
            checked after the network is rebuilt and before the keys and shapes, on save and on load.
        after_load: called with ``(net, meta)`` on every loaded network.
        loader: the public function that loads this kind (named in other kinds' refusals).
        how_to_import: appended to refusals of files without metadata.
    """

    label: str
    format: str
    version: int
    meta_type: type[M]
    build: Callable[[M], nn.Module]
    check: Callable[[M, Mapping[str, Any]], str] = _no_check
    after_load: Callable[[nn.Module, M], None] | None = None
    loader: str
    how_to_import: str = ""

    def __post_init__(self) -> None:
        _KINDS[self.format] = self

    def __repr__(self) -> str:
        return f"CheckpointKind({self.label!r}, format={self.format!r}, version={self.version})"

    # ---------------------------------------------------------------- metadata and networks

    def parse_meta(self, meta: M | Mapping[str, Any], where: str) -> M:
        """``meta`` as a ``meta_type`` instance; ``CheckpointError(where: ...)`` if it is invalid."""
        if isinstance(meta, self.meta_type):
            return meta
        try:
            return self.meta_type.from_dict(meta)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: {err}") from None

    def build_network(self, meta: M, where: str) -> nn.Module:
        """``build(meta)``, with a failure turned into ``CheckpointError(where: ...)``."""
        try:
            return self.build(meta)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: {err}") from None

    def _reference_state(self, meta: M, where: str) -> Mapping[str, Any]:
        """State dict (keys and shapes) of the network ``meta`` describes, built without memory where possible."""
        try:
            with torch.device("meta"):
                return self.build(meta).state_dict()
        except Exception:  # noqa: BLE001, S110 - an invalid argument, or a factory that cannot build on the meta device
            pass
        return self.build_network(meta, where).state_dict()

    # ---------------------------------------------------------------- writing

    def save(
        self,
        path: str | os.PathLike[str],
        model: nn.Module,
        *,
        meta: M | Mapping[str, Any],
        optimizer_state: Mapping[str, Any] | torch.optim.Optimizer | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``model`` with ``meta`` to ``path``, atomically; returns the path.

        The network rebuilt from ``meta`` must have exactly ``model``'s state-dict keys and shapes
        (and pass :attr:`check`), so every file written here loads back with :meth:`load`.
        DataParallel / DistributedDataParallel / ``torch.compile`` wrappers are unwrapped.
        ``optimizer_state`` and ``extra`` must hold only tensors and plain Python values. Raises
        ``CheckpointError`` (and writes nothing) otherwise.
        """
        path = Path(path)
        where = f"cannot save {self.label} {path}"
        meta = self.parse_meta(meta, where)
        state = OrderedDict(
            (k, v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in unwrap(model).state_dict().items()
        )
        reference = self._reference_state(meta, where)
        problem = self.check(meta, state)
        if problem:
            raise CheckpointError(f"{where}: {problem}")
        problem = state_mismatch(reference, state)
        if problem:
            raise CheckpointError(
                f"{where}: the model does not match the architecture in its metadata ({meta.describe_network()}): "
                f"{problem}"
            )
        return write_payload(path, fmt=self.format, version=self.version, meta=meta.to_dict(), state=state,
                             optimizer_state=optimizer_state, extra=extra, where=where)

    # ---------------------------------------------------------------- reading

    def read(self, path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
        """The raw payload dict of a file of this kind (for resuming: optimiser state, extra).

        Loads with ``torch.load(weights_only=True)`` and checks the format marker, the version
        (newer than :attr:`version` is refused) and that ``meta`` and ``state_dict`` are dicts;
        ``payload["meta"]`` is not parsed (see :meth:`meta_of`). Raises ``CheckpointError``.
        """
        path = Path(path)
        payload = _torch_load(path, self.label, self.how_to_import, map_location)
        fmt = payload.get("format")
        if fmt != self.format:
            other = _KINDS.get(fmt) if isinstance(fmt, str) else None
            if other is not None:
                raise CheckpointError(
                    f"{path} is not a smoothcert {self.label}: it is a smoothcert {other.label}; "
                    f"load it with {other.loader}"
                )
            missing = [k for k in self.meta_type.required_keys() if k not in payload]
            raise CheckpointError(
                (f"{path} is not a smoothcert {self.label}: it is {_describe_foreign(payload)}. "
                f"It lacks the metadata needed to rebuild the network (missing: {', '.join(missing)}). "
                + self.how_to_import).rstrip()
            )
        version = payload.get("version")
        if not is_int(version) or version < 1:
            raise CheckpointError(f"{path}: invalid {self.label} format version {version!r}")
        if version > self.version:
            raise CheckpointError(
                f"{path} has {self.label} format version {version}, newer than this smoothcert reads "
                f"({self.version}); upgrade smoothcert"
            )
        for key in ("meta", "state_dict"):
            if not isinstance(payload.get(key), dict):
                raise CheckpointError(f"{path} is a damaged smoothcert {self.label}: {key!r} is missing or not a dict")
        return payload

    def meta_of(self, payload: Mapping[str, Any], path: str | os.PathLike[str]) -> M:
        """The parsed metadata of a payload from :meth:`read`; ``CheckpointError`` if invalid."""
        try:
            return self.meta_type.from_dict(payload["meta"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: invalid metadata: {err}. {self.how_to_import}".rstrip()) from None

    def load(
        self, path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu"
    ) -> tuple[nn.Module, M]:
        """Rebuild the network saved at ``path`` and load its weights: ``(net, meta)``, ``net`` in
        eval mode, on ``map_location``, in the floating dtype it was saved in (the precision is part
        of the network that was certified). Raises ``CheckpointError`` if the file is unreadable or
        of another kind, its metadata is missing or invalid, or the weights do not fit."""
        path = Path(path)
        payload = self.read(path, map_location=map_location)
        meta = self.meta_of(payload, path)
        net = self.build_network(meta, str(path))
        state = payload["state_dict"]
        problem = self.check(meta, state)
        if problem:
            raise CheckpointError(f"{path}: inconsistent {self.label}: {problem}")
        problem = state_mismatch(net.state_dict(), state)
        if problem:
            raise CheckpointError(
                f"{path}: the weights do not fit architecture {meta.arch!r} ({meta.describe_network()}): {problem}"  # type: ignore[attr-defined]
            )
        dtypes = {v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
        if len(dtypes) == 1:
            net.to(dtype=dtypes.pop())
        net.load_state_dict(state, strict=True)
        if map_location is not None:
            net.to(map_location)
        if self.after_load is not None:
            self.after_load(net, meta)
        return net.eval(), meta


def checkpoint_kinds() -> list[CheckpointKind[Any]]:
    """The kinds defined so far (importing ``smoothcert.models`` / ``smoothcert.denoise`` defines theirs)."""
    return list(_KINDS.values())


def read_any(
    path: str | os.PathLike[str], *, map_location: str | torch.device | None = "cpu"
) -> tuple[CheckpointKind[Any], dict[str, Any]]:
    """``(kind, payload)`` of a checkpoint of any defined kind, told apart by its format marker and
    checked as :meth:`CheckpointKind.read` checks it. Raises ``CheckpointError``."""
    path = Path(path)
    payload = _torch_load(path, "checkpoint", "", map_location)
    kind = _KINDS.get(payload.get("format")) if isinstance(payload.get("format"), str) else None
    if kind is None:
        known = ", ".join(k.label for k in _KINDS.values())
        raise CheckpointError(f"{path} is not a smoothcert checkpoint of a known kind ({known}): "
                              f"it is {_describe_foreign(payload)}")
    return kind, kind.read(path, map_location=map_location)


# ------------------------------------------------------------------------------ resume state


def training_state(
    order_gen: torch.Generator, noise_gen: torch.Generator, device: torch.device, history: list[dict[str, Any]]
) -> dict[str, Any]:
    """What a checkpoint's ``extra`` holds so a training run resumes exactly: both random streams
    (the data order on the CPU, the noise on the training device, with that device's type, since
    CPU and CUDA generator states differ) and the history so far."""
    return {"order_rng": order_gen.get_state(), "noise_rng": noise_gen.get_state().cpu(),
            "noise_rng_device": device.type, "history": history}


def restore_training_state(
    payload: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    order_gen: torch.Generator,
    noise_gen: torch.Generator,
    *,
    device: torch.device,
    reseed: int,
) -> list[dict[str, Any]]:
    """Load weights, optimiser state and random streams from a checkpoint ``payload`` written with
    :func:`training_state` in its ``extra``; returns its history. A noise stream saved on another
    device type cannot be restored: it is reseeded with ``reseed``, with a warning."""
    unwrap(model).load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer_state"])
    extra = payload.get("extra", {})
    order_gen.set_state(extra["order_rng"])
    if extra.get("noise_rng_device") == device.type:
        noise_gen.set_state(extra["noise_rng"])
    else:
        warnings.warn(f"resuming on {device.type} a run trained on {extra.get('noise_rng_device')}: "
                      "the noise stream is reseeded", stacklevel=3)
        noise_gen.manual_seed(reseed)
    return list(extra.get("history", []))


# ------------------------------------------------------------------------------ helpers


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


def write_payload(
    path: Path,
    *,
    fmt: str,
    version: int,
    meta: dict[str, Any],
    state: Mapping[str, Any],
    optimizer_state: Mapping[str, Any] | torch.optim.Optimizer | None,
    extra: Mapping[str, Any] | None,
    where: str,
) -> Path:
    """Write a checkpoint payload (format marker, version, metadata, weights, library versions, optional
    optimiser state and extras) atomically, after checking that it holds only tensors and plain values
    so that it loads with ``torch.load(weights_only=True)``."""
    payload: dict[str, Any] = {
        "format": fmt,
        "version": version,
        "meta": meta,
        "state_dict": state,
        "versions": {"smoothcert": str(__version__), "torch": str(torch.__version__)},
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


def _torch_load(
    path: Path, label: str, how_to_import: str, map_location: str | torch.device | None
) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a dict, or ``CheckpointError`` saying why not."""
    if not path.is_file():
        raise CheckpointError(f"no {label} file at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if zipfile.is_zipfile(path):
            detail = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
            detail = detail.split(" was not an allowed global")[0]
            raise CheckpointError(
                f"{path} holds Python objects that safe loading (torch.load(weights_only=True)) refuses"
                f"{': ' + detail if detail else ''}. smoothcert checkpoints contain only tensors and plain "
                "containers; this is not one. " + how_to_import
            ) from None
        raise CheckpointError(f"{path} is not a readable torch file (unpickling failed)") from None
    except Exception as err:  # noqa: BLE001 - torch.load raises many types (EOFError, RuntimeError, KeyError, ...)
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path} is not a readable torch file ({type(err).__name__}: {first})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(
            (f"{path} holds a {type(payload).__name__}, not a smoothcert {label}. " + how_to_import).rstrip()
        )
    return payload


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
