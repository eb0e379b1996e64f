"""Training runs from their settings: the base classifier (:func:`run_train`) with its per-dataset
defaults and fine-tuning check, and the denoiser of denoised smoothing (:func:`run_train_denoiser`).

``log`` receives, with ``progress``, the notes on decisions taken for the caller (the defaults
chosen for the dataset, a fine-tuned checkpoint's normalization kept); None drops them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..denoise import DenoiserMeta, build_denoiser, get_denoiser_loss, sigma_ladder, train_denoiser
from ..errors import ConfigMismatchError, InputError, InputTypeError
from ..files import check_output_path, file_sha256
from ..models import MODELS, CheckpointMeta, build_model, load_checkpoint, model_kwargs, transfer_backbone
from ..noise import get_noise
from ..train import RandomCropFlip, train
from .classifier import Log, load_classifier, load_dataset, resolve_device
from .settings import DenoiserTrainRun, TrainRun, training_method

__all__ = [
    "TRAIN_DEFAULTS",
    "InitCheckpoint",
    "check_backbone_input",
    "check_finetune",
    "read_init",
    "run_train",
    "run_train_denoiser",
    "train_defaults",
]

#: ``arch``/``augment`` of a training run when not given, by the data's ``DatasetInfo.name`` (so
#: ``samples`` with subset cifar10 counts as cifar10): Cohen et al. 2019's base classifiers, ResNet-110
#: with random crop (4-pixel padding) + horizontal flip on CIFAR-10 (the same on CIFAR-100) and
#: ResNet-50 on ImageNet (their random-resized-crop augmentation is not implemented); anything else
#: (MNIST-like) LeNet without augmentation. The optimisation defaults (:class:`~smoothcert.train.TrainConfig`:
#: 90 epochs, SGD lr 0.1, momentum 0.9, weight decay 1e-4, lr x0.1 every 30 epochs, batch 256 for
#: their 400) are their CIFAR-10 schedule, for every dataset.
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar10": {"arch": "resnet110", "augment": True},
    "cifar100": {"arch": "resnet110", "augment": True},
    "imagenet": {"arch": "resnet50", "augment": False},
    "folder": {"arch": "resnet50", "augment": False},
}
_OTHER_DATA_DEFAULTS: dict[str, Any] = {"arch": "lenet", "augment": False}


def train_defaults(
    dataset_name: str, *, arch: str | None = None, augment: bool | None = None
) -> tuple[str, bool, list[str]]:
    """``(arch, augment, chosen)``: the given values, those left None taken from
    :data:`TRAIN_DEFAULTS` for ``dataset_name``; ``chosen`` lists the defaults taken, as the flags
    that would have asked for them (``["--arch resnet110", "--augment"]``)."""
    defaults = TRAIN_DEFAULTS.get(dataset_name, _OTHER_DATA_DEFAULTS)
    chosen = []
    if arch is None:
        arch = defaults["arch"]
        chosen.append(f"--arch {arch}")
    if augment is None:
        augment = defaults["augment"]
        chosen.append("--augment" if augment else "--no-augment")
    return arch, bool(augment), chosen


@dataclass(frozen=True)
class InitCheckpoint:
    """The checkpoint a fine-tuning run starts from: its model, metadata and provenance record
    (resolved path, sha256, dataset, noise, sigma, method, epoch), kept in the new checkpoint."""

    model: nn.Module
    meta: CheckpointMeta
    record: dict[str, Any]


def read_init(path: str | Path) -> InitCheckpoint:
    """Read the checkpoint ``path`` to fine-tune from."""
    resolved = Path(path).resolve()
    model, meta = load_checkpoint(resolved)
    record = {"path": str(resolved), "sha256": file_sha256(resolved), "dataset": meta.dataset, "noise": meta.noise,
              "sigma": meta.sigma, "method": meta.training.get("method"), "epoch": meta.epoch}
    return InitCheckpoint(model, meta, record)


def check_finetune(
    init: InitCheckpoint, *, arch: str, arch_kwargs: dict[str, Any], num_classes: int, in_channels: int,
    dataset_name: str,
) -> None:
    """Refuse to fine-tune ``init`` into another network: the architecture, its keywords (compared
    with the factory's defaults filled in, so a LeNet built without ``input_size`` by the Python API
    is the same as one with input_size=28), the classes and the input channels must all agree."""
    want = (arch, model_kwargs(arch, arch_kwargs), num_classes, in_channels)
    meta = init.meta
    have = (meta.arch, model_kwargs(meta.arch, meta.arch_kwargs), meta.num_classes, meta.in_channels)
    if want != have:
        raise InputError(
            f"--init {init.record['path']} holds {have[0]} (arch_kwargs {have[1]}) with {have[2]} classes and "
            f"{have[3]} input channels; this run builds {want[0]} (arch_kwargs {want[1]}) with {want[2]} classes "
            f"and {want[3]} channels for {dataset_name}. Fine-tuning needs the same network: pass --arch {have[0]} "
            "and a dataset with the same classes, channels and input size."
        )


def check_backbone_input(backbone: InitCheckpoint, *, input_shape: tuple[int, ...], dataset_name: str) -> None:
    """Refuse a ``--init-backbone`` checkpoint whose network takes other inputs than the data gives
    (channels, height, width): its backbone's layers are sized by them."""
    if tuple(backbone.meta.input_shape) != tuple(input_shape):
        raise InputError(
            f"--init-backbone {backbone.record['path']} holds {backbone.meta.arch} for inputs "
            f"{tuple(backbone.meta.input_shape)}; {dataset_name} gives {tuple(input_shape)}. The backbone's layers are "
            "sized by the input: use data with the checkpoint's channels and input size."
        )


