"""``smoothcert sr train|attack|certify|evaluate``: argument parsing for the super-resolution runs only; each
command builds one typed run (:mod:`smoothcert.runs.superres`), calls its function and prints where the
result went. Added to the main parser by :func:`add_sr_parser`."""

from __future__ import annotations

import argparse

from .analysis.superres import sr_evaluate_table
from .runs.superres import (
    SRAttackRun,
    SRCertifyRun,
    SREvaluateRun,
    SRTrainRun,
    run_sr_attack,
    run_sr_certify,
    run_sr_evaluate,
    run_sr_train,
)
from .train.superres import SR_METHODS, SRTrainConfig

__all__ = ["add_sr_parser"]


def _test_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folder", required=True, help="test images (e.g. ../shared/data/samples)")
    p.add_argument("--pattern", default="*", help="file-name pattern, e.g. 'imagenet_*'")
    p.add_argument("--crop", type=int, default=160, help="centre crop side (the thesis: 160)")
    p.add_argument("--limit", type=int, default=None, help="at most this many images")
    p.add_argument("--checkpoint", required=True, help="U-Net checkpoint (smoothcert sr train)")
    p.add_argument("--out", required=True, help="result TSV (resumed if it exists with the same settings)")
    p.add_argument("--batch", type=int, default=256, help="noisy rows per forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)


def cmd_sr_train(args: argparse.Namespace) -> int:
    config = SRTrainConfig(method=args.method, sigma_f=args.sigma_f, eps_rel=args.eps_rel, pgd_steps=args.pgd_steps,
                           steps=args.steps, batch_size=args.batch, crop=args.crop, lr=args.lr, seed=args.seed,
                           save_every=args.save_every)
    run = SRTrainRun(out=args.out, config=config, folders=tuple(args.folders), pattern=args.pattern,
                     skimage=args.skimage, init=args.init, resume=not args.restart, device=args.device)
    history = run_sr_train(run, progress=not args.quiet)
    print(f"checkpoint: {args.out} (step {history[-1]['step'] if history else 0}, "
          f"last mse {history[-1]['loss'] if history else float('nan'):.5f})")
    return 0


def cmd_sr_attack(args: argparse.Namespace) -> int:
    run = SRAttackRun(folder=args.folder, pattern=args.pattern, crop=args.crop, limit=args.limit,
                      checkpoint=args.checkpoint, out=args.out, eps_rel=tuple(args.eps_rel), steps=args.steps,
                      sigma_g=args.sigma_g, n=args.n, samples=args.samples, batch_size=args.batch, seed=args.seed,
                      device=args.device)
    print(f"rows: {run_sr_attack(run)}")
    return 0


def cmd_sr_certify(args: argparse.Namespace) -> int:
    run = SRCertifyRun(folder=args.folder, pattern=args.pattern, crop=args.crop, limit=args.limit,
                       checkpoint=args.checkpoint, out=args.out, sigma=args.sigma, eps=tuple(args.eps), n0=args.n0,
                       n=args.n, alpha=args.alpha, delta=args.delta, batch_size=args.batch,
                       outputs_in_unit_range=args.outputs_in_unit_range, seed=args.seed, device=args.device)
    print(f"rows: {run_sr_certify(run)}")
    return 0


def cmd_sr_evaluate(args: argparse.Namespace) -> int:
    run = SREvaluateRun(folder=args.folder, pattern=args.pattern, crop=args.crop, limit=args.limit,
                        checkpoint=args.checkpoint, out=args.out, sigma_g=tuple(args.sigma_g), n=args.n,
                        val_folder=args.val_dir, val_pattern=args.val_pattern, val_limit=args.val_limit,
                        batch_size=args.batch, seed=args.seed, device=args.device)
    path = run_sr_evaluate(run)
    print(sr_evaluate_table(path))
    print(f"rows: {path}")
    return 0


def add_sr_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``sr`` with its four commands to the main parser's subcommands."""
    sr = sub.add_parser("sr", help="super-resolution: train a U-Net, attack it, certify or evaluate its smoothed outputs")
    cmds = sr.add_subparsers(dest="sr_command", required=True)

    p = cmds.add_parser("train", help="train a U-Net (standard, Gaussian noise augmentation, adversarial)")
    p.add_argument("--out", required=True, help="checkpoint (resumed if it exists with the same settings)")
    p.add_argument("--folders", nargs="*", default=[], help="image folders for training patches")
    p.add_argument("--pattern", default="*")
    p.add_argument("--skimage", action="store_true", help="add scikit-image's bundled photos")
    p.add_argument("--method", choices=SR_METHODS, default="standard")
    p.add_argument("--sigma-f", type=float, default=0.0, help="noise augmentation level (method noise)")
    p.add_argument("--eps-rel", type=float, default=0.0, help="relative PGD budget (method adversarial)")
    p.add_argument("--pgd-steps", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=160)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--init", default=None, help="start from this U-Net checkpoint (fine-tuning)")
    p.add_argument("--restart", action="store_true", help="do not resume an existing checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sr_train)

    p = cmds.add_parser("attack", help="MSE/PSNR/SSIM under l2 PGD (base) or EOT-PGD (smoothed mean); TSV rows")
    _test_set(p)
    p.add_argument("--eps-rel", type=float, nargs="+", default=[0.0, 0.01, 0.02, 0.05, 0.1, 0.2])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--sigma-g", type=float, default=None, help="smooth with N(0, sigma_g^2) (attack: EOT-PGD)")
    p.add_argument("--n", type=int, default=32, help="draws of the smoothed estimate")
    p.add_argument("--samples", type=int, default=4, help="EOT draws per attack step")
    p.set_defaults(func=cmd_sr_attack)

    p = cmds.add_parser("certify", help="median bounds and center smoothing: certified worst-case PSNR; TSV rows")
    _test_set(p)
    p.add_argument("--sigma", type=float, required=True)
    p.add_argument("--eps", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5], help="input l2 radii")
    p.add_argument("--n0", type=int, default=32)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--delta", type=float, default=0.05, help="center smoothing's mass margin")
    p.add_argument("--outputs-in-unit-range", action="store_true",
                   help="clip the median box to [0, 1] (only if the model's outputs lie there)")
    p.set_defaults(func=cmd_sr_certify)

    p = cmds.add_parser("evaluate", help="clean MSE/PSNR/SSIM of a U-Net, its smoothed mean and bilinear; TSV rows")
    _test_set(p)
    p.add_argument("--sigma-g", type=float, nargs="*", default=[],
                   help="smoothing levels of the smoothed mean (0 = the U-Net itself); with --val-dir: candidates")
    p.add_argument("--n", type=int, default=32, help="draws of the smoothed estimate")
    p.add_argument("--val-dir", default=None, help="validation images: choose sigma_g among --sigma-g on them")
    p.add_argument("--val-pattern", default="*")
    p.add_argument("--val-limit", type=int, default=None, help="at most this many validation images")
    p.set_defaults(func=cmd_sr_evaluate)
