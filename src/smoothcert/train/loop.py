"""One training loop for every method: SGD, a learning-rate schedule, a checkpoint per epoch, resume.

Each epoch ends with an atomic checkpoint holding the model, its metadata (architecture,
normalization, dataset, noise, sigma, method and hyperparameters), the optimiser, the
random-number state and the history (the learning rate is a function of the epoch), so ``resume=True`` continues exactly where
an interrupted run stopped. Every epoch starts with ``method.begin_epoch(epoch, epochs)``, so a
method's own schedule (SmoothAdv's epsilon warm-up) is a function of the epoch as well.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..checks import model_device
from ..data import iter_batches
from ..errors import InputError
from ..models import CheckpointMeta, read_checkpoint, save_checkpoint
from ..noise import Noise
from .augment import augment_record
from .methods import TrainingMethod, get_method

__all__ = ["TrainConfig", "learning_rate", "noisy_accuracy", "train"]


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation settings. Defaults are Cohen et al. 2019's CIFAR-10 recipe (SGD, lr 0.1,
    momentum 0.9, weight decay 1e-4, batch 256 (their 400 over 4 GPUs is close), lr x0.1 every
    30 of 90 epochs); the quickstart and MNIST use shorter schedules (see cli.py)."""

    epochs: int = 90
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"  #: "step" (lr x gamma every step_size epochs) or "cosine"
    step_size: int = 30
    gamma: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError("epochs and batch_size must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be positive, got {self.lr}")
        if self.schedule not in ("step", "cosine"):
            raise InputError(f"schedule must be 'step' or 'cosine', got {self.schedule!r}")


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate of (0-based) ``epoch``: a pure function of the settings, so a run
    resumed with more epochs follows the new schedule instead of a stale scheduler state."""
    if config.schedule == "step":
        return config.lr * config.gamma ** (epoch // config.step_size)
    return config.lr * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))


def start_epoch_of(meta: dict[str, Any]) -> int:
    """Finished epochs recorded in a checkpoint's metadata."""
    return int(meta["epoch"])