def _refuse_existing(out: Path, resume: bool) -> None:
    # The checkpoint is written after the first epoch: check that it can be, before any training.
    check_output_path(out, what="checkpoint")
    if not resume and out.exists():
        raise InputError(f"{out} exists; pass --resume to continue it or choose another --out")


def _limited(dataset: Any, limit: int | None) -> Any:
    return dataset if limit is None else dataset.subset(range(min(limit, len(dataset))))


def run_train(run: TrainRun, *, progress: bool = True, log: Log | None = None) -> list[dict[str, Any]]:
    """Train the base classifier of ``run`` into ``run.out`` (a checkpoint per epoch); returns the
    history, one dict per epoch (``epoch``, ``loss``, ``train_acc_noisy``, ...).

    The architecture is ``run.arch``, else the ``run.init`` (or ``run.init_backbone``) checkpoint's,
    else the dataset's default; the weights start from ``run.init`` when given
    (:func:`check_finetune`), the backbone from ``run.init_backbone``
    (:func:`check_backbone_input`, :func:`~smoothcert.models.transfer_backbone`: same backbone
    structure and shapes, a declared Lipschitz bound) with a fresh head. Either checkpoint's
    Normalize constants are kept with its weights, since the network learned on inputs normalised by
    them; its path and sha256 are recorded in the new checkpoint's ``training``.
    """
    note = log if progress and log is not None else None
    method = training_method(run.method, run.hparams)
    _refuse_existing(Path(run.out), run.resume)
    init = read_init(run.init) if run.init is not None else None
    backbone = read_init(run.init_backbone) if run.init_backbone is not None else None
    source = init if init is not None else backbone
    arch = run.arch if run.arch is not None or source is None else source.meta.arch  # fine-tuning keeps it
    device = resolve_device(run.device)
    train_set = _limited(load_dataset(run.data, "train"), run.limit)
    test_set = load_dataset(run.data, "test") if run.evaluate else None
    info = train_set.info
    if backbone is not None:
        check_backbone_input(backbone, input_shape=tuple(info.input_shape), dataset_name=info.name)
    arch, augment, chosen = train_defaults(info.name, arch=arch, augment=run.augment)
    if chosen and note:
        note(f"defaults for {info.name}: {' '.join(chosen)}")
    noise = get_noise(run.noise, sigma=run.sigma)
    torch.manual_seed(run.config.seed)  # weight initialisation
    # Nets with a fully connected head (LeNet) are sized by the input side; record it.
    takes_size = "input_size" in inspect.signature(MODELS.factory(arch)).parameters
    arch_kwargs = {"input_size": info.input_shape[1]} if takes_size else {}
    if init is not None:  # before building: the checkpoint's mean/std must fit the network's channels
        check_finetune(init, arch=arch, arch_kwargs=arch_kwargs, num_classes=info.num_classes,
                       in_channels=info.input_shape[0], dataset_name=info.name)
    # A checkpoint's normalization is kept with its weights: the network learned on inputs normalised by it.
    mean, std = (list(source.meta.mean), list(source.meta.std)) if source is not None else (list(info.mean),
                                                                                            list(info.std))
    model = build_model(arch, num_classes=info.num_classes, in_channels=info.input_shape[0],
                        mean=mean, std=std, **arch_kwargs).to(device)
    provenance: dict[str, Any] = {}
    if init is not None:
        model.load_state_dict(init.model.state_dict())
        provenance = {"init": init.record}
    if backbone is not None:
        try:
            transfer_backbone(backbone.model, model)
        except InputTypeError as err:
            raise InputTypeError(f"--init-backbone {backbone.record['path']} ({backbone.meta.arch}) cannot start "
                                 f"this run's {arch}: {err}") from None
        except ConfigMismatchError as err:
            raise ConfigMismatchError(
                f"--init-backbone {backbone.record['path']} ({backbone.meta.arch}, arch_kwargs "
                f"{backbone.meta.arch_kwargs}) cannot start this run's {arch} (arch_kwargs {arch_kwargs}, the "
                f"architecture's defaults otherwise): {err}. `train` builds the architecture with its default "
                "sizes; move a backbone of other sizes in Python (smoothcert.models.transfer_backbone)"
            ) from None
        provenance = {"init_backbone": backbone.record}
    if source is not None and (mean, std) != (list(info.mean), list(info.std)) and note:
        flag = "--init" if init is not None else "--init-backbone"
        note(f"{flag}: keeping the checkpoint's normalization mean={mean} std={std} "
             f"(the data's is mean={list(info.mean)} std={list(info.std)})")
    meta = CheckpointMeta(arch=arch, arch_kwargs=arch_kwargs, dataset=run.data.dataset, num_classes=info.num_classes,
                          in_channels=info.input_shape[0], input_size=list(info.input_shape[1:]),
                          mean=mean, std=std, noise=noise.name, sigma=noise.sigma, training=provenance)
    return train(model, train_set, method=method, noise=noise, config=run.config, meta=meta, checkpoint=run.out,
                 resume=run.resume, test_set=test_set, progress=progress,
                 augment=RandomCropFlip(padding=4, flip=True) if augment else None)


