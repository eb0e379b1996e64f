"""Classifiers from torchvision or timm by name, with a user's weights file and the normalization
those weights expect.

``--arch torchvision:resnet50 --weights resnet50.pth`` builds the network with
``torchvision.models.get_model("resnet50", weights=None, num_classes=K)``, ``timm:NAME`` with
``timm.create_model(NAME, pretrained=False, num_classes=K, in_chans=C)``; the weights are read from
the file only (nothing is downloaded), and the result is this project's
``nn.Sequential(Normalize(mean, std), net)``, so noise is added to inputs in [0,1] as for every
other model. Neither package is a dependency of smoothcert: they are imported inside the
functions that need them, and their absence is a one-line error naming the extra to install
(``smoothcert[vision]`` for torchvision, ``smoothcert[timm]`` for timm).

The normalization is the one the weights were trained with, unless given explicitly:

* torchvision's ImageNet classification weights: mean (0.485, 0.456, 0.406), std
  (0.229, 0.224, 0.225) per channel of inputs in [0,1]. torchvision's model documentation
  ("Models and pre-trained weights", https://pytorch.org/vision/stable/models.html; the same
  sentence since torchvision 0.2): "All pre-trained models expect input images normalized in the
  same way, i.e. mini-batches of 3-channel RGB images [...] loaded in to a range of [0, 1] and then
  normalized using mean = [0.485, 0.456, 0.406] and std = [0.229, 0.224, 0.225]" (also the defaults
  of the weights' ``transforms()``, ``ImageClassification``).
* timm: the model's ``pretrained_cfg["mean"]`` / ``["std"]`` (older timm: ``default_cfg``), which
  differ between models (e.g. Inception-style models use 0.5 / 0.5). Name a tagged model
  (``timm:resnet50.a1_in1k``) to get the configuration of the weights you hold.

Weights files: a plain state dict (or ``{"state_dict": ...}``), ``module.`` prefixes of
DataParallel removed; an unknown, missing or misshaped key is refused with the keys named, as for
the checkpoints of :mod:`smoothcert.models.foreign` (a partially loaded network would certify
another classifier without a word).
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from ..data.core import IMAGENET_MEAN, IMAGENET_STD  # torchvision's ImageNet normalization (module docstring)
from ..errors import CheckpointError, InputError, MissingFileError
from ..files import file_sha256
from .checkpoint import CheckpointMeta
from .foreign import ImportedCheckpoint, _load_into, _read, _strip
from .normalize import Normalize

__all__ = [
    "EXTERNAL_PROVIDERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ExternalArch",
    "create_external",
    "external_normalization",
    "is_external_arch",
    "load_external",
    "parse_external_arch",
]

#: Packages an ``--arch PROVIDER:NAME`` may name, with the pip extra that installs each.
EXTERNAL_PROVIDERS: dict[str, str] = {"torchvision": "vision", "timm": "timm"}



@dataclass(frozen=True)
class ExternalArch:
    """An architecture of another package: ``provider`` (a key of :data:`EXTERNAL_PROVIDERS`)
    and its ``name`` there. ``str()`` gives the ``provider:name`` spelling."""

    provider: str
    name: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.name}"

    @property
    def install(self) -> str:
        """The command that installs the provider's package."""
        return f'pip install "smoothcert[{EXTERNAL_PROVIDERS[self.provider]}]"'


def is_external_arch(arch: object) -> bool:
    """Whether ``arch`` is spelled ``provider:name`` with a known provider."""
    if not isinstance(arch, str):
        return False
    provider, sep, name = arch.partition(":")
    return bool(sep and name) and provider in EXTERNAL_PROVIDERS


