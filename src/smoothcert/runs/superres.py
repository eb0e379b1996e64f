"""Super-resolution runs: typed frozen settings and the functions executing them over an image folder.

* :class:`SRTrainRun` -> :func:`run_sr_train`: train a U-Net (standard, noise-augmented or
  adversarial) on random patches of image folders (and scikit-image's photos); a resumable checkpoint.
* :class:`SRAttackRun` -> :func:`run_sr_attack`: per test image and relative budget, attack the base
  model (l2 PGD) or the smoothed mean (EOT-PGD) and write MSE/PSNR/SSIM rows (resumable TSV).
* :class:`SREvaluateRun` -> :func:`run_sr_evaluate`: clean MSE/PSNR/SSIM per test image of the
  bilinear input, the U-Net and its smoothed mean at each sigma_g (optionally chosen on validation
  images, the thesis's procedure: :func:`~smoothcert.regression.select_sigma_g`); resumable TSV
  (means over the images: :func:`smoothcert.analysis.superres.sr_evaluate_table`).
* :class:`SRCertifyRun` -> :func:`run_sr_certify`: per test image, median bounds and center smoothing
  at each l2 radius; certified worst-case PSNR and output radius rows (resumable TSV).

Test images are the degraded centre crops of a folder's images (``../shared/data/samples`` with
pattern ``imagenet_*`` here); per-image randomness comes from ``input_seed(seed, idx)``, so a resumed
run writes the rows an uninterrupted one would.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..attacks_regression import eot_pgd_regression, pgd_regression, relative_eps
from ..checks import check_float, check_int
from ..data.superres import center_crop, degrade, image_paths, load_folder, skimage_photos
from ..errors import InputError
from ..models.unet import UNet, load_unet
from ..noise import get_noise
from ..regression import (
    SmoothedRegressor,
    certified_psnr,
    mse,
    psnr,
    select_sigma_g,
    smoothed_mean,
    ssim,
)
from ..results import ResultWriter, eps_key, sr_attack_schema, sr_certify_schema, sr_evaluate_schema
from ..rng import input_seed, sub_seed
from ..stats import check_alpha
from ..train.superres import SRTrainConfig, train_superres
from .classifier import resolve_device

__all__ = [
    "SRAttackRun",
    "SRCertifyRun",
    "SREvaluateRun",
    "SRTrainRun",
    "run_sr_attack",
    "run_sr_certify",
    "run_sr_evaluate",
    "run_sr_train",
]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True, kw_only=True)
class SRTrainRun:
    """Train a U-Net. ``folders``: image folders (``pattern`` selects files); ``skimage``: add
    scikit-image's bundled photos; ``init``: a U-Net checkpoint to start from (fine-tuning);
    ``channels``: the U-Net's (thesis: 8/16/32/64/128)."""

    out: PathLike
    config: SRTrainConfig = field(default_factory=SRTrainConfig)
    folders: tuple[PathLike, ...] = ()
    pattern: str = "*"
    skimage: bool = False
    init: PathLike | None = None
    channels: tuple[int, ...] = (8, 16, 32, 64, 128)
    resume: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.folders and not self.skimage:
            raise InputError("give at least one image folder or skimage=True (--skimage)")


@dataclass(frozen=True, kw_only=True)
class _TestSet:
    folder: PathLike
    pattern: str = "*"
    crop: int = 160
    limit: int | None = None
    factor: int = 2


@dataclass(frozen=True, kw_only=True)
class _UNetOnTestSet(_TestSet):
    """What the attack, certify and evaluate runs share: a U-Net ``checkpoint`` applied to a test
    folder's centre crops, rows written to ``out``, ``batch_size`` images per pass."""

    checkpoint: PathLike
    out: PathLike
    batch_size: int = 256
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        check_int("crop", self.crop, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)


@dataclass(frozen=True, kw_only=True)
class SRAttackRun(_UNetOnTestSet):
    """Attack a U-Net or its smoothed mean on a folder's centre crops at relative budgets ``eps_rel``
    (eps = sqrt(d)·eps_rel). ``sigma_g`` None: attack f with l2 PGD; else EOT-PGD with ``samples``
    draws per step against ĝ = mean of f(y + N(0, sigma_g²)), evaluated with ``n`` draws."""

    eps_rel: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
    steps: int = 10
    sigma_g: float | None = None
    n: int = 32
    samples: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        for e in self.eps_rel:
            check_float("eps_rel", e)
        check_int("steps", self.steps, minimum=1)
        check_int("n", self.n, minimum=1)
        check_int("samples", self.samples, minimum=1)
        if self.sigma_g is not None:
            check_float("sigma_g", self.sigma_g, strict=True)


@dataclass(frozen=True, kw_only=True)
class SRCertifyRun(_UNetOnTestSet):
    """Median bounds and center smoothing of a U-Net at noise level ``sigma`` for each l2 radius in
    ``eps``; ``outputs_in_unit_range``: clip the median box to [0, 1] for the worst-case PSNR (only
    for a model whose outputs are known to lie there)."""

    sigma: float = 0.25
    eps: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5)
    n0: int = 32
    n: int = 1000
    alpha: float = 0.05
    delta: float = 0.05
    outputs_in_unit_range: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("sigma", self.sigma, strict=True)
        for e in self.eps:
            check_float("eps", e)
        check_int("n0", self.n0, minimum=1)
        check_int("n", self.n, minimum=self.n0 + 1)
        check_alpha(self.alpha)


