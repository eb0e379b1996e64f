"""Architectures, the ``Normalize`` input layer, the model registry and checkpoints.

The model a user smooths is ``build_model(...)``: ``nn.Sequential(Normalize(mean, std), net)``,
taking inputs in [0,1] so that noise is added in pixel space before normalization.
``get_model`` returns the bare ``net``. A registered factory is called with keyword-only
``num_classes`` and ``in_channels`` plus any architecture keywords, and returns an
``nn.Module`` mapping ``[B, in_channels, S, S]`` to logits ``[B, num_classes]``, where ``S`` is
the input size it was registered with (see :func:`model_input_size`).

>>> model = build_model("resnet110", num_classes=10, in_channels=3,
...                     mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
"""

from __future__ import annotations

from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CLASSIFIER_CHECKPOINT,
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .external import (
    EXTERNAL_PROVIDERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ExternalArch,
    create_external,
    external_normalization,
    is_external_arch,
    load_external,
    parse_external_arch,
)
from .foreign import (
    COHEN2019_ARCHS,
    COHEN2019_NORMALIZATION,
    SOURCE_FORMATS,
    ImportedCheckpoint,
    convert_state_dict,
    import_checkpoint,
    infer_sigma,
)
from .lenet import LeNet, lenet, lenet_small
from .normalize import Normalize
from .registry import (
    MODELS,
    build_model,
    get_model,
    list_models,
    model_input_size,
    model_kwargs,
    register_model,
)
from .resnet import BasicBlock, CifarResNet, resnet20, resnet56, resnet110
from .resnet_imagenet import Bottleneck, ImageNetResNet, resnet50
from .sll import BackboneHead, LipschitzModule, sll_small, sll_small_mlp, transfer_backbone

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CLASSIFIER_CHECKPOINT",
    "COHEN2019_ARCHS",
    "COHEN2019_NORMALIZATION",
    "EXTERNAL_PROVIDERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "SOURCE_FORMATS",
    "BackboneHead",
    "BasicBlock",
    "Bottleneck",
    "CheckpointError",
    "CheckpointMeta",
    "CifarResNet",
    "ExternalArch",
    "ImageNetResNet",
    "ImportedCheckpoint",
    "LeNet",
    "LipschitzModule",
    "Normalize",
    "build_model",
    "convert_state_dict",
    "create_external",
    "external_normalization",
    "get_model",
    "import_checkpoint",
    "infer_sigma",
    "is_external_arch",
    "lenet",
    "lenet_small",
    "list_models",
    "load_checkpoint",
    "load_external",
    "model_input_size",
    "model_kwargs",
    "parse_external_arch",
    "read_checkpoint",
    "register_model",
    "resnet20",
    "resnet50",
    "resnet56",
    "resnet110",
    "save_checkpoint",
    "sll_small",
    "sll_small_mlp",
    "transfer_backbone",
]
