"""Training methods for smoothing: each one a loss on a batch, selectable by name.

A method is a small object holding its hyperparameters (keyword-only, validated, recorded in the
checkpoint) with one call ``method.loss(model, x, y, noise=..., generator=...)`` returning a
scalar loss for the optimiser; the training loop (:mod:`smoothcert.train.loop`) is shared and calls
``method.begin_epoch(epoch, epochs)`` before every epoch, so schedules (SmoothAdv's epsilon warm-up,
MACER's deferred start) are functions of the epoch and survive a resume.

Registered: ``gaussian`` (here), ``stability`` (:mod:`.stability`), ``smoothadv``
(:mod:`.smoothadv`), ``macer`` (:mod:`.macer`), ``lipschitz-margin`` (:mod:`.lipschitz_margin`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_bool, check_float, check_int  # re-exported for the methods' modules
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
    "register_method",
]

METHODS: Registry[TrainingMethod] = Registry("training method")
register_method = METHODS.register


def get_method(name: str, **hparams: Any) -> TrainingMethod:
    """The training method ``name`` with its hyperparameters (keyword-only)."""
    return METHODS.create(name, **hparams)


def list_methods() -> list[str]:
    """Names accepted by :func:`get_method` and ``smoothcert train --method``."""
    return METHODS.names()


class TrainingMethod(ABC):
    """A loss for training base classifiers that smooth well."""

    name: ClassVar[str]

    def hparams(self) -> dict[str, Any]:
        """The hyperparameters, as stored in checkpoints (plain JSON-able values);
        ``get_method(self.name, **self.hparams())`` rebuilds an equal method."""
        return {}

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