def _recorded_hparams(name: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's method hyperparameters as the current code records them: hyperparameters
    added since (with their defaults) are filled in by rebuilding the method, so a run saved
    before a new option existed still resumes. Unknown methods or invalid values are kept as stored."""
    try:
        return get_method(name, **hparams).hparams()
    except (TypeError, ValueError):
        return hparams


def noisy_accuracy(
    model: nn.Module, dataset: Dataset, *, noise: Noise | None, batch_size: int = 512, seed: int = 0
) -> float:
    """Accuracy of the *base* model on inputs with one noise draw each (a cheap proxy for the
    smoothed classifier's accuracy, used to watch training; not a certificate)."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    correct = total = 0
    with torch.inference_mode():
        for x, y in iter_batches(dataset, batch_size, shuffle=False):
            x, y = x.to(device), y.to(device)
            if noise is not None:
                x = x + noise.sample(x.shape, generator=gen, device=device)
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    model.train(was_training)
    return correct / max(total, 1)



def training_state(
    order_gen: torch.Generator, noise_gen: torch.Generator, device: torch.device, history: list[dict[str, Any]]
) -> dict[str, Any]:
    """What a checkpoint's ``extra`` holds so a run resumes exactly: both random streams (the noise
    stream's device type, since CPU and CUDA generator states differ) and the history so far."""
    return {"order_rng": order_gen.get_state(), "noise_rng": noise_gen.get_state().cpu(),
            "noise_rng_device": device.type, "history": history}


def restore_training_state(
    payload: dict[str, Any],
    model: nn.Module,
    opt: torch.optim.Optimizer,
    order_gen: torch.Generator,
    noise_gen: torch.Generator,
    *,
    device: torch.device,
    reseed: int,
) -> list[dict[str, Any]]:
    """Load weights, optimiser and random streams from a checkpoint ``payload`` written with
    :func:`training_state`; returns its history. A noise stream saved on another device type cannot
    be restored: it is reseeded with ``reseed``, with a warning."""
    model.load_state_dict(payload["state_dict"])
    opt.load_state_dict(payload["optimizer_state"])
    extra = payload.get("extra", {})
    order_gen.set_state(extra["order_rng"])
    if extra.get("noise_rng_device") == device.type:
        noise_gen.set_state(extra["noise_rng"])
    else:
        warnings.warn(f"resuming on {device.type} a run trained on {extra.get('noise_rng_device')}: "
                      "the noise stream is reseeded", stacklevel=3)
        noise_gen.manual_seed(reseed)
    return list(extra.get("history", []))


def train(
    model: nn.Module,
    train_set: Dataset,
    *,
    method: TrainingMethod,
    noise: Noise,
    config: TrainConfig,
    meta: CheckpointMeta,
    checkpoint: str | os.PathLike[str],
    resume: bool = False,
    test_set: Dataset | None = None,
    progress: bool = True,
    augment: Callable[..., Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` (built by :func:`smoothcert.models.build_model`) in place.

    Args:
        model: the network with its Normalize layer, already on the device to train on.
        train_set: yields (x [C,H,W] in [0,1], y).
        method: the loss (see :func:`smoothcert.train.get_method`).
        noise: training noise; its name and sigma are written into the checkpoint metadata.
        meta: metadata template; ``noise``, ``sigma`` and ``epoch`` are filled in, and ``training``
            gets ``method``, ``hparams`` (the method's), the config and ``train_size``; other
            entries the caller put in ``meta.training`` (provenance such as ``init``) are kept.
        checkpoint: file written atomically after every epoch.
        resume: continue from ``checkpoint`` if it exists (its settings must match).
        test_set: if given, noisy accuracy on it is logged every epoch.
        augment: data augmentation ``augment(x, generator=g) -> x'`` on each training batch (on the
            device, before the method adds noise), e.g. :class:`smoothcert.train.RandomCropFlip`;
            recorded as ``training["augment"]`` (absent when None).
    Returns:
        the history: one dict per finished epoch (loss, train/test accuracy, lr, seconds).
    """
    device = model_device(model)
    path = Path(checkpoint)
    # Method hyperparameters are nested: their names (gamma, step_size) may equal TrainConfig's.
    training = {**meta.training, "method": method.name, "hparams": method.hparams(), **asdict(config),
                "train_size": len(train_set)}
    if augment is not None:
        training["augment"] = augment_record(augment)
    meta = CheckpointMeta.from_dict(
        meta.to_dict() | {"noise": noise.name, "sigma": noise.sigma, "training": training}
    )
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    order_gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    history: list[dict[str, Any]] = []
    start_epoch = 0

    if resume and path.exists():
        payload = read_checkpoint(path)
        old = payload["meta"]
        # More epochs may be asked for on resume; every other setting must match.
        same = {k: v for k, v in training.items() if k != "epochs"}
        was = {"hparams": {}} | {k: v for k, v in old.get("training", {}).items() if k != "epochs"}
        if was.get("method") == method.name:
            was["hparams"] = _recorded_hparams(method.name, was["hparams"])
        if was != same or old.get("arch") != meta.arch or old.get("dataset") != meta.dataset or old.get("noise") != noise.name \
                or old.get("sigma") != noise.sigma:
            raise InputError(
                f"cannot resume from {path}: it was trained with {old.get('arch')} on {old.get('dataset')}, noise "
                f"{old.get('noise')} sigma {old.get('sigma')}, training {old.get('training')}; "
                f"now {meta.arch} on {meta.dataset}, {noise.name} sigma {noise.sigma}, training {training}"
            )
        history = restore_training_state(payload, model, opt, order_gen, noise_gen, device=device,
                                         reseed=config.seed + 1 + start_epoch_of(old))
        start_epoch = start_epoch_of(old)
        if start_epoch >= config.epochs:
            return history

    steps = math.ceil(len(train_set) / config.batch_size)
    for epoch in range(start_epoch, config.epochs):
        method.begin_epoch(epoch, config.epochs)
        for group in opt.param_groups:
            group["lr"] = learning_rate(config, epoch)
        model.train()
        t0 = time.perf_counter()
        seen = 0
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for x, y in iter_batches(train_set, config.batch_size, shuffle=True, generator=order_gen):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if augment is not None:  # draws from the data-order stream, saved per epoch: resume stays exact
                x = augment(x, generator=order_gen)
            loss, logits = method.loss(model, x, y, noise=noise, generator=noise_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            bar.update(1)
            if bar.n % 20 == 0:  # a host sync for the live loss, every 20 steps only
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}")
        bar.close()
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": opt.param_groups[0]["lr"],
            "loss": loss_sum.item() / seen,
            "train_acc_noisy": correct.item() / seen,
            "seconds": time.perf_counter() - t0,
        }
        if test_set is not None:
            record["test_acc_noisy"] = noisy_accuracy(model, test_set, noise=noise, seed=epoch)
        history.append(record)
        if progress:
            tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        meta.epoch = epoch + 1
        save_checkpoint(
            path,
            model,
            meta=meta,
            optimizer_state=opt.state_dict(),
            extra=training_state(order_gen, noise_gen, device, history),
        )
    model.eval()
    return history
