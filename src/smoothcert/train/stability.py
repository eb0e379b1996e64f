"""Consistency of predictions under noise: consistency regularization and stability training.

* Consistency regularization (Jeong & Shin 2020, "Consistency regularization for certified robustness
  of smoothed classifiers", NeurIPS, Sec. 3): with m noisy copies x + delta_i and
  p_i = softmax f(x + delta_i), p̂ = (1/m) Σ_i p_i,

      L = (1/m) Σ_i CE(f(x + delta_i), y) + lbd · (1/m) Σ_i KL(p̂ ‖ p_i) + eta · H(p̂).

* Stability training (Li et al. 2019, "Certified adversarial robustness with additive noise",
  NeurIPS, after Zheng et al. 2016): the clean prediction p = softmax f(x) is the reference,

      L = CE(f(x), y) + lbd · (1/m) Σ_i D(p, p_i)        (m = 1 in the paper),

  with D the cross-entropy H(p, p_i) = KL(p ‖ p_i) + H(p) (``xent=True``, the default) — the form of
  Jeong & Shin's re-implementation of this baseline (their ``code/train_stab.py``), for which their
  lbd = 2 was chosen; the gradient through H(p) acts as an extra confidence term on the clean
  prediction — or the KL alone (``xent=False``, Zheng et al.'s and Li et al.'s form; lbd = 2 is not
  validated for it).

Gradients flow through both arguments of every KL (p̂ and p are not detached, as in Jeong & Shin's
code). All terms are averaged over the batch and computed in float32 or wider.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..noise import Noise
from ..ops import log_mean_softmax, upcast_logits
from .methods import TrainingMethod, check_bool, check_float, check_int, register_method

__all__ = ["StabilityTraining", "consistency_loss", "stability_loss"]

#: The smallest probability inside a logarithm (keeps H(p̂) finite where p̂ underflows to 0).
_TINY = 1e-20


def _check_logits(noisy_logits: Tensor, y: Tensor) -> None:
    if noisy_logits.dim() != 3 or y.shape != noisy_logits.shape[1:2]:
        raise InputError(f"noisy_logits must be [m, B, K] with y [B], got {list(noisy_logits.shape)} and {list(y.shape)}")


def _kl_to_each(ref: Tensor, log_p: Tensor) -> Tensor:
    """(1/m) Σ_i KL(ref ‖ p_i) per example: ``ref`` [B, K] probabilities, ``log_p`` [m, B, K] → [B]."""
    return (ref * (ref.clamp_min(_TINY).log() - log_p)).sum(-1).mean(0)


def _entropy(p: Tensor) -> Tensor:
    """H(p) per row of ``p`` [B, K] → [B] (0·log 0 = 0)."""
    return -(p * p.clamp_min(_TINY).log()).sum(-1)


def consistency_loss(noisy_logits: Tensor, y: Tensor, *, lbd: float, eta: float) -> Tensor:
    """Jeong & Shin's consistency-regularised loss on ``noisy_logits`` [m, B, K] (m noisy copies of
    a batch) with labels ``y`` [B]: mean CE over copies + lbd · mean KL(p̂ ‖ p_i) + eta · H(p̂),
    averaged over the batch. Returns a scalar (computed in float32 or wider)."""
    _check_logits(noisy_logits, y)
    log_p = F.log_softmax(upcast_logits(noisy_logits), dim=-1)  # [m, B, K]
    ce = F.nll_loss(log_p.flatten(0, 1), y.repeat(log_p.shape[0]))
    p_hat = log_mean_softmax(log_p).exp()  # [B, K]
    return ce + lbd * _kl_to_each(p_hat, log_p).mean() + eta * _entropy(p_hat).mean()


def stability_loss(
    clean_logits: Tensor, noisy_logits: Tensor, y: Tensor, *, lbd: float, eta: float = 0.0, xent: bool = False
) -> Tensor:
    """Stability training: CE(f(x), y) + lbd · (1/m) Σ_i D(p(x), p(x + delta_i)), with ``clean_logits``
    [B, K], ``noisy_logits`` [m, B, K], ``y`` [B]; averaged over the batch, in float32 or wider.

    D is KL(p ‖ p_i) (Li et al. 2019; ``xent=False``, this function's default) or the cross-entropy
    H(p, p_i) = KL(p ‖ p_i) + H(p) (``xent=True``: Jeong & Shin 2020's ``train_stab.py``, gradient
    through both arguments). ``eta`` > 0 adds eta · H(p̂) of the noisy copies' mean (in neither; 0
    by default)."""
    _check_logits(noisy_logits, y)
    if clean_logits.shape != noisy_logits.shape[1:]:
        raise InputError(f"clean_logits must be [B, K] = {list(noisy_logits.shape[1:])}, got {list(clean_logits.shape)}")
    log_clean = F.log_softmax(upcast_logits(clean_logits), dim=-1)
    log_p = F.log_softmax(upcast_logits(noisy_logits), dim=-1)
    p_clean = log_clean.exp()
    gap = _kl_to_each(p_clean, log_p) + (_entropy(p_clean) if xent else 0.0)
    loss = F.nll_loss(log_clean, y) + lbd * gap.mean()
    return loss + eta * _entropy(log_mean_softmax(log_p).exp()).mean() if eta else loss


@register_method("stability")
class StabilityTraining(TrainingMethod):
    """Prediction consistency under noise: consistency regularization, or stability training with ``clean=True``.

    Hyperparameters (``None`` picks the published default of the chosen variant; the resolved
    value is what :meth:`hparams` records):

    * ``m``: noisy copies per example. Consistency: 2 (Jeong & Shin 2020, all their Gaussian+consistency
      runs, ``--num-noise-vec 2``); must be >= 2, since with one copy the KL term is zero.
      Stability: 1 (Li et al. 2019: one noisy copy).
    * ``lbd``: weight of the KL term. Consistency: 10 (Jeong & Shin's published CIFAR-10 certification logs
      are for lbd 10 and 20; their MNIST recipe, ``EXPERIMENTS.MD`` in jh-jeong/smoothing-consistency,
      uses 20 — pass ``lbd=20`` there).
      Stability: 2 (the value Jeong & Shin use for the Li et al. baseline on MNIST and CIFAR-10, with
      their cross-entropy form, ``xent=True``).
    * ``eta``: weight of the entropy H(p̂). Consistency: 0.5 (Jeong & Shin, all settings). Stability: 0.
    * ``clean``: stability training (clean reference prediction) instead of consistency regularization.
    * ``xent``: stability training only: the cross-entropy H(p, p_i) = KL(p ‖ p_i) + H(p) in place of
      the KL (see the module docstring). Default True, so the stability defaults reproduce Jeong &
      Shin's baseline exactly; ``xent=False`` is Li et al.'s KL form.

    The returned logits (for the training accuracy) are log p̂ [B, K], the log mean softmax of the
    noisy copies.
    """

    name = "stability"

    def __init__(
        self,
        *,
        m: int | None = None,
        lbd: float | None = None,
        eta: float | None = None,
        clean: bool = False,
        xent: bool | None = None,
    ) -> None:
        self.clean = check_bool("clean", clean)
        self.m = check_int("m", (1 if clean else 2) if m is None else m, minimum=1 if clean else 2)
        self.lbd = check_float("lbd", (2.0 if clean else 10.0) if lbd is None else lbd)
        self.eta = check_float("eta", (0.0 if clean else 0.5) if eta is None else eta)
        self.xent = check_bool("xent", clean if xent is None else xent)
        if self.xent and not clean:
            raise InputError("xent (the cross-entropy form of the KL) applies to stability training: pass clean=True")

    def hparams(self) -> dict[str, Any]:
        return {"m": self.m, "lbd": self.lbd, "eta": self.eta, "clean": self.clean, "xent": self.xent}

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, noise: Noise, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        deltas = noise.sample((self.m, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        noisy_logits = model((x.unsqueeze(0) + deltas).flatten(0, 1)).view(self.m, x.shape[0], -1)
        if self.clean:
            loss = stability_loss(model(x), noisy_logits, y, lbd=self.lbd, eta=self.eta, xent=self.xent)
        else:
            loss = consistency_loss(noisy_logits, y, lbd=self.lbd, eta=self.eta)
        return loss, log_mean_softmax(noisy_logits.detach())
