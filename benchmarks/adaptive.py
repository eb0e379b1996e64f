"""Samples and radius lost by the adaptive modes, against fixed-N CERTIFY on the same inputs.

Protocol (issue #3): a LeNet trained with Gaussian augmentation on MNIST (the full training set
from ``--data-root`` when present, else the embedded subset), for each sigma; the test images
every ``--skip``-th (500 at the defaults on the 10,000 MNIST test images); n0 = 100,
alpha = 0.001; fixed N = ``--max-n`` (100,000) as the baseline. For each input:

* ``planned``: :func:`smoothcert.adaptive.certify_planned` with ``--radius-loss``; reports mean
  samples (pilot included) and the mean and max radius change against the fixed-N radius.
* ``certify_at``: :func:`smoothcert.adaptive.certify_at` on the radius grid 0, 0.25, ..., 2.0 with
  stages 1k/10k/max_n; reports mean samples and the largest gap (in points) between its certified
  accuracy and fixed N's at any grid radius.
* ``certify_at_auto``: the same with ``stages="auto"`` (:func:`smoothcert.adaptive.grid_stages`:
  where unanimous draws first certify each grid radius), and the lower bound on the mean samples
  of *any* level-alpha test that certifies what fixed N certifies (``valid_test_floor``): an input
  certified at grid radius r after n draws that all agree needs pA_needed(r)^n <= alpha.

Targets (issue #3): planned <= 1/5 of fixed-N samples with mean radius loss <= 0.02;
certify_at >= 10x fewer samples with certified accuracy within 0.5 points at every grid radius.

One JSON line per (sigma, mode) on stdout; per-input results are kept in ``--workdir``, so an
interrupted run resumes where it stopped. Example (GPU, all defaults, a few minutes on an H100):

    PYTHONPATH=src python benchmarks/adaptive.py --data-root ../shared/data --device cuda

A reduced CPU run (documented in BENCHMARKS.md with its settings):

    PYTHONPATH=src python benchmarks/adaptive.py --data-root ../shared/data --max-n 10000 \\
        --stages 1000 10000 --inputs 100 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from smoothcert import SmoothedClassifier, get_noise
from smoothcert.adaptive import certify_at, certify_planned, grid_stages, required_p_lower
from smoothcert.data import get_dataset
from smoothcert.runs.certify import select_indices
from smoothcert.rng import input_seed
from smoothcert.models import CheckpointMeta, build_model
from smoothcert.train import TrainConfig, get_method, train

RADII = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]


def _data(root: str | None):
    if root and (Path(root) / "MNIST" / "raw").is_dir():
        return "mnist", get_dataset("mnist", split="train", root=root), get_dataset("mnist", split="test", root=root)
    return "embedded", get_dataset("embedded", split="train"), get_dataset("embedded", split="test")


def _model(train_set, name: str, sigma: float, args, device: torch.device, workdir: Path):
    info = train_set.info
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=10, in_channels=1, mean=list(info.mean), std=list(info.std)).to(device)
    meta = CheckpointMeta(arch=args.arch, dataset=name, num_classes=10, in_channels=1, input_size=28,
                          mean=list(info.mean), std=list(info.std), noise="gaussian", sigma=sigma)
    config = TrainConfig(epochs=args.epochs, batch_size=128, lr=0.05, schedule="cosine", seed=0)
    t0 = time.perf_counter()
    train(model, train_set, method=get_method("gaussian"), noise=get_noise("gaussian", sigma=sigma), config=config,
          meta=meta, checkpoint=workdir / f"lenet_{name}_sigma{sigma:g}.pt", resume=True, progress=False)
    return model.eval(), time.perf_counter() - t0


def _read_cache(path: Path) -> dict[int, dict]:
    """Per-input records already in ``path``; a torn last line (a kill mid-write) is dropped from the file."""
    cache: dict[int, dict] = {}
    if not path.exists():
        return cache
    lines = path.read_text().splitlines(keepends=True)
    for line in lines:
        if line.endswith("\n"):
            rec = json.loads(line)
            cache[int(rec.pop("idx"))] = rec
    if lines and not lines[-1].endswith("\n"):
        path.write_text("".join(lines[:-1]))
    return cache


def _one_input(smoothed: SmoothedClassifier, xi: torch.Tensor, i: int, args, batch: int, stages: list[int]) -> dict:
    """Fixed-N CERTIFY, the planned mode and certify_at on one input ``[1, C, H, W]``, each with its own seed."""
    seconds = {}
    t0 = time.perf_counter()
    c = smoothed.certify(xi, n0=args.n0, n=args.max_n, alpha=args.alpha, batch_size=batch,
                         generator=input_seed(0, i))
    seconds["fixed"] = time.perf_counter() - t0
    rec = {"fixed_r": float(c.radius[0]), "fixed_pred": int(c.prediction[0])}
    t0 = time.perf_counter()
    c = certify_planned(smoothed, xi, n0=args.n0, max_n=args.max_n, alpha=args.alpha, batch_size=batch,
                        radius_loss=args.radius_loss, generator=input_seed(1, i))
    seconds["planned"] = time.perf_counter() - t0
    rec |= {"planned_r": float(c.radius[0]), "planned_pred": int(c.prediction[0]),
            "planned_n": int(c.n_used[0]) + args.n0}
    t0 = time.perf_counter()
    a = certify_at(smoothed, xi, RADII, n0=args.n0, alpha=args.alpha, batch_size=batch, stages=stages,
                   generator=input_seed(2, i))
    seconds["certify_at"] = time.perf_counter() - t0
    return rec | {"at_n": int(a.n_used[0]) + args.n0, "at_cert": a.certified[0].tolist(),
                  "at_pred": int(a.prediction[0]), "seconds": seconds}


def _auto_input(smoothed: SmoothedClassifier, xi: torch.Tensor, i: int, args, batch: int) -> dict:
    """certify_at with stages="auto" on one input (its own seed)."""
    t0 = time.perf_counter()
    a = certify_at(smoothed, xi, RADII, n0=args.n0, alpha=args.alpha, batch_size=batch, stages="auto",
                   max_n=args.max_n, generator=input_seed(3, i))
    return {"auto_n": int(a.n_used[0]) + args.n0, "auto_cert": a.certified[0].tolist(),
            "auto_pred": int(a.prediction[0]), "auto_seconds": time.perf_counter() - t0,
            "auto_stages": _auto_stages(smoothed, args)}


def _auto_stages(smoothed: SmoothedClassifier, args) -> list[int]:
    return grid_stages(smoothed.noise, RADII, alpha=args.alpha, max_n=args.max_n)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="lenet")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--inputs", type=int, default=500)
    p.add_argument("--skip", type=int, default=20)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--max-n", type=int, default=100_000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--radius-loss", type=float, default=0.02)
    p.add_argument("--stages", type=int, nargs="+", default=[1000, 10_000, 100_000])
    p.add_argument("--batch", type=int, default=None, help="rows per forward pass (default 250 on CPU, 10000 on GPU)")
    p.add_argument("--workdir", default="runs/bench_adaptive")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    batch = args.batch or (250 if device.type == "cpu" else 10_000)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    name, train_set, test_set = _data(args.data_root)
    idx = select_indices(len(test_set), skip=args.skip if len(test_set) >= args.skip * args.inputs else 1,
                         max_count=args.inputs)
    x = torch.stack([test_set[i][0] for i in idx])
    y = torch.tensor([int(test_set[i][1]) for i in idx])
    stages = sorted(set(args.stages) | {args.max_n})
    out = []
    for sigma in args.sigmas:
        model, train_s = _model(train_set, name, sigma, args, device, workdir)
        smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=sigma), num_classes=10)
        # One JSON line per input in the work directory: an interrupted run keeps what it finished
        # and a rerun with the same settings only does the rest.
        cache_path = workdir / (f"inputs_{name}_{args.arch}_e{args.epochs}_sigma{sigma:g}_n{args.max_n}"
                                f"_n0{args.n0}_a{args.alpha:g}_s{'-'.join(map(str, stages))}_b{batch}"
                                f"_rl{args.radius_loss:g}.jsonl")
        cache = _read_cache(cache_path)
        with cache_path.open("a") as cache_file:
            for j, i in enumerate(tqdm(idx, desc=f"adaptive sigma={sigma:g}", unit="input")):
                if i not in cache:
                    cache[i] = _one_input(smoothed, x[j : j + 1], i, args, batch, stages)
                if cache[i].get("auto_stages") != _auto_stages(smoothed, args):  # added later / stages changed
                    cache[i] |= _auto_input(smoothed, x[j : j + 1], i, args, batch)
                    cache_file.write(json.dumps({"idx": i} | cache[i]) + "\n")  # the last line per idx wins
                    cache_file.flush()
        rec = [cache[i] for i in idx]
        t = {mode: sum(r["seconds"][mode] for r in rec) for mode in ("fixed", "planned", "certify_at")}
        fixed_r, fixed_pred = [r["fixed_r"] for r in rec], [r["fixed_pred"] for r in rec]
        planned_r, planned_pred = [r["planned_r"] for r in rec], [r["planned_pred"] for r in rec]
        planned_n, at_n = [r["planned_n"] for r in rec], [r["at_n"] for r in rec]
        at_cert, at_pred = [np.array(r["at_cert"], dtype=bool) for r in rec], [r["at_pred"] for r in rec]
        auto_n = [r["auto_n"] for r in rec]
        auto_cert = np.stack([np.array(r["auto_cert"], dtype=bool) for r in rec])
        auto_ok = np.array([r["auto_pred"] for r in rec]) == y.numpy()
        fixed_r, planned_r = np.array(fixed_r), np.array(planned_r)
        fixed_ok = np.array(fixed_pred) == y.numpy()
        planned_ok = np.array(planned_pred) == y.numpy()
        at_ok = np.array(at_pred) == y.numpy()
        # radius of a wrong or abstained prediction counts as 0, as in certified accuracy
        change = np.where(fixed_ok, fixed_r, 0) - np.where(planned_ok, planned_r, 0)
        fixed_acc = np.array([np.mean(fixed_ok & (fixed_r >= r)) for r in RADII])
        at_acc = (np.stack(at_cert) & at_ok[:, None]).mean(axis=0)
        auto_acc = (auto_cert & auto_ok[:, None]).mean(axis=0)
        # Floor for any valid test: an input fixed N certifies at grid radius r (correctly) needs at
        # least ln(alpha) / ln(pA_needed(r)) draws, even if all agree; others need at least n0.
        need = required_p_lower(smoothed.noise, RADII).numpy()  # < 1 at every radius fixed N certified
        top = [max((k for k, r in enumerate(RADII) if ok and fr >= r), default=None)
               for ok, fr in zip(fixed_ok, fixed_r)]
        floor = np.mean([args.n0 + (math.ceil(math.log(args.alpha) / math.log(need[k])) if k is not None else 0)
                         for k in top])
        common = {"benchmark": "adaptive", "device": str(device), "device_name": torch.cuda.get_device_name(device)
                  if device.type == "cuda" else platform.processor() or platform.machine(), "torch": torch.__version__,
                  "dataset": name, "arch": args.arch, "train_epochs": args.epochs, "train_seconds": round(train_s, 1),
                  "sigma": sigma, "inputs": len(idx), "n0": args.n0, "max_n": args.max_n, "alpha": args.alpha,
                  "batch": batch}
        fixed_samples = args.max_n + args.n0
        rows = [
            common | {"mode": "fixed", "mean_samples": fixed_samples, "seconds": round(t["fixed"], 2),
                      "acr": float(np.mean(np.where(fixed_ok, fixed_r, 0)))},
            common | {"mode": "planned", "radius_loss_setting": args.radius_loss,
                      "mean_samples": float(np.mean(planned_n)),
                      "samples_fraction": float(np.mean(planned_n)) / fixed_samples,
                      "mean_radius_change": float(np.mean(change)), "max_radius_change": float(np.max(change)),
                      "seconds": round(t["planned"], 2)},
            common | {"mode": "certify_at", "stages": stages, "radii": RADII, "mean_samples": float(np.mean(at_n)),
                      "samples_ratio": fixed_samples / float(np.mean(at_n)),
                      "certified_accuracy_fixed": fixed_acc.round(4).tolist(),
                      "certified_accuracy_at": at_acc.round(4).tolist(),
                      "max_gap_points": float(100 * np.max(np.abs(fixed_acc - at_acc))),
                      "seconds": round(t["certify_at"], 2)},
            common | {"mode": "certify_at_auto", "radii": RADII,
                      "stages": _auto_stages(smoothed, args),
                      "mean_samples": float(np.mean(auto_n)), "samples_ratio": fixed_samples / float(np.mean(auto_n)),
                      "valid_test_floor_mean_samples": float(floor),
                      "valid_test_floor_ratio": fixed_samples / float(floor),
                      "certified_accuracy_fixed": fixed_acc.round(4).tolist(),
                      "certified_accuracy_at": auto_acc.round(4).tolist(),
                      "max_gap_points": float(100 * np.max(np.abs(fixed_acc - auto_acc))),
                      "seconds": round(sum(r["auto_seconds"] for r in rec), 2)},
        ]
        for row in rows:
            print(json.dumps(row), flush=True)
        out += rows
    return out


if __name__ == "__main__":
    main()
