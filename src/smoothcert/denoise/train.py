"""Training denoisers and score networks: Adam, an atomic checkpoint per epoch, exact resume.

The classifier of a guided loss is frozen for the whole run (eval mode, ``requires_grad=False``),
only the denoiser's parameters are given to the optimiser, and a SHA-256 fingerprint of the
classifier's weights goes into the checkpoint, so a resumed run cannot silently switch classifiers.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm

from ..checks import model_device
from ..data import iter_batches
from ..errors import InputError
from ..noise import Noise
from ..rng import make_generator
from ..train.loop import restore_training_state, training_state
from .checkpoint import DenoiserMeta, read_denoiser_checkpoint, save_denoiser
from .losses import DenoiserLoss, DSMLoss, get_denoiser_loss
from .score import dsm_loss

__all__ = ["classifier_fingerprint", "denoising_psnr", "psnr", "train_denoiser"]


def psnr(x_hat: Tensor, x: Tensor, *, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB: ``10 log10(data_range^2 / MSE)`` with the MSE
    over all coordinates of each row. ``x_hat``, ``x`` [B, ...]; returns float64 [B] (``inf`` for
    a perfect reconstruction)."""
    if x_hat.shape != x.shape:
        raise InputError(f"x_hat and x must have the same shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}")
    mse = (x_hat.detach().double() - x.detach().double()).flatten(1).pow(2).mean(1)
    return 10.0 * torch.log10(float(data_range) ** 2 / mse)


def _batches(
    data: Dataset | Tensor, batch_size: int, *, shuffle: bool, generator: torch.Generator | None
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """:func:`smoothcert.data.iter_batches` of ``data`` (float32 images in [0, 1], uint8 scaled),
    where ``data`` may also be an unlabelled image tensor ``[N, C, H, W]``: its labels are None, so
    a loss that needs labels says so instead of training on made-up ones."""
    if not isinstance(data, Tensor):
        yield from iter_batches(data, batch_size, shuffle=shuffle, generator=generator)
        return
    if data.ndim != 4:
        raise InputError(f"an image tensor must be [N, C, H, W], got shape {tuple(data.shape)}")
    no_labels = torch.zeros(data.shape[0], dtype=torch.int64)  # placeholder, never returned
    for x, _ in iter_batches(TensorDataset(data, no_labels), batch_size, shuffle=shuffle, generator=generator):
        yield x, None


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
        for x, _ in _batches(data, batch_size, shuffle=False, generator=None):
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

    device = model_device(net)
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise InputError(f"{type(net).__name__} has no trainable parameters")
    opt = torch.optim.Adam(params, lr=lr)
    order_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    if meta is not None:
        meta = DenoiserMeta.from_dict(
            meta.to_dict()
            | {
                "noise": noise.name if noise is not None else "none",
                "sigma": noise.sigma if noise is not None else 0.0,
                "ladder": list(getattr(loss_fn, "ladder", [])),
                "training": training,
            }
        )
    path = None if checkpoint is None else Path(checkpoint)
    history: list[dict[str, Any]] = []
    start = 0
    if resume and path is not None and path.exists():
        start, history = _resume(path, net, opt, order_gen, noise_gen, meta, device)  # type: ignore[arg-type]
        if start >= epochs:
            return history

    steps = math.ceil(len(train_set) / batch_size)
    for epoch in range(start, epochs):
        net.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        seen = 0
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for x, y in _batches(train_set, batch_size, shuffle=True, generator=order_gen):
            x = x.to(device, non_blocking=True)
            y = None if y is None else y.to(device, non_blocking=True)
            value = loss_fn.loss(net, x, y, noise=noise, generator=noise_gen, classifier=classifier)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            loss_sum += value.detach() * x.shape[0]
            seen += x.shape[0]
            bar.update(1)
        bar.close()
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": loss_sum.item() / max(seen, 1),
                                  "seconds": time.perf_counter() - t0}
        if test_set is not None:
            if kind == "denoiser":
                record["test_psnr"] = denoising_psnr(net, test_set, noise=noise, seed=epoch)  # type: ignore[arg-type]
            else:
                record["test_dsm"] = _test_dsm(net, test_set, loss_fn.ladder, seed=epoch)  # type: ignore[attr-defined]
        history.append(record)
        if progress:
            tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if path is not None and meta is not None:
            meta.epoch = epoch + 1
            save_denoiser(
                path, net, meta=meta, optimizer_state=opt.state_dict(),
                extra=training_state(order_gen, noise_gen, device, history),
            )
    net.eval()
    return history


def _test_dsm(net: nn.Module, data: Dataset | Tensor, ladder: Sequence[float], *, seed: int) -> float:
    """Mean DSM loss of the score network over ``data`` (seeded levels and draws), in eval mode;
    the network's mode is restored afterwards."""
    device = model_device(net)
    gen = make_generator(seed, device)
    was_training = net.training
    net.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, _ in _batches(data, 256, shuffle=False, generator=None):
            x = x.to(device)
            total += float(dsm_loss(net, x, ladder=ladder, generator=gen)) * x.shape[0]
            count += x.shape[0]
    net.train(was_training)
    return total / max(count, 1)


def _resume(
    path: Path,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    order_gen: torch.Generator,
    noise_gen: torch.Generator,
    meta: DenoiserMeta,
    device: torch.device,
) -> tuple[int, list[dict[str, Any]]]:
    payload = read_denoiser_checkpoint(path)
    old = DenoiserMeta.from_dict(payload["meta"])
    same = {k: v for k, v in meta.training.items() if k != "epochs"}
    was = {k: v for k, v in old.training.items() if k != "epochs"}
    mine = (meta.arch, meta.arch_kwargs, meta.dataset, meta.noise, meta.sigma, meta.ladder)
    theirs = (old.arch, old.arch_kwargs, old.dataset, old.noise, old.sigma, old.ladder)
    if same != was or mine != theirs:
        raise InputError(
            f"cannot resume from {path}: it was trained as {theirs} with {old.training}; "
            f"now {mine} with {meta.training}"
        )
    history = restore_training_state(payload, net, opt, order_gen, noise_gen, device=device,
                                     reseed=int(meta.training["seed"]) + 1 + old.epoch)
    return old.epoch, history
