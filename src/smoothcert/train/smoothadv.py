"""SmoothAdv: adversarial training of the smoothed soft classifier (Salman et al. 2019).

Salman, Yang, Zhang, Hsieh, Zhang, Razenshteyn, Bubeck, "Provably robust deep learning via
adversarially trained smoothed classifiers", NeurIPS 2019 (arXiv 1906.04584), Sec. 3 and App. B:

1. per batch, draw m noise vectors delta_1..delta_m once;
2. with the network in eval mode, attack the plug-in estimate of the smoothed soft classifier
   G(x') = (1/m) Σ_i softmax f(x' + delta_i) in an l2 ball of radius eps (PGD or DDN), i.e. ascend
   −log G(x')_y with these fixed draws;
3. back in train mode, minimise (1/m) Σ_i CE(f(x' + delta_i), y) with the *same* draws
   ("multi-noise" training; m = 1 is plain SmoothAdv);
4. warm up: eps grows linearly over the first ``warmup`` epochs, eps_t = eps · min(1, (t + 1)/warmup).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import attacks
from ..errors import InputError
from ..noise import Noise
from ..rng import make_generator
from .methods import TrainingMethod, check_float, check_int, register_method

__all__ = ["ATTACKS", "SmoothAdv", "smoothadv_examples", "warmup_eps"]

#: Attacks SmoothAdv can train against (Salman et al. report both; PGD is their main one).
ATTACKS = ("pgd", "ddn")


def warmup_eps(eps: float, *, epoch: int, warmup: int) -> float:
    """The l2 budget of (0-based) ``epoch``: eps · min(1, (epoch + 1)/warmup); ``warmup`` <= 1 means none."""
    if warmup <= 1:
        return eps
    return eps * min(1.0, (epoch + 1) / warmup)


def smoothadv_examples(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    deltas: Tensor,
    *,
    eps: float,
    steps: int,
    attack: str = "pgd",
    step_size: float | None = None,
    generator: int | torch.Generator | None = None,
) -> Tensor:
    """Adversarial inputs x' for the smoothed soft classifier estimated with the fixed draws ``deltas``.

    Maximises −log((1/m) Σ_i softmax f(x' + delta_i))_y over ‖x' − x‖₂ <= eps (x' in [0, 1]),
    with ``model`` in eval mode during the attack and its mode restored afterwards; the model's
    parameters and gradients are not changed.

    Args:
        model: base classifier, [N, ...] → logits [N, K].
        x: inputs [B, ...] in [0, 1]; y: labels [B].
        deltas: noise draws [m, B, ...], reused at every attack step (and by the caller's loss).
        eps: l2 budget; steps: attack iterations.
        attack: "pgd" (:func:`smoothcert.attacks.pgd_l2`, default step 2·eps/steps) or "ddn"
            (:func:`smoothcert.attacks.ddn` with its defaults, projected onto the eps ball).
        step_size: the attack's step (an absolute l2 length); None keeps the attack's default.
        generator: the random directions that replace vanishing gradients (PGD and DDN draw only
            then): a generator on ``x``'s device, or an int seed; None: torch's global RNG.
    Returns:
        x' [B, ...], detached, with ‖x' − x‖₂ <= eps per example.
    """
    if attack not in ATTACKS:
        raise InputError(f"attack must be one of {ATTACKS}, got {attack!r}")

    def smoothed(z: Tensor) -> Tensor:
        return attacks.smoothed_log_probs(model, z, deltas)

    generator = make_generator(generator, x.device)
    was_training = model.training
    model.eval()
    try:
        if attack == "pgd":
            return attacks.pgd_l2(smoothed, x, y, eps=eps, steps=steps, step_size=step_size, generator=generator)
        options: dict[str, Any] = {} if step_size is None else {"step_size": step_size}
        return attacks.ddn(smoothed, x, y, steps=steps, eps=eps, generator=generator, **options)
    finally:
        model.train(was_training)


@register_method("smoothadv")
class SmoothAdv(TrainingMethod):
    """SmoothAdv with multi-noise training and epsilon warm-up (Salman et al. 2019).

    Hyperparameters (defaults: the SmoothAdv baseline of Jeong & Shin 2020's MNIST recipe,
    ``EXPERIMENTS.MD`` in jh-jeong/smoothing-consistency: PGD, epsilon 255/256, 10 steps, 10-epoch
    warm-up, 4 noise vectors — a point of Salman et al.'s CIFAR-10 grid m ∈ {1, 2, 4, 8},
    steps ∈ {1, 2, 4, 8, 10}, eps ∈ {0.25, 0.5, 1, 2}, 10-epoch warm-up):

    * ``eps`` = 1.0: l2 budget for inputs in [0, 1] (the "255" of Salman et al.'s code is 255/256 ≈ 1.0).
    * ``steps`` = 10: attack iterations.
    * ``m`` = 4: noise draws per example, shared by the attack and the loss.
    * ``warmup`` = 10: epochs over which eps grows linearly to its full value (<= 1: no warm-up).
    * ``attack`` = "pgd" or "ddn".
    * ``step_size`` = None: the attack's default (PGD: 2·eps_t/steps; DDN: its own); a number is an
      absolute l2 step length (it does not follow the warm-up).

    :meth:`begin_epoch` sets :attr:`eps_t`, the budget of the current epoch; before it is first called
    (a method used outside :func:`smoothcert.train.train`) the full ``eps`` is used. The returned
    logits (for the training accuracy) are the log mean softmax over the m noisy adversarial copies.
    """

    name = "smoothadv"

    def __init__(
        self,
        *,
        eps: float = 1.0,
        steps: int = 10,
        m: int = 4,
        warmup: int = 10,
        attack: str = "pgd",
        step_size: float | None = None,
    ) -> None:
        self.eps = check_float("eps", eps, strict=True)
        self.steps = check_int("steps", steps, minimum=1)
        self.m = check_int("m", m, minimum=1)
        self.warmup = check_int("warmup", warmup, minimum=0)
        if attack not in ATTACKS:
            raise InputError(f"attack must be one of {ATTACKS}, got {attack!r}")
        self.attack = attack
        self.step_size = None if step_size is None else check_float("step_size", step_size, strict=True)
        self.eps_t = self.eps

    def hparams(self) -> dict[str, Any]:
        return {"eps": self.eps, "steps": self.steps, "m": self.m, "warmup": self.warmup,
                "attack": self.attack, "step_size": self.step_size}

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        self.eps_t = warmup_eps(self.eps, epoch=epoch, warmup=self.warmup)

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, noise: Noise, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        deltas = noise.sample((self.m, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        x_adv = smoothadv_examples(model, x, y, deltas, eps=self.eps_t, steps=self.steps, attack=self.attack,
                                   step_size=self.step_size, generator=generator)
        logits = model((x_adv.unsqueeze(0) + deltas).flatten(0, 1))  # [m·B, K], copy-major
        loss = F.cross_entropy(logits, y.repeat(self.m))
        return loss, attacks.log_mean_softmax(logits.detach().view(self.m, x.shape[0], -1))
