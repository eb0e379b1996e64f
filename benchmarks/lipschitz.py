"""FaRS on MNIST / Fashion-MNIST: margin certificate, feature-space and input-space smoothing (issue #15).

Per dataset:

1. ``sll-small`` with a linear head (1-Lipschitz backbone, Normalize mean 0 / std 1 so L = 1),
   trained with ``lipschitz-margin`` (epsilon ``--epsilon``) on the first ``--train-size`` training
   images for ``--epochs`` epochs (the project's loop, SGD, cosine lr).
2. The same backbone, frozen, under an MLP head trained head-only (FaRS, Sec. 3) with Gaussian noise
   of ``--sigma`` on the features (``feature_noise=True``) for ``--head-epochs`` epochs.
3. Certificates on test images (every ``--skip``-th):
   - margin (model 1): deterministic, one forward pass per batch;
   - feature-space smoothing (model 2): n0 = 100, N = ``--n``, alpha = 0.001;
   - speed at equal N (``--n-speed``) on ``--speed-images`` images: feature-space vs input-space
     smoothing of model 2 (the same network, noise on the features vs on the pixels, same sigma).
4. Sanity: l2-PGD (``--pgd-steps`` steps, at each input's certified radius) on the first
   ``--pgd-images`` certified inputs; a success inside a certified radius is counted (must be 0).
   For feature smoothing the PGD point is attacked on the base model and judged by PREDICT of the
   smoothed model (n = 1000, alpha = 0.001), which abstains rather than errs with prob. >= 1 - alpha.

One JSON line per measurement on stdout (checkpoints under ``--out``).

    PYTHONPATH=src python benchmarks/lipschitz.py --data-root ../shared/data --out runs/lipschitz
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from smoothcert.attacks import pgd_l2
from smoothcert.data import get_dataset
from smoothcert.lipschitz import FeatureSmoothedClassifier, certify_margin
from smoothcert.models import CheckpointMeta, build_model, load_checkpoint, transfer_backbone
from smoothcert.noise import get_noise
from smoothcert.smooth import ABSTAIN, SmoothedClassifier
from smoothcert.train import TrainConfig, get_method, train

RADII = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 1.58)
ALPHA = 0.001
N0 = 100


def emit(**record: Any) -> None:
    print(json.dumps(record), flush=True)


def certified_accuracy(correct: torch.Tensor, radius: torch.Tensor) -> dict[str, float]:
    """Fraction of inputs certified correct at each radius (radius >= r), r = 0 included."""
    ok = correct.bool()
    return {repr(r): float((ok & (radius >= r)).double().mean()) for r in (0.0, *RADII)}


def train_models(args: argparse.Namespace, dataset: str, out: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    train_set = get_dataset(dataset, split="train", root=args.data_root).subset(range(args.train_size))
    kw = {"width": args.width, "features": args.features}
    common = {"dataset": dataset, "num_classes": 10, "in_channels": 1, "input_size": 28, "mean": [0.0], "std": [1.0]}
    path_a = out / f"{dataset}-linear.pt"
    torch.manual_seed(0)
    model_a = build_model("sll-small", num_classes=10, in_channels=1, mean=(0.0,), std=(1.0,), head="linear", **kw)
    t0 = time.perf_counter()
    history = train(model_a, train_set, method=get_method("lipschitz-margin", epsilon=args.epsilon),
                    noise=get_noise("gaussian", sigma=args.sigma),
                    meta=CheckpointMeta(arch="sll-small", arch_kwargs={**kw, "head": "linear"}, noise="none",
                                        sigma=0.0, **common),
                    config=TrainConfig(epochs=args.epochs, batch_size=256, lr=args.lr, schedule="cosine",
                                       weight_decay=0.0, seed=0),
                    checkpoint=path_a, resume=True, progress=False)
    emit(dataset=dataset, step="train-linear", seconds=time.perf_counter() - t0, history=history)

    # Model 2: model 1's backbone, an MLP head trained alone on noisy features.
    path_b = out / f"{dataset}-mlp.pt"
    torch.manual_seed(1)
    model_b = build_model("sll-small", num_classes=10, in_channels=1, mean=(0.0,), std=(1.0,), head="mlp", **kw)
    transfer_backbone(model_a, model_b)  # checks structure, shapes and normalization; the CLI's --init-backbone
    t0 = time.perf_counter()
    history = train(model_b, train_set,
                    method=get_method("lipschitz-margin", epsilon=0.0, freeze_backbone=True, feature_noise=True),
                    noise=get_noise("gaussian", sigma=args.sigma),
                    meta=CheckpointMeta(arch="sll-small", arch_kwargs={**kw, "head": "mlp"}, noise="gaussian",
                                        sigma=args.sigma, training={"init": str(path_a)}, **common),
                    config=TrainConfig(epochs=args.head_epochs, batch_size=256, lr=args.lr, schedule="cosine",
                                       weight_decay=0.0, seed=1),
                    checkpoint=path_b, resume=True, progress=False)
    emit(dataset=dataset, step="train-mlp-head", seconds=time.perf_counter() - t0, history=history)
    return load_checkpoint(path_a)[0].eval(), load_checkpoint(path_b)[0].eval()


def margin_report(args: argparse.Namespace, dataset: str, model_a: torch.nn.Module, x: torch.Tensor,
                  y: torch.Tensor) -> None:
    """Margin certificate of ``model_a`` on ``x`` (batches of 500) and the PGD check at each radius."""
    # -- margin certificate: one forward pass per batch.
    preds, radii, seconds = [], [], 0.0
    for start in range(0, len(x), 500):
        cert = certify_margin(model_a, x[start:start + 500])
        preds.append(cert.prediction)
        radii.append(cert.radius)
        seconds += float(cert.seconds.sum())
    pred, radius = torch.cat(preds), torch.cat(radii)
    correct = pred == y
    emit(dataset=dataset, certificate="lipschitz-margin", images=len(x), clean_accuracy=float(correct.double().mean()),
         certified_accuracy=certified_accuracy(correct, radius), seconds_per_input=seconds / len(x),
         lipschitz=cert.lipschitz)
    # PGD at each certified radius: a success would contradict the certificate.
    sel = torch.nonzero(correct & (radius > 0)).flatten()[: args.pgd_images]
    broken = 0
    if len(sel):
        adv = pgd_l2(model_a, x[sel], y[sel], eps=radius[sel].float(), steps=args.pgd_steps, generator=0)
        with torch.no_grad():
            broken = int((model_a(adv).argmax(1) != y[sel]).sum())
    emit(dataset=dataset, certificate="lipschitz-margin", pgd_checked=len(sel), pgd_steps=args.pgd_steps,
         pgd_successes_inside_radius=broken)


def run(args: argparse.Namespace, dataset: str) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_a, model_b = train_models(args, dataset, out)
    test = get_dataset(dataset, split="test", root=args.data_root)
    xs, ys = test.tensors()
    idx = torch.arange(0, len(xs), args.skip)
    x, y = xs[idx], ys[idx]

    margin_report(args, dataset, model_a, x, y)

    # -- feature-space smoothing of model 2.
    noise = get_noise("gaussian", sigma=args.sigma)
    fs = FeatureSmoothedClassifier(model_b, noise=noise, num_classes=10)
    sel_fs = idx[:: max(1, len(idx) // args.smooth_images)][: args.smooth_images]
    xf, yf = xs[sel_fs], ys[sel_fs]
    fs.warmup(xf[:1], batch_size=args.batch)
    certs = [fs.certify(xf[i:i + 1], n0=N0, n=args.n, alpha=ALPHA, batch_size=args.batch, generator=1000 + i)
             for i in range(len(xf))]
    fpred = torch.cat([c.prediction for c in certs])
    frad = torch.cat([c.radius for c in certs])
    fsec = float(torch.cat([c.seconds for c in certs]).sum())
    fcorrect = fpred == yf
    emit(dataset=dataset, certificate="feature-smoothing", images=len(xf), n=args.n, n0=N0, alpha=ALPHA,
         sigma=args.sigma, clean_accuracy=float(fcorrect.double().mean()),
         certified_accuracy=certified_accuracy(fcorrect, frad), seconds_per_input=fsec / len(xf))
    sel = torch.nonzero(fcorrect & (frad > 0)).flatten()[: args.pgd_images]
    broken = 0
    if len(sel):
        adv = pgd_l2(model_b, xf[sel], yf[sel], eps=frad[sel].float(), steps=args.pgd_steps, generator=0)
        judged = fs.predict(adv, n=1000, alpha=ALPHA, batch_size=args.batch, generator=7)
        broken = int(((judged != ABSTAIN) & (judged != yf[sel])).sum())
    emit(dataset=dataset, certificate="feature-smoothing", pgd_checked=len(sel), pgd_steps=args.pgd_steps,
         pgd_successes_inside_radius=broken, judged_by="PREDICT n=1000")

    # -- speed at equal N: feature space vs input space, same network, same images.
    xs_speed = xf[: args.speed_images]
    feat = [fs.certify(xs_speed[i:i + 1], n0=N0, n=args.n_speed, alpha=ALPHA, batch_size=args.batch, generator=i)
            for i in range(len(xs_speed))]
    inp = SmoothedClassifier(model_b, noise=noise, num_classes=10)
    inp.warmup(xs_speed[:1], batch_size=args.batch)
    inpc = [inp.certify(xs_speed[i:i + 1], n0=N0, n=args.n_speed, alpha=ALPHA, batch_size=args.batch, generator=i)
            for i in range(len(xs_speed))]
    t_feat = float(torch.cat([c.seconds for c in feat]).mean())
    t_inp = float(torch.cat([c.seconds for c in inpc]).mean())
    t0 = time.perf_counter()
    certify_margin(model_a, xs_speed)
    t_margin = (time.perf_counter() - t0) / len(xs_speed)
    emit(dataset=dataset, step="speed", images=len(xs_speed), n=args.n_speed, n0=N0, batch_size=args.batch,
         seconds_per_input={"lipschitz-margin": t_margin, "feature-smoothing": t_feat, "input-smoothing": t_inp},
         input_over_feature=t_inp / t_feat,
         input_smoothing_radius_mean=float(torch.cat([c.radius for c in inpc]).mean()),
         feature_smoothing_radius_mean=float(torch.cat([c.radius for c in feat]).mean()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--out", default="runs/lipschitz")
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    p.add_argument("--train-size", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--head-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--epsilon", type=float, default=0.5)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--skip", type=int, default=5, help="margin certificate on every skip-th test image")
    p.add_argument("--smooth-images", type=int, default=200)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--n-speed", type=int, default=1000)
    p.add_argument("--speed-images", type=int, default=10)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--pgd-images", type=int, default=100)
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--margin-only", metavar="CKPT", default=None,
                   help="only the margin certificate and PGD check of this checkpoint (first --datasets entry)")
    args = p.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    emit(step="start", args=vars(args), commit=commit, device="cpu", threads=torch.get_num_threads(),
         machine=platform.machine(), torch=torch.__version__)
    if args.margin_only:
        model, meta = load_checkpoint(args.margin_only)
        xs, ys = get_dataset(args.datasets[0], split="test", root=args.data_root).tensors()
        idx = torch.arange(0, len(xs), args.skip)
        emit(checkpoint=args.margin_only, epoch=meta.epoch, training=meta.training.get("hparams"))
        margin_report(args, args.datasets[0], model.eval(), xs[idx], ys[idx])
        return
    for dataset in args.datasets:
        run(args, dataset)


if __name__ == "__main__":
    main()
