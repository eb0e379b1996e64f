"""One training loop for every method: SGD, a learning-rate schedule, a checkpoint per epoch, resume.

Each epoch ends with an atomic checkpoint holding the model, its metadata (architecture,
normalization, dataset, noise, sigma, method and hyperparameters), the optimiser, the
scheduler, the random-number state and the history, so ``resume=True`` continues exactly where
an interrupted run stopped.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..data import ArrayDataset
from ..models import CheckpointMeta, read_checkpoint, save_checkpoint
from ..noise import Noise
from ..validation import model_device
from .methods import TrainingMethod

__all__ = ["TrainConfig", "train", "noisy_accuracy"]


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
            raise ValueError("epochs and batch_size must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule must be 'step' or 'cosine', got {self.schedule!r}")


def _batches(
    dataset: Dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches of (x [b, C, H, W] float in [0,1], y [b] int64).

    In-memory datasets (:class:`smoothcert.data.ArrayDataset`) are batched by indexing their
    tensors, which avoids a Python call per image; others go through a DataLoader.
    """
    if isinstance(dataset, ArrayDataset):
        images, labels = dataset.tensors()
        n = len(labels)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            x = images[idx]
            yield (x.float().div_(255) if x.dtype == torch.uint8 else x.float()), labels[idx].long()
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
    for x, y in loader:
        yield x.float(), y.long()


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
        for x, y in _batches(dataset, batch_size, shuffle=False, generator=None):
            x, y = x.to(device), y.to(device)
            if noise is not None:
                x = x + noise.sample(x.shape, generator=gen, device=device)
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


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
) -> list[dict[str, Any]]:
    """Train ``model`` (built by :func:`smoothcert.models.build_model`) in place.

    Args:
        model: the network with its Normalize layer, already on the device to train on.
        train_set: yields (x [C,H,W] in [0,1], y).
        method: the loss (see :func:`smoothcert.train.get_method`).
        noise: training noise; its name and sigma are written into the checkpoint metadata.
        meta: metadata template; ``noise``, ``sigma``, ``training`` and ``epoch`` are filled in.
        checkpoint: file written atomically after every epoch.
        resume: continue from ``checkpoint`` if it exists (its settings must match).
        test_set: if given, noisy accuracy on it is logged every epoch.
    Returns:
        the history: one dict per finished epoch (loss, train/test accuracy, lr, seconds).
    """
    device = model_device(model)
    path = Path(checkpoint)
    training = {"method": method.name, **method.hparams(), **asdict(config)}
    meta = CheckpointMeta.from_dict(
        meta.to_dict() | {"noise": noise.name, "sigma": noise.sigma, "training": training}
    )
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.schedule == "step":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.StepLR(
            opt, step_size=config.step_size, gamma=config.gamma
        )
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    order_gen = torch.Generator().manual_seed(config.seed)
    noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    history: list[dict[str, Any]] = []
    start_epoch = 0

    if resume and path.exists():
        payload = read_checkpoint(path)
        old = payload["meta"]
        # More epochs may be asked for on resume; every other setting must match.
        same = {k: v for k, v in training.items() if k != "epochs"}
        was = {k: v for k, v in old.get("training", {}).items() if k != "epochs"}
        if was != same or old.get("arch") != meta.arch or old.get("noise") != noise.name \
                or old.get("sigma") != noise.sigma:
            raise ValueError(
                f"cannot resume from {path}: it was trained with {old.get('arch')}, noise "
                f"{old.get('noise')} sigma {old.get('sigma')}, training {old.get('training')}; "
                f"now {meta.arch}, {noise.name} sigma {noise.sigma}, training {training}"
            )
        model.load_state_dict(payload["state_dict"])
        opt.load_state_dict(payload["optimizer_state"])
        extra = payload.get("extra", {})
        sched.load_state_dict(extra["scheduler"])
        order_gen.set_state(extra["order_rng"])
        noise_gen.set_state(extra["noise_rng"].to(noise_gen.get_state().device))
        history = list(extra.get("history", []))
        start_epoch = int(old["epoch"])
        if start_epoch >= config.epochs:
            return history

    steps = math.ceil(len(train_set) / config.batch_size)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        t0 = time.perf_counter()
        loss_sum = correct = seen = 0.0
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for x, y in _batches(train_set, config.batch_size, shuffle=True, generator=order_gen):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss, logits = method.loss(model, x, y, noise=noise, generator=noise_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # .item() syncs once per step; acceptable here (training is not the hot loop of
            # certification) and it gives a live loss on the bar.
            loss_sum += loss.item() * len(y)
            correct += float((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
        bar.close()
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": opt.param_groups[0]["lr"],
            "loss": loss_sum / seen,
            "train_acc_noisy": correct / seen,
            "seconds": time.perf_counter() - t0,
        }
        sched.step()
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
            extra={
                "scheduler": sched.state_dict(),
                "order_rng": order_gen.get_state(),
                "noise_rng": noise_gen.get_state().cpu(),
                "history": history,
            },
        )
    model.eval()
    return history
