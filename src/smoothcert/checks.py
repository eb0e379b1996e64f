"""Preflight checks shared by the public API: clear errors before any work is done."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InputError, InputTypeError

__all__ = [
    "AUTO", "as_batch", "check_batch_size", "check_bool", "check_float", "check_int", "check_sample_sizes",
    "ensure_eval", "model_device",
]


def as_batch(
    x: Tensor,
    *,
    allow_unbounded: bool = False,
    name: str = "x",
    input_shape: Sequence[int | None] | None = None,
    bounded: bool = True,
) -> Tensor:
    """Validate inputs and return them batch-first.

    Accepted: ``[B, C, H, W]`` images, a single ``[C, H, W]`` image (promoted to ``[1, C, H, W]``),
    ``[B, D]`` vectors, or a single ``[D]`` vector (promoted to ``[1, D]``). Inputs must be
    floating point, finite and — the toolkit's convention — in [0, 1]; with
    ``allow_unbounded=True`` values outside [0, 1] only warn; ``bounded=False`` is for inputs that
    are unbounded by design (a backbone's features, :mod:`smoothcert.lipschitz`): no range check.

    ``input_shape``: the shape of one input the model takes (``(C, H, W)`` or ``(D,)``; a None
    entry matches any size). Given, it decides what ``x`` is: exactly that shape is one input, a
    leading batch axis before it is a batch, anything else is refused; a 3-D ``[B, H, W]`` batch
    of single-channel images without its channel axis is then an error, never read as one
    ``[C, H, W]`` image. Without it a 3-D tensor is one ``[C, H, W]`` image.
    """
    if not isinstance(x, Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputTypeError(
            f"{name} must be a floating-point tensor with values in [0, 1], got dtype {x.dtype}; "
            "convert uint8 images with x.float() / 255"
        )
    if input_shape is not None:
        x = _batch_of_shape(x, tuple(input_shape), name)
    elif x.ndim in (1, 3):
        x = x.unsqueeze(0)
    elif x.ndim not in (2, 4):
        raise InputError(
            f"{name} must be [B, C, H, W] or [C, H, W] (images) or [B, D] / [D] (vectors); "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or inf")
    if not bounded:
        return x
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        msg = (
            f"{name} has values in [{lo:.4g}, {hi:.4g}] but inputs must lie in [0, 1] "
            "(noise is added before normalization, which belongs inside the model)"
        )
        if not allow_unbounded:
            raise InputError(msg + "; pass allow_unbounded=True (CLI: --allow-unbounded) to proceed")
        warnings.warn(msg, stacklevel=3)
    return x


def _batch_of_shape(x: Tensor, shape: tuple[int | None, ...], name: str) -> Tensor:
    """``x`` as ``[B, *shape]``: one input of ``shape`` is promoted, a batch of them kept."""

    def fits(dims: tuple[int, ...]) -> bool:
        return len(dims) == len(shape) and all(s is None or s == d for d, s in zip(dims, shape))

    if fits(tuple(x.shape)):
        return x.unsqueeze(0)
    if x.ndim >= 1 and fits(tuple(x.shape[1:])):
        return x
    want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    hint = ""
    if x.ndim == len(shape) == 3 and fits((1, *x.shape[1:])):
        hint = f"; a batch of {x.shape[0]} single-channel images? add the channel axis: {name}.unsqueeze(1)"
    raise InputError(
        f"{name} has shape {tuple(x.shape)} but the model takes inputs of shape {want}: "
        f"give one input {want} or a batch [B, {want[1:]}{hint}"
    )


def ensure_eval(model: nn.Module) -> nn.Module:
    """Switch ``model`` to eval mode, warning if it was training (dropout/batchnorm would
    otherwise change f between draws and void the certificate)."""
    if getattr(model, "training", False):  # TorchScript-frozen modules have no mode
        warnings.warn(
            "the base model was in train mode; switching it to eval() for smoothing", stacklevel=3
        )
        model.eval()
    return model


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer; CPU for a parameter-free model."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


#: ``batch_size="auto"``: rows per forward pass chosen from memory (see
#: :func:`smoothcert.engine.auto_batch_size`).
AUTO = "auto"


def check_batch_size(batch_size: int | str) -> int | str:
    """``batch_size`` if it is a positive integer or ``"auto"``, else a ValueError."""
    if isinstance(batch_size, str):
        if batch_size == AUTO:
            return batch_size
        raise InputError(f"batch_size must be a positive integer or {AUTO!r}, got {batch_size!r}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer or {AUTO!r}, got {batch_size!r}")
    return int(batch_size)


def check_sample_sizes(*, n: int, n0: int | None = None, batch_size: int | str) -> None:
    """Reject non-positive sizes, n0 >= n (the selection draws must be the cheap part) and a
    batch size that is neither a positive integer nor ``"auto"``."""
    if int(n) != n or n < 1:
        raise InputError(f"n must be a positive integer, got {n}")
    if n0 is not None:
        if int(n0) != n0 or n0 < 1:
            raise InputError(f"n0 must be a positive integer, got {n0}")
        if n0 >= n:
            raise InputError(
                f"n0 ({n0}) must be smaller than n ({n}): n0 only selects the class, "
                "n draws estimate its probability"
            )
    check_batch_size(batch_size)


# ---- settings: keyword hyperparameters checked with a message naming them ----


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; a ValueError naming the hyperparameter otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, choices: Sequence[Any], *, optional: bool = False) -> Any:
    """``value`` if it is one of ``choices`` (or None with ``optional``); an InputError naming the
    setting and the choices otherwise."""
    if value is None and optional:
        return value
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def check_float(name: str, value: Any, *, minimum: float = 0.0, strict: bool = False) -> float:
    """``value`` as a finite float >= ``minimum`` (> if ``strict``); a ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < minimum or (strict and value == minimum):
        raise InputError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, got {value!r}")  # noqa: TRY004 (bad hparams: ValueError)
    return value
