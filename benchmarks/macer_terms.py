"""What MACER's loss does to a checkpoint: its two terms, their gradients, and who enters the hinge.

For each checkpoint, on ``--images`` training images (a fixed random subset) with ``--m`` Gaussian draws
each (Zhai et al. 2020, see :mod:`smoothcert.train.macer`): the classification term and ``lbd`` x the
robustness term; the l2 norms of their gradients over the model's parameters and the cosine between
them; the fraction of examples in each case of the hinge (beta-soft top class wrong; saturated — Φ⁻¹
infinite, left out; ξ > gamma — flat; active); the mean ξ of the active ones; and the checkpoint's
training history (loss and noisy accuracy per epoch). One JSON line per checkpoint.

Written to find out why MACER fine-tuning lowered certified accuracy in the MNIST table (BENCHMARKS.md):
a robustness gradient tens of times the classification one, and a hinge population that gets worse
while it is optimised, point at a step too large rather than at the trade-off MACER makes.

    PYTHONPATH=src python benchmarks/macer_terms.py --data-root ../shared/data --sigma 0.5 --lbd 16 \\
        runs/mnist_table/mnist_lenet-small_sigma0.5_pre.pt runs/mnist_table/mnist_lenet-small_sigma0.5_macer.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from smoothcert.attacks import log_mean_softmax
from smoothcert.data import get_dataset
from smoothcert.models import load_checkpoint, read_checkpoint
from smoothcert.train import macer_terms, soft_margin


def diagnose(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, sigma: float, m: int, beta: float,
             gamma: float, lbd: float, seed: int) -> dict[str, Any]:
    """MACER's terms and hinge population on ``x`` [B, ...], ``y`` [B] with ``m`` draws (seeded)."""
    g = torch.Generator().manual_seed(seed)
    deltas = torch.randn((m, *x.shape), generator=g) * sigma
    logits = model((x.unsqueeze(0) + deltas).flatten(0, 1)).view(m, x.shape[0], -1)
    terms = macer_terms(logits, y, sigma=sigma, beta=beta, gamma=gamma)
    params = [p for p in model.parameters() if p.requires_grad]
    g_cl = torch.autograd.grad(terms.classification, params, retain_graph=True)
    g_rob = torch.autograd.grad(terms.robustness, params, retain_graph=True)
    norm_cl = torch.sqrt(sum((a**2).sum() for a in g_cl))
    norm_rob = torch.sqrt(sum((a**2).sum() for a in g_rob))
    cosine = sum((a * b).sum() for a, b in zip(g_cl, g_rob)) / (norm_cl * norm_rob).clamp_min(1e-30)
    with torch.no_grad():
        s = soft_margin(logits, y, beta=beta)
        flat = s.correct & s.unsaturated & (s.xi > gamma)
        active = s.correct & s.unsaturated & (s.xi <= gamma)
        smoothed_correct = (log_mean_softmax(logits).argmax(-1) == y).float().mean()
    return {
        "classification": round(terms.classification.item(), 4),
        "lbd_robustness": round(lbd * terms.robustness.item(), 4),
        "grad_norm_classification": round(norm_cl.item(), 4),
        "grad_norm_lbd_robustness": round(lbd * norm_rob.item(), 4),
        "grad_cosine": round(cosine.item(), 3),
        "soft_smoothed_accuracy": round(smoothed_correct.item(), 4),
        "frac_wrong": round(1 - s.correct.float().mean().item(), 4),
        "frac_saturated": round((s.correct & ~s.unsaturated).float().mean().item(), 4),
        "frac_beyond_gamma": round(flat.float().mean().item(), 4),
        "frac_active": round(active.float().mean().item(), 4),
        "mean_xi_active": round(s.xi[active].mean().item(), 3) if active.any() else None,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--sigma", type=float, required=True)
    p.add_argument("--lbd", type=float, default=16.0)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--beta", type=float, default=16.0)
    p.add_argument("--gamma", type=float, default=8.0)
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    data = get_dataset(args.dataset, split="train", root=args.data_root)
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[: args.images]
    x = torch.stack([data[int(i)][0] for i in pick])
    y = torch.tensor([int(data[int(i)][1]) for i in pick])
    lines = []
    for path in args.checkpoints:
        model, _ = load_checkpoint(path, map_location="cpu")
        model.train()  # as MACER sees it during training
        line = {"checkpoint": str(path), "sigma": args.sigma, "lbd": args.lbd, "m": args.m, "images": args.images,
                **diagnose(model, x, y, sigma=args.sigma, m=args.m, beta=args.beta, gamma=args.gamma, lbd=args.lbd,
                           seed=args.seed + 1),
                "history": [{k: round(r[k], 4) for k in ("epoch", "lr", "loss", "train_acc_noisy") if k in r}
                            for r in read_checkpoint(path)["extra"].get("history", [])]}
        print(json.dumps(line), flush=True)
        lines.append(line)
    return lines


if __name__ == "__main__":
    main()
