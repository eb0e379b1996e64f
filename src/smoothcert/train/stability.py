"""Consistency of predictions under noise: two registered methods, ``consistency`` and ``stability``.

* ``consistency``, consistency regularization (Jeong & Shin 2020, "Consistency regularization for certified robustness
  of smoothed classifiers", NeurIPS, Sec. 3): with m noisy copies x + delta_i and
  p_i = softmax f(x + delta_i), p̂ = (1/m) Σ_i p_i,

      L = (1/m) Σ_i CE(f(x + delta_i), y) + lbd · (1/m) Σ_i KL(p̂ ‖ p_i) + eta · H(p̂).

* ``stability``, stability training (Li et al. 2019, "Certified adversarial robustness with additive noise",
  NeurIPS, after Zheng et al. 2016): the clean prediction p = softmax f(x) is the reference,

      L = CE(f(x), y) + lbd · (1/m) Σ_i D(p, p_i)        (m = 1 in the paper),

  with D the cross-entropy H(p, p_i) = KL(p ‖ p_i) + H(p) (``xent=True``, the default) — the form of
  Jeong & Shin's re-implementation of this baseline (their ``code/train_stab.py``), for which their
  lbd = 2 was chosen; the gradient through H(p) acts as an extra confidence term on the clean
  prediction — or the KL alone (``xent=False``, Zheng et al.'s and Li et al.'s form; lbd = 2 is not
  validated for it).

Gradients flow through both arguments of every KL (p̂ and p are not detached, as in Jeong & Shin's
code). All terms are averaged over the batch and computed in float32 or wider.

Until smoothcert 0.1.0 both were one method, ``stability``, consistency regularization by default
and stability training with ``clean=True``. Checkpoints recorded that way resume under the current
names (:meth:`StabilityTraining.upgrade_record`); ``get_method("stability", clean=True)`` still
builds stability training (with a ``FutureWarning``), and the consistency settings under the old
name (``clean=False``, ``m``, ``eta``) are refused with a pointer to ``consistency``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..noise import Noise
from ..ops import log_mean_softmax, upcast_logits
from .methods import TrainingMethod, check_bool, check_float, check_int, register_method

__all__ = ["ConsistencyRegularization", "StabilityTraining", "consistency_loss", "stability_loss"]

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


@register_method("consistency")
class ConsistencyRegularization(TrainingMethod):
    """Consistency regularization (Jeong & Shin 2020): mean CE over ``m`` noisy copies
    + lbd · (1/m) Σ_i KL(p̂ ‖ p_i) + eta · H(p̂) (:func:`consistency_loss`).

    Hyperparameters (defaults are Jeong & Shin's):

    * ``m``: noisy copies per example, >= 2 (with one copy the KL term is zero); 2 in all their
      Gaussian+consistency runs (``--num-noise-vec 2``).
    * ``lbd``: weight of the KL term; 10 (their published CIFAR-10 certification logs are for lbd 10
      and 20; their MNIST recipe, ``EXPERIMENTS.MD`` in jh-jeong/smoothing-consistency, uses 20 —
      pass ``lbd=20`` there).
    * ``eta``: weight of the entropy H(p̂); 0.5 (all their settings).

    The returned logits (for the training accuracy) are log p̂ [B, K], the log mean softmax of the
    noisy copies.
    """

    name = "consistency"

    def __init__(self, *, m: int = 2, lbd: float = 10.0, eta: float = 0.5) -> None:
        self.m = check_int("m", m, minimum=2)
        self.lbd = check_float("lbd", lbd)
        self.eta = check_float("eta", eta)

    def hparams(self) -> dict[str, Any]:
        return {"m": self.m, "lbd": self.lbd, "eta": self.eta}

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, noise: Noise, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        noisy_logits = _noisy_logits(model, x, self.m, noise, generator)
        return consistency_loss(noisy_logits, y, lbd=self.lbd, eta=self.eta), log_mean_softmax(noisy_logits.detach())


@register_method("stability")
class StabilityTraining(TrainingMethod):
    """Stability training (Li et al. 2019): CE(f(x), y) + lbd · D(p(x), p(x + delta)) with one noisy
    copy (:func:`stability_loss`, ``m = 1`` as in the paper).

    Hyperparameters:

    * ``lbd``: weight of the divergence; 2 (the value Jeong & Shin use for the Li et al. baseline on
      MNIST and CIFAR-10, with the cross-entropy form).
    * ``xent``: D is the cross-entropy H(p, p_i) = KL(p ‖ p_i) + H(p) (True, the default, so the
      defaults reproduce Jeong & Shin's baseline exactly) or the KL alone (False, Li et al.'s form;
      lbd = 2 is not validated for it).

    The returned logits (for the training accuracy) are the noisy copy's log-softmax [B, K].
    """

    name = "stability"

    #: Settings of the one method ``stability`` was until smoothcert 0.1.0 (see the module docstring).
    _LEGACY = ("clean", "m", "eta")

    def __init__(self, *, lbd: float = 2.0, xent: bool = True) -> None:
        self.lbd = check_float("lbd", lbd)
        self.xent = check_bool("xent", xent)

    def hparams(self) -> dict[str, Any]:
        return {"lbd": self.lbd, "xent": self.xent}

    @classmethod
    def upgrade_record(cls, hparams: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """A record of the old combined method: ``clean=False`` (its default) is ``consistency``
        with m, lbd, eta; ``clean=True`` with one copy and no entropy term is ``stability`` with
        lbd, xent. Anything else (current records, or old ones that fit neither) is unchanged."""
        if not any(k in hparams for k in cls._LEGACY):
            return cls.name, hparams
        old = dict(hparams)
        if not old.pop("clean", False):
            if old.pop("xent", False):
                return cls.name, hparams  # was refused then too
            return "consistency", old
        if old.pop("m", None) in (None, 1) and old.pop("eta", None) in (None, 0, 0.0):
            return cls.name, old
        return cls.name, hparams

    @classmethod
    def from_hparams(cls, **hparams: Any) -> TrainingMethod:
        """As :meth:`TrainingMethod.from_hparams`, and the old settings: ``clean=True`` builds
        stability training with a ``FutureWarning``; consistency settings are refused with a
        pointer to the method ``consistency``."""
        if not any(k in hparams for k in cls._LEGACY):
            return super().from_hparams(**hparams)
        clean = check_bool("clean", hparams.get("clean", False))
        name, upgraded = cls.upgrade_record(hparams)
        if name == "consistency" or not clean:
            settings = ", ".join(f"{k}={v!r}" for k, v in upgraded.items()) if name == "consistency" else ""
            raise InputError(
                "method 'stability' is stability training (Li et al. 2019) after smoothcert 0.1.0; consistency "
                "regularization (Jeong & Shin 2020; its hyperparameters m, lbd, eta), which 'stability' meant "
                f"without clean=True, is the method 'consistency': use get_method('consistency'{', ' if settings else ''}"
                f"{settings}) or --method consistency"
            )
        if name != cls.name or any(k in upgraded for k in cls._LEGACY):
            raise InputError(
                "stability training (method 'stability') uses one noisy copy and no entropy term: m and eta "
                f"are hyperparameters of 'consistency'; got {hparams}"
            )
        method = super().from_hparams(**upgraded)
        warnings.warn("method 'stability' is stability training after smoothcert 0.1.0: clean=True is no longer "
                      "needed (drop it)", FutureWarning, stacklevel=3)
        return method

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, noise: Noise, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        noisy_logits = _noisy_logits(model, x, 1, noise, generator)  # before the clean pass, as in 0.1.0
        loss = stability_loss(model(x), noisy_logits, y, lbd=self.lbd, xent=self.xent)
        return loss, log_mean_softmax(noisy_logits.detach())


def _noisy_logits(
    model: nn.Module, x: Tensor, m: int, noise: Noise, generator: torch.Generator | None
) -> Tensor:
    """``f(x + delta_i)`` for m independent draws per example: [m, B, K] (one forward pass of m·B)."""
    deltas = noise.sample((m, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
    return model((x.unsqueeze(0) + deltas).flatten(0, 1)).view(m, x.shape[0], -1)