@dataclass(frozen=True, kw_only=True)
class SREvaluateRun(_UNetOnTestSet):
    """Clean MSE/PSNR/SSIM of a U-Net on a folder's centre crops, beside the bilinear input and the
    smoothed mean ĝ = mean of f(y + N(0, sigma_g²)) (``n`` draws) at each level in ``sigma_g`` (0: f
    itself). ``val_folder``: validation images (centre crops of ``crop``, ``val_pattern``, at most
    ``val_limit``) on which the level with the lowest mean MSE of ĝ is chosen (the thesis's
    procedure; needs at least one ``sigma_g``)."""

    sigma_g: tuple[float, ...] = ()
    n: int = 32
    val_folder: PathLike | None = None
    val_pattern: str = "*"
    val_limit: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for s in self.sigma_g:
            check_float("sigma_g", s)
        if len(set(self.sigma_g)) != len(self.sigma_g):
            raise InputError(f"sigma_g values repeat: {self.sigma_g}")
        check_int("n", self.n, minimum=1)
        if self.val_folder is not None and not self.sigma_g:
            raise InputError("choosing sigma_g on validation images needs sigma_g candidates (--sigma-g)")


def run_sr_train(run: SRTrainRun, *, progress: bool = True) -> list[dict[str, Any]]:
    """Train as ``run`` says; returns the history (the checkpoint holds it too)."""
    device = resolve_device(run.device)
    images = [im for folder in run.folders for im in load_folder(folder, pattern=run.pattern)]
    if run.skimage:
        images += skimage_photos()
    net = UNet(channels=run.channels)
    if run.init is not None:
        init, _ = load_unet(run.init)
        net.load_state_dict(init.state_dict())
    net.to(device)
    info = {"folders": [str(f) for f in run.folders], "pattern": run.pattern, "skimage": run.skimage,
            "init": None if run.init is None else str(run.init)}
    return train_superres(net, images, config=run.config, checkpoint=run.out, resume=run.resume, info=info,
                          progress=progress)


def _test_images(ts: _TestSet) -> tuple[list[str], torch.Tensor]:
    """The names and centre crops ``[N, 3, crop, crop]`` of the test images, in the same order."""
    names = [p.name for p in image_paths(ts.folder, pattern=ts.pattern, limit=ts.limit)]
    images = load_folder(ts.folder, pattern=ts.pattern, limit=ts.limit)
    return names, torch.stack([center_crop(im, ts.crop) for im in images])


def _pending(run: _UNetOnTestSet, writer: ResultWriter, names: list[str], xs: torch.Tensor,
             device: torch.device) -> Iterator[tuple[int, str, torch.Tensor, torch.Tensor]]:
    """``(idx, name, x, y)`` of each test image not yet in ``writer``: the crop ``x`` ``[1, 3, crop,
    crop]`` on ``device`` and its degraded input ``y``."""
    for idx, name in enumerate(names):
        if idx not in writer.done:
            x = xs[idx:idx + 1].to(device)
            yield idx, name, x, degrade(x, factor=run.factor)


def _config(run: Any) -> dict[str, Any]:
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(run).items() if k not in ("out", "device")}
    cfg["checkpoint"] = str(cfg["checkpoint"])
    cfg["folder"] = str(cfg["folder"])
    return cfg


def run_sr_attack(run: SRAttackRun) -> Path:
    """One row per test image (:func:`~smoothcert.results.superres.sr_attack_schema`); images already
    in ``run.out`` (same settings) are skipped. Returns the result file's path."""
    device = resolve_device(run.device)
    net, _ = load_unet(run.checkpoint, map_location=device)
    names, xs = _test_images(run)
    schema = sr_attack_schema(run.eps_rel)
    sr = None if run.sigma_g is None else SmoothedRegressor(net, noise=get_noise("gaussian", sigma=run.sigma_g))
    with ResultWriter(run.out, config=_config(run), columns=schema.columns) as writer:
        for idx, name, x, y in _pending(run, writer, names, xs, device):
            t0 = time.perf_counter()
            row: dict[str, Any] = {"idx": idx, "image": name}
            for j, e in enumerate(run.eps_rel):
                eps = relative_eps(e, x.shape)
                seed = sub_seed(run.seed, idx, j)  # attack j's stream; its evaluation: key (j, 1)
                if sr is None:
                    adv = y if eps == 0 else pgd_regression(net, y, x, eps=eps, steps=run.steps, generator=seed)
                    with torch.no_grad():
                        out = net(adv)
                else:
                    adv = y if eps == 0 else eot_pgd_regression(net, y, x, noise=sr.noise, eps=eps, steps=run.steps,
                                                                samples=run.samples, generator=seed)
                    out = sr.mean(adv, n=run.n, batch_size=run.batch_size,
                                  generator=sub_seed(run.seed, idx, j, 1))
                m = mse(out, x)
                k = eps_key(e)
                row |= {f"mse@{k}": float(m[0]), f"psnr@{k}": float(psnr(m)[0]), f"ssim@{k}": float(ssim(out, x)[0]),
                        f"l2@{k}": float((adv - y).norm())}
            row |= {"model": str(run.checkpoint), "smoothing": "none" if sr is None else "mean",
                    "sigma_g": math.nan if run.sigma_g is None else run.sigma_g, "n": 1 if sr is None else run.n,
                    "attack": "pgd" if sr is None else "eot", "steps": run.steps,
                    "samples": 1 if sr is None else run.samples, "seconds": time.perf_counter() - t0}
            writer.write(schema.row(row))
    return Path(run.out)


