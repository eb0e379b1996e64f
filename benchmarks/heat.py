"""HeatSmoothing against stochastic smoothing on MNIST / Fashion-MNIST (issue #13 item 5).

For one sigma: an undefended baseline (clean cross-entropy), HeatSmoothing fine-tuned from that
baseline (``heat``: 1 epoch, n_T = 1; ``heat5``: n_T = 5, one epoch per step), Gaussian
augmentation (``gaussian``, the baseline's schedule) and SmoothAdv fine-tuned from it
(``smoothadv``). For each model:

* clean accuracy (one forward pass) on ``--acc-inputs`` test images;
* certified accuracy on every ``--skip``-th test image (``--inputs``): hard CERTIFY (n0, N,
  alpha), the soft certificates ``soft-phi`` and ``soft-lbound`` (one certify_soft sampling, both
  radii from the same confidence bounds), for HeatSmoothing models also CERTIFY with the class
  from one clean pass (the paper's variant, ``hard-clean``), and beside them -- never mixed in --
  the **heuristic** one-pass radius (the paper's L-bound of the network's own softmax);
* agreement of the one-pass prediction with the Monte Carlo smoothed prediction (argmax of class
  counts over ``--agree-n`` draws) on ``--agree-inputs`` test images, with a 95% Clopper-Pearson
  interval (the method's premise);
* PGD and DDN minimal l2 distances (Table 3/5 layout) on ``--attack-inputs`` images: the base
  network for the undefended and HeatSmoothing models (eq. 8), the soft smoothed model with
  ``--attack-m`` fresh draws per step for the stochastic ones (eq. 9); PGD's distance is the
  smallest eps of a grid at which it succeeds; summarised by :mod:`smoothcert.analysis.distances`
  (median / mean with failures at the budget 4, % attacked curves as PNG);
* seconds per prediction (one forward pass vs PREDICT with ``--predict-n`` draws) and per
  certificate (one-pass radius vs CERTIFY / certify_soft with N draws), one image at a time,
  interleaved image by image in this process, medians over ``--timing-inputs`` images -- the
  paper's Table 2.

Models are trained and evaluated one after the other; every stage is cached in ``--out``
(checkpoints, one JSON per model and stage: accuracy, certify, timing, attack), so an interrupted
run keeps its finished rows and continues where it stopped. JSON lines on stdout; ``summary.md``
(rewritten after every model) and the PNGs in ``--out``.

    PYTHONPATH=src python benchmarks/heat.py --data-root ../shared/data --out runs/heat            # GPU
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/heat.py --data-root ../shared/data \\
        --out runs/heat-cpu --datasets mnist fashion-mnist --train-size 6000 --n 10000 --inputs 20 \\
        --skip 500 --attack-inputs 20 --attack-m 8 --timing-inputs 5                                # CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import commit as code_commit
from common import train_clean
from torch import nn

from smoothcert import SmoothedClassifier, get_noise
from smoothcert.analysis import attacked_curve, robustness_row, robustness_table
from smoothcert.attacks import SmoothedSoft, adversarial_l2, minimal_l2, pgd_l2
from smoothcert.data import get_dataset
from smoothcert.models import CheckpointMeta, build_model, load_checkpoint, save_checkpoint
from smoothcert.soft import certify_clean_class, certify_soft, deterministic_radius, soft_radius
from smoothcert.stats import clopper_pearson_interval
from smoothcert.train import TrainConfig, get_method, train

RADII = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
PGD_EPS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0]
MODELS = ["baseline", "gaussian", "heat", "heat5", "smoothadv"]
HEAT_MODELS = ("heat", "heat5")
#: Paper numbers where a setting matches ours in kind (ImageNet / CIFAR-10, so not the same data):
#: Table 2 seconds per classification, Table 3 (ImageNet, sigma 0.25) and Table 5 (CIFAR-10,
#: sigma 0.1) median / mean l2 distances.
PAPER = {
    "table2": {"deterministic": {"cifar10_cpu": 0.0049, "cifar10_gpu": 0.0080, "imagenet_cpu": 0.0615,
                                 "imagenet_gpu": 0.0113},
               "stochastic": {"cifar10_cpu": 0.0480, "cifar10_gpu": 0.0399, "imagenet_cpu": 0.1631,
                              "imagenet_gpu": 0.0932}},
    "table5_cifar10": {"heat": {"lbound": (0.094, 0.085), "pgd": (0.7736, 0.9023), "ddn": (0.5358, 0.6361)},
                       "smoothadv": {"lbound": (0.090, 0.078), "pgd": (0.7697, 1.3241), "ddn": (0.4812, 0.6208)},
                       "gaussian": {"lbound": (0.087, 0.081), "pgd": (0.7425, 1.2677), "ddn": (0.4546, 0.5558)}},
}


def _meta(name: str, info, arch: str, sigma: float, noise: str = "gaussian", training=None) -> CheckpointMeta:
    return CheckpointMeta(arch=arch, dataset=name, num_classes=info.num_classes, in_channels=info.input_shape[0],
                          input_size=list(info.input_shape[1:]), mean=list(info.mean), std=list(info.std),
                          noise=noise, sigma=sigma, training=training or {})


def _build(arch: str, info, device) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, num_classes=info.num_classes, in_channels=info.input_shape[0], mean=list(info.mean),
                       std=list(info.std)).to(device)


def _clean_baseline(train_set, name: str, args, device, path: Path) -> float:
    """Cross-entropy on clean images (no noise): the undefended model. Returns training seconds."""
    if path.exists():
        return float(torch.load(path, map_location="cpu", weights_only=False).get("extra", {}).get("seconds", 0.0))
    info = train_set.info
    model = _build(args.arch, info, device)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    images, labels = train_set.tensors()
    seconds = train_clean(model, images, labels, optimizer=opt, epochs=args.epochs, batch_size=args.batch,
                          seed=args.seed, device=device)
    meta = _meta(name, info, args.arch, 0.0, noise="none",
                 training={"method": "clean", "epochs": args.epochs, "lr": args.lr, "train_size": len(train_set)})
    meta.epoch = args.epochs
    save_checkpoint(path, model, meta=meta, extra={"seconds": seconds})
    return seconds


def _train_method(train_set, name: str, model_name: str, args, device, work: Path) -> float:
    """gaussian / heat / heat5 / smoothadv through smoothcert.train (resumable checkpoints)."""
    info = train_set.info
    path = work / f"{model_name}.pt"
    noise = get_noise("gaussian", sigma=args.sigma)
    model = _build(args.arch, info, device)
    init = None
    if model_name == "gaussian":
        method, epochs, lr = get_method("gaussian"), args.epochs, args.lr
    elif model_name in HEAT_MODELS:
        steps = 1 if model_name == "heat" else args.heat_steps
        gamma = {} if args.heat_gamma is None else {"gamma": args.heat_gamma}
        method = get_method("heat", kappa=args.kappa, delta=0.1, steps=steps, **gamma)
        epochs, lr, init = steps, args.heat_lr, work / "baseline.pt"
    elif model_name == "smoothadv":
        method = get_method("smoothadv", eps=1.0, steps=args.smoothadv_steps, m=args.smoothadv_m, warmup=1)
        epochs, lr, init = 1, args.heat_lr, work / "gaussian.pt"
    else:
        raise ValueError(model_name)
    if init is not None and not path.exists():
        model.load_state_dict(load_checkpoint(init, map_location=device)[0].state_dict())
    config = TrainConfig(epochs=epochs, batch_size=args.batch, lr=lr, schedule="step", step_size=10**6,
                         seed=args.seed + 1)
    training = {"init": str(init)} if init is not None else {}
    history = train(model, train_set, method=method, noise=noise, config=config,
                    meta=_meta(name, info, args.arch, args.sigma, training=training), checkpoint=path, resume=True,
                    progress=not args.quiet)
    return float(sum(h["seconds"] for h in history))


def _certified_curve(pred: torch.Tensor, radius: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    ok = pred == labels
    return {f"{r:g}": round(float((ok & (radius >= r)).float().mean()), 4) for r in RADII}


def _stage(work: Path, model_name: str, stage: str, fn) -> dict[str, Any]:
    """``fn()``'s JSON, cached in ``work/MODEL.STAGE.json`` (MODEL with ``--eval-tag``): an
    interrupted run keeps finished stages."""
    path = work / f"{model_name}.{stage}.json"
    if path.exists():
        return json.loads(path.read_text())
    out = fn()
    path.write_text(json.dumps(out))
    return out


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _evaluate(model_name: str, ckpt: Path, test_set, args, device, work: Path) -> dict[str, Any]:
    model, _ = load_checkpoint(ckpt, map_location=device)
    model.eval()
    noise = get_noise("gaussian", sigma=args.sigma)
    k = test_set.info.num_classes
    images, labels = test_set.tensors()
    images = images.float().div(255) if images.dtype == torch.uint8 else images.float()
    labels = labels.long()
    smoothed = SmoothedClassifier(model, noise=noise, num_classes=k)

    def gen() -> torch.Generator:
        return torch.Generator(device=device).manual_seed(args.seed + 7)

    idx = torch.arange(0, len(images), args.skip)[: args.inputs]  # certification images
    x, y = images[idx], labels[idx]

    def accuracy() -> dict[str, Any]:
        # Clean accuracy (one forward pass), and the agreement of the one-pass prediction with the
        # Monte Carlo smoothed prediction (argmax of class counts) -- the method's premise.
        acc_idx = torch.arange(min(args.acc_inputs, len(images)))
        with torch.inference_mode():
            clean_pred = torch.cat([model(images[acc_idx[s:s + 500]].to(device)).argmax(1).cpu()
                                    for s in range(0, len(acc_idx), 500)])
        ag = min(args.agree_inputs, len(images))
        counts = smoothed.counts(images[:ag], n=args.agree_n, batch_size=args.certify_batch,
                                 generator=torch.Generator(device=device).manual_seed(args.seed)).cpu()
        with torch.inference_mode():
            one_pass = model(images[:ag].to(device)).argmax(1).cpu()
        agree = int((counts.argmax(1) == one_pass).sum())
        lo, hi = clopper_pearson_interval(agree, ag, 0.05)
        return {"clean_accuracy": round(float((clean_pred == labels[acc_idx]).float().mean()), 4),
                "agreement": {"rate": round(agree / ag, 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
                              "inputs": ag, "n": args.agree_n}}

    def certify() -> dict[str, Any]:
        hard = smoothed.certify(x, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.certify_batch,
                                generator=gen())
        soft = certify_soft(model, x, noise=noise, num_classes=k, n0=args.n0, n=args.n, alpha=args.alpha,
                            batch_size=args.certify_batch, generator=gen(), bound="phi")
        lbound = soft_radius(soft.g_lower, soft.g_upper, sigma=args.sigma, bound="lbound")
        det = deterministic_radius(model, x, sigma=args.sigma, num_classes=k)
        certified = {"hard": _certified_curve(hard.prediction, hard.radius, y),
                     "soft-phi": _certified_curve(soft.prediction, soft.radius, y),
                     "soft-lbound": _certified_curve(soft.prediction, lbound, y)}
        acr = {"hard": hard.radius.where(hard.prediction == y, torch.zeros(())).mean(),
               "soft-phi": soft.radius.where(soft.prediction == y, torch.zeros(())).mean(),
               "soft-lbound": lbound.where(soft.prediction == y, torch.zeros(())).mean()}
        if model_name in HEAT_MODELS:
            hc = certify_clean_class(model, x, noise=noise, num_classes=k, n=args.n, alpha=args.alpha,
                                     batch_size=args.certify_batch, generator=gen())
            certified["hard-clean"] = _certified_curve(hc.prediction, hc.radius, y)
            acr["hard-clean"] = hc.radius.where(hc.prediction == y, torch.zeros(())).mean()
        return {"certified": certified, "acr": {c: round(float(v), 4) for c, v in acr.items()},
                "heuristic_deterministic": _certified_curve(det.prediction, det.heuristic_radius, y),
                "lbound_certified": [float(v) for v in lbound], "lbound_heuristic": [float(v) for v in
                                                                                       det.heuristic_radius],
                "certify_inputs": len(idx)}

    def _time_one(xi: torch.Tensor) -> dict[str, float]:
        def one_pass():
            with torch.inference_mode():
                return model(xi.to(device)).argmax(1).cpu()

        return {
            "predict_deterministic": _median_seconds(one_pass, 5),
            f"predict_stochastic_n{args.predict_n}": _median_seconds(
                lambda: smoothed.predict(xi, n=args.predict_n, alpha=args.alpha, batch_size=args.certify_batch,
                                         generator=gen()), 1),
            "certify_deterministic_heuristic": _median_seconds(
                lambda: deterministic_radius(model, xi, sigma=args.sigma, num_classes=k), 5),
            f"certify_hard_n{args.n}": _median_seconds(
                lambda: smoothed.certify(xi, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.certify_batch,
                                         generator=gen()), 1),
            f"certify_soft_n{args.n}": _median_seconds(
                lambda: certify_soft(model, xi, noise=noise, num_classes=k, n0=args.n0, n=args.n, alpha=args.alpha,
                                     batch_size=args.certify_batch, generator=gen()), 1),
        }

    def timing() -> dict[str, Any]:
        # Seconds per prediction and per certificate, one image at a time, all measured here in
        # this process and interleaved image by image (so a load change on the shared machine hits
        # the deterministic and the Monte Carlo figures alike); medians over the images.
        per: dict[str, list[float]] = {}
        with torch.inference_mode():
            model(images[:1].to(device))  # warm-up
        for i in idx[: args.timing_inputs]:
            for name_, seconds in _time_one(images[i: i + 1]).items():
                per.setdefault(name_, []).append(seconds)
        return {"seconds": {name_: float(np.median(v)) for name_, v in per.items()},
                "timing_inputs": min(args.timing_inputs, len(idx)), "threads": torch.get_num_threads()}

    def attack() -> dict[str, Any]:
        # Deterministic (eq. 8) for the undefended and HeatSmoothing networks, the soft smoothed model
        # with fresh draws per step (eq. 9) for the stochastic ones. Distances follow
        # smoothcert.analysis.distances: 0 where already wrong, inf where not broken within 4.
        a_idx = idx[: args.attack_inputs]
        xa, ya = images[a_idx].to(device), labels[a_idx].to(device)
        stochastic = model_name in ("gaussian", "smoothadv")
        target = SmoothedSoft(model, noise, m=args.attack_m, generator=args.seed) if stochastic else model
        ddn_d = minimal_l2(target, xa, ya, steps=args.attack_steps, init_eps=1.0, eps=max(PGD_EPS),
                           generator=args.seed).cpu()
        pgd_d = adversarial_l2(target, xa, ya, xa).cpu()  # 0 where already wrong, else inf
        for eps in PGD_EPS:
            adv = pgd_l2(target, xa, ya, eps=eps, steps=args.attack_steps, step_size=2.5 * eps / args.attack_steps,
                         generator=args.seed)
            hit = adversarial_l2(target, xa, ya, adv).cpu()
            pgd_d = torch.where(torch.isinf(pgd_d) & torch.isfinite(hit), torch.full_like(pgd_d, eps), pgd_d)
        return {"target": f"smoothed, m = {args.attack_m}" if stochastic else "network", "inputs": len(a_idx),
                "ddn": [float(v) for v in ddn_d], "pgd": [float(v) for v in pgd_d]}

    out: dict[str, Any] = {"model": model_name}
    for stage, fn in (("accuracy", accuracy), ("certify", certify), ("timing", timing), ("attack", attack)):
        tagged = model_name + args.eval_tag
        out.update(_stage(work, tagged, stage, fn) if stage != "attack" else {"attack": _stage(
            work, tagged, stage, fn)})
    a = out["attack"]
    for lb_kind in ("certified", "heuristic"):
        row = robustness_row(model_name, pgd=a["pgd"], ddn=a["ddn"], lbound=out[f"lbound_{lb_kind}"],
                             budget=max(PGD_EPS), lbound_kind=lb_kind, attacked_as=a["target"])
        out[f"table35_{lb_kind}"] = {"lbound_median": round(row.lbound_median, 4),
                                     "lbound_mean": round(row.lbound_mean, 4),
                                     "pgd": vars(row.pgd), "ddn": vars(row.ddn)}
    return out


def _plot_attacks(rows: list[dict[str, Any]], path: Path, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    grid = list(np.linspace(0, max(PGD_EPS), 200))
    for ax, attack in zip(axes, ("pgd", "ddn")):
        for row in rows:
            curve = attacked_curve(row["attack"][attack], grid)
            ax.plot(grid, [100 * c for c in curve], label=f"{row['model']} ({row['attack']['target']})")
        ax.set_xlabel("l2 distance")
        ax.set_ylabel("% attacked")
        ax.set_title(f"{dataset}: {attack.upper()}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(rows: list[dict[str, Any]], args, dataset: str) -> str:
    lines = [(f"### {dataset}, sigma {args.sigma}: certified accuracy (N = {args.n}, n0 = {args.n0}, "
              f"alpha = {args.alpha}, {rows[0]['certify_inputs']} test images)"), "",
             "| model | certificate | " + " | ".join(f"{r:g}" for r in RADII) + " | ACR |",
             "| --- | --- | " + " | ".join("---:" for _ in RADII) + " | ---: |"]
    for row in rows:
        for cert, curve in row["certified"].items():
            acr = row["acr"].get(cert, "")
            lines.append(f"| {row['model']} | {cert} | " + " | ".join(f"{curve[f'{r:g}']:.2f}" for r in RADII)
                         + f" | {acr} |")
    lines += ["", "**Heuristic, not certified**: the one-pass radius (L-bound of the network's own softmax)",
              "", "| model | " + " | ".join(f"{r:g}" for r in RADII) + " |",
              "| --- | " + " | ".join("---:" for _ in RADII) + " |"]
    for row in rows:
        c = row["heuristic_deterministic"]
        lines.append(f"| {row['model']} | " + " | ".join(f"{c[f'{r:g}']:.2f}" for r in RADII) + " |")
    lines += ["", "| model | clean acc. | one-pass vs MC agreement [95% CI] |", "| --- | ---: | --- |"]
    for row in rows:
        ag = row["agreement"]
        lines.append(f"| {row['model']} | {row['clean_accuracy']:.3f} | {ag['rate']:.3f} [{ag['ci95'][0]:.3f}, "
                     f"{ag['ci95'][1]:.3f}] |")
    for kind in ("certified", "heuristic"):
        table = robustness_table([
            robustness_row(row["model"], pgd=row["attack"]["pgd"], ddn=row["attack"]["ddn"],
                           lbound=row[f"lbound_{kind}"], budget=max(PGD_EPS), lbound_kind=kind,
                           attacked_as=row["attack"]["target"]) for row in rows])
        lines += ["", f"Table 3/5 layout, L-bound {kind} ({rows[0]['attack']['inputs']} images attacked):", "",
                  table]
    lines += ["", ("| model | s / prediction, one pass | s / prediction, PREDICT | s / certificate, one pass "
                   "(heuristic) | s / certificate, Monte Carlo |"), "| --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        s = row["seconds"]
        mc = ", ".join(f"{k.removeprefix('certify_')}: {v:.3f}" for k, v in s.items()
                       if k.startswith("certify_") and "heuristic" not in k)
        sto = next(v for k, v in s.items() if k.startswith("predict_stochastic"))
        lines.append(f"| {row['model']} | {s['predict_deterministic']:.5f} | {sto:.4f} | "
                     f"{s['certify_deterministic_heuristic']:.5f} | {mc} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--datasets", nargs="+", default=["mnist"], choices=["mnist", "fashion-mnist"])
    p.add_argument("--out", required=True)
    p.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--arch", default="lenet-small")
    p.add_argument("--train-size", type=int, default=None, help="first N training images (default: all)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the baseline and of Gaussian augmentation")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--heat-lr", type=float, default=0.01, help="fixed lr of the fine-tuning (the paper's 0.01)")
    p.add_argument("--heat-steps", type=int, default=5, help="n_T of the heat5 model")
    p.add_argument("--kappa", type=int, default=10)
    p.add_argument("--heat-gamma", type=float, default=None,
                   help="penalty weight of the heat models (default: the method's; 1 = eq. 10 as printed, "
                        "see BENCHMARKS.md and benchmarks/heat_sweep.py)")
    p.add_argument("--smoothadv-steps", type=int, default=2)
    p.add_argument("--smoothadv-m", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=None, help="N of CERTIFY (default 100000 on a GPU, 10000 on a CPU)")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--inputs", type=int, default=100)
    p.add_argument("--skip", type=int, default=100)
    p.add_argument("--acc-inputs", type=int, default=10000)
    p.add_argument("--agree-inputs", type=int, default=500)
    p.add_argument("--agree-n", type=int, default=100)
    p.add_argument("--attack-inputs", type=int, default=50)
    p.add_argument("--attack-steps", type=int, default=20)
    p.add_argument("--attack-m", type=int, default=16)
    p.add_argument("--predict-n", type=int, default=100)
    p.add_argument("--timing-inputs", type=int, default=10)
    p.add_argument("--certify-batch", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--eval-tag", default="",
                   help="suffix of the evaluation caches, summary and plot: evaluate the same checkpoints "
                        "again with other settings (e.g. more --inputs) without overwriting the first")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.n is None:
        args.n = 100_000 if device.type == "cuda" else 10_000
    rows_all = []
    commit = code_commit()  # the code this process imported (later commits in the work tree do not change it)
    for dataset in args.datasets:
        work = Path(args.out) / dataset
        work.mkdir(parents=True, exist_ok=True)
        train_set = get_dataset(dataset, split="train", root=args.data_root)
        if args.train_size is not None:
            train_set = train_set.subset(torch.arange(args.train_size))
        test_set = get_dataset(dataset, split="test", root=args.data_root)
        train_seconds: dict[str, float] = {}
        rows = []
        # Model by model, each trained (with what it starts from) and evaluated before the next, so a
        # run stopped part-way leaves finished rows, and a restart resumes from the cached stages.
        for m in args.models:
            if m in ("baseline", *HEAT_MODELS) and "baseline" not in train_seconds:
                train_seconds["baseline"] = _clean_baseline(train_set, dataset, args, device, work / "baseline.pt")
            if m in ("gaussian", "smoothadv") and "gaussian" not in train_seconds:
                train_seconds["gaussian"] = _train_method(train_set, dataset, "gaussian", args, device, work)
            if m not in ("baseline", "gaussian"):
                train_seconds[m] = _train_method(train_set, dataset, m, args, device, work)
            cache = work / f"{m}{args.eval_tag}.eval.json"
            if cache.exists():
                row = json.loads(cache.read_text())
            else:
                row = _evaluate(m, work / f"{m}.pt", test_set, args, device, work)
                row.update({"dataset": dataset, "sigma": args.sigma, "train_seconds": train_seconds.get(m),
                            "device": str(device), "host": platform.node(), "commit": commit,
                            "settings": {k: v for k, v in vars(args).items() if k not in ("quiet",)}})
                cache.write_text(json.dumps(row))
            print(json.dumps(row), flush=True)
            rows.append(row)
            _plot_attacks(rows, work / f"attack_curves{args.eval_tag}.png", dataset)
            (work / f"summary{args.eval_tag}.md").write_text(_markdown(rows, args, dataset) + "\n")
        print(_markdown(rows, args, dataset), file=sys.stderr)
        rows_all += rows
    return rows_all


if __name__ == "__main__":
    main()