def run_train_denoiser(run: DenoiserTrainRun, *, progress: bool = True) -> list[dict[str, Any]]:
    """Train the denoiser of ``run`` into ``run.out`` (a checkpoint per epoch); returns the history
    (``epoch``, ``loss``, and with ``run.evaluate`` ``test_psnr`` or ``test_dsm``).

    A score network is trained over ``run.sigmas``, else the geometric ``run.ladder``, else
    (1.0, 0.01, 10 levels); a guided loss loads the frozen ``run.classifier`` and refuses data whose
    inputs it does not take.
    """
    if run.network_kind == "score":
        if run.sigmas:
            ladder = list(run.sigmas)
        else:
            top, bottom, levels = run.ladder if run.ladder is not None else (1.0, 0.01, 10)
            ladder = sigma_ladder(top, bottom, num_levels=int(levels))
        noise, loss = None, get_denoiser_loss("dsm", ladder=ladder)
    else:
        assert run.sigma is not None  # checked by DenoiserTrainRun
        noise = get_noise(run.noise, sigma=run.sigma)
        guided = {"access": run.access, "queries": run.queries, "mu": run.mu} if run.loss != "mse" else {}
        loss = get_denoiser_loss(run.loss, **guided)
    if loss.needs_classifier and run.classifier is None:
        raise InputError(f"--loss {run.loss} is guided by a frozen classifier: pass --classifier CKPT")
    if not loss.needs_classifier and run.classifier is not None:
        raise InputError(f"--loss {run.loss} does not use a classifier; drop --classifier")
    _refuse_existing(Path(run.out), run.resume)
    device = resolve_device(run.device)
    train_set = _limited(load_dataset(run.data, "train"), run.limit)
    test_set = _limited(load_dataset(run.data, "test"), run.limit) if run.evaluate else None
    info = train_set.info
    classifier = None
    if run.classifier is not None:
        classifier, cmeta, _ = load_classifier(run.classifier, device)
        if tuple(info.input_shape) != cmeta.input_shape:
            raise InputError(f"dataset {run.data.dataset} gives inputs {tuple(info.input_shape)} but the classifier "
                             f"expects {cmeta.input_shape}")
    torch.manual_seed(run.seed)  # weight initialisation
    try:
        net = build_denoiser(run.kind, in_channels=info.input_shape[0], **run.arch_kwargs).to(device)
    except TypeError as err:
        raise InputError(f"--arch-arg for {run.kind}: {err}") from None
    meta = DenoiserMeta(arch=run.kind, arch_kwargs=dict(run.arch_kwargs), dataset=run.data.dataset,
                        in_channels=info.input_shape[0], input_size=list(info.input_shape[1:]))
    return train_denoiser(net, train_set, loss=loss, noise=noise, classifier=classifier, epochs=run.epochs, lr=run.lr,
                          batch_size=run.batch_size, seed=run.seed, checkpoint=run.out, meta=meta, resume=run.resume,
                          test_set=test_set, progress=progress)
