"""The model registry: architectures by name, their default input sizes, and ``build_model``
(``Normalize`` followed by the registered network), the model a user smooths."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from ..errors import InputError
from ..registry import Registry
from .lenet import lenet, lenet_small
from .normalize import Normalize
from .resnet import resnet20, resnet56, resnet110
from .resnet_imagenet import resnet50
from .sll import sll_small, sll_small_mlp

__all__ = ["MODELS", "build_model", "get_model", "list_models", "model_input_size", "model_kwargs", "register_model"]

MODELS: Registry[nn.Module] = Registry("model")
_INPUT_SIZES: dict[str, int] = {}


def register_model(name: str, *, input_size: int = 32) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model factory under ``name``.

    ``input_size`` is the square input side the factory builds for by default; the shared
    test suite feeds ``[2, C, input_size, input_size]`` to every registered model.
    """
    if not isinstance(input_size, int) or input_size < 1:
        raise InputError(f"input_size must be a positive integer, got {input_size!r}")
    add = MODELS.register(name)

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        factory = add(factory)
        _INPUT_SIZES[name.lower()] = input_size
        return factory

    return decorator


def get_model(name: str, *, num_classes: int, in_channels: int, **kwargs: object) -> nn.Module:
    """The bare network ``name`` (no normalization): ``[B, in_channels, H, W] -> [B, num_classes]``."""
    return MODELS.create(name, num_classes=num_classes, in_channels=in_channels, **kwargs)


def model_kwargs(name: str, kwargs: Mapping[str, object]) -> dict[str, object]:
    """``kwargs`` with the factory's defaults filled in for its other keyword parameters (not
    ``num_classes``/``in_channels``): two sets of architecture keywords that agree here build the
    same network, e.g. ``{}`` and ``{"input_size": 28}`` for ``lenet``."""
    full = dict(kwargs)
    for param in inspect.signature(MODELS.factory(name)).parameters.values():
        if param.name not in ("num_classes", "in_channels") and param.default is not inspect.Parameter.empty:
            full.setdefault(param.name, param.default)
    return full


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


def model_input_size(name: str) -> int:
    """The default square input side of model ``name`` (e.g. 28 for ``lenet``, 32 for CIFAR ResNets)."""
    MODELS.factory(name)  # raises the registry's "unknown model" error with the known names
    return _INPUT_SIZES[name.lower()]


def build_model(
    arch: str,
    *,
    num_classes: int,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    **arch_kwargs: object,
) -> nn.Sequential:
    """``nn.Sequential(Normalize(mean, std), get_model(arch, ...))``: the model to smooth.

    Takes ``[B, in_channels, H, W]`` inputs in [0,1] and returns logits ``[B, num_classes]``.
    ``mean`` and ``std`` must have one entry per input channel.
    """
    if len(mean) != in_channels or len(std) != in_channels:
        raise InputError(
            f"build_model({arch!r}): mean and std need one value per input channel "
            f"(in_channels={in_channels}), got {len(mean)} and {len(std)}"
        )
    net = get_model(arch, num_classes=num_classes, in_channels=in_channels, **arch_kwargs)
    return nn.Sequential(Normalize(mean, std), net)


register_model("lenet", input_size=28)(lenet)
register_model("lenet-small", input_size=28)(lenet_small)
register_model("resnet20", input_size=32)(resnet20)
register_model("resnet56", input_size=32)(resnet56)
register_model("resnet110", input_size=32)(resnet110)
register_model("resnet50", input_size=224)(resnet50)
register_model("sll-small", input_size=28)(sll_small)
register_model("sll-small-mlp", input_size=28)(sll_small_mlp)