def parse_external_arch(arch: str | ExternalArch) -> ExternalArch:
    """``"torchvision:resnet50"`` -> ``ExternalArch("torchvision", "resnet50")``; anything else is
    an :class:`InputError` saying what is accepted."""
    if isinstance(arch, ExternalArch):
        return arch
    if not is_external_arch(arch):
        raise InputError(f"arch must be {' or '.join(f'{p}:NAME' for p in EXTERNAL_PROVIDERS)} "
                         f"(e.g. torchvision:resnet50), got {arch!r}; a smoothcert checkpoint is given as a file")
    provider, _, name = str(arch).partition(":")
    return ExternalArch(provider, name.strip())


def _package(arch: ExternalArch) -> ModuleType:
    try:
        return importlib.import_module(arch.provider)
    except ImportError:
        raise InputError(f"--arch {arch} needs the package {arch.provider!r}, which is not installed: "
                         f"{arch.install}") from None


def _unknown(arch: ExternalArch, known: Sequence[str]) -> InputError:
    close = difflib.get_close_matches(arch.name, list(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return InputError(f"{arch.provider} has no classification model {arch.name!r}{hint}")


def create_external(arch: str | ExternalArch, *, num_classes: int, in_channels: int = 3) -> nn.Module:
    """The provider's network ``arch`` with random weights and ``num_classes`` outputs (no
    normalization layer, training mode as the provider returns it).

    torchvision: ``torchvision.models.get_model(name, weights=None, num_classes=num_classes)``
    (torchvision >= 0.14), restricted to the classification models (``list_models(module=
    torchvision.models)``); its networks take 3 channels. timm: ``timm.create_model(name,
    pretrained=False, num_classes=num_classes, in_chans=in_channels)``. Raises
    :class:`InputError` when the package is missing or has no such model."""
    arch = parse_external_arch(arch)
    package = _package(arch)
    if arch.provider == "torchvision":
        models = package.models
        if not hasattr(models, "get_model") or not hasattr(models, "list_models"):
            version = getattr(package, "__version__", "?")
            raise InputError(f"--arch {arch} needs torchvision >= 0.14 (get_model); installed: {version}")
        # list_models(module=m) keeps the builders defined in m's own files (torchvision/models/_api.py:
        # v.__module__.rsplit(".", 1)[0] == m.__name__): the classification models, not those of
        # models.detection, .segmentation, .video, .quantization or .optical_flow.
        known = list(models.list_models(module=models))
        if arch.name.lower() not in known:
            raise _unknown(arch, known)
        return models.get_model(arch.name.lower(), weights=None, num_classes=num_classes)
    is_model = getattr(package, "is_model", None)
    if is_model is not None and not is_model(arch.name):
        raise _unknown(arch, list(package.list_models()) if hasattr(package, "list_models") else [])
    try:
        return package.create_model(arch.name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    except RuntimeError as err:
        if "unknown model" in str(err).lower():
            raise _unknown(arch, []) from None
        raise


def external_normalization(arch: str | ExternalArch, net: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` the weights of ``arch`` expect on inputs in [0,1]: torchvision's ImageNet
    constants, or timm's ``pretrained_cfg`` of ``net`` (see the module docstring). Raises
    :class:`InputError` when a timm model states none."""
    arch = parse_external_arch(arch)
    if arch.provider == "torchvision":
        return IMAGENET_MEAN, IMAGENET_STD
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        raise InputError(f"{arch} states no mean/std in its pretrained_cfg: give the normalization of your "
                         "weights (--normalize-mean and --normalize-std)")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _check_normalization(
    arch: ExternalArch, mean: Sequence[float], std: Sequence[float], in_channels: int, *, given: bool
) -> tuple[list[float], list[float]]:
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != len(std):
        raise InputError(f"the normalization has {len(mean)} mean and {len(std)} std values")
    if len(mean) == 1 and in_channels > 1 and given:  # one value for every channel, as Normalize(0.5, 0.5) reads
        mean, std = mean * in_channels, std * in_channels
    if len(mean) != in_channels:
        where = "given" if given else f"the one {arch}'s weights expect"
        raise InputError(f"the normalization ({where}) has {len(mean)} channel(s) but the data has {in_channels}: "
                         f"pass --normalize-mean and --normalize-std with {in_channels} value(s) each")
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise InputError(f"the normalization must be finite with std > 0, got mean {mean}, std {std}")
    return mean, std


def _state(path: Path) -> dict[str, torch.Tensor]:
    payload = _read(path)
    state = payload.get("state_dict", payload)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict of tensors")
    odd = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(f"{path} is not a plain state dict: entries {', '.join(odd[:10])} are not tensors "
                              "(save model.state_dict())")
    return {_strip(str(k)): v for k, v in state.items()}


def load_external(
    arch: str | ExternalArch,
    weights: str | os.PathLike[str],
    *,
    dataset: str,
    num_classes: int,
    input_shape: Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImportedCheckpoint:
    """The classifier ``arch`` (``"torchvision:NAME"`` or ``"timm:NAME"``) with the weights in the
    file ``weights``, for ``dataset``'s inputs ``input_shape = (C, H, W)`` and ``num_classes``.

    Returns an :class:`~smoothcert.models.foreign.ImportedCheckpoint`: ``model`` is
    ``nn.Sequential(Normalize(mean, std), net)`` in eval mode on the CPU, mapping ``[B, C, H, W]``
    in [0,1] to logits ``[B, num_classes]``; ``meta`` describes it as a checkpoint would (``arch``
    the ``provider:name`` spelling, trained noise "none": the file does not say; ``training``
    holds the provenance: provider, its version, the file's name and sha256, where the
    normalization came from). ``mean``/``std``: the normalization (both or neither; one value is
    used for every channel); default :func:`external_normalization`.

    Raises :class:`InputError` (package missing, unknown model, a normalization that does not fit
    the channels, a network that does not take ``input_shape`` to ``num_classes`` logits),
    :class:`MissingFileError` (no weights file) and :class:`CheckpointError` (a file that is not a
    state dict of this network; the keys named).
    """
    arch = parse_external_arch(arch)
    if (mean is None) != (std is None):
        raise InputError("give both the normalization's mean and std (--normalize-mean and --normalize-std), or neither")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    path = Path(weights)
    if not path.is_file():
        raise MissingFileError(f"no weights file at {path} (--weights: the state dict of {arch})")
    net = create_external(arch, num_classes=num_classes, in_channels=shape[0])
    if mean is None or std is None:
        mean, std = external_normalization(arch, net)
        source = "torchvision ImageNet weights" if arch.provider == "torchvision" else f"timm pretrained_cfg of {arch.name}"
    else:
        source = "given"
    mean, std = _check_normalization(arch, mean, std, shape[0], given=source == "given")
    try:
        _load_into(net, _state(path), arch=str(arch), source_format=path.name)
    except CheckpointError as err:
        if "shape mismatches" not in str(err):
            raise
        # The usual cause: weights of another class count (ImageNet's 1000 for a 10-class dataset).
        raise CheckpointError(f"{err} (the network was built for the {num_classes} classes of {dataset})") from None
    model = nn.Sequential(Normalize(mean, std), net).eval()
    with torch.no_grad():
        try:
            out = model(torch.full((1, *shape), 0.5))
        except RuntimeError as err:
            first = (str(err).strip().splitlines() or [""])[0]
            raise InputError(f"{arch} does not take the {dataset} inputs {list(shape)}: {first}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"{arch} maps a {list(shape)} input to {got}, not to {num_classes} logits")
    package = _package(arch)
    meta = CheckpointMeta(
        arch=str(arch), dataset=dataset, num_classes=num_classes, in_channels=shape[0],
        input_size=shape[1] if shape[1] == shape[2] else [shape[1], shape[2]], mean=mean, std=std,
        noise="none", sigma=0.0,
        training={"method": "external", "provider": arch.provider, "name": arch.name,
                  "provider_version": str(getattr(package, "__version__", "unknown")), "normalization": source,
                  "source_file": path.name, "source_sha256": file_sha256(path)},
    )
    return ImportedCheckpoint(model, meta)
