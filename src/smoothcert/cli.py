"""``smoothcert <command>``: a thin command line over the public API.

Commands: train, train-denoiser, certify, predict, attack, merge, import-checkpoint, analyze, plot,
quickstart. Each
command turns its arguments into the settings of one run (:mod:`smoothcert.runs.settings`), calls
one library function and prints what it returns; run ``smoothcert <command> --help`` for the options.
Errors of the project's own types (:class:`~smoothcert.errors.SmoothcertError`: a bad setting, a
missing file, a result file of another configuration) are reported as one line with exit status 2;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from . import analysis
from ._version import __version__
from .cli_superres import add_sr_parser
from .data import list_datasets
from .denoise import list_denoiser_losses, list_denoisers
from .distributed import DEFAULT_TIMEOUT
from .engine import AUTO_COMPILE_MIN_ROWS, COMPILE_MODES, PRECISIONS
from .errors import InputError, SmoothcertError
from .models import SOURCE_FORMATS, list_models
from .noise import list_noises
from .results import find_parts, merge_result_parts
from .runs import (
    ATTACKS,
    CERTIFICATES,
    DEFAULT_RADII,
    AttackRun,
    CertifyRun,
    ClassifierSpec,
    DataSpec,
    DenoiserSpec,
    DenoiserTrainRun,
    EngineSpec,
    ImportRun,
    PredictRun,
    Selection,
    TrainRun,
    quickstart,
    run_attack,
    run_certify,
    run_import,
    run_predict,
    run_train,
    run_train_denoiser,
)
from .soft import SELECTIONS
from .stats import MEAN_BOUNDS
from .train import TrainConfig, list_methods

__all__ = ["DEFAULT_RADII", "build_parser", "main"]


def _batch_arg(text: str) -> int | str:
    return "auto" if text == "auto" else int(text)


def _stages_arg(text: str) -> int | str:
    return "auto" if text == "auto" else int(text)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _value(text: str) -> Any:
    """A ``KEY=VALUE`` value: true/false → bool, none/null → None, then int, float, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _key_values(flag: str, items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` arguments of a repeatable flag as a dict (``-`` in keys read as ``_``)."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"{flag} expects KEY=VALUE, got {item!r}")
        if key in values:
            raise InputError(f"{flag} {key} given twice")
        values[key] = _value(value)
    return values


# ------------------------------------------------------------------------ settings from args


def _add_data_args(p: argparse.ArgumentParser, *, dataset_default: str | None) -> None:
    p.add_argument("--dataset", default=dataset_default, choices=list_datasets(),
                   help="dataset name (default: %(default)s" + (", or the checkpoint's" if dataset_default is None else "") + ")")
    p.add_argument("--subset", default=None, help="for --dataset samples: cifar10, cifar100, mnist, fashion-mnist, imagenet")
    p.add_argument("--data-root", default=None, help="data directory (default: $SMOOTHCERT_DATA or ./data)")
    p.add_argument("--download", action="store_true", help="download missing public datasets")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def _data(args: argparse.Namespace) -> DataSpec:
    return DataSpec(dataset=args.dataset, subset=args.subset, root=args.data_root, download=args.download)


def _add_denoiser_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("denoised smoothing (smooth classifier(denoiser(x)); the classifier is untouched)")
    g.add_argument("--denoiser", default=None, metavar="CKPT|ffdnet",
                   help="a denoiser checkpoint from train-denoiser (dncnn, or a scorenet with --denoise), or "
                        "'ffdnet': the pretrained colour FFDNet at the smoothing sigma (extra 'pretrained')")
    g.add_argument("--denoise", choices=["one-step", "multi-step"], default=None,
                   help="how a score network denoises (default: one-step for gaussian noise, else multi-step)")
    g.add_argument("--denoise-steps", type=int, default=None, help="multi-step: steps per level T (default 1)")
    g.add_argument("--denoise-step-size", type=float, default=None,
                   help="multi-step: alpha, the step of the last level (default (last level)^2: each score step "
                        "moves to its level's Tweedie estimate; alpha / (last level)^2 is that fraction)")
    g.add_argument("--denoise-levels", type=float, nargs="+", default=None,
                   help="multi-step: the ladder, decreasing (default: sigma, then the trained levels below it)")


def _denoiser(args: argparse.Namespace) -> DenoiserSpec | None:
    if args.denoiser is None:
        if args.denoise is not None or any(
            v is not None for v in (args.denoise_steps, args.denoise_step_size, args.denoise_levels)
        ):
            raise InputError("--denoise and --denoise-* need --denoiser")
        return None
    return DenoiserSpec(source=args.denoiser, mode=args.denoise, steps=args.denoise_steps,
                        step_size=args.denoise_step_size, levels=args.denoise_levels)


def _add_classifier_args(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a smoothcert checkpoint (or efficientnet-lite0)")
    which.add_argument("--arch", metavar="PROVIDER:NAME",
                       help="a torchvision or timm classifier by name, e.g. torchvision:resnet50 or timm:resnet50.a1_in1k "
                            "(extra 'vision' or 'timm'), with --weights; --dataset decides its classes and input size")
    p.add_argument("--weights", default=None, metavar="FILE", help="with --arch: its state dict (nothing is downloaded)")
    p.add_argument("--normalize-mean", type=float, nargs="+", default=None, metavar="M",
                   help="with --arch: the per-channel mean its weights expect on inputs in [0,1] (default: "
                        "torchvision's ImageNet 0.485 0.456 0.406, or timm's pretrained_cfg)")
    p.add_argument("--normalize-std", type=float, nargs="+", default=None, metavar="S",
                   help="with --arch: the per-channel std (default: 0.229 0.224 0.225, or timm's pretrained_cfg)")


def _classifier(args: argparse.Namespace) -> ClassifierSpec:
    return ClassifierSpec(checkpoint=args.checkpoint, arch=args.arch, weights=args.weights,
                          mean=None if args.normalize_mean is None else tuple(args.normalize_mean),
                          std=None if args.normalize_std is None else tuple(args.normalize_std),
                          noise=args.noise, sigma=args.sigma, denoiser=_denoiser(args), device=args.device)


def _selection(args: argparse.Namespace) -> Selection:
    return Selection(skip=args.skip, max_count=args.max, start=args.start)


def _engine(args: argparse.Namespace) -> EngineSpec:
    return EngineSpec(batch_size=args.batch, precision=args.precision, channels_last=not args.no_channels_last,
                      compile=args.compile, compile_mode=args.compile_mode, fixed_shape=args.fixed_shape,
                      max_batch_bytes=args.max_batch_bytes, allow_unbounded=args.allow_unbounded,
                      noise_dtype="float32" if args.fast_noise else "float64")


# ---------------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, momentum=args.momentum,
                         weight_decay=args.weight_decay, schedule=args.schedule, step_size=args.step_size,
                         gamma=args.gamma, seed=args.seed)
    run = TrainRun(out=args.out, sigma=args.sigma, data=_data(args), noise=args.noise, arch=args.arch,
                   augment=args.augment, method=args.method, hparams=_key_values("--hparam", args.hparam),
                   init=args.init, config=config, evaluate=args.eval, limit=args.limit, resume=args.resume,
                   device=args.device, init_backbone=args.init_backbone)
    history = run_train(run, progress=not args.quiet, log=_stderr)
    if history:
        last = history[-1]
        print(f"saved {args.out} (epoch {last['epoch']}, loss {last['loss']:.4f}, "
              f"noisy train acc {last['train_acc_noisy']:.4f})")
    return 0


def cmd_train_denoiser(args: argparse.Namespace) -> int:
    run = DenoiserTrainRun(out=args.out, data=_data(args), kind=args.kind, loss=args.loss, access=args.access,
                           queries=args.queries, mu=args.mu, classifier=args.classifier, noise=args.noise,
                           sigma=args.sigma, sigmas=args.sigmas, ladder=None if args.ladder is None else tuple(args.ladder),
                           arch_kwargs=_key_values("--arch-arg", args.arch_arg), epochs=args.epochs, lr=args.lr,
                           batch_size=args.batch, seed=args.seed, evaluate=args.eval, limit=args.limit,
                           resume=args.resume, device=args.device)
    history = run_train_denoiser(run, progress=not args.quiet)
    if history:
        last = history[-1]
        metric = "".join(f", {k} {last[k]:.4g}" for k in ("test_psnr", "test_dsm") if k in last)
        print(f"saved {args.out} ({args.kind}, loss {args.loss}, epoch {last['epoch']}, "
              f"train loss {last['loss']:.4g}{metric})")
    return 0


def cmd_certify(args: argparse.Namespace) -> int:
    run = CertifyRun(model=_classifier(args), out=args.out, data=_data(args), split=args.split,
                     select=_selection(args), engine=_engine(args), n0=args.n0, n=args.n, alpha=args.alpha,
                     seed=args.seed, norm=args.norm, two_class=args.two_class, target=args.target,
                     radii=tuple(args.radii or ()), stages=args.stages, radius_loss=args.radius_loss, pack=args.pack,
                     dist_timeout=args.dist_timeout, wait=args.wait, certificate=args.certificate,
                     selection=args.selection, bound_method=args.bound_method)
    run_certify(run, progress=not args.quiet, log=_stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    run = PredictRun(model=_classifier(args), out=args.out, data=_data(args), split=args.split,
                     select=_selection(args), engine=_engine(args), n=args.n, alpha=args.alpha, seed=args.seed,
                     pack=args.pack, dist_timeout=args.dist_timeout, wait=args.wait)
    run_predict(run, progress=not args.quiet, log=_stderr)
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    """PGD / DDN on the smoothed classifier (default when the checkpoint was trained with noise or
    --noise is given; --base to attack the network alone) and the summary table."""
    engine = EngineSpec(batch_size=args.batch, precision=args.precision, channels_last=not args.no_channels_last,
                        allow_unbounded=args.allow_unbounded)
    run = AttackRun(model=_classifier(args), out=args.out, data=_data(args), split=args.split,
                    select=_selection(args), engine=engine, smoothed=args.smoothed, attack=args.attack,
                    eps=tuple(args.eps), steps=args.steps, m=args.m, n0=args.n0, n=args.n, alpha=args.alpha,
                    attack_batch=args.attack_batch, seed=args.seed)
    print(run_attack(run, progress=not args.quiet, log=_stderr).table())
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    parts = find_parts(args.out)
    if not parts:
        print(f"no part files beside {args.out}; nothing to merge", file=sys.stderr)
        return 0
    idx = merge_result_parts(args.out)
    print(f"merged {len(parts)} part files into {args.out}: {len(idx)} rows")
    return 0


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    run = ImportRun(source=args.path, out=args.out, source_format=args.source_format, dataset=args.dataset,
                    sigma=args.sigma, arch=args.arch)
    path, meta = run_import(run, log=lambda line: print(line, file=sys.stderr))
    print(f"wrote {path}: {meta.arch} for {meta.dataset}, mean {meta.mean}, std {meta.std}, "
          f"{meta.noise} sigma {meta.sigma:g}, from {meta.training['source_format']} "
          f"{meta.training['source_arch']} (sha256 {meta.training['source_sha256'][:12]}...)")
    return 0


def _load_all(paths: Sequence[str], labels: Sequence[str] | None) -> list[analysis.Results]:
    if labels and len(labels) != len(paths):
        raise InputError(f"{len(labels)} --labels for {len(paths)} files")
    return [analysis.load_results(p, label=labels[i] if labels else None) for i, p in enumerate(paths)]


def cmd_analyze(args: argparse.Namespace) -> int:
    if args.paired and len(args.results) < 2:
        raise InputError("--paired compares each file with the first: give at least two")
    runs = _load_all(args.results, args.labels)
    table = analysis.latex_table if args.latex else analysis.markdown_table
    print(table(runs, args.radii, envelope=not args.no_envelope, ci=args.ci))
    if args.ci is not None:
        print(f"\n[low, high]: {args.ci:.0%} Clopper-Pearson interval over the sample of inputs, per radius")
    if args.paired:
        print(f"\npaired ACR difference against {runs[0].display_name()} (same inputs, 95% paired t interval):")
        for run in runs[1:]:
            d = analysis.paired_acr_difference(run, runs[0])
            print(f"  {run.display_name()}: {d.difference:+.4f} [{d.low:+.4f}, {d.high:+.4f}] on "
                  f"{d.inputs} inputs (larger radius on {d.a_better}, smaller on {d.b_better}, "
                  f"equal on {d.ties})")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    runs = _load_all(args.results, args.labels)
    path = analysis.plot_certified_accuracy(runs, args.out, max_radius=args.max_radius, title=args.title,
                                            envelope=not args.no_envelope, ci=args.ci)
    print(f"wrote {path}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Train LeNet on the embedded MNIST subset with Gaussian noise, certify test images, report."""
    result = quickstart(out=args.out, sigma=args.sigma, epochs=args.epochs, n=args.n, max_count=args.max,
                        seed=args.seed, device=args.device, progress=not args.quiet, log=_stderr)
    print()
    print(result.table)
    print(f"\nrows: {result.rows}\ncurve: {result.curve}\ncheckpoint: {result.checkpoint}\n"
          f"total {result.seconds:.0f} s")
    return 0


# ------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smoothcert", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"smoothcert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a base classifier with noise (one checkpoint per epoch)")
    _add_data_args(p, dataset_default="embedded")
    p.add_argument("--arch", default=None, choices=list_models(),
                   help="default: the --init checkpoint's, else resnet110 for cifar10/cifar100, "
                        "resnet50 for imagenet/folder, lenet for the rest")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (4-pixel zero padding) + horizontal flip of training images "
                        "(default: on for cifar10/cifar100)")
    p.add_argument("--method", default="gaussian", choices=list_methods())
    p.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE",
                   help="a hyperparameter of --method (repeatable), e.g. --hparam eps=0.5 --hparam m=2; "
                        "values are read as bool (true/false), None, int, float or text")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="start from the weights of this checkpoint (fine-tuning; same architecture); "
                        "its path and sha256 are recorded in the new checkpoint")
    p.add_argument("--init-backbone", default=None, metavar="CKPT",
                   help="start the Lipschitz backbone (and normalization) from this checkpoint's, with a fresh "
                        "head: e.g. an sll-small checkpoint into --arch sll-small-mlp (same backbone structure "
                        "and shapes; refused otherwise); train the head alone with --method lipschitz-margin "
                        "--hparam freeze_backbone=true")
    p.add_argument("--noise", default="gaussian", choices=list_noises())
    p.add_argument("--sigma", type=float, required=True, help="noise standard deviation per coordinate")
    p.add_argument("--epochs", type=int, default=90,
                   help="default 90; the defaults of --epochs..--gamma are Cohen et al. 2019's CIFAR-10 schedule")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", choices=["step", "cosine"], default="step")
    p.add_argument("--step-size", type=int, default=30, help="epochs between lr decays (step schedule)")
    p.add_argument("--gamma", type=float, default=0.1, help="lr decay factor (step schedule)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", action="store_true", help="report noisy test accuracy each epoch")
    p.add_argument("--limit", type=int, default=None, help="train on the first N examples only (smoke tests)")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True, help="checkpoint file (.pt)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("train-denoiser", help="train a denoiser (dncnn) or a score network (scorenet) for "
                                              "denoised smoothing; one checkpoint per epoch")
    _add_data_args(p, dataset_default="embedded")
    p.add_argument("--kind", default="dncnn", choices=list_denoisers(),
                   help="dncnn: one network per noise and sigma; scorenet: one network for every noise (--loss dsm)")
    p.add_argument("--loss", default="mse", choices=list_denoiser_losses(),
                   help="mse; stability / classification: guided by the frozen --classifier; dsm: score matching")
    p.add_argument("--access", choices=["full", "query"], default="full",
                   help="guided losses: backpropagate through the classifier, or query its outputs only "
                        "(zeroth-order gradient estimate)")
    p.add_argument("--queries", type=int, default=32, help="--access query: classifier queries per row and step")
    p.add_argument("--mu", type=float, default=1e-3, help="--access query: finite-difference step")
    p.add_argument("--classifier", default=None, metavar="CKPT",
                   help="the frozen classifier of --loss stability/classification (a checkpoint or efficientnet-lite0)")
    p.add_argument("--noise", default="gaussian", choices=list_noises(), help="dncnn: the noise it removes")
    p.add_argument("--sigma", type=float, default=None, help="dncnn: the noise's standard deviation")
    p.add_argument("--sigmas", type=float, nargs="+", default=None,
                   help="scorenet: the ladder sigma_1 > ... > sigma_L (default: --ladder 1.0 0.01 10)")
    p.add_argument("--ladder", type=float, nargs=3, default=None, metavar=("MAX", "MIN", "L"),
                   help="scorenet: a geometric ladder of L levels from MAX down to MIN")
    p.add_argument("--arch-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="network setting (repeatable), e.g. --arch-arg depth=10 --arch-arg width=32 (dncnn) or "
                        "--arch-arg width=32 (scorenet)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (Salman et al. 2020: 1e-3)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", action="store_true",
                   help="report test PSNR (dncnn) or test DSM loss (scorenet) each epoch")
    p.add_argument("--limit", type=int, default=None, help="train (and --eval) on the first N examples only")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True, help="denoiser checkpoint file (.pt)")
    p.set_defaults(func=cmd_train_denoiser)

    for name, func in (("certify", cmd_certify), ("predict", cmd_predict)):
        p = sub.add_parser(name, help=f"{name.upper()} each selected input; one TSV row each, resumable")
        _add_data_args(p, dataset_default=None)
        _add_classifier_args(p)
        p.add_argument("--split", default="test")
        p.add_argument("--noise", default=None, choices=list_noises(), help="default: the checkpoint's")
        p.add_argument("--sigma", type=float, default=None, help="default: the checkpoint's")
        if name == "certify":
            p.add_argument("--certificate", choices=list(CERTIFICATES), default="smoothing",
                           help="smoothing (or hard): CERTIFY, noise on the input (default); for a model with a "
                                "1-Lipschitz backbone (sll-small, sll-small-mlp): feature-smoothing (noise on the "
                                "features, sampling through the head only) or lipschitz-margin (linear head: "
                                "deterministic, one forward pass; n, n0, alpha and the noise are not used); "
                                "soft-phi / soft-lbound: certificates of the smoothed soft classifier (Gaussian noise); "
                                "deterministic: the one-pass HeatSmoothing radius, a HEURISTIC written as "
                                "heuristic_radius, never as a certified radius")
            p.add_argument("--n0", type=int, default=100, help="selection draws")
            p.add_argument("--norm", default=None, help="l1, l2 or linf (default: the noise's own)")
            p.add_argument("--two-class", action="store_true", help="(pA, pB) certificate, Bonferroni split")
            p.add_argument("--target", choices=["fixed", "radius", "grid"], default="fixed",
                           help="radius: plan the draws per input from the n0 pilot, at most --n (column n = used); "
                                "grid: decide only the --radii with a staged test (radius column = largest certified)")
            p.add_argument("--radii", type=float, nargs="+", default=None, help="with --target grid: radii to decide")
            p.add_argument("--stages", type=_stages_arg, nargs="+", default=None,
                           help="with --target grid: cumulative draws of the stages before the last, --n "
                                "(default 1000 10000), or 'auto': where unanimous draws first certify each radius")
            p.add_argument("--radius-loss", type=float, default=0.02,
                           help="with --target radius: radius the plan may give up against --n draws")
            p.add_argument("--selection", choices=SELECTIONS, default="draws",
                           help="class from --n0 noisy draws, or from one clean forward pass (the HeatSmoothing "
                                "paper's variant; equally sound)")
            p.add_argument("--bound-method", choices=MEAN_BOUNDS, default="best",
                           help="soft certificates: confidence bound on each mean (best: both at alpha/2)")
        p.add_argument("--n", type=int, default=100_000,
                       help="estimation draws (default 100000: about 12 s per MNIST input with LeNet on 2 CPU "
                            "cores, 3.4 h for the 1,000 embedded test images; the run prints its own projection "
                            "after the first input)")
        p.add_argument("--alpha", type=float, default=0.001, help="failure probability per input")
        p.add_argument("--skip", type=int, default=1, help="certify every skip-th input")
        p.add_argument("--max", type=int, default=-1, help="at most this many inputs (-1: all)")
        p.add_argument("--start", type=int, default=0, help="first index")
        p.add_argument("--batch", type=_batch_arg, default=None,
                       help="noisy samples per forward pass, or 'auto' (from free memory / --max-batch-bytes); "
                            "default: auto on CPU (cache-sized passes), 1000 on GPUs")
        p.add_argument("--pack", type=_positive_int, default=1,
                       help="inputs per engine call: their draws share forward passes (counts stay per input); "
                            "raise it when n0 + n is small against --batch, e.g. PREDICT with n = 1000 on a GPU")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--precision", choices=PRECISIONS, default="fp32")
        p.add_argument("--no-channels-last", action="store_true", help="feed NCHW batches (for models that need it)")
        p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile the model (warm-up excluded from timings). Default: a resumed "
                            f"file's record, else on for CPU runs of at least {AUTO_COMPILE_MIN_ROWS:,} noisy "
                            "rows (inputs x (n0 + n)) when a C++ compiler is present")
        p.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                       help="torch.compile mode, or 'frozen' (weights folded in as constants); implies "
                            "--compile; reduce-overhead replays CUDA graphs")
        p.add_argument("--fixed-shape", action=argparse.BooleanOptionalAction, default=None,
                       help="pad every forward pass to --batch rows (default: on with --compile)")
        p.add_argument("--max-batch-bytes", type=int, default=None, help="memory budget of --batch auto (bytes)")
        p.add_argument("--wait", action="store_true",
                       help="if another run is writing --out, wait for it to finish (default: refuse at once)")
        p.add_argument("--fast-noise", action="store_true",
                       help="draw the noise in float32 (faster; its Gaussian tail stops at 5.77 sigma, so the "
                            "certificate is for a truncated law; recorded in the result file). Default: float64, "
                            "exact (docs/soundness.md)")
        p.add_argument("--allow-unbounded", action="store_true", help="warn instead of failing on pixels outside [0,1]")
        p.add_argument("--quiet", action="store_true")
        p.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT.total_seconds() / 60,
                       help="under torchrun: minutes a process waits for the others (default: %(default)s)")
        p.add_argument("--out", required=True, help="result TSV; re-running the same command resumes it")
        _add_denoiser_args(p)
        p.set_defaults(func=func)

    p = sub.add_parser("attack", help="l2 PGD / DDN attacks on the smoothed (or base) classifier; one TSV row each")
    _add_data_args(p, dataset_default=None)
    _add_classifier_args(p)
    p.add_argument("--split", default="test")
    p.add_argument("--noise", default=None, choices=list_noises(), help="default: the checkpoint's")
    p.add_argument("--sigma", type=float, default=None, help="default: the checkpoint's")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--smoothed", dest="smoothed", action="store_const", const=True, default=None,
                      help="attack the smoothed classifier (default if the checkpoint was trained with noise)")
    mode.add_argument("--base", dest="smoothed", action="store_const", const=False,
                      help="attack the base network alone (default if it was trained without noise)")
    p.add_argument("--attack", choices=ATTACKS, default="both", help="pgd at each --eps, ddn (minimal l2), or both")
    p.add_argument("--eps", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="l2 budgets of PGD; table radii")
    p.add_argument("--steps", type=int, default=100, help="gradient steps of each attack")
    p.add_argument("--m", type=int, default=8, help="smoothed: noise draws per attack step, fresh each step")
    p.add_argument("--n0", type=int, default=100, help="smoothed: CERTIFY's selection draws")
    p.add_argument("--n", type=int, default=100_000,
                   help="smoothed: CERTIFY's estimation draws, and PREDICT's at each attacked point")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability of CERTIFY and of PREDICT")
    p.add_argument("--batch", type=_batch_arg, default=None,
                   help="smoothed: noisy samples per forward pass of CERTIFY/PREDICT, or 'auto' "
                        "(default: auto on CPU, 1000 on GPUs)")
    p.add_argument("--attack-batch", type=int, default=32, help="inputs attacked together")
    p.add_argument("--skip", type=int, default=1, help="attack every skip-th input")
    p.add_argument("--max", type=int, default=-1, help="at most this many inputs (-1: all)")
    p.add_argument("--start", type=int, default=0, help="first index")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="of CERTIFY/PREDICT (attacks run in fp32)")
    p.add_argument("--no-channels-last", action="store_true", help="feed NCHW batches (for models that need it)")
    p.add_argument("--allow-unbounded", action="store_true", help="warn instead of failing on pixels outside [0,1]")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True, help="result TSV; re-running the same command resumes it")
    _add_denoiser_args(p)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("merge", help="merge a sharded (torchrun) run's part files into its result file")
    p.add_argument("out", help="the result TSV (its part files are <out>.part-<rank>-of-<size>)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("import-checkpoint", help="turn a checkpoint of the 2019-2021 code bases (Cohen et al. "
                       "layout) into a smoothcert checkpoint, normalization constants kept")
    p.add_argument("path", help="their file, e.g. models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar")
    p.add_argument("--from", dest="source_format", choices=SOURCE_FORMATS, default="cohen2019",
                   help="the file's layout (default cohen2019: locuslab/smoothing and the code bases built on it)")
    p.add_argument("--dataset", choices=("cifar10", "imagenet"), required=True,
                   help="the data it was trained on (decides the classes, input size and normalization)")
    p.add_argument("--sigma", type=float, help="training noise level (default: from a noise_<sigma> directory)")
    p.add_argument("--arch", help="their architecture name (default: the file's 'arch'), e.g. cifar_resnet110")
    p.add_argument("--out", required=True, help="the smoothcert checkpoint to write")
    p.set_defaults(func=cmd_import_checkpoint)

    for name, func in (("analyze", cmd_analyze), ("plot", cmd_plot)):
        p = sub.add_parser(name, help="certified-accuracy table" if name == "analyze" else "certified-accuracy curves")
        p.add_argument("results", nargs="+", help="result TSV files (several: best-sigma envelope)")
        p.add_argument("--labels", nargs="+", default=None, help="one label per file (default: sigma = ...)")
        p.add_argument("--no-envelope", action="store_true")
        p.add_argument("--ci", type=float, nargs="?", const=0.95, default=None, metavar="LEVEL",
                       help="each certified accuracy with its Clopper-Pearson interval over the sample of inputs "
                            "(the images certified are a sample too); LEVEL default 0.95"
                            + ("" if name == "analyze" else "; drawn as a band"))
        if name == "analyze":
            p.add_argument("--radii", type=float, nargs="+", default=list(DEFAULT_RADII))
            p.add_argument("--latex", action="store_true", help="LaTeX (booktabs) instead of markdown")
            p.add_argument("--paired", action="store_true",
                           help="also each file's ACR minus the first's on their common inputs, with a paired interval")
        else:
            p.add_argument("--out", required=True, help="image file (.png or .pdf)")
            p.add_argument("--max-radius", type=float, default=None)
            p.add_argument("--title", default=None)
        p.set_defaults(func=func)

    p = sub.add_parser("quickstart", help="train + certify + report on the embedded MNIST subset (CPU, minutes)")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n", type=int, default=1000, help="estimation draws per input")
    p.add_argument("--max", type=int, default=500, help="test images to certify")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_quickstart)

    add_sr_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SmoothcertError as e:
        # The project's errors say what is wrong and how to fix it; no traceback needed. Any
        # other exception is a bug and keeps its traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
