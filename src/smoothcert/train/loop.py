"""One training loop for every network: epochs of optimiser steps, a checkpoint per epoch, exact resume.

:func:`run_epochs` is the loop; what is trained is given to it: the loss of one batch (a
:class:`TrainStep`), the optimiser, the learning rate of each epoch, an evaluation after each epoch,
and an :class:`EpochCheckpoint` (file, checkpoint kind, metadata, and which recorded runs this one may
continue). The batches come from a fixed data set (shuffled every epoch) or from a
:data:`BatchSource` (batches drawn afresh, e.g. random patches of a few large photos). Three trainers
use it:

* :func:`train` — base classifiers with a :class:`~smoothcert.train.TrainingMethod` and SGD;
* :func:`smoothcert.denoise.train_denoiser` — denoisers and score networks with a
  ``DenoiserLoss`` and Adam;
* :func:`smoothcert.train.superres.train_superres` — image-to-image (super-resolution) U-Nets on
  random patches with Adam.

Each epoch ends with an atomic checkpoint of the network, its metadata (with ``epoch`` = epochs
finished), the optimiser state, both random streams (data order on the CPU, noise on the training
device) and the history; the learning rate is a function of the epoch and so are methods' own
schedules (``begin_epoch``), so ``resume=True`` continues exactly where an interrupted run stopped:
the resumed run's weights and history equal an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm

from ..checkpoints import CheckpointKind, MetaRecord, restore_training_state, training_state
from ..checks import model_device
from ..data import iter_batches
from ..errors import InputError
from ..models import CLASSIFIER_CHECKPOINT, CheckpointMeta
from ..noise import Noise
from .augment import augment_record
from .methods import TrainingMethod, method_record

__all__ = [
    "BatchSource",
    "EpochCheckpoint",
    "TrainConfig",
    "TrainStep",
    "learning_rate",
    "noisy_accuracy",
    "run_epochs",
    "train",
    "training_batches",
]

M = TypeVar("M", bound=MetaRecord)


# ------------------------------------------------------------------------------ the loop


class TrainStep(Protocol):
    """The loss of one batch: ``x`` [B, ...] in [0, 1] on the model's device, labels ``y`` [B] or
    None (unlabelled images), ``generator`` the noise stream on that device. Returns
    ``(loss, logits)``: a scalar to minimise, and logits [B, K] to read the training accuracy from,
    or None when there is no accuracy to report."""

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor | None, *, generator: torch.Generator
    ) -> tuple[Tensor, Tensor | None]: ...


#: Batches that are not a fixed data set: ``source(epoch, generator)`` yields the (x, y) batches of
#: (0-based) ``epoch`` (y may be None), drawing its randomness from ``generator`` only: the loop's
#: data-order stream, saved with every checkpoint, so a resumed run draws what an uninterrupted one would.
BatchSource = Callable[[int, torch.Generator], Iterable[tuple[Tensor, Tensor | None]]]


@dataclass(frozen=True, kw_only=True)
class EpochCheckpoint(Generic[M]):
    """The file the loop writes after every epoch, and how it is resumed.

    ``meta`` is the run's metadata (its ``epoch`` is set to the epochs finished at each save);
    ``mismatch(recorded)`` says why this run may not continue a run recorded with metadata
    ``recorded`` ('' if it may: same network, data, noise and training settings but ``epochs``).
    """

    path: Path
    kind: CheckpointKind[M]
    meta: M
    mismatch: Callable[[M], str]


def training_batches(
    data: Dataset | Tensor, batch_size: int, *, shuffle: bool, generator: torch.Generator | None
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """:func:`smoothcert.data.iter_batches` of ``data`` (float32 images in [0, 1], uint8 scaled),
    where ``data`` may also be an unlabelled image tensor ``[N, C, H, W]``: its labels are None, so
    a loss that needs labels says so instead of training on made-up ones."""
    if not isinstance(data, Tensor):
        yield from iter_batches(data, batch_size, shuffle=shuffle, generator=generator)
        return
    if data.ndim != 4:
        raise InputError(f"an image tensor must be [N, C, H, W], got shape {tuple(data.shape)}")
    no_labels = torch.zeros(data.shape[0], dtype=torch.int64)  # placeholder, never returned
    for x, _ in iter_batches(TensorDataset(data, no_labels), batch_size, shuffle=shuffle, generator=generator):
        yield x, None


def run_epochs(
    model: nn.Module,
    data: Dataset | Tensor | BatchSource,
    *,
    step: TrainStep,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    seed: int,
    checkpoint: EpochCheckpoint[Any] | None = None,
    resume: bool = False,
    lr_at: Callable[[int], float] | None = None,
    begin_epoch: Callable[[int, int], None] | None = None,
    augment: Callable[..., Tensor] | None = None,
    evaluate: Callable[[int], Mapping[str, float]] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train ``model`` in place for (0-based) epochs ``start .. epochs - 1``; returns the history.

    Args:
        model: the network, on the device to train on (the noise stream lives there).
        data: training images in [0, 1] (see :func:`training_batches`), shuffled every epoch by a
            CPU generator seeded with ``seed``, in batches of ``batch_size``; or a
            :data:`BatchSource` called with each epoch and that generator (``batch_size`` unused).
            The noise generator is seeded with ``seed + 1``.
        step: the loss of a batch (:class:`TrainStep`).
        optimizer: over ``model``'s trainable parameters; its state is saved and restored.
        epochs: the total number of epochs (a resumed run may ask for more than it was started with).
        checkpoint: written atomically after every epoch; None writes nothing (and cannot resume).
        resume: continue from ``checkpoint`` if its file exists; ``checkpoint.mismatch`` must
            accept the recorded run, else ``InputError``. A run already at ``epochs`` returns at once.
        lr_at: the learning rate of an epoch, set on every parameter group before it (recorded as
            ``lr``); None keeps the optimiser's.
        begin_epoch: called as ``begin_epoch(epoch, epochs)`` before every epoch (method schedules).
        augment: ``augment(x, generator=g) -> x'`` on each batch on the device, before ``step``; it
            draws from the data-order stream, which is saved per epoch, so a resume stays exact.
        evaluate: ``evaluate(epoch) -> {name: value}`` after each epoch, added to its record.
        progress: a progress bar per epoch and a line per finished epoch.
    Returns:
        one dict per finished epoch, the resumed run's earlier epochs included: ``epoch``, ``lr``
        (with ``lr_at``), ``loss`` (mean over examples), ``train_acc_noisy`` (when ``step`` returns
        logits), ``seconds``, then what ``evaluate`` returns.
    """
    device = model_device(model)
    order_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    history: list[dict[str, Any]] = []
    start = 0
    if resume and checkpoint is not None and checkpoint.path.exists():
        payload = checkpoint.kind.read(checkpoint.path)
        recorded = checkpoint.kind.meta_of(payload, checkpoint.path)
        problem = checkpoint.mismatch(recorded)
        if problem:
            raise InputError(f"cannot resume from {checkpoint.path}: {problem}")
        start = recorded.epoch  # type: ignore[attr-defined]
        history = restore_training_state(payload, model, optimizer, order_gen, noise_gen, device=device,
                                         reseed=seed + 1 + start)
        if start >= epochs:
            return history

    source = data if callable(data) and not isinstance(data, (Dataset, Tensor)) else None
    steps = None if source is not None else math.ceil(len(data) / batch_size)  # type: ignore[arg-type]
    for epoch in range(start, epochs):
        if begin_epoch is not None:
            begin_epoch(epoch, epochs)
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch)
        model.train()
        t0 = time.perf_counter()
        seen = 0
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        with_accuracy = False
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        batches = (source(epoch, order_gen) if source is not None
                   else training_batches(data, batch_size, shuffle=True, generator=order_gen))  # type: ignore[arg-type]
        for x, y in batches:
            x = x.to(device, non_blocking=True)
            y = None if y is None else y.to(device, non_blocking=True)
            if augment is not None:
                x = augment(x, generator=order_gen)
            loss, logits = step(model, x, y, generator=noise_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * x.shape[0]
            seen += x.shape[0]
            if logits is not None and y is not None:
                correct += (logits.argmax(1) == y).sum()
                with_accuracy = True
            bar.update(1)
            if progress and bar.n % 20 == 0:  # a host sync for the live loss, every 20 steps only
                live = {"loss": f"{loss_sum.item() / seen:.4f}"}
                if with_accuracy:
                    live["acc"] = f"{correct.item() / seen:.3f}"
                bar.set_postfix(live)
        bar.close()
        record: dict[str, Any] = {"epoch": epoch + 1}
        if lr_at is not None:
            record["lr"] = optimizer.param_groups[0]["lr"]
        record["loss"] = loss_sum.item() / max(seen, 1)
        if with_accuracy:
            record["train_acc_noisy"] = correct.item() / max(seen, 1)
        record["seconds"] = time.perf_counter() - t0
        if evaluate is not None:
            record.update(evaluate(epoch))
        history.append(record)
        if progress:
            tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if checkpoint is not None:
            checkpoint.kind.save(
                checkpoint.path, model, meta=dataclasses.replace(checkpoint.meta, epoch=epoch + 1),
                optimizer_state=optimizer.state_dict(),
                extra=training_state(order_gen, noise_gen, device, history),
            )
    model.eval()
    return history


# ------------------------------------------------------------------------------ classifiers


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


def _classifier_mismatch(meta: CheckpointMeta, noise: Noise) -> Callable[[CheckpointMeta], str]:
    """Which recorded classifier runs :func:`train` may continue: same architecture, dataset, noise,
    sigma and training record but ``epochs`` (more epochs may be asked for on resume). The recorded
    method is read as the current code names it (:func:`~smoothcert.train.methods.method_record`)."""
    now = {k: v for k, v in meta.training.items() if k != "epochs"}

    def mismatch(old: CheckpointMeta) -> str:
        was = {"hparams": {}} | {k: v for k, v in old.training.items() if k != "epochs"}
        if isinstance(was.get("method"), str) and isinstance(was["hparams"], Mapping):
            was["method"], was["hparams"] = method_record(was["method"], was["hparams"])
        if was == now and (old.arch, old.dataset, old.noise, old.sigma) == (meta.arch, meta.dataset, noise.name,
                                                                             noise.sigma):
            return ""
        return (f"it was trained with {old.arch} on {old.dataset}, noise {old.noise} sigma {old.sigma}, "
                f"training {old.training}; now {meta.arch} on {meta.dataset}, {noise.name} sigma {noise.sigma}, "
                f"training {meta.training}")

    return mismatch


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
    """Train a base classifier ``model`` (built by :func:`smoothcert.models.build_model`) in place
    with SGD through :func:`run_epochs`.

    Args:
        model: the network with its Normalize layer, already on the device to train on.
        train_set: yields (x [C,H,W] in [0,1], y).
        method: the loss (see :func:`smoothcert.train.get_method`).
        noise: training noise; its name and sigma are written into the checkpoint metadata.
        config: SGD settings and the learning-rate schedule (:func:`learning_rate`).
        meta: metadata template; ``noise``, ``sigma`` and ``epoch`` are filled in, and ``training``
            gets ``method``, ``hparams`` (the method's), the config and ``train_size``; other
            entries the caller put in ``meta.training`` (provenance such as ``init``) are kept.
        checkpoint: file written atomically after every epoch.
        resume: continue from ``checkpoint`` if it exists (its settings must match).
        test_set: if given, noisy accuracy on it is logged every epoch (``test_acc_noisy``).
        augment: data augmentation ``augment(x, generator=g) -> x'`` on each training batch (on the
            device, before the method adds noise), e.g. :class:`smoothcert.train.RandomCropFlip`;
            recorded as ``training["augment"]`` (absent when None).
    Returns:
        the history: one dict per finished epoch (loss, train/test accuracy, lr, seconds).
    """
    # Method hyperparameters are nested: their names (gamma, step_size) may equal TrainConfig's.
    training = {**meta.training, "method": method.name, "hparams": method.hparams(), **asdict(config),
                "train_size": len(train_set)}
    if augment is not None:
        training["augment"] = augment_record(augment)
    meta = CheckpointMeta.from_dict(meta.to_dict() | {"noise": noise.name, "sigma": noise.sigma, "training": training})
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)

    def step(net: nn.Module, x: Tensor, y: Tensor | None, *, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if y is None:
            raise InputError("classifier training needs labels: train_set must yield (x, y)")
        return method.loss(net, x, y, noise=noise, generator=generator)

    def evaluate(epoch: int) -> dict[str, float]:
        return {"test_acc_noisy": noisy_accuracy(model, test_set, noise=noise, seed=epoch)}  # type: ignore[arg-type]

    return run_epochs(
        model, train_set, step=step, optimizer=optimizer, epochs=config.epochs, batch_size=config.batch_size,
        seed=config.seed, resume=resume, lr_at=lambda epoch: learning_rate(config, epoch),
        begin_epoch=method.begin_epoch, augment=augment, evaluate=evaluate if test_set is not None else None,
        progress=progress,
        checkpoint=EpochCheckpoint(path=Path(checkpoint), kind=CLASSIFIER_CHECKPOINT, meta=meta,
                                   mismatch=_classifier_mismatch(meta, noise)),
    )
