"""Certified accuracy of the training methods on MNIST / Fashion-MNIST (issue #4 item 3).

Protocol (Cohen et al. 2019's, at the scale the machine allows): a LeNet-style net on the full
training set, Gaussian noise at each sigma; certify the test images every ``--skip``-th with
n0 = 100, N = ``--n``, alpha = 0.001; certified accuracy at r = 0, 0.25, ..., 2.0 and ACR per run,
the best-sigma envelope per method, the curves as PNG, and a check of the certificates against
the smoothed PGD attack (an attack that succeeds inside a certified radius would be a bug).

Training (the same for every method, so the methods differ only where they should): each sigma
first trains ``gaussian`` for ``--pre-epochs``; then every method, ``gaussian`` included, fine-tunes
that checkpoint for ``--epochs`` with its own loss. All runs thus see pre + epochs epochs of the
same data order and learning rate; SmoothAdv and MACER are run as fine-tuning, as Salman et al.
2019 ("pretrained" rows) and Zhai et al. 2020 (ImageNet) also did.

Every step is resumable: a finished checkpoint or result file is reused, an interrupted one continued.
One JSON line per (dataset, sigma, method) and a summary; markdown tables on stderr.

    PYTHONPATH=src python benchmarks/mnist_table.py --data-root ../shared/data --out runs/mnist_table     # GPU
    PYTHONPATH=src python benchmarks/mnist_table.py --data-root ../shared/data --out runs/mnist_table \\
        --n 10000 --skip 100 --arch lenet-small                                                          # CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import commit as code_commit

from smoothcert import SmoothedClassifier, analysis, get_noise
from smoothcert.data import get_dataset
from smoothcert.runs.certify import certify_dataset, select_indices
from smoothcert.models import CheckpointMeta, build_model, load_checkpoint, read_checkpoint
from smoothcert.runs.attack import attack_dataset
from smoothcert.train import TrainConfig, get_method, train

RADII = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
ATTACK_EPS = [0.25, 0.5, 1.0, 1.5]

#: Method hyperparameters for the MNIST runs. Sources: the MNIST recipes of Jeong & Shin 2020 (NeurIPS,
#: "Consistency regularization for certified robustness of smoothed classifiers"; their code release's
#: EXPERIMENTS.MD): consistency m 2, eta 0.5, lambda 10 / 5 / 5 at sigma 0.25 / 0.5 / 1.0; SmoothAdv PGD with
#: eps 1.0 (their 255/256), 10 steps, m 4; MACER beta 16, gamma 8, lambda 16 / 16 / 6, k 16. Where a CPU cannot
#: afford the cost the draws and steps are lowered (--smoothadv-m, --smoothadv-steps, --macer-m; recorded).
def method_hparams(method: str, sigma: float, args: argparse.Namespace) -> dict[str, Any]:
    if method == "gaussian":
        return {}
    if method == "consistency":  # named "stability" in smoothcert 0.1.0
        return {"m": 2, "lbd": 10.0 if sigma <= 0.25 else 5.0, "eta": 0.5}
    if method == "smoothadv":
        return {"eps": 1.0, "steps": args.smoothadv_steps, "m": args.smoothadv_m, "warmup": 1}
    if method == "macer":
        lbd = args.macer_lbd if args.macer_lbd is not None else (6.0 if sigma >= 1.0 else 16.0)
        return {"m": args.macer_m, "beta": 16.0, "gamma": 8.0, "lbd": lbd}
    raise ValueError(f"no benchmark settings for method {method!r}")


def _meta(name: str, info, arch: str, sigma: float) -> CheckpointMeta:
    return CheckpointMeta(arch=arch, dataset=name, num_classes=info.num_classes, in_channels=1, input_size=28,
                          mean=list(info.mean), std=list(info.std), noise="gaussian", sigma=sigma)


def _train(train_set, name: str, arch: str, sigma: float, method: str, hparams: dict[str, Any], *, epochs: int,
           lr: float, start_epoch: int, init: Path | None, ckpt: Path, args, device: torch.device) -> dict[str, Any]:
    """Train (or fine-tune from ``init``) and return the history's last record and the seconds spent."""
    info = train_set.info
    torch.manual_seed(0)
    model = build_model(arch, num_classes=info.num_classes, in_channels=1, mean=list(info.mean),
                        std=list(info.std)).to(device)
    if init is not None and not ckpt.exists():
        model.load_state_dict(load_checkpoint(init, map_location=device)[0].state_dict())
    # A constant learning rate (SGD, momentum 0.9) for pre-training and fine-tuning alike, so every method's
    # epochs see the same step size; the fine-tuning's data order gets its own seed.
    config = TrainConfig(epochs=epochs, batch_size=args.batch, lr=lr, schedule="step", step_size=10**6,
                         seed=args.seed + start_epoch)
    t0 = time.perf_counter()
    history = train(model, train_set, method=get_method(method, **hparams), noise=get_noise("gaussian", sigma=sigma),
                    config=config, meta=_meta(name, info, arch, sigma), checkpoint=ckpt, resume=True,
                    progress=not args.quiet)
    return {"train_seconds": sum(h["seconds"] for h in history), "wall_seconds": time.perf_counter() - t0,
            "train_acc_noisy": history[-1]["train_acc_noisy"], "loss": history[-1]["loss"]}


