"""Training image-to-image (super-resolution) models: standard, Gaussian-noise-augmented, adversarial.

Trained in the project's one loop (:func:`smoothcert.train.loop.run_epochs`, as classifiers and
denoisers are): its batches come from a :data:`~smoothcert.train.loop.BatchSource` that draws
``batch_size`` random ``crop`` × ``crop`` patches of a few large photos afresh every step, an
"epoch" is ``save_every`` steps (the last one may be shorter), the loss is the MSE of the U-Net's
output against the clean patch, the optimiser Adam with a cosine learning rate over the epochs, and
the checkpoint a :data:`~smoothcert.models.unet.UNET_CHECKPOINT` written after every epoch with the
loop's resume state (weights, Adam state, both random streams, history), so ``resume=True``
continues an interrupted run exactly.

Methods (the thesis's three):
  * ``standard``: minimise ‖f(y) − x‖²;
  * ``noise``: minimise ‖f(y + δ) − x‖², δ ~ N(0, sigma_f² I) fresh every batch (the base model of a
    smoothed estimator);
  * ``adversarial``: minimise ‖f(y + e) − x‖² with e the l2 PGD perturbation of budget
    eps = sqrt(d)·eps_rel (:func:`smoothcert.attacks_regression.pgd_regression`), found with the model
    in eval mode (BatchNorm statistics are not updated by the attack's passes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks_regression import pgd_regression, relative_eps
from ..data.superres import degrade, random_crops
from ..errors import InputError
from ..models.unet import UNET_CHECKPOINT, UNet, UNetMeta
from ..noise import get_noise
from .loop import EpochCheckpoint, run_epochs

__all__ = ["SR_METHODS", "SRTrainConfig", "train_superres"]

SR_METHODS = ("standard", "noise", "adversarial")


@dataclass(frozen=True, kw_only=True)
class SRTrainConfig:
    """Settings of one super-resolution training run (recorded in the checkpoint).

    ``steps`` Adam steps of ``batch_size`` random ``crop`` × ``crop`` patches, learning rate ``lr``
    with a cosine decay over the epochs of ``save_every`` steps (a checkpoint after each);
    ``sigma_f`` for ``noise``; ``eps_rel`` and ``pgd_steps`` for ``adversarial``; ``factor``: the
    downsampling factor (2 in the thesis); ``crop``: 160 in the thesis, smaller on a CPU.
    """

    method: str = "standard"
    sigma_f: float = 0.0
    eps_rel: float = 0.0
    pgd_steps: int = 3
    steps: int = 1000
    batch_size: int = 16
    crop: int = 160
    lr: float = 1e-3
    factor: int = 2
    seed: int = 0
    save_every: int = 100

    def __post_init__(self) -> None:
        if self.method not in SR_METHODS:
            raise InputError(f"method must be one of {', '.join(SR_METHODS)}, got {self.method!r}")
        if self.method == "noise" and not self.sigma_f > 0:
            raise InputError("method 'noise' needs sigma_f > 0")
        if self.method == "adversarial" and not self.eps_rel > 0:
            raise InputError("method 'adversarial' needs eps_rel > 0")
        if self.sigma_f < 0 or self.eps_rel < 0:
            raise InputError("sigma_f and eps_rel must be >= 0")
        for name in ("steps", "batch_size", "crop", "pgd_steps", "save_every", "factor"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1")

    @property
    def epochs(self) -> int:
        """Epochs of ``save_every`` steps (the last may be shorter)."""
        return math.ceil(self.steps / self.save_every)

    def steps_done(self, epochs: int) -> int:
        """Steps finished after ``epochs`` epochs."""
        return min(self.steps, epochs * self.save_every)


def train_superres(
    model: UNet,
    images: Sequence[Tensor],
    *,
    config: SRTrainConfig,
    checkpoint: str | os.PathLike[str],
    resume: bool = False,
    info: Mapping[str, Any] | None = None,
    progress: bool = False,
    stop_at: int | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place on random patches of ``images`` (``[3, H, W]`` in [0, 1], each at
    least ``config.crop`` on a side); returns the history, one record per epoch of ``save_every``
    steps: ``epoch``, ``lr``, ``loss`` (mean MSE over the epoch's patches), ``seconds``, ``step``
    (steps finished).

    With ``resume`` and an existing ``checkpoint`` written with the same settings (``steps`` may
    differ), training continues from its last epoch and equals an uninterrupted run; a run already
    finished returns its history at once; a checkpoint with other settings is refused
    (``InputError``). ``info``: provenance recorded in the checkpoint. ``stop_at``: stop after that
    many steps (a multiple of ``save_every``; a time-boxed part of the run, continued by ``resume``).
    """
    for im in images:
        if im.shape[-2] < config.crop or im.shape[-1] < config.crop:
            raise InputError(f"crop size {config.crop} is larger than the image ({im.shape[-2]}x{im.shape[-1]})")
    epochs = config.epochs
    if stop_at is not None:
        if stop_at < 1 or stop_at % config.save_every:
            raise InputError(f"stop_at must be a positive multiple of save_every ({config.save_every}), got {stop_at}")
        epochs = min(epochs, stop_at // config.save_every)
    noise = get_noise("gaussian", sigma=config.sigma_f) if config.method == "noise" else None

    def patches(epoch: int, generator: torch.Generator) -> Iterator[tuple[Tensor, None]]:
        for _ in range(config.steps_done(epoch), config.steps_done(epoch + 1)):
            yield random_crops(images, size=config.crop, count=config.batch_size, generator=generator), None

    def step(net: nn.Module, x: Tensor, _: Tensor | None, *, generator: torch.Generator) -> tuple[Tensor, None]:
        y = degrade(x, factor=config.factor)
        if noise is not None:
            y = y + noise.sample(y.shape, generator=generator, device=y.device)
        elif config.method == "adversarial":
            net.eval()
            y = pgd_regression(net, y, x, eps=relative_eps(config.eps_rel, y.shape), steps=config.pgd_steps,
                               generator=generator)
            net.train()
        return F.mse_loss(net(y), x), None

    def lr_at(epoch: int) -> float:
        return config.lr * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))

    training = asdict(config)
    meta = UNetMeta(arch_kwargs=model.config(), training=training, info=dict(info or {}))

    def mismatch(old: UNetMeta) -> str:
        same = old.arch_kwargs == meta.arch_kwargs and {k: v for k, v in old.training.items() if k != "steps"} == {
            k: v for k, v in training.items() if k != "steps"}
        return "" if same else (f"trained with {old.training} ({old.arch_kwargs}), now {training} "
                                f"({meta.arch_kwargs})")

    return run_epochs(
        model, patches, step=step, optimizer=torch.optim.Adam(model.parameters(), lr=config.lr), epochs=epochs,
        batch_size=config.batch_size, seed=config.seed, resume=resume, lr_at=lr_at,
        evaluate=lambda epoch: {"step": config.steps_done(epoch + 1)}, progress=progress,
        checkpoint=EpochCheckpoint(path=Path(checkpoint), kind=UNET_CHECKPOINT, meta=meta, mismatch=mismatch),
    )
