"""Step size and steps per level of the multi-step (annealed MAP) denoiser, chosen by denoising PSNR.

Algorithm 1 of the score-based denoised smoothing paper (../shared/papers/score-based-denoised-smoothing.txt)
leaves alpha and T to the user and the paper prints no values. This benchmark measures them on one
score network (multi-scale DSM, trained once on ``--dataset``): for each noise (Gaussian, Laplace,
uniform) and sigma, the mean PSNR of ``clamp(D(x + delta), 0, 1)`` against ``x`` over ``--images``
test images (one seeded noise draw each, the same draws for every setting), for every T in
``--steps`` and every step ratio ``c`` in ``--ratios``, where ``c = alpha / sigma_L^2`` is the
fraction of the way to its level's Tweedie estimate that each score step moves (``alpha`` itself
depends on the ladder's last level, so ``c`` is what carries over between ladders). For Gaussian
noise the one-step (Tweedie) PSNR is reported alongside.

One JSON line per (noise, sigma, T, c) on stdout, then a markdown table of the best setting per
(noise, sigma) next to the default (``MULTISTEP_DEFAULTS``). Example (CPU, a few minutes):

    PYTHONPATH=src python benchmarks/multistep_tuning.py --data-root ../shared/data --limit 10000 --epochs 2
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from smoothcert.data import get_dataset
from smoothcert.denoise import (
    MULTISTEP_DEFAULTS,
    DenoiserMeta,
    MultiStepDenoiser,
    OneStepDenoiser,
    build_denoiser,
    default_step_size,
    denoising_psnr,
    load_denoiser,
    multistep_ladder,
    sigma_ladder,
    train_denoiser,
)
from smoothcert.noise import get_noise


def _score_net(args, train_images: torch.Tensor, name: str, device: torch.device) -> tuple[nn.Module, DenoiserMeta]:
    """The score network, trained by multi-scale DSM over ``--ladder`` (reused from ``--workdir``)."""
    path = Path(args.workdir) / f"scorenet_{name}_w{args.width}_e{args.epochs}_n{len(train_images)}.pt"
    ladder = sigma_ladder(args.ladder[0], args.ladder[1], num_levels=int(args.ladder[2]))
    torch.manual_seed(args.seed)
    net = build_denoiser("scorenet", in_channels=train_images.shape[1], width=args.width).to(device)
    meta = DenoiserMeta(arch="scorenet", arch_kwargs={"width": args.width}, dataset=name,
                        in_channels=train_images.shape[1], input_size=list(train_images.shape[2:]))
    train_denoiser(net, train_images, loss="dsm", ladder=ladder, epochs=args.epochs, lr=1e-3, batch_size=128,
                   seed=args.seed, checkpoint=path, meta=meta, resume=True)
    net, meta = load_denoiser(path, map_location=device)
    return net.eval(), meta


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None, help="folder with MNIST/ or FashionMNIST/ (default: embedded MNIST)")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--limit", type=int, default=None, help="first N training images (default all)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--width", type=int, default=16, help="score network width")
    p.add_argument("--ladder", type=float, nargs=3, default=[1.0, 0.01, 10], metavar=("MAX", "MIN", "L"))
    p.add_argument("--noises", nargs="+", default=["gaussian", "laplace", "uniform"])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 3, 10], help="values of T to try")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.05, 0.2, 0.5, 1.0],
                   help="values of c = alpha / sigma_L^2 to try")
    p.add_argument("--images", type=int, default=200, help="test images (the first ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="runs/multistep_tuning")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.data_root:
        name = args.dataset
        train_set = get_dataset(name, split="train", root=args.data_root)
        test_set = get_dataset(name, split="test", root=args.data_root)
    else:
        name, train_set, test_set = "embedded", get_dataset("embedded", split="train"), get_dataset("embedded",
                                                                                                    split="test")
    train_images = train_set.tensors()[0][: args.limit]
    test_images = test_set.tensors()[0][: args.images].to(device)
    t0 = time.perf_counter()
    score, meta = _score_net(args, train_images, name, device)
    common = {"benchmark": "multistep_tuning", "dataset": name, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "torch": torch.__version__,
              "score_width": args.width, "score_epochs": args.epochs, "train_images": len(train_images),
              "training_ladder": [round(s, 6) for s in meta.ladder], "images": len(test_images),
              "score_seconds": round(time.perf_counter() - t0, 1)}
    rows = []
    for noise_name in args.noises:
        for sigma in args.sigmas:
            noise = get_noise(noise_name, sigma=sigma)
            ladder = multistep_ladder(meta.ladder, sigma=sigma)
            base = common | {"noise": noise_name, "sigma": sigma, "ladder": [round(s, 6) for s in ladder]}
            psnr_of = functools.partial(denoising_psnr, data=test_images, noise=noise, seed=args.seed, clamp=True)
            group = [base | {"denoiser": "none", "psnr": round(psnr_of(nn.Identity()), 3)}]
            if noise_name == "gaussian":
                one_step = OneStepDenoiser(score, noise, training_ladder=meta.ladder)
                group.append(base | {"denoiser": "one-step", "psnr": round(psnr_of(one_step), 3)})
            for steps in args.steps:
                for ratio in args.ratios:
                    step_size = default_step_size(ladder, step_ratio=ratio)
                    den = MultiStepDenoiser(score, noise, ladder=ladder, steps_per_level=steps, step_size=step_size,
                                            training_ladder=meta.ladder)
                    t1 = time.perf_counter()
                    value = psnr_of(den)
                    ms = 1000 * (time.perf_counter() - t1) / len(test_images)
                    group.append(base | {"denoiser": "multi-step", "steps_per_level": steps, "step_ratio": ratio,
                                         "step_size": step_size, "psnr": round(value, 3), "ms_per_image": round(ms, 2)})
            for row in group:
                print(json.dumps(row), flush=True)
            rows += group
    print(_table(rows))
    return rows


def _table(rows: list[dict]) -> str:
    """Markdown: per (noise, sigma), noisy PSNR, one-step PSNR and the best multi-step (T, c)."""
    t_def, c_def = MULTISTEP_DEFAULTS["steps_per_level"], MULTISTEP_DEFAULTS["step_ratio"]
    lines = ["| noise | sigma | noisy dB | one-step dB | best multi-step dB | T | c "
             f"| default (T={t_def}, c={c_def:g}) dB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    keys = sorted({(r["noise"], r["sigma"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for noise, sigma in keys:
        group = [r for r in rows if (r["noise"], r["sigma"]) == (noise, sigma)]
        noisy = next(r["psnr"] for r in group if r["denoiser"] == "none")
        one = next((f"{r['psnr']:.1f}" for r in group if r["denoiser"] == "one-step"), "–")
        multi = [r for r in group if r["denoiser"] == "multi-step"]
        best = max(multi, key=lambda r: r["psnr"])
        ref = next((f"{r['psnr']:.1f}" for r in multi if r["steps_per_level"] == t_def and r["step_ratio"] == c_def),
                   "–")
        lines.append(f"| {noise} | {sigma:g} | {noisy:.1f} | {one} | {best['psnr']:.1f} | {best['steps_per_level']} "
                     f"| {best['step_ratio']:g} | {ref} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
