"""Training image-to-image (super-resolution) models: standard, Gaussian-noise-augmented, adversarial.

A small loop of its own, not :func:`smoothcert.train.train`: that loop is built around classifiers
(labels, accuracy, SGD recipes, ``CheckpointMeta`` with ``num_classes``), while here a batch is a pair
of images, the loss is the MSE, the optimiser Adam, and an epoch is not natural (patches are drawn
afresh from a few large photos every step). What it shares with it: the step's randomness is a
function of (seed, step) only (:func:`smoothcert.rng.sub_seed`), and a checkpoint written every
``save_every`` steps lets ``resume=True`` continue an interrupted run exactly.

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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attacks_regression import pgd_regression, relative_eps
from ..data.superres import degrade, random_crops
from ..errors import InputError
from ..files import atomic_write
from ..models.unet import UNet, load_unet, save_unet
from ..noise import get_noise
from ..rng import sub_seed

__all__ = ["SR_METHODS", "SRTrainConfig", "train_superres"]

SR_METHODS = ("standard", "noise", "adversarial")


@dataclass(frozen=True, kw_only=True)
class SRTrainConfig:
    """Settings of one super-resolution training run (recorded in the checkpoint).

    ``steps`` Adam steps of ``batch_size`` random ``crop`` × ``crop`` patches, learning rate ``lr``
    with a cosine decay to 0; ``sigma_f`` for ``noise``; ``eps_rel`` and ``pgd_steps`` for
    ``adversarial``; ``factor``: the downsampling factor (2 in the thesis); ``crop``: 160 in the
    thesis, smaller on a CPU.
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


def _lr(config: SRTrainConfig, step: int) -> float:
    return config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))


def train_superres(
    model: UNet,
    images: Sequence[Tensor],
    *,
    config: SRTrainConfig,
    checkpoint: str | os.PathLike[str],
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool = False,
    stop_at: int | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place on random patches of ``images`` (``[3, H, W]`` in [0, 1], each at
    least ``config.crop`` on a side); returns the history (one record per ``save_every`` steps:
    step, mean loss, seconds).

    With ``resume`` and an existing ``checkpoint`` written with the same config, training continues
    from its step (weights, optimiser state and history restored; the patches and noise of step s
    depend on (seed, s) only, so the result equals an uninterrupted run). A checkpoint with another
    config is refused. ``stop_at``: stop after that many steps (a time-boxed part of the run; the
    checkpoint is written there, and ``resume`` continues it).
    """
    device = next(model.parameters()).device
    path = Path(checkpoint)
    record = {"training": asdict(config), **(meta or {})}
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    history: list[dict[str, Any]] = []
    start = 0
    if resume and path.exists():
        old_model, old_meta = load_unet(path, map_location=device)
        if old_meta.get("training") != asdict(config):
            raise InputError(f"cannot resume from {path}: trained with {old_meta.get('training')}, now {asdict(config)}")
        model.load_state_dict(old_model.state_dict())
        state = torch.load(path.with_suffix(path.suffix + ".opt"), map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        start, history = int(old_meta["step"]), list(old_meta["history"])
    noise = get_noise("gaussian", sigma=config.sigma_f) if config.method == "noise" else None
    t0, loss_sum, count = time.perf_counter(), 0.0, 0
    end = config.steps if stop_at is None else min(config.steps, int(stop_at))
    for step in range(start, end):
        gen = torch.Generator().manual_seed(sub_seed(config.seed, step))
        x = random_crops(images, size=config.crop, count=config.batch_size, generator=gen).to(device)
        y = degrade(x, factor=config.factor)
        if noise is not None:
            y = y + noise.sample(y.shape, generator=gen, device="cpu").to(device)
        elif config.method == "adversarial":
            model.eval()
            y = pgd_regression(model, y, x, eps=relative_eps(config.eps_rel, y.shape), steps=config.pgd_steps,
                               generator=sub_seed(config.seed, step, 1))
        model.train()
        for group in opt.param_groups:
            group["lr"] = _lr(config, step)
        loss = F.mse_loss(model(y), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum, count = loss_sum + float(loss.detach()), count + 1
        done = step + 1
        if done % config.save_every == 0 or done == end:
            history.append({"step": done, "loss": loss_sum / count, "seconds": time.perf_counter() - t0})
            if progress:
                print(f"step {done}/{config.steps} mse {loss_sum / count:.5f} ({time.perf_counter() - t0:.0f}s)", flush=True)
            loss_sum, count = 0.0, 0
            model.eval()
            save_unet(path, model, {**record, "step": done, "history": history})
            atomic_write(path.with_suffix(path.suffix + ".opt"), lambda f: torch.save({"optimizer": opt.state_dict()}, f))
    model.eval()
    return history
