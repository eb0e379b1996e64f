"""HeatSmoothing penalty weight x learning rate on MNIST (issue #13): which ``gamma`` to default to.

The undefended baseline of ``benchmarks/heat.py`` (LeNet-small, first ``--train-size`` training
images, 3 epochs of clean cross-entropy; trained here if ``OUT/mnist/baseline.pt`` is missing, and
shared with heat.py when both use the same ``--out``) is fine-tuned with ``heat`` for one epoch
(n_T = 1, kappa 10, delta 0.1, SGD momentum 0.9, weight decay 1e-4, batch 128, fixed lr) for every
(gamma, lr) pair. For each: clean accuracy (10,000 test images, one pass), hard CERTIFY (n0 100,
``--n`` draws, alpha 0.001) on every ``--skip``-th test image (``--inputs``) with certified accuracy
and ACR, the terms of eq. 10 (softmax distance and penalty at the row's gamma) on a fixed batch
before and after, and the mean logit range (max - min over classes; a collapsing model's falls
towards 0). The first row is the baseline itself; ``--logit-gammas`` adds rows trained with
``distance="logits"`` (eq. 15, the authors' CIFAR-10 loss).

First line: the *why* of gamma -- on the baseline, the exact squared Frobenius norms of the input
Jacobian of the logits and of the softmax (autograd, one backward pass per class, on a fixed batch
of which half is noisy), against the sketch's estimate: the penalty of eq. 10 is on the logits.

Every configuration is cached in ``OUT/sweep/`` (a killed run resumes). JSON lines on stdout, a
markdown table on stderr and in ``OUT/sweep/summary.md``.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/heat_sweep.py --data-root ../shared/data \\
        --out runs/heat-cpu --gammas 1 0.1 0.01 0.001 --lrs 0.01 0.001 --logit-gammas 1 --n 2000 \\
        --inputs 20 --skip 500                                      # as run for BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import commit as code_commit
from heat import _clean_baseline, _meta

from smoothcert import SmoothedClassifier, get_noise
from smoothcert.data import get_dataset
from smoothcert.models import build_model, load_checkpoint
from smoothcert.train import TrainConfig, get_method, train
from smoothcert.train.heat import heat_terms, noisy_half


def _jacobian_frobenius2(model: torch.nn.Module, x: torch.Tensor, *, softmax: bool) -> torch.Tensor:
    """Exact ||d out / d x||_F^2 per input [B] (one backward pass per output)."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    out = out.softmax(dim=1) if softmax else out
    total = torch.zeros(len(x))
    for c in range(out.shape[1]):
        (g,) = torch.autograd.grad(out[:, c].sum(), x, retain_graph=True)
        total += g.flatten(1).pow(2).sum(dim=1)
    return total


