"""From settings to objects: the device, the data split, the classifier (a checkpoint or a pretrained
one), its denoiser, the smoothed classifier, and the run facts recorded in a result file's sidecar.

These are the decisions a run makes before it samples anything; each refuses what cannot work
(a split whose inputs do not fit the model, a denoiser for another number of channels) with an
:class:`~smoothcert.errors.InputError` naming the setting to change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import dataset_info, get_dataset
from ..denoise import Denoised, denoiser_for_noise, load_denoiser, trained_noise
from ..errors import InputError
from ..files import file_sha256
from ..models import CheckpointMeta, is_external_arch, load_checkpoint, load_external
from ..noise import Noise, get_noise
from ..pretrained import PRETRAINED_CLASSIFIERS, ffdnet_color, load_pretrained_classifier
from ..smooth import SmoothedClassifier
from .settings import ClassifierSpec, DataSpec, DenoiserSpec, EngineSpec

__all__ = [
    "Log",
    "load_base",
    "load_classifier",
    "load_dataset",
    "load_split",
    "resolve_device",
    "run_facts",
    "smoothed_classifier",
    "smoothing_noise",
    "wire_denoiser",
]

#: Where a run sends its one-line messages (the CLI: standard error); None drops them.
Log = Callable[[str], None]


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``name`` as a torch device; None means cuda if available, else cpu. A CUDA device on a
    build without CUDA is refused."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {str(name)!r}; use cpu, cuda or cuda:N (or mps where torch has it)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name} asked for, but this torch build sees no CUDA device")
    return device


def load_dataset(data: DataSpec, split: str, *, dataset: str | None = None) -> Dataset:
    """The ``split`` of ``dataset`` (default ``data.dataset``), read as ``data`` says."""
    name = dataset or data.dataset
    if name is None:
        raise InputError("no dataset given")
    return get_dataset(name, split=split, **data.options())


def load_split(data: DataSpec, split: str, meta: CheckpointMeta) -> tuple[Dataset, str]:
    """``(the split, the dataset's name)``: ``data.dataset``, else the checkpoint's, refused if its
    inputs do not have the shape the model expects."""
    name = data.dataset or meta.dataset
    dataset = load_dataset(data, split, dataset=name)
    shape = tuple(dataset.info.input_shape)
    if shape != meta.input_shape:
        raise InputError(f"dataset {name} gives inputs {shape} but the model expects {meta.input_shape}")
    return dataset, name


def load_classifier(checkpoint: str, device: torch.device) -> tuple[nn.Module, CheckpointMeta, str]:
    """``(model on device, metadata, sha256 of the weights file)`` of a smoothcert checkpoint, or of
    a pretrained classifier named in :data:`~smoothcert.pretrained.PRETRAINED_CLASSIFIERS` (when no
    file of that name exists; its optional packages must be installed)."""
    if checkpoint in PRETRAINED_CLASSIFIERS and not Path(checkpoint).exists():
        try:
            model, meta, path = load_pretrained_classifier(checkpoint)
        except ImportError as err:
            raise InputError(str(err)) from None
        return model.to(device), meta, file_sha256(path)
    model, meta = load_checkpoint(checkpoint, map_location=device)
    return model, meta, file_sha256(Path(checkpoint))


def load_base(spec: ClassifierSpec, data: DataSpec, device: torch.device) -> tuple[nn.Module, CheckpointMeta, str]:
    """``(model on device, metadata, sha256 of the weights file)`` of the classifier ``spec`` names:
    :func:`load_classifier` of its checkpoint, or its ``arch`` (torchvision/timm) with its weights
    file built for ``data.dataset``'s classes and input shape
    (:func:`~smoothcert.models.load_external`; the dataset must be named, a weights file does not
    say what it was trained on)."""
    if spec.arch is None:
        assert spec.checkpoint is not None  # ClassifierSpec holds exactly one of them
        return load_classifier(spec.checkpoint, device)
    if data.dataset is None:
        raise InputError(f"--arch {spec.arch} needs --dataset: the data decides the classes and the input size "
                         "(e.g. --dataset imagenet)")
    info = dataset_info(data.dataset, **({"subset": data.subset} if data.subset else {}))
    if info.num_classes is None:
        raise InputError(f"dataset {data.dataset} does not state its number of classes, which --arch {spec.arch} "
                         "needs; use a dataset that does (e.g. imagenet)")
    assert spec.weights is not None  # ClassifierSpec requires weights with arch
    loaded = load_external(spec.arch, spec.weights, dataset=data.dataset, num_classes=info.num_classes,
                           input_shape=info.input_shape, mean=spec.mean, std=spec.std)
    return loaded.model.to(device), loaded.meta, loaded.meta.training["source_sha256"]


def smoothing_noise(spec: ClassifierSpec, meta: CheckpointMeta) -> Noise:
    """The noise of ``spec``, its name and sigma defaulting to the checkpoint's; refused when the
    checkpoint was trained without noise and ``spec`` does not name one."""
    name = spec.noise or (meta.noise if meta.noise != "none" else None)
    sigma = spec.sigma if spec.sigma is not None else (meta.sigma or None)
    if name is None or sigma is None:
        what = "a weights file (--arch) names no noise" if is_external_arch(meta.arch) else \
            "the checkpoint was trained without noise"
        raise InputError(f"{what}; pass --noise and --sigma")
    return get_noise(name, sigma=sigma)


def wire_denoiser(
    model: nn.Module,
    spec: DenoiserSpec | None,
    *,
    noise: Noise,
    in_channels: int,
    device: torch.device,
) -> tuple[nn.Module, dict[str, Any] | None]:
    """``Denoised(model, D)`` for the denoiser of ``spec`` set for ``noise`` (``model`` itself when
    ``spec`` is None), and the denoiser's record for the run facts: the file's hash and every
    setting, so rows of different denoisers are never mixed in one result file (None without one).

    ``spec.source == "ffdnet"`` (and no such file): the pretrained colour FFDNet at ``noise.sigma``,
    3-channel data only, no score-network settings. A checkpoint: a DnCNN, or a score network used
    one-step or multi-step (:func:`~smoothcert.denoise.denoiser_for_noise`).
    """
    if spec is None:
        return model, None
    if spec.source == "ffdnet" and not Path(spec.source).exists():
        if spec.score_settings:
            raise InputError("--denoise and --denoise-* are settings of score networks, not of ffdnet")
        if in_channels != 3:
            raise InputError(f"ffdnet is a colour (3-channel) denoiser; the data has {in_channels} channel(s)")
        try:
            den: nn.Module = ffdnet_color(noise.sigma).to(device)
        except ImportError as err:
            raise InputError(str(err)) from None
        record: dict[str, Any] = {"file": "ffdnet", "arch": "ffdnet-color"}
        trained_for = None
    else:
        net, dmeta = load_denoiser(spec.source, map_location=device)
        if dmeta.in_channels != in_channels:
            raise InputError(f"the denoiser takes {dmeta.in_channels}-channel images; the data has {in_channels}")
        den = denoiser_for_noise(net, dmeta, noise, mode=spec.mode, steps_per_level=spec.steps,
                                 step_size=spec.step_size, ladder=None if spec.levels is None else list(spec.levels))
        record = {"sha256": file_sha256(Path(spec.source)), "arch": dmeta.arch, "kind": dmeta.kind,
                  "trained_noise": dmeta.noise, "trained_sigma": dmeta.sigma, "trained_ladder": dmeta.ladder,
                  "training": dmeta.training, "epoch": dmeta.epoch}
        trained_for = trained_noise(dmeta)  # a DnCNN's noise (score networks: None, they carry their ladder)
    wrapped = Denoised(model, den.eval(), trained_for=trained_for)
    return wrapped, record | wrapped.settings()


def smoothed_classifier(
    base: nn.Module, *, noise: Noise, meta: CheckpointMeta, engine: EngineSpec
) -> SmoothedClassifier:
    """The smoothed classifier of ``base`` (the checkpoint's classes) with the engine settings."""
    return SmoothedClassifier(base, noise=noise, num_classes=meta.num_classes, input_shape=meta.input_shape,
                              **engine.classifier_options())


def run_facts(
    *,
    dataset: str,
    data: DataSpec,
    split: str,
    checkpoint_sha256: str,
    meta: CheckpointMeta,
    denoiser: dict[str, Any] | None,
) -> dict[str, Any]:
    """What a result file records about its run beyond the sampling settings (dataset, split,
    checkpoint hash, architecture, denoiser). The keys and values are those of smoothcert 0.1.0:
    a file written by it resumes. ``denoiser`` is left out when None, as 0.1.0 did. A torchvision
    or timm network (``arch`` ``provider:name``, ``checkpoint_sha256`` its weights file's) adds
    ``normalize``, its mean and std: the weights file does not hold them, and a run resumed with
    another normalization would smooth another classifier."""
    facts: dict[str, Any] = {"dataset": dataset, "subset": data.subset, "split": split,
                             "checkpoint_sha256": checkpoint_sha256, "arch": meta.arch}
    if is_external_arch(meta.arch):
        facts["normalize"] = {"mean": list(meta.mean), "std": list(meta.std)}
    if denoiser is not None:
        facts["denoiser"] = denoiser
    return facts
