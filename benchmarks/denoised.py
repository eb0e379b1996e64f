"""Denoised smoothing on MNIST and Fashion-MNIST: one clean classifier made certifiable by denoisers.

Protocol (issue #5, item 5). Per dataset, one ``--arch`` classifier (lenet-small) is trained on
clean images only (SGD, cosine schedule; it never sees noise). For each noise (Gaussian, certified
in l2; Laplace and uniform, certified in l1) and sigma (0.25, 0.5, 1.0), CERTIFY (n0 = 100,
``--n`` draws, alpha = 0.001) runs on every ``--skip``-th test image (at most ``--max``) with:

* ``none``: the clean classifier alone;
* ``mse``: a DnCNN trained with the MSE loss for this noise and sigma (Salman et al. 2020);
* ``guided``: that MSE DnCNN fine-tuned with the classifier-guided stability loss, full access
  (Salman et al.'s best "MSE + Stab" recipe);
* ``one-step``: the single score network of the dataset (multi-scale DSM over ``--ladder``),
  Tweedie's one-step denoiser (Gaussian noise only);
* ``multi-step``: the same score network, annealed MAP descent (T = ``--steps`` per level, step
  ``--step-size``, ladder: sigma, then the trained levels below it), for all three noises;
* ``augmented``: the upper reference, a classifier of the same architecture trained with noise
  augmentation of the same type and sigma (Cohen et al. 2019; Teng et al. 2020; Yang et al. 2020).

One JSON line per (dataset, noise, sigma, denoiser) on stdout: certified accuracy at ``radii``
(in the noise's norm), ACR, clean accuracy of the smoothed classifier, abstentions, the mean
denoising PSNR on ``--psnr-images`` test images with one seeded noise draw each (``psnr_db``;
for ``none`` the noisy input's), the denoiser's milliseconds per image and the mean seconds per
certified input (n0 + n forward passes of denoiser + classifier), plus the settings. Markdown
tables go to stderr, certified-accuracy curves to ``<workdir>/curves/*.png``.

At the end, the paper's claims are put to a paired test (:data:`CLAIMS`): for each (dataset, noise,
sigma), ACR of one denoiser minus another's on the same test images with the same classifier, with a
95% interval over the images (``analysis.paired_acr_difference``), and the PSNR difference. They go
to stdout as JSON lines (``"comparison"``), to ``<workdir>/summary.md`` with the grid of ACRs, and the
ACRs to ``<workdir>/curves/acr_grid.png`` (ACR against sigma, one panel per dataset and noise).

Resumable: checkpoints (``<workdir>/<dataset>/*.pt``) continue or are reused, certification rows
(``*.tsv``) are kept and extended, and finished JSON lines are cached in
``<workdir>/results.jsonl`` (reused when their settings match). Rows are tied to the checkpoints'
hashes: after changing a training setting (``--epochs``, widths, ...) use a fresh ``--workdir``.

Full protocol (GPU; multi-step certification is the costly part):

    PYTHONPATH=src python benchmarks/denoised.py --data-root ../shared/data --device cuda

Smoke run (CPU, about a minute; tiny networks, a few inputs, meaningless numbers):

    PYTHONPATH=src python benchmarks/denoised.py --datasets embedded --noises gaussian laplace \\
        --sigmas 0.5 --n 100 --n0 10 --max 4 --epochs 1 --limit 256 --psnr-images 16 \\
        --dncnn-depth 3 --dncnn-width 8 --score-width 8 --ladder 1.0 0.01 4 --workdir /tmp/bench_dn
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import train_clean
from torch import nn

from smoothcert import analysis
from smoothcert.data import get_dataset
from smoothcert.denoise import (
    Denoised,
    DenoiserMeta,
    build_denoiser,
    denoiser_for_noise,
    denoising_psnr,
    get_denoiser_loss,
    load_denoiser,
    sigma_ladder,
    train_denoiser,
)
from smoothcert.runs.certify import certify_dataset, select_indices
from smoothcert.files import file_sha256
from smoothcert.models import CheckpointMeta, build_model, load_checkpoint, read_checkpoint, save_checkpoint
from smoothcert.noise import get_noise
from smoothcert.smooth import SmoothedClassifier
from smoothcert.train import TrainConfig, get_method, learning_rate, noisy_accuracy, train

DENOISERS = ("none", "mse", "guided", "one-step", "multi-step", "augmented")
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
#: Classifier schedule for lenet-small on MNIST-like data (as benchmarks/adaptive.py): SGD momentum 0.9,
#: lr 0.05 with cosine decay, batch 128, weight decay 1e-4.
CLASSIFIER = {"batch_size": 128, "lr": 0.05, "schedule": "cosine"}
#: Denoisers: Adam lr 1e-3 (Salman et al. 2020), batch 128.
DENOISER_LR, DENOISER_BATCH = 1e-3, 128
#: Paired comparisons (a, b, the claim that "a - b > 0" supports). Score-based denoised smoothing paper:
#: one-step beats denoisers trained with the MSE only (Sec. 4.2), multi-step is sharper than one-step and
#: comparable to white-box (noise-trained) classifiers (Sec. 4.3); Salman et al. 2020: classifier guidance
#: beats the MSE-only denoiser; issue #5: every denoiser lifts the clean classifier.
CLAIMS = (
    ("mse", "none", "a denoiser lifts the clean classifier"),
    ("one-step", "mse", "one-step beats the MSE-only denoiser"),
    ("multi-step", "one-step", "multi-step beats one-step"),
    ("multi-step", "mse", "multi-step beats the MSE-only denoiser"),
    ("guided", "mse", "classifier guidance beats MSE only"),
    ("multi-step", "augmented", "multi-step vs the noise-trained classifier"),
)


def _default_root() -> str | None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    return str(shared) if shared.is_dir() else None


# --------------------------------------------------------------------------------- training


def _clean_classifier(train_set, test_set, name: str, args, device, path: Path) -> tuple[nn.Module, float]:
    """The ``--arch`` classifier trained on clean images (no noise); reused when ``path`` holds it."""
    info = train_set.info
    config = TrainConfig(epochs=args.epochs, seed=args.seed, **CLASSIFIER)
    training = {"method": "clean", **asdict(config), "train_size": len(train_set)}
    meta = CheckpointMeta(arch=args.arch, dataset=name, num_classes=info.num_classes, in_channels=info.input_shape[0],
                          input_size=list(info.input_shape[1:]), mean=list(info.mean), std=list(info.std),
                          noise="none", sigma=0.0, training=training)
    if path.exists():
        model, old = load_checkpoint(path, map_location=device)
        if old.training == training and old.epoch == args.epochs:
            return model, float(read_checkpoint(path).get("extra", {}).get("seconds", 0.0))
    torch.manual_seed(args.seed)
    model = build_model(args.arch, num_classes=info.num_classes, in_channels=info.input_shape[0],
                        mean=list(info.mean), std=list(info.std)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    images, labels = train_set.tensors()
    seconds = train_clean(model, images, labels, optimizer=opt, epochs=config.epochs, batch_size=config.batch_size,
                          seed=args.seed, device=device, lr_at=lambda epoch: learning_rate(config, epoch))
    meta.epoch = config.epochs
    save_checkpoint(path, model, meta=meta, extra={"seconds": seconds})
    model.eval()
    print(f"[{name}] clean {args.arch}: test accuracy {noisy_accuracy(model, test_set, noise=None):.4f}, "
          f"{seconds:.0f} s", file=sys.stderr)
    return model, seconds


def _augmented_classifier(train_set, name: str, noise, args, device, path: Path) -> tuple[nn.Module, float]:
    """The ``--arch`` classifier trained with ``noise`` augmentation (the white-box reference)."""
    info = train_set.info
    torch.manual_seed(args.seed)
    model = build_model(args.arch, num_classes=info.num_classes, in_channels=info.input_shape[0],
                        mean=list(info.mean), std=list(info.std)).to(device)
    meta = CheckpointMeta(arch=args.arch, dataset=name, num_classes=info.num_classes, in_channels=info.input_shape[0],
                          input_size=list(info.input_shape[1:]), mean=list(info.mean), std=list(info.std),
                          noise=noise.name, sigma=noise.sigma)
    history = train(model, train_set, method=get_method("gaussian"), noise=noise,
                    config=TrainConfig(epochs=args.epochs, seed=args.seed, **CLASSIFIER), meta=meta,
                    checkpoint=path, resume=True, progress=False)
    return model.eval(), float(sum(h.get("seconds", 0.0) for h in history))


def _train_dncnn(train_set, name: str, noise, args, device, path: Path, *, loss: str, classifier=None,
                 init: Path | None = None) -> tuple[nn.Module, float]:
    arch_kwargs = {"depth": args.dncnn_depth, "width": args.dncnn_width}
    torch.manual_seed(args.seed)
    net = build_denoiser("dncnn", in_channels=train_set.info.input_shape[0], **arch_kwargs).to(device)
    if init is not None and not path.exists():
        net.load_state_dict(load_denoiser(init, map_location=device)[0].state_dict())
    meta = DenoiserMeta(arch="dncnn", arch_kwargs=arch_kwargs, dataset=name,
                        in_channels=train_set.info.input_shape[0], input_size=list(train_set.info.input_shape[1:]))
    history = train_denoiser(net, train_set, loss=get_denoiser_loss(loss) if loss == "mse" else
                             get_denoiser_loss(loss, access="full"), noise=noise, classifier=classifier,
                             epochs=args.epochs, lr=DENOISER_LR, batch_size=DENOISER_BATCH, seed=args.seed,
                             checkpoint=path, meta=meta, resume=True)
    return net.eval(), float(sum(h["seconds"] for h in history))


def _train_score(train_set, name: str, args, device, path: Path) -> tuple[nn.Module, DenoiserMeta, float]:
    torch.manual_seed(args.seed)
    arch_kwargs = {"width": args.score_width}
    net = build_denoiser("scorenet", in_channels=train_set.info.input_shape[0], **arch_kwargs).to(device)
    meta = DenoiserMeta(arch="scorenet", arch_kwargs=arch_kwargs, dataset=name,
                        in_channels=train_set.info.input_shape[0], input_size=list(train_set.info.input_shape[1:]))
    ladder = sigma_ladder(args.ladder[0], args.ladder[1], num_levels=int(args.ladder[2]))
    history = train_denoiser(net, train_set, loss="dsm", ladder=ladder, epochs=args.score_epochs or args.epochs,
                             lr=DENOISER_LR, batch_size=DENOISER_BATCH, seed=args.seed, checkpoint=path, meta=meta,
                             resume=True)
    _, meta = load_denoiser(path)
    return net.eval(), meta, float(sum(h["seconds"] for h in history))


# ------------------------------------------------------------------------------- evaluation


def _denoiser_ms(denoiser: nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """Median milliseconds per image of ``denoiser`` on the batch ``x`` (a warm-up pass first)."""
    times = []
    with torch.no_grad():
        denoiser(x)
        for _ in range(repeats):
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            t0 = time.perf_counter()
            denoiser(x)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times)) / x.shape[0]


def _summary(tsv: Path, label: str) -> dict[str, Any]:
    res = analysis.load_results(tsv, label=label)
    acc = analysis.certified_accuracy(res, RADII)
    return {"inputs": len(res), "certified_accuracy": [round(float(a), 4) for a in acc],
            "acr": round(float(analysis.acr(res)), 4), "clean_accuracy": round(float(analysis.clean_accuracy(res)), 4),
            "abstain": round(float(analysis.abstain_rate(res)), 4),
            "seconds_per_input": round(float(np.mean(res.seconds)), 4)}


def _markdown(rows: list[dict[str, Any]]) -> str:
    head = ["sigma", "denoiser"] + [f"r = {r:g}" for r in RADII] + ["ACR", "PSNR dB", "ms/img (D)", "s/input"]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- |" + " ---: |" * (len(head) - 2)]
    for r in rows:
        psnr = "–" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}"
        ms = "–" if r["denoiser_ms_per_image"] is None else f"{r['denoiser_ms_per_image']:.3g}"
        cells = [f"{r['sigma']:g}", r["denoiser"], *(f"{a:.3f}" for a in r["certified_accuracy"]),
                 f"{r['acr']:.3f}", psnr, ms, f"{r['seconds_per_input']:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _tsv(work: Path, dataset: str, noise: str, sigma: float, denoiser: str) -> Path:
    """The certification rows of one (dataset, noise, sigma, denoiser)."""
    return work / dataset / f"cert_{noise}_sigma{sigma:g}_{denoiser}.tsv"


def paired_claims(rows: list[dict[str, Any]], work: Path) -> list[dict[str, Any]]:
    """Every comparison of :data:`CLAIMS` whose two runs are both in ``rows``, per (dataset, noise, sigma).

    Each is ``analysis.paired_acr_difference`` of the two runs' rows (same test images, matched by idx)
    with ``dataset``, ``noise``, ``sigma``, ``a``, ``b``, ``claim`` and ``psnr_difference_db`` (None
    where either has no PSNR) added.
    """
    by_key = {(r["dataset"], r["noise"], r["sigma"], r["denoiser"]): r for r in rows}
    out = []
    for dataset, noise, sigma in dict.fromkeys((r["dataset"], r["noise"], r["sigma"]) for r in rows):
        for a, b, claim in CLAIMS:
            ra, rb = by_key.get((dataset, noise, sigma, a)), by_key.get((dataset, noise, sigma, b))
            if ra is None or rb is None:
                continue
            diff = analysis.paired_acr_difference(analysis.load_results(_tsv(work, dataset, noise, sigma, a)),
                                                  analysis.load_results(_tsv(work, dataset, noise, sigma, b)))
            psnr = None if ra["psnr_db"] is None or rb["psnr_db"] is None else round(ra["psnr_db"] - rb["psnr_db"], 3)
            out.append({"comparison": f"{a} - {b}", "dataset": dataset, "noise": noise, "sigma": sigma, "a": a,
                        "b": b, "claim": claim, **{k: round(v, 4) if isinstance(v, float) else v
                                                   for k, v in asdict(diff).items()}, "psnr_difference_db": psnr})
    return out


def _claims_markdown(claims: list[dict[str, Any]]) -> str:
    head = ["dataset", "noise", "sigma", "a - b", "ACR a - b [95%]", "a / b better, ties", "PSNR a - b dB"]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for c in claims:
        psnr = "–" if c["psnr_difference_db"] is None else f"{c['psnr_difference_db']:+.1f}"
        sig = "**" if c["low"] > 0 or c["high"] < 0 else ""  # the interval excludes 0
        cells = [c["dataset"], c["noise"], f"{c['sigma']:g}", c["comparison"],
                 f"{sig}{c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]{sig}",
                 f"{c['a_better']} / {c['b_better']}, {c['ties']}", psnr]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _acr_grid_markdown(rows: list[dict[str, Any]]) -> str:
    """ACR per (dataset, noise, sigma) row and denoiser column ('–' where not run)."""
    dens = [d for d in DENOISERS if any(r["denoiser"] == d for r in rows)]
    acr = {(r["dataset"], r["noise"], r["sigma"], r["denoiser"]): r["acr"] for r in rows}
    lines = ["| dataset | noise (norm) | sigma | " + " | ".join(dens) + " |",
             "| --- | --- | ---: |" + " ---: |" * len(dens)]
    norms = {r["noise"]: r["norm"] for r in rows}
    for dataset, noise, sigma in dict.fromkeys((r["dataset"], r["noise"], r["sigma"]) for r in rows):
        cells = [f"{acr[k]:.3f}" if (k := (dataset, noise, sigma, d)) in acr else "–" for d in dens]
        lines.append(f"| {dataset} | {noise} ({norms[noise]}) | {sigma:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_acr_grid(rows: list[dict[str, Any]], path: Path) -> Path:
    """ACR against sigma, one line per denoiser, one panel per (dataset, noise); saved to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    noises = list(dict.fromkeys(r["noise"] for r in rows))
    fig = Figure(figsize=(3.6 * len(noises), 3.0 * len(datasets)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(datasets), len(noises), squeeze=False, sharey="row")
    for i, dataset in enumerate(datasets):
        for j, noise in enumerate(noises):
            ax = axes[i][j]
            cell = [r for r in rows if r["dataset"] == dataset and r["noise"] == noise]
            for k, den in enumerate(DENOISERS):
                pts = sorted((r["sigma"], r["acr"]) for r in cell if r["denoiser"] == den)
                if pts:
                    ax.plot(*zip(*pts), marker="o", color=f"C{k}", linestyle="--" if den == "augmented" else "-",
                            label=den)
            norm = cell[0]["norm"] if cell else ""
            ax.set_title(f"{dataset}, {noise} ({norm})", fontsize=10)
            ax.set_xticks(sorted({r["sigma"] for r in cell}))
            # Set after plotting, from the row's data: a limit fixed earlier on shared axes would clip later panels.
            ax.set_ylim(0.0, 1.08 * max([r["acr"] for r in rows if r["dataset"] == dataset] + [0.05]))
            ax.set_xlabel("sigma")
            ax.set_ylabel("ACR" if j == 0 else "")
            ax.grid(True, alpha=0.35, linewidth=0.6)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=_default_root(),
                   help="folder with MNIST/ and FashionMNIST/ (default ../shared/data)")
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"],
                   choices=["mnist", "fashion-mnist", "embedded"])
    p.add_argument("--noises", nargs="+", default=["gaussian", "laplace", "uniform"])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--denoisers", nargs="+", default=list(DENOISERS), choices=DENOISERS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="lenet-small", help="classifier architecture (clean and augmented)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of every classifier and DnCNN")
    p.add_argument("--score-epochs", type=int, default=None, help="epochs of the score network (default --epochs)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N training images (smoke runs)")
    p.add_argument("--dncnn-depth", type=int, default=10)
    p.add_argument("--dncnn-width", type=int, default=32)
    p.add_argument("--score-width", type=int, default=32)
    p.add_argument("--ladder", type=float, nargs=3, default=[1.0, 0.01, 10], metavar=("MAX", "MIN", "L"),
                   help="score network's training ladder (geometric; default Song & Ermon's 1.0 .. 0.01, 10 levels)")
    p.add_argument("--steps", type=int, default=None, help="multi-step: steps per level T (default 1)")
    p.add_argument("--step-size", type=float, default=None,
                   help="multi-step: alpha, the step of the last level (default: default_step_size of the ladder, "
                        "sigma_L^2)")
    p.add_argument("--n", type=int, default=10_000, help="CERTIFY's estimation draws")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--skip", type=int, default=20, help="certify every skip-th test image")
    p.add_argument("--max", type=int, default=500, help="at most this many test images")
    p.add_argument("--batch", type=int, default=None, help="noisy rows per forward pass (default 500 CPU, 10000 GPU)")
    p.add_argument("--psnr-images", type=int, default=500, help="test images of the PSNR column")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="runs/bench_denoised")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    batch = args.batch or (500 if device.type == "cpu" else 10_000)
    work = Path(args.workdir)
    (work / "curves").mkdir(parents=True, exist_ok=True)
    cache_path = work / "results.jsonl"
    cache = [json.loads(line) for line in cache_path.read_text().splitlines() if line.strip()] \
        if cache_path.exists() else []
    common = {"benchmark": "denoised", "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "torch": torch.__version__, "arch": args.arch,
              "epochs": args.epochs, "score_epochs": args.score_epochs or args.epochs, "limit": args.limit,
              "n0": args.n0, "n": args.n, "alpha": args.alpha, "radii": list(RADII), "seed": args.seed}
    out: list[dict[str, Any]] = []
    for name in args.datasets:
        root = None if name == "embedded" else args.data_root
        train_set = get_dataset(name, split="train", root=root)
        test_set = get_dataset(name, split="test", root=root)
        if args.limit is not None:
            train_set = train_set.subset(range(min(args.limit, len(train_set))))
        d = work / name
        d.mkdir(parents=True, exist_ok=True)
        indices = select_indices(len(test_set), skip=args.skip, max_count=args.max)
        psnr_set = test_set.subset(range(min(args.psnr_images, len(test_set))))
        x_time = psnr_set.tensors()[0][: min(64, len(psnr_set))].float().to(device)
        clf, clf_s = _clean_classifier(train_set, test_set, name, args, device, d / "clf_clean.pt")
        score = smeta = None
        score_s = 0.0
        if {"one-step", "multi-step"} & set(args.denoisers):
            score, smeta, score_s = _train_score(train_set, name, args, device, d / "scorenet.pt")
        for noise_name in args.noises:
            table: list[dict[str, Any]] = []
            for sigma in args.sigmas:
                noise = get_noise(noise_name, sigma=sigma)
                tag = f"{noise_name}_sigma{sigma:g}"
                runs = []
                for den_name in args.denoisers:
                    if den_name == "one-step" and noise_name != "gaussian":
                        continue  # Tweedie's formula is the posterior mean for Gaussian noise only
                    ckpt: Path | None = None
                    train_s = 0.0
                    den: nn.Module | None = None
                    base: nn.Module = clf
                    if den_name == "augmented":
                        ckpt = d / f"clf_{tag}.pt"
                        base, train_s = _augmented_classifier(train_set, name, noise, args, device, ckpt)
                    elif den_name in ("mse", "guided"):
                        mse_path = d / f"dncnn_mse_{tag}.pt"
                        den, train_s = _train_dncnn(train_set, name, noise, args, device, mse_path, loss="mse")
                        if den_name == "guided":
                            ckpt = d / f"dncnn_guided_{tag}.pt"
                            den, more = _train_dncnn(train_set, name, noise, args, device, ckpt, loss="stability",
                                                     classifier=clf, init=mse_path)
                            train_s += more
                        else:
                            ckpt = mse_path
                    elif den_name in ("one-step", "multi-step"):
                        ckpt = d / "scorenet.pt"
                        den = denoiser_for_noise(score, smeta, noise, mode=den_name,
                                                 **({"steps_per_level": args.steps, "step_size": args.step_size}
                                                    if den_name == "multi-step" else {}))
                        train_s = score_s
                    if den is not None:
                        base = Denoised(clf, den.eval())
                    settings = {**common, "dataset": name, "noise": noise_name, "sigma": sigma, "denoiser": den_name,
                                "norm": noise.default_norm, "inputs_selected": len(indices), "skip": args.skip,
                                "psnr_images": len(psnr_set),
                                "checkpoint_sha256": file_sha256(ckpt) if ckpt is not None else None,
                                "classifier_sha256": file_sha256(d / "clf_clean.pt"),
                                "denoiser_settings": base.settings() if isinstance(base, Denoised) else None}
                    if den_name in ("mse", "guided"):
                        settings["dncnn"] = {"depth": args.dncnn_depth, "width": args.dncnn_width,
                                             "init": "mse" if den_name == "guided" else None}
                    tsv = _tsv(work, name, noise_name, sigma, den_name)
                    cached = next((c for c in cache if c.get("settings") == json.loads(json.dumps(settings))), None)
                    smoothed = SmoothedClassifier(base, noise=noise, num_classes=train_set.info.num_classes)
                    certify_dataset(smoothed, test_set, tsv, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=batch,
                                    seed=args.seed, indices=indices,
                                    config={"dataset": name, "denoiser": settings["denoiser_settings"],
                                            "checkpoint_sha256": settings["checkpoint_sha256"],
                                            "classifier_sha256": settings["classifier_sha256"]},
                                    progress=False)
                    if cached is not None:
                        psnr_db, ms = cached["psnr_db"], cached["denoiser_ms_per_image"]
                    elif den_name == "augmented":
                        psnr_db = ms = None
                    else:
                        psnr_db = denoising_psnr(den if den is not None else nn.Identity(), psnr_set, noise=noise,
                                                 seed=args.seed, clamp=den is not None)
                        noisy = noise.perturb(x_time, generator=torch.Generator(device).manual_seed(args.seed))
                        ms = _denoiser_ms(den, noisy) if den is not None else None
                    row = {**_summary(tsv, den_name), "dataset": name, "noise": noise_name, "norm": noise.default_norm,
                           "sigma": sigma, "denoiser": den_name,
                           "psnr_db": None if psnr_db is None or not math.isfinite(psnr_db) else round(psnr_db, 3),
                           "denoiser_ms_per_image": None if ms is None else round(ms, 4),
                           "train_seconds": round(train_s + (clf_s if den_name != "augmented" else 0.0), 1),
                           "settings": settings}
                    if cached is None:
                        with open(cache_path, "a", encoding="utf-8") as f:
                            f.write(json.dumps(row) + "\n")
                        cache.append(json.loads(json.dumps(row)))
                    print(json.dumps({k: v for k, v in row.items() if k != "settings"} | {
                        k: settings[k] for k in ("n0", "n", "alpha", "epochs", "device", "device_name")}), flush=True)
                    out.append(row)
                    table.append(row)
                    runs.append(analysis.load_results(tsv, label=den_name))
                if runs:
                    analysis.plot_certified_accuracy(
                        runs, work / "curves" / f"{name}_{tag}.png", envelope=False,
                        title=f"{name}, {noise_name} sigma={sigma:g} ({noise.default_norm}), clean {args.arch}")
            print(f"\n{name}, {noise_name} noise, certified accuracy at {table[0]['norm'] if table else ''} radius "
                  f"(n={args.n}, {len(indices)} inputs)\n", file=sys.stderr)
            print(_markdown(table), file=sys.stderr)
    claims = paired_claims(out, work)
    for c in claims:
        print(json.dumps(c), flush=True)
    summary = (f"# Denoised smoothing: ACR (n = {args.n}, every {args.skip}-th test image, at most {args.max})\n\n"
               + _acr_grid_markdown(out) + "\n# Paired differences on the same images (bold: 95% interval "
               "excludes 0)\n\n" + _claims_markdown(claims))
    (work / "summary.md").write_text(summary, encoding="utf-8")
    if out:
        plot_acr_grid(out, work / "curves" / "acr_grid.png")
    print("\n" + summary, file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
