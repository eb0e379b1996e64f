"""Training denoisers and score networks: a ``DenoiserLoss`` and Adam in the one training loop.

:func:`train_denoiser` supplies the loss step, the optimiser, the metadata and the evaluation to
:func:`smoothcert.train.loop.run_epochs`, the loop classifiers train in, so it gets the same atomic
checkpoint per epoch and exact resume. The classifier of a guided loss is frozen for the whole run (eval mode, ``requires_grad=False``),
only the denoiser's parameters are given to the optimiser, and a SHA-256 fingerprint of the
classifier's weights goes into the checkpoint, so a resumed run cannot silently switch classifiers.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .. import ops
from ..checks import model_device
from ..errors import InputError
from ..noise import Noise
from ..rng import make_generator
from ..train.loop import EpochCheckpoint, run_epochs, training_batches
from .checkpoint import DENOISER_CHECKPOINT, DenoiserMeta
from .losses import DenoiserLoss, DSMLoss, get_denoiser_loss
from .score import dsm_loss

__all__ = ["classifier_fingerprint", "denoising_psnr", "psnr", "train_denoiser"]


def psnr(x_hat: Tensor, x: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB: ``10 log10(data_range^2 / MSE)`` with the MSE
    over all coordinates of each row. ``x_hat``, ``x`` [B, ...]; returns float64 [B] (``inf`` for
    a perfect reconstruction)."""
    if x_hat.shape != x.shape:
        raise InputError(f"x_hat and x must have the same shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}")
    return ops.psnr(ops.mse(x_hat, x), data_range=data_range)


def denoising_psnr(
    denoiser: nn.Module,
    data: Dataset | Tensor,
    *,
    noise: Noise,
    batch_size: int = 256,
    seed: int = 0,
    clamp: bool = False,
) -> float:
    """Mean PSNR (dB) of ``denoiser(x + delta)`` against ``x`` over ``data``, one seeded noise draw
    per image (``seed`` fixes the draws, so two denoisers see the same noisy images). ``clamp``:
    of ``clamp(denoiser(x + delta), 0, 1)`` instead, the image the classifier of
    ``Denoised(..., clamp=True)`` sees."""
    device = model_device(denoiser)
    was_training = denoiser.training
    denoiser.eval()
    gen = make_generator(seed, device)
    total, count = 0.0, 0
    with torch.no_grad():
        for x, _ in training_batches(data, batch_size, shuffle=False, generator=None):
            x = x.to(device)
            x_hat = denoiser(noise.perturb(x, generator=gen))
            if clamp:
                x_hat = x_hat.clamp(0.0, 1.0)
            total += float(psnr(x_hat, x).sum())
            count += x.shape[0]
    denoiser.train(was_training)
    return total / max(count, 1)


def classifier_fingerprint(classifier: nn.Module) -> str:
    """SHA-256 of the classifier's state dict (names, dtypes, shapes and values), hex."""
    h = hashlib.sha256()
    for name, t in classifier.state_dict().items():
        h.update(name.encode())
        if isinstance(t, Tensor):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _resolve_loss(loss: str | DenoiserLoss, ladder: Sequence[float] | Tensor | None) -> DenoiserLoss:
    if isinstance(loss, DenoiserLoss):
        if ladder is not None:
            raise InputError("ladder= is only for loss='dsm' given by name; a DSMLoss object carries its own ladder")
        return loss
    if loss == "dsm":
        if ladder is None:
            raise InputError("loss='dsm' trains a score network over a sigma ladder: pass ladder=sigma_ladder(...)")
        return DSMLoss(ladder=ladder)
    if ladder is not None:
        raise InputError(f"ladder= is only used by loss='dsm', not {loss!r}")
    return get_denoiser_loss(loss)


