"""Lipschitz-margin training (Tsuzuku, Sato, Sugiyama 2018) for FaRS backbone + head models.

A model f = l o e with an L-Lipschitz backbone (:class:`~smoothcert.models.sll.BackboneHead`) keeps
its prediction y at x within input radius epsilon whenever, for every j != y,
``l_y(z) - l_j(z) > epsilon * L * ||w_y - w_j||_2`` (linear head, the exact margin) or
``> sqrt(2) * epsilon * L * L_head`` (any head with Lipschitz constant L_head; Tsuzuku et al.'s
form). The loss adds that margin to every non-target logit before the cross-entropy, so a small
loss means certified margins. Gradients flow through the margin (it shrinks ``||w_y - w_j||`` too).

``freeze_backbone=True`` trains the head only (FaRS, Sec. 3: a frozen pretrained backbone): the
features are computed without gradients, so the optimiser never touches the backbone (SGD skips
parameters without a gradient, weight decay included). ``feature_noise=True`` adds the run's noise
to the features z = e(x) (not to the input): the head is then trained for feature-space smoothing,
and the checkpoint's noise/sigma are the feature-space ones.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputTypeError
from ..models.sll import spectral_norm, split_model
from .methods import TrainingMethod, check_bool, check_float, register_method

__all__ = ["LipschitzMargin", "head_lipschitz", "margin_logits"]


def head_lipschitz(head: nn.Module) -> Tensor:
    """An upper bound on the l2 Lipschitz constant of a head made of ``nn.Linear`` layers and ReLUs
    (the product of the layers' exact spectral norms), differentiable in the weights."""
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    bound = torch.ones((), device=next(head.parameters()).device)
    for layer in layers:
        if isinstance(layer, nn.Linear):
            bound = bound * spectral_norm(layer.weight)
        elif not isinstance(layer, nn.ReLU):
            raise InputTypeError(f"head_lipschitz handles nn.Linear and nn.ReLU layers, got {type(layer).__name__}")
    return bound


def margin_logits(logits: Tensor, y: Tensor, head: nn.Module, *, epsilon: float, lipschitz: float) -> Tensor:
    """``logits`` [B, K] with the Lipschitz margin for input radius ``epsilon`` added to every
    non-target logit (labels ``y`` [B]; ``lipschitz``: the backbone's bound L, input to features)."""
    if isinstance(head, nn.Linear):
        w = head.weight
        margin = epsilon * lipschitz * (w[y][:, None, :] - w[None, :, :]).norm(dim=2)  # [B, K], 0 at j = y
    else:
        margin = (math.sqrt(2) * epsilon * lipschitz * head_lipschitz(head)).expand_as(logits)
    return logits + margin * (1 - F.one_hot(y, logits.shape[1]).to(logits.dtype))


@register_method("lipschitz-margin")
class LipschitzMargin(TrainingMethod):
    """Cross-entropy with the Lipschitz margin (see the module docstring).

    Args:
        epsilon: the input-space l2 radius the margin aims for (Tsuzuku et al.'s epsilon; the
            certified-accuracy curve peaks around it).
        freeze_backbone: train the head only (the backbone stays as loaded, e.g. with ``--init``).
        feature_noise: add the run's noise to the features (a head for feature-space smoothing).
    """

    name = "lipschitz-margin"

    def __init__(self, *, epsilon: float = 0.5, freeze_backbone: bool = False, feature_noise: bool = False) -> None:
        self.epsilon = check_float("epsilon", epsilon, minimum=0.0)
        self.freeze_backbone = check_bool("freeze_backbone", freeze_backbone)
        self.feature_noise = check_bool("feature_noise", feature_noise)

    def hparams(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "freeze_backbone": self.freeze_backbone, "feature_noise": self.feature_noise}

    def loss(self, model, x, y, *, noise, generator):
        split = split_model(model)
        if self.freeze_backbone:
            with torch.no_grad():
                z = split.features(x)
        else:
            z = split.features(x)
        if self.feature_noise:
            z = z + noise.sample(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        logits = split.head(z)
        margined = margin_logits(logits, y, split.head, epsilon=self.epsilon, lipschitz=split.lipschitz)
        return F.cross_entropy(margined, y), logits