def _terms(model, x, teacher_probs, sigma: float, gamma: float, seed: int) -> dict[str, float]:
    model.eval()
    t = heat_terms(model, x, teacher_probs, sigma=sigma, kappa=10, delta=0.1, gamma=gamma,
                   generator=torch.Generator().manual_seed(seed))
    return {"match": float(t.match.detach().mean()), "penalty": float(t.penalty.detach().mean())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--gammas", type=float, nargs="+", default=[1, 0.1, 0.03, 0.01, 0.003, 0.001, 0])
    p.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.001])
    p.add_argument("--logit-gammas", type=float, nargs="*", default=[1, 0.1],
                   help="gammas run with distance='logits' (eq. 15) at every lr")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--inputs", type=int, default=30)
    p.add_argument("--skip", type=int, default=333)
    args = p.parse_args(argv)
    # The baseline exactly as benchmarks/heat.py trains it (its defaults), so both share it.
    base_args = argparse.Namespace(arch="lenet-small", lr=0.05, epochs=3, batch=128, seed=0)
    work = Path(args.out) / "mnist"
    sweep = work / "sweep"
    sweep.mkdir(parents=True, exist_ok=True)
    tr = get_dataset("mnist", split="train", root=args.data_root).subset(torch.arange(args.train_size))
    te = get_dataset("mnist", split="test", root=args.data_root)
    _clean_baseline(tr, "mnist", base_args, torch.device("cpu"), work / "baseline.pt")
    baseline, _ = load_checkpoint(work / "baseline.pt")
    baseline.eval()
    noise = get_noise("gaussian", sigma=args.sigma)
    x_tr, _ = tr.tensors()
    x_tr = (x_tr.float() / 255 if x_tr.dtype == torch.uint8 else x_tr.float())[:128]
    x_te, y_te = te.tensors()
    x_te = x_te.float() / 255 if x_te.dtype == torch.uint8 else x_te.float()
    y_te = y_te.long()
    with torch.no_grad():
        teacher_probs = baseline(x_tr).softmax(dim=1)
    x_noisy = noisy_half(x_tr, noise, fraction=0.5, generator=torch.Generator().manual_seed(5))
    commit = code_commit()

    why_path = sweep / "why.json"
    if not why_path.exists():
        j_logits = _jacobian_frobenius2(baseline, x_noisy, softmax=False)
        j_soft = _jacobian_frobenius2(baseline, x_noisy, softmax=True)
        why = {"stage": "why", "batch": len(x_noisy), "frobenius2_logits_mean": float(j_logits.mean()),
               "frobenius2_softmax_mean": float(j_soft.mean()),
               "sigma2_over_2_times_logits": args.sigma**2 / 2 * float(j_logits.mean()),
               "terms_gamma1": _terms(baseline, x_noisy, teacher_probs, args.sigma, 1.0, 0), "commit": commit}
        why_path.write_text(json.dumps(why))
    print(why_path.read_text(), flush=True)

    idx = torch.arange(0, len(x_te), args.skip)[: args.inputs]
    rows: list[dict[str, Any]] = []
    configs = [(None, None, "none")] + [(g, lr, "softmax") for lr in args.lrs for g in args.gammas] + [
        (g, lr, "logits") for lr in args.lrs for g in args.logit_gammas]
    for gamma, lr, distance in configs:
        tag = "baseline" if gamma is None else f"g{gamma:g}_lr{lr:g}" + ("_logits" if distance == "logits" else "")
        cache = sweep / f"{tag}.json"
        if cache.exists():
            row = json.loads(cache.read_text())
        else:
            model = build_model("lenet-small", num_classes=10, in_channels=1, mean=list(tr.info.mean),
                                std=list(tr.info.std))
            model.load_state_dict(baseline.state_dict())
            t0 = time.perf_counter()
            if gamma is not None:  # else: the baseline itself, evaluated like the others
                train(model, tr, method=get_method("heat", gamma=gamma, distance=distance), noise=noise,
                      config=TrainConfig(epochs=1, batch_size=128, lr=lr, schedule="step", step_size=10**6,
                                         seed=1),
                      meta=_meta("mnist", tr.info, "lenet-small", args.sigma, training={"init": "baseline.pt"}),
                      checkpoint=sweep / f"{tag}.pt", resume=True, progress=False)
            train_s = time.perf_counter() - t0
            model.eval()
            with torch.inference_mode():
                logits = torch.cat([model(x_te[s: s + 1000]) for s in range(0, len(x_te), 1000)])
            clean = float((logits.argmax(1) == y_te).float().mean())
            spread = float((logits.max(1).values - logits.min(1).values).mean())
            cert = SmoothedClassifier(model, noise=noise, num_classes=10).certify(
                x_te[idx], n0=100, n=args.n, alpha=0.001, batch_size=1000, generator=torch.Generator().manual_seed(7))
            ok = cert.prediction == y_te[idx]
            row = {"gamma": gamma, "lr": lr, "distance": distance, "train_s": round(train_s, 1), "clean_acc": clean,
                   "logit_range": round(spread, 3),
                   "hard": {f"{r:g}": float((ok & (cert.radius >= r)).float().mean()) for r in (0, 0.25, 0.5)},
                   "acr": float(torch.where(ok, cert.radius, 0.0).mean()),
                   "terms_after": _terms(model, x_noisy, teacher_probs, args.sigma, gamma or 1.0, 0),
                   "terms_before": _terms(baseline, x_noisy, teacher_probs, args.sigma, gamma or 1.0, 0),
                   "n": args.n, "inputs": len(idx), "commit": commit}
            cache.write_text(json.dumps(row))
        print(json.dumps(row), flush=True)
        rows.append(row)
    lines = [("| distance | gamma | lr | clean acc. | hard cert. acc. r=0 / 0.25 / 0.5 | ACR | logit range | "
              "distance / penalty before | after |"), "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- | --- |"]
    for r in rows:
        b, a = r["terms_before"], r["terms_after"]
        g, lr = ("—", "—") if r["gamma"] is None else (f"{r['gamma']:g}", f"{r['lr']:g}")
        lines.append(f"| {r['distance']} | {g} | {lr} | {r['clean_acc']:.3f} | {r['hard']['0']:.2f} / "
                     f"{r['hard']['0.25']:.2f} / {r['hard']['0.5']:.2f} | {r['acr']:.3f} | {r['logit_range']:.2f} | "
                     f"{b['match']:.4f} / {b['penalty']:.4f} | {a['match']:.4f} / {a['penalty']:.4f} |")
    (sweep / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