def train_denoiser(
    net: nn.Module,
    train_set: Dataset | Tensor,
    *,
    loss: str | DenoiserLoss = "mse",
    noise: Noise | None = None,
    ladder: Sequence[float] | Tensor | None = None,
    classifier: nn.Module | None = None,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    checkpoint: str | os.PathLike[str] | None = None,
    meta: DenoiserMeta | None = None,
    resume: bool = False,
    test_set: Dataset | Tensor | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train ``net`` in place with Adam (Salman et al. 2020 train their denoisers with Adam, lr 1e-3).

    Args:
        net: a denoiser ``D(y)`` (e.g. ``build_denoiser("dncnn", ...)``) for the one-noise losses,
            or a score network ``s(y, sigma)`` (``build_denoiser("scorenet", ...)``) for ``dsm``;
            already on the device to train on. Nothing is noted on it: the training noise or
            ladder goes into the checkpoint's ``meta``.
        train_set: images in [0, 1]: an ``ArrayDataset``, a tensor ``[N, C, H, W]`` (no labels) or
            a dataset of ``(x, y)`` (batched by :func:`smoothcert.data.iter_batches`; uint8 images
            are divided by 255); labels are used by ``loss="classification"`` only.
        loss: a name (``mse``, ``stability``, ``classification``, ``dsm``) or a loss object from
            :func:`~smoothcert.denoise.get_denoiser_loss` (for ``access="query"`` and its settings).
        noise: the training noise of a denoiser (``None`` for ``dsm``).
        ladder: the sigma ladder of ``loss="dsm"``.
        classifier: the frozen classifier of the guided losses, on ``net``'s device; it is set to
            eval mode with ``requires_grad=False`` (in place) and never updated.
        epochs, lr, batch_size: Adam's schedule (constant lr).
        seed: seeds the data order (CPU generator) and the noise draws (generator on the device).
        checkpoint: file written atomically after every epoch (needs ``meta``).
        meta: metadata template (``arch``, ``dataset``, ``in_channels``, ``input_size``, ...);
            ``noise``, ``sigma``, ``ladder``, ``training`` and ``epoch`` are filled in here.
        resume: continue from ``checkpoint`` if it exists; every setting but ``epochs`` must match.
        test_set: if given, logged each epoch: mean PSNR of the denoiser on it with one seeded
            noise draw per image (``test_psnr``), or the score network's DSM loss (``test_dsm``).
    Returns:
        the history, one dict per finished epoch (``epoch``, ``loss``, ``seconds``, test metric).
    """
    loss_fn = _resolve_loss(loss, ladder)
    kind = getattr(net, "kind", "denoiser")
    if loss_fn.kind != kind:
        raise InputError(
            f"loss {loss_fn.name!r} trains a {loss_fn.kind} network, but net is a {kind} network "
            f"({type(net).__name__}); score networks train with 'dsm', denoisers with mse/stability/classification"
        )
    if kind == "denoiser" and not isinstance(noise, Noise):
        raise InputError(f"loss {loss_fn.name!r} trains for one noise: pass noise=get_noise(name, sigma=...)")
    if kind == "score" and noise is not None:
        raise InputError("a score network is trained over its ladder, not one noise: pass noise=None")
    if not isinstance(epochs, int) or epochs < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"epochs and batch_size must be positive integers, got {epochs!r} and {batch_size!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"lr must be positive, got {lr!r}")
    if checkpoint is not None and meta is None:
        raise InputError("checkpoint= needs meta=DenoiserMeta(arch=..., dataset=..., in_channels=..., input_size=...)")

    training: dict[str, Any] = {
        "loss": loss_fn.name, **loss_fn.hparams(), "optimizer": "adam", "lr": float(lr), "batch_size": batch_size,
        "epochs": epochs, "seed": seed, "train_size": len(train_set),
    }
    if loss_fn.needs_classifier:
        if classifier is None:
            raise InputError(f"loss {loss_fn.name!r} needs the frozen classifier: pass classifier=...")
        shared = {id(p) for p in classifier.parameters()} & {id(p) for p in net.parameters()}
        if shared:
            raise InputError("the denoiser shares parameters with the classifier, which must stay untouched")
        classifier.eval()
        for p in classifier.parameters():
            p.requires_grad_(False)
        training["classifier_sha256"] = classifier_fingerprint(classifier)
    elif classifier is not None:
        raise InputError(f"loss {loss_fn.name!r} does not use a classifier; do not pass one")

    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise InputError(f"{type(net).__name__} has no trainable parameters")
    def step(model: nn.Module, x: Tensor, y: Tensor | None, *, generator: torch.Generator) -> tuple[Tensor, None]:
        return loss_fn.loss(model, x, y, noise=noise, generator=generator, classifier=classifier), None

    def evaluate(epoch: int) -> dict[str, float]:
        if kind == "denoiser":
            return {"test_psnr": denoising_psnr(net, test_set, noise=noise, seed=epoch)}  # type: ignore[arg-type]
        return {"test_dsm": _test_dsm(net, test_set, loss_fn.ladder, seed=epoch)}  # type: ignore[arg-type, attr-defined]

    plan = None
    if checkpoint is not None and meta is not None:
        meta = DenoiserMeta.from_dict(
            meta.to_dict()
            | {
                "noise": noise.name if noise is not None else "none",
                "sigma": noise.sigma if noise is not None else 0.0,
                "ladder": list(getattr(loss_fn, "ladder", [])),
                "training": training,
            }
        )
        plan = EpochCheckpoint(path=Path(checkpoint), kind=DENOISER_CHECKPOINT, meta=meta,
                               mismatch=_denoiser_mismatch(meta))
    return run_epochs(net, train_set, step=step, optimizer=torch.optim.Adam(params, lr=lr), epochs=epochs,
                      batch_size=batch_size, seed=seed, checkpoint=plan, resume=resume,
                      evaluate=evaluate if test_set is not None else None, progress=progress)


def _denoiser_mismatch(meta: DenoiserMeta) -> Callable[[DenoiserMeta], str]:
    """Which recorded runs :func:`train_denoiser` may continue: same network, data, noise or ladder
    and training record but ``epochs``."""
    mine = (meta.arch, meta.arch_kwargs, meta.dataset, meta.noise, meta.sigma, meta.ladder)
    same = {k: v for k, v in meta.training.items() if k != "epochs"}

    def mismatch(old: DenoiserMeta) -> str:
        theirs = (old.arch, old.arch_kwargs, old.dataset, old.noise, old.sigma, old.ladder)
        if {k: v for k, v in old.training.items() if k != "epochs"} == same and theirs == mine:
            return ""
        return f"it was trained as {theirs} with {old.training}; now {mine} with {meta.training}"

    return mismatch


def _test_dsm(net: nn.Module, data: Dataset | Tensor, ladder: Sequence[float], *, seed: int) -> float:
    """Mean DSM loss of the score network over ``data`` (seeded levels and draws), in eval mode;
    the network's mode is restored afterwards."""
    device = model_device(net)
    gen = make_generator(seed, device)
    was_training = net.training
    net.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, _ in training_batches(data, 256, shuffle=False, generator=None):
            x = x.to(device)
            total += float(dsm_loss(net, x, ladder=ladder, generator=gen)) * x.shape[0]
            count += x.shape[0]
    net.train(was_training)
    return total / max(count, 1)
