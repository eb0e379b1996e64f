"""Training methods for smoothing: each one a loss on a batch, selectable by name.

A method is a small object holding its hyperparameters (keyword-only, validated, recorded in the
checkpoint) with one call ``method.loss(model, x, y, noise=..., generator=...)`` returning a
scalar loss for the optimiser; the training loop (:mod:`smoothcert.train.loop`) is shared and calls
``method.begin_epoch(epoch, epochs)`` before every epoch, so schedules (SmoothAdv's epsilon warm-up,
MACER's deferred start) are functions of the epoch and survive a resume.

Registered: ``gaussian`` (here), ``consistency`` and ``stability`` (:mod:`.stability`),
``smoothadv`` (:mod:`.smoothadv`), ``macer`` (:mod:`.macer`), ``lipschitz-margin``
(:mod:`.lipschitz_margin`).

A method records itself in a checkpoint as ``{"method": name, "hparams": method.hparams()}``;
:func:`method_record` reads such a record as the current code would write it (a record written by
an older smoothcert, under an old name or without a newer hyperparameter, is translated), so
resuming compares like with like.
"""

from __future__ import annotations

import inspect
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_bool, check_float, check_int  # re-exported for the methods' modules
from ..errors import InputError
from ..noise import Noise
from ..registry import Registry

__all__ = [
    "GaussianAugmentation",
    "TrainingMethod",
    "check_bool",
    "check_float",
    "check_int",
    "get_method",
    "list_methods",
    "method_record",
    "register_method",
]

METHODS: Registry[TrainingMethod] = Registry("training method")
register_method = METHODS.register


def get_method(name: str, **hparams: Any) -> TrainingMethod:
    """The training method ``name`` with its hyperparameters (keyword-only).

    An unknown hyperparameter is refused with the method's hyperparameters and their defaults
    listed; a method may also translate settings of an older smoothcert (``stability`` with
    ``clean=True``), see :meth:`TrainingMethod.from_hparams`."""
    factory = METHODS.factory(name)
    build = getattr(factory, "from_hparams", factory)  # a registered plain function is called as is
    return build(**hparams)


def method_record(name: str, hparams: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(name, hparams)`` of a checkpoint's training record as the current code writes it.

    A record from an older smoothcert is translated by the method's
    :meth:`TrainingMethod.upgrade_record` (e.g. ``stability`` with ``clean=False`` is now
    ``consistency``), and hyperparameters added since are filled in with their defaults by
    rebuilding the method. Unknown methods and records that do not build are returned as stored,
    so comparing them with a run's record shows the difference instead of failing here.
    """
    factory = METHODS.factory(name) if name in METHODS else None
    upgrade = getattr(factory, "upgrade_record", None)
    new_name, new_hparams = upgrade(dict(hparams)) if upgrade is not None else (name, dict(hparams))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return new_name, get_method(new_name, **new_hparams).hparams()
    except (TypeError, ValueError):
        return name, dict(hparams)


def list_methods() -> list[str]:
    """Names accepted by :func:`get_method` and ``smoothcert train --method``."""
    return METHODS.names()


class TrainingMethod(ABC):
    """A loss for training base classifiers that smooth well."""

    name: ClassVar[str]
    #: Whether the method fine-tunes a trained model and is meaningless from random weights
    #: (HeatSmoothing's teacher is the starting model): ``smoothcert train`` then requires ``--init``.
    needs_init: ClassVar[bool] = False

    def hparams(self) -> dict[str, Any]:
        """The hyperparameters, as stored in checkpoints (plain JSON-able values);
        ``get_method(self.name, **self.hparams())`` rebuilds an equal method."""
        return {}

    @classmethod
    def from_hparams(cls, **hparams: Any) -> TrainingMethod:
        """The method with ``hparams``, refusing unknown names with the known ones and their
        defaults listed (what :func:`get_method` calls)."""
        params = inspect.signature(cls).parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            unknown = [k for k in hparams if k not in {p.name for p in params}]
            if unknown:
                raise InputError(f"method {cls.name!r} has no hyperparameter {unknown[0]!r}; "
                                 f"its hyperparameters (defaults): {cls.describe_defaults()}")
        return cls(**hparams)

    @classmethod
    def describe_defaults(cls) -> str:
        """``name=default, ...`` of the hyperparameters, for messages."""
        try:
            return ", ".join(f"{k}={v!r}" for k, v in cls().hparams().items()) or "none"
        except (TypeError, ValueError):
            return ", ".join(inspect.signature(cls).parameters) or "none"

    @classmethod
    def upgrade_record(cls, hparams: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """``(name, hparams)`` that the current code would record for a run that an older smoothcert
        recorded under this method's name with ``hparams``; unchanged by default."""
        return cls.name, hparams

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Called by :func:`smoothcert.train.train` before (0-based) ``epoch`` of ``epochs``,
        including the first epoch after a resume. Schedules must depend on these two numbers
        only (not on how many times this was called), so a resumed run matches an uninterrupted one."""

    @abstractmethod
    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, noise: Noise, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """``(loss, logits)`` for a batch ``x`` [B, ...] in [0, 1] with labels ``y`` [B];
        ``logits`` [B, K] are those the training accuracy is read from."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"


@register_method("gaussian")
class GaussianAugmentation(TrainingMethod):
    """Cross-entropy on x + delta with fresh noise every batch (Cohen et al. 2019, Sec. 4).

    The noise comes from the registry, so Laplace or uniform augmentation train the matching
    smoothed classifiers the same way. The name is the field's ("Gaussian data augmentation").
    """

    name = "gaussian"

    def loss(self, model, x, y, *, noise, generator):
        delta = noise.sample(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        logits = model(x + delta)
        return F.cross_entropy(logits, y), logits