def run_sr_certify(run: SRCertifyRun) -> Path:
    """One row per test image (:func:`~smoothcert.results.superres.sr_certify_schema`): the same n0 + n
    draws serve every radius (each radius's statement holds at level 1 − alpha). Resumable."""
    device = resolve_device(run.device)
    net, _ = load_unet(run.checkpoint, map_location=device)
    names, xs = _test_images(run)
    schema = sr_certify_schema(run.eps)
    sr = SmoothedRegressor(net, noise=get_noise("gaussian", sigma=run.sigma))
    value_range = (0.0, 1.0) if run.outputs_in_unit_range else None
    with ResultWriter(run.out, config=_config(run), columns=schema.columns) as writer:
        for idx, name, x, y in _pending(run, writer, names, xs, device):
            t0 = time.perf_counter()
            seed = input_seed(run.seed, idx)
            draws0 = sr.samples(y, n=run.n0, batch_size=run.batch_size, generator=seed)
            draws = sr.samples(y, n=run.n, batch_size=run.batch_size, generator=sub_seed(run.seed, idx, 1))
            row: dict[str, Any] = {"idx": idx, "image": name}
            for e in run.eps:
                c = certified_psnr(draws0, draws, x, sigma=run.sigma, eps=e, alpha=run.alpha, delta=run.delta,
                                   value_range=value_range)
                if "clean_psnr_median" not in row:
                    row["clean_psnr_median"] = float(c.median_clean[0])
                    row["clean_psnr_center"] = float(c.center_clean[0])
                k = eps_key(e)
                row |= {f"median_cert_psnr@{k}": float(c.median_certified[0]),
                        f"center_radius@{k}": float(c.ball.radius[0]),
                        f"center_cert_psnr@{k}": float(c.center_certified[0])}
            row |= {"model": str(run.checkpoint), "sigma": run.sigma, "n0": run.n0, "n": run.n, "alpha": run.alpha,
                    "delta": run.delta, "seconds": time.perf_counter() - t0}
            writer.write(schema.row(row))
    return Path(run.out)



def run_sr_evaluate(run: SREvaluateRun) -> Path:
    """One row per test image (:func:`~smoothcert.results.superres.sr_evaluate_schema`); images
    already in ``run.out`` (same settings) are skipped. With ``run.val_folder`` the chosen sigma_g
    (validation draws seeded by ``run.seed``; recomputed on resume, deterministically) is in every
    row. Test draws of image ``idx`` are seeded by ``input_seed(seed, idx)`` for every level (common
    random numbers across levels). Returns the result file's path."""
    device = resolve_device(run.device)
    net, _ = load_unet(run.checkpoint, map_location=device)
    net.eval()
    names, xs = _test_images(run)
    chosen = math.nan
    if run.val_folder is not None:
        _, xv = _test_images(_TestSet(folder=run.val_folder, pattern=run.val_pattern, crop=run.crop,
                                      limit=run.val_limit, factor=run.factor))
        xv = xv.to(device)
        chosen, _ = select_sigma_g(net, degrade(xv, factor=run.factor), xv, sigma_gs=run.sigma_g, n=run.n,
                                   batch_size=run.batch_size, generator=run.seed)
    schema = sr_evaluate_schema(run.sigma_g)
    with ResultWriter(run.out, config=_config(run), columns=schema.columns) as writer:
        for idx, name, x, y in _pending(run, writer, names, xs, device):
            t0 = time.perf_counter()
            with torch.no_grad():
                outs = {"bilinear": y, "base": net(y)}
            for s in run.sigma_g:
                outs[eps_key(s)] = smoothed_mean(net, y, sigma_g=s, n=run.n, batch_size=run.batch_size,
                                             generator=input_seed(run.seed, idx))
            row: dict[str, Any] = {"idx": idx, "image": name}
            for k, out in outs.items():
                m = mse(out, x)
                row |= {f"mse@{k}": float(m[0]), f"psnr@{k}": float(psnr(m)[0]), f"ssim@{k}": float(ssim(out, x)[0])}
            row |= {"model": str(run.checkpoint), "sigma_g_chosen": chosen, "n": run.n,
                    "seconds": time.perf_counter() - t0}
            writer.write(schema.row(row))
    return Path(run.out)