def _certify(ckpt: Path, test_set, out: Path, sigma: float, args, device: torch.device) -> analysis.Results:
    model, _ = load_checkpoint(ckpt, map_location=device)
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=sigma), num_classes=10)
    indices = select_indices(len(test_set), skip=args.skip, max_count=args.max)
    certify_dataset(smoothed, test_set, out, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.certify_batch,
                    seed=args.seed, indices=indices, config={"checkpoint": str(ckpt)}, progress=not args.quiet)
    return analysis.load_results(out)


def _attack_check(ckpt: Path, test_set, out: Path, sigma: float, args, device: torch.device) -> dict[str, Any]:
    """Smoothed PGD (m fresh draws per step) at the eps grid on every ``--attack-skip``-th test image:
    empirical accuracy (PREDICT at the attacked point, abstain = wrong) next to certified accuracy, and
    the certificate violations (PREDICT giving another class inside a certified radius; each answer may be
    wrong with probability <= alpha) and those that survive a re-check with fresh draws at alpha/100 —
    a confirmed violation is a bug."""
    model, _ = load_checkpoint(ckpt, map_location=device)
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=sigma), num_classes=10)
    indices = select_indices(len(test_set), skip=args.attack_skip)
    s = attack_dataset(smoothed, test_set, out, attack="pgd", eps=ATTACK_EPS, steps=args.attack_steps,
                       m=args.attack_m, n0=args.n0, n=args.attack_n, alpha=args.alpha,
                       batch_size=args.certify_batch, seed=args.seed, indices=indices,
                       config={"checkpoint": str(ckpt)}, progress=not args.quiet)
    def by_eps(d: dict) -> dict[str, float]:
        return {f"{float(k):g}": round(float(v), 4) for k, v in d.items()}

    return {"attack_inputs": len(indices), "attack_n": args.attack_n, "attack_m": args.attack_m,
            "attack_steps": args.attack_steps, "empirical_accuracy": by_eps(s.adversarial_accuracy),
            "attack_certified_accuracy": by_eps(s.certified_accuracy or {}), "violations": len(s.violations),
            "confirmed_violations": len(s.confirmed_violations)}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="folder with MNIST/raw and FashionMNIST/raw (torchvision layout)")
    p.add_argument("--datasets", nargs="+", default=["mnist"], choices=["mnist", "fashion-mnist"])
    p.add_argument("--methods", nargs="+", default=["gaussian", "consistency", "smoothadv", "macer"])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--arch", default="lenet")
    p.add_argument("--pre-epochs", type=int, default=8, help="Gaussian pre-training epochs (per sigma)")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per method")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--macer-m", type=int, default=16)
    # MACER's radius term has large gradients (Phi^-1 near 1; 64x the classification term's on the sigma 0.5
    # Gaussian checkpoint, benchmarks/macer_terms.py). Fine-tuning diverged at lr 0.02, degraded at 0.001 (ACR
    # 0.98 vs Gaussian 1.28 at sigma 0.5, loss rising each epoch) and beat Gaussian at 0.0001 (measured, BENCHMARKS.md).
    p.add_argument("--macer-lr", type=float, default=0.0001, help="fine-tuning learning rate of macer")
    p.add_argument("--macer-lbd", type=float, default=None,
                   help="MACER's weight of the radius term at every sigma (default: the recipe's 16 / 16 / 6)")
    p.add_argument("--smoothadv-m", type=int, default=4)
    p.add_argument("--smoothadv-steps", type=int, default=10)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--skip", type=int, default=20)
    p.add_argument("--max", type=int, default=None)
    p.add_argument("--certify-batch", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attack-skip", type=int, default=200, help="attack every k-th test image (0: no attack check)")
    p.add_argument("--attack-n", type=int, default=10_000, help="CERTIFY/PREDICT draws of the attack check")
    p.add_argument("--attack-m", type=int, default=16, help="noise draws per attack step")
    p.add_argument("--attack-steps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="working folder: checkpoints, result rows, tables, PNGs")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(torch.get_num_threads())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "torch": torch.__version__, "commit": code_commit()}
    lines: list[dict[str, Any]] = []
    for name in args.datasets:
        train_set = get_dataset(name, split="train", root=args.data_root)
        test_set = get_dataset(name, split="test", root=args.data_root)
        runs: dict[str, list[analysis.Results]] = {m: [] for m in args.methods}
        for sigma in args.sigmas:
            pre = out / f"{name}_{args.arch}_sigma{sigma:g}_pre.pt"
            _train(train_set, name, args.arch, sigma, "gaussian", {}, epochs=args.pre_epochs, lr=args.lr, start_epoch=0,
                   init=None, ckpt=pre, args=args, device=device)
            for method in args.methods:
                hp = method_hparams(method, sigma, args)
                ckpt = out / f"{name}_{args.arch}_sigma{sigma:g}_{method}.pt"
                lr = args.macer_lr if method == "macer" else args.lr
                t = _train(train_set, name, args.arch, sigma, method, hp, epochs=args.epochs, lr=lr,
                           start_epoch=args.pre_epochs, init=pre, ckpt=ckpt, args=args, device=device)
                pre_train = read_checkpoint(pre)["extra"]["history"]
                t["train_seconds"] += sum(h["seconds"] for h in pre_train)
                res = _certify(ckpt, test_set, out / f"{name}_{args.arch}_sigma{sigma:g}_{method}.tsv", sigma,
                               args, device)
                if args.attack_skip:
                    attack_out = out / f"{name}_{args.arch}_sigma{sigma:g}_{method}_attack.tsv"
                    t.update(_attack_check(ckpt, test_set, attack_out, sigma, args, device))
                res.name = f"{method} σ={sigma:g}"
                runs[method].append(res)
                s = analysis.summary(res, RADII)
                line = {"dataset": name, "method": method, "sigma": sigma, "hparams": hp, "finetune_lr": lr,
                        "arch": args.arch,
                        "epochs": args.pre_epochs + args.epochs, "n": args.n, "n0": args.n0, "alpha": args.alpha,
                        "inputs": len(res), "clean_accuracy": s["clean_accuracy"], "acr": round(s["acr"], 4),
                        "certified_accuracy": {f"{r:g}": round(a, 4) for r, a in s["certified_accuracy"].items()},
                        "certify_seconds_per_input": round(s["mean_seconds"], 3), **t, **env}
                print(json.dumps(line), flush=True)
                lines.append(line)
        # Tables: per sigma (methods as rows) and the best-sigma envelope of each method.
        for i, sigma in enumerate(args.sigmas):
            print(f"\n### {name}, sigma = {sigma:g}\n", file=sys.stderr)
            print(analysis.markdown_table([runs[m][i] for m in args.methods], RADII, envelope=False), file=sys.stderr)
        print(f"\n### {name}, best sigma per method (envelope)\n", file=sys.stderr)
        print(_envelope_table({m: runs[m] for m in args.methods}), file=sys.stderr)
        for method in args.methods:
            analysis.plot_certified_accuracy(runs[method], out / f"{name}_{method}.png",
                                             title=f"{name}, {method}, {args.arch}, N={args.n}")
        best = [max(runs[m], key=analysis.acr) for m in args.methods]
        analysis.plot_certified_accuracy(best, out / f"{name}_methods.png", envelope=False,
                                         title=f"{name}: each method at its best-ACR sigma, N={args.n}")
    return lines


def _envelope_table(runs: dict[str, list[analysis.Results]]) -> str:
    head = "| method | " + " | ".join(f"r = {r:g}" for r in RADII) + " |"
    rows = [head, "| --- |" + " ---: |" * len(RADII)]
    for method, rs in runs.items():
        env = analysis.envelope(rs, RADII)
        rows.append(f"| {method} | " + " | ".join(f"{a:.3f}" for a in env.accuracy) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
