"""``smoothcert <command>``: a thin command line over the public API.

Commands: train, train-denoiser, certify, predict, attack, merge, analyze, plot, quickstart. Every option
maps to one keyword of a library call; run ``smoothcert <command> --help`` for them.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import inspect
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import analysis
from .data import get_dataset, list_datasets
from .distributed import DEFAULT_TIMEOUT, process_group, rank_device
from .engine import COMPILE_MODES, PRECISIONS
from .errors import InputError
from .evaluate import certify_dataset, predict_dataset, select_indices
from .files import file_sha256
from .models import MODELS, CheckpointMeta, build_model, list_models, load_checkpoint, model_kwargs
from .noise import get_noise, list_noises
from .results import ConfigMismatchError, find_parts, merge_result_parts
from .robustness import ATTACKS, attack_dataset, summary_table
from .smooth import SmoothedClassifier
from .train import RandomCropFlip, TrainConfig, TrainingMethod, get_method, list_methods, train

#: Radii of the certified-accuracy tables (Cohen et al. 2019 report 0, 0.25, ..., in l2).
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def _batch_arg(text: str) -> int | str:
    return "auto" if text == "auto" else int(text)


def _stages_arg(text: str) -> int | str:
    return "auto" if text == "auto" else int(text)


def _stages(values: list[int | str] | None) -> list[int] | str | None:
    """--stages as certify_dataset takes it: None, sample sizes, or "auto" (alone)."""
    if values is None or "auto" not in values:
        return values
    if len(values) > 1:
        raise SystemExit("error: --stages auto stands alone (the stages are then chosen from --radii and --n)")
    return "auto"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _device(name: str | None) -> torch.device:
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} asked for, but this torch build sees no CUDA device")
    return device


def _dataset(args: argparse.Namespace, split: str):
    options = {"subset": args.subset} if getattr(args, "subset", None) else {}
    return get_dataset(args.dataset, split=split, root=args.data_root, download=args.download, **options)


def _add_data_args(p: argparse.ArgumentParser, *, dataset_default: str | None) -> None:
    p.add_argument("--dataset", default=dataset_default, choices=list_datasets(),
                   help="dataset name (default: %(default)s" + (", or the checkpoint's" if dataset_default is None else "") + ")")
    p.add_argument("--subset", default=None, help="for --dataset samples: cifar10, cifar100, mnist, fashion-mnist, imagenet")
    p.add_argument("--data-root", default=None, help="data directory (default: $SMOOTHCERT_DATA or ./data)")
    p.add_argument("--download", action="store_true", help="download missing public datasets")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


# ---------------------------------------------------------------------------------- train

#: ``train --arch/--augment`` when not given, by the data's ``DatasetInfo.name`` (so ``samples --subset
#: cifar10`` counts as cifar10): Cohen et al. 2019's base classifiers, ResNet-110 with random crop
#: (4-pixel padding) + horizontal flip on CIFAR-10 (the same on CIFAR-100) and ResNet-50 on ImageNet
#: (their random-resized-crop augmentation is not implemented); anything else (MNIST-like) LeNet without
#: augmentation. The optimisation defaults (90 epochs, SGD lr 0.1, momentum 0.9, weight decay 1e-4,
#: lr x0.1 every 30 epochs, batch 256 for their 400) are their CIFAR-10 schedule, for every dataset.
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar10": {"arch": "resnet110", "augment": True},
    "cifar100": {"arch": "resnet110", "augment": True},
    "imagenet": {"arch": "resnet50", "augment": False},
    "folder": {"arch": "resnet50", "augment": False},
}
_OTHER_DATA_DEFAULTS: dict[str, Any] = {"arch": "lenet", "augment": False}


def _resolve_train_defaults(args: argparse.Namespace, dataset_name: str) -> list[str]:
    """Fill ``args.arch``/``args.augment`` left at None from :data:`TRAIN_DEFAULTS`; the flags chosen."""
    defaults = TRAIN_DEFAULTS.get(dataset_name, _OTHER_DATA_DEFAULTS)
    chosen = []
    if args.arch is None:
        args.arch = defaults["arch"]
        chosen.append(f"--arch {args.arch}")
    if args.augment is None:
        args.augment = defaults["augment"]
        chosen.append("--augment" if args.augment else "--no-augment")
    return chosen


def cmd_train(args: argparse.Namespace) -> int:
    method = _method_from_args(args.method, args.hparam)  # bad --hparam fails before any data is read
    if method.needs_init and not args.init:
        raise InputError(f"--method {method.name} fine-tunes a trained model: give its checkpoint with --init")
    init = _read_init(args.init) if args.init else None
    if init is not None and args.arch is None:
        args.arch = init[1].arch  # fine-tuning keeps the checkpoint's architecture
    device = _device(args.device)
    train_set = _dataset(args, "train")
    if args.limit is not None:
        train_set = train_set.subset(range(min(args.limit, len(train_set))))
    test_set = _dataset(args, "test") if args.eval else None
    info = train_set.info
    chosen = _resolve_train_defaults(args, info.name)
    if chosen and not args.quiet:
        print(f"defaults for {info.name}: {' '.join(chosen)}", file=sys.stderr)
    noise = get_noise(args.noise, sigma=args.sigma)
    torch.manual_seed(args.seed)  # weight initialisation
    # Nets with a fully connected head (LeNet) are sized by the input side; record it.
    takes_size = "input_size" in inspect.signature(MODELS.factory(args.arch)).parameters
    arch_kwargs = {"input_size": info.input_shape[1]} if takes_size else {}
    model = build_model(args.arch, num_classes=info.num_classes, in_channels=info.input_shape[0],
                        mean=list(info.mean), std=list(info.std), **arch_kwargs).to(device)
    mean, std, provenance = list(info.mean), list(info.std), {}
    if init is not None:
        mean, std, provenance = _apply_init(model, init, arch=args.arch, arch_kwargs=arch_kwargs, info=info,
                                            quiet=args.quiet)
    meta = CheckpointMeta(arch=args.arch, arch_kwargs=arch_kwargs, dataset=args.dataset, num_classes=info.num_classes,
                          in_channels=info.input_shape[0], input_size=list(info.input_shape[1:]),
                          mean=mean, std=std, noise=noise.name, sigma=noise.sigma, training=provenance)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, momentum=args.momentum,
                         weight_decay=args.weight_decay, schedule=args.schedule, step_size=args.step_size,
                         gamma=args.gamma, seed=args.seed)
    if not args.resume and Path(args.out).exists():
        print(f"error: {args.out} exists; pass --resume to continue it or choose another --out", file=sys.stderr)
        return 2
    history = train(model, train_set, method=method, noise=noise, config=config, meta=meta,
                    checkpoint=args.out, resume=args.resume, test_set=test_set, progress=not args.quiet,
                    augment=RandomCropFlip(padding=4, flip=True) if args.augment else None)
    if history:
        last = history[-1]
        print(f"saved {args.out} (epoch {last['epoch']}, loss {last['loss']:.4f}, "
              f"noisy train acc {last['train_acc_noisy']:.4f})")
    return 0


def _hparam_value(text: str) -> Any:
    """``--hparam`` value: true/false → bool, none/null → None, then int, float, else the string."""
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


def _method_from_args(name: str, items: Sequence[str]) -> TrainingMethod:
    """The training method ``name`` with the ``--hparam KEY=VALUE`` settings in ``items``."""
    hparams: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            listing = ", ".join(f"{k}={v!r}" for k, v in get_method(name).hparams().items()) or "none"
            raise InputError(f"--hparam expects KEY=VALUE, got {item!r}; method {name!r} takes: {listing}")
        if key in hparams:
            raise InputError(f"--hparam {key} given twice")
        hparams[key] = _hparam_value(value)
    try:
        return get_method(name, **hparams)
    except ValueError as err:
        raise InputError(f"--hparam for method {name!r}: {err}") from None


def _read_init(path_text: str) -> tuple[nn.Module, CheckpointMeta, dict[str, Any]]:
    """``--init``: the checkpoint's model and metadata, and its provenance record (resolved path, sha256)."""
    path = Path(path_text).resolve()
    model, meta = load_checkpoint(path)
    record = {"path": str(path), "sha256": file_sha256(path), "dataset": meta.dataset, "noise": meta.noise,
              "sigma": meta.sigma, "method": meta.training.get("method"), "epoch": meta.epoch}
    return model, meta, record


def _apply_init(
    model: nn.Module, init: tuple[nn.Module, CheckpointMeta, dict[str, Any]], *, arch: str,
    arch_kwargs: dict[str, Any], info: Any, quiet: bool,
) -> tuple[list[float], list[float], dict[str, Any]]:
    """Copy the ``--init`` weights into ``model`` (fine-tuning); refuse another architecture.

    The checkpoint's Normalize constants come with its weights (the network learned on inputs
    normalised by them), so they are the new checkpoint's mean/std. Returns (mean, std, the
    ``training`` metadata entry ``{"init": record}``).
    """
    init_model, init_meta, record = init
    # Keywords are compared with the factory's defaults filled in: a checkpoint built without
    # input_size (the Python API) is the same LeNet as this run's input_size=28.
    want = (arch, model_kwargs(arch, arch_kwargs), info.num_classes, info.input_shape[0])
    have = (init_meta.arch, model_kwargs(init_meta.arch, init_meta.arch_kwargs), init_meta.num_classes,
            init_meta.in_channels)
    if want != have:
        raise InputError(
            f"--init {record['path']} holds {have[0]} (arch_kwargs {have[1]}) with {have[2]} classes and "
            f"{have[3]} input channels; this run builds {want[0]} (arch_kwargs {want[1]}) with {want[2]} classes "
            f"and {want[3]} channels for {info.name}. Fine-tuning needs the same network: pass --arch {have[0]} "
            "and a dataset with the same classes, channels and input size."
        )
    model.load_state_dict(init_model.state_dict())
    if (init_meta.mean, init_meta.std) != (list(info.mean), list(info.std)) and not quiet:
        print(f"--init: keeping the checkpoint's normalization mean={init_meta.mean} std={init_meta.std} "
              f"(the data's is mean={list(info.mean)} std={list(info.std)})", file=sys.stderr)
    return list(init_meta.mean), list(init_meta.std), {"init": record}


# ------------------------------------------------------------------------- denoised smoothing


def _load_classifier(spec: str, device: torch.device) -> tuple[nn.Module, CheckpointMeta, str]:
    """``--checkpoint``/``--classifier``: a smoothcert checkpoint file, or the name of a pretrained
    classifier (``efficientnet-lite0``, optional extra); ``(model, meta, sha256 of the weights file)``."""
    from .pretrained import PRETRAINED_CLASSIFIERS, load_pretrained_classifier

    if spec in PRETRAINED_CLASSIFIERS and not Path(spec).exists():
        try:
            model, meta, path = load_pretrained_classifier(spec)
        except ImportError as err:
            raise SystemExit(f"error: {err}") from None
        return model.to(device), meta, file_sha256(path)
    model, meta = load_checkpoint(spec, map_location=device)
    return model, meta, file_sha256(Path(spec))


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


def _wrap_denoiser(args: argparse.Namespace, model: nn.Module, noise: Any, in_channels: int,
                   device: torch.device) -> tuple[nn.Module, dict[str, Any] | None]:
    """``Denoised(model, D)`` for ``--denoiser`` (else ``model``), and the denoiser's record for the run's
    configuration: file hash and every setting, so rows of different denoisers are never mixed."""
    from .denoise import Denoised, denoiser_for_noise, load_denoiser, trained_noise

    multi = (args.denoise_steps, args.denoise_step_size, args.denoise_levels)
    if args.denoiser is None:
        if args.denoise is not None or any(v is not None for v in multi):
            raise SystemExit("error: --denoise and --denoise-* need --denoiser")
        return model, None
    if args.denoiser == "ffdnet" and not Path(args.denoiser).exists():
        from .pretrained import ffdnet_color

        if args.denoise is not None or any(v is not None for v in multi):
            raise SystemExit("error: --denoise and --denoise-* are settings of score networks, not of ffdnet")
        if in_channels != 3:
            raise SystemExit(f"error: ffdnet is a colour (3-channel) denoiser; the data has {in_channels} channel(s)")
        try:
            den: nn.Module = ffdnet_color(noise.sigma).to(device)
        except ImportError as err:
            raise SystemExit(f"error: {err}") from None
        record = {"file": "ffdnet", "arch": "ffdnet-color"}
        trained_for = None
    else:
        net, dmeta = load_denoiser(args.denoiser, map_location=device)
        if dmeta.in_channels != in_channels:
            raise SystemExit(f"error: the denoiser takes {dmeta.in_channels}-channel images; "
                             f"the data has {in_channels}")
        den = denoiser_for_noise(net, dmeta, noise, mode=args.denoise, steps_per_level=args.denoise_steps,
                                 step_size=args.denoise_step_size, ladder=args.denoise_levels)
        record = {"sha256": file_sha256(Path(args.denoiser)), "arch": dmeta.arch, "kind": dmeta.kind,
                  "trained_noise": dmeta.noise, "trained_sigma": dmeta.sigma, "trained_ladder": dmeta.ladder,
                  "training": dmeta.training, "epoch": dmeta.epoch}
        trained_for = trained_noise(dmeta)
    wrapped = Denoised(model, den.eval(), trained_for=trained_for)
    if not getattr(args, "quiet", False):
        print(f"denoised smoothing: {wrapped!r}", file=sys.stderr)
    return wrapped, record | wrapped.settings()


def _denoise_choices(what: str) -> list[str]:
    from .denoise import list_denoiser_losses, list_denoisers

    return list_denoisers() if what == "nets" else list_denoiser_losses()


def cmd_train_denoiser(args: argparse.Namespace) -> int:
    """Train a DnCNN for one noise and sigma, or one score network over a sigma ladder."""
    from .denoise import DenoiserMeta, build_denoiser, denoiser_kind, get_denoiser_loss, sigma_ladder, train_denoiser

    kind = denoiser_kind(args.kind)
    if (kind == "score") != (args.loss == "dsm"):
        raise InputError(f"--kind {args.kind} is a {kind} network: train it with "
                         f"{'--loss dsm' if kind == 'score' else '--loss mse, stability or classification'}")
    if kind == "score":
        if args.sigma is not None:
            raise InputError("a score network trains over a ladder: pass --sigmas or --ladder, not --sigma")
        if args.sigmas and args.ladder:
            raise InputError("pass --sigmas or --ladder, not both")
        if args.ladder and not float(args.ladder[2]).is_integer():
            raise InputError(f"--ladder MAX MIN L: L must be a whole number of levels, got {args.ladder[2]:g}")
        ladder = args.sigmas or (sigma_ladder(args.ladder[0], args.ladder[1], num_levels=int(args.ladder[2]))
                                 if args.ladder else sigma_ladder(1.0, 0.01, num_levels=10))
        noise, loss = None, get_denoiser_loss("dsm", ladder=ladder)
    else:
        if args.sigma is None:
            raise InputError(f"--kind {args.kind} is trained for one noise: pass --sigma (and --noise)")
        if args.sigmas or args.ladder:
            raise InputError("--sigmas/--ladder are for score networks (--kind scorenet --loss dsm)")
        noise = get_noise(args.noise, sigma=args.sigma)
        guided = {"access": args.access, "queries": args.queries, "mu": args.mu} if args.loss != "mse" else {}
        loss = get_denoiser_loss(args.loss, **guided)
    arch_kwargs = {}
    for item in args.arch_arg:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--arch-arg expects KEY=VALUE, got {item!r}")
        arch_kwargs[key.strip().replace("-", "_")] = _hparam_value(value)
    device = _device(args.device)
    train_set = _dataset(args, "train")
    if args.limit is not None:
        train_set = train_set.subset(range(min(args.limit, len(train_set))))
    test_set = _dataset(args, "test") if args.eval else None
    if test_set is not None and args.limit is not None:
        test_set = test_set.subset(range(min(args.limit, len(test_set))))
    info = train_set.info
    classifier = None
    if loss.needs_classifier:
        if args.classifier is None:
            raise InputError(f"--loss {args.loss} is guided by a frozen classifier: pass --classifier CKPT")
        classifier, cmeta, _ = _load_classifier(args.classifier, device)
        if tuple(info.input_shape) != cmeta.input_shape:
            raise InputError(f"dataset {args.dataset} gives inputs {tuple(info.input_shape)} but the classifier "
                             f"expects {cmeta.input_shape}")
    elif args.classifier is not None:
        raise InputError(f"--loss {args.loss} does not use a classifier; drop --classifier")
    torch.manual_seed(args.seed)  # weight initialisation
    try:
        net = build_denoiser(args.kind, in_channels=info.input_shape[0], **arch_kwargs).to(device)
    except TypeError as err:
        raise InputError(f"--arch-arg for {args.kind}: {err}") from None
    meta = DenoiserMeta(arch=args.kind, arch_kwargs=arch_kwargs, dataset=args.dataset,
                        in_channels=info.input_shape[0], input_size=list(info.input_shape[1:]))
    if not args.resume and Path(args.out).exists():
        print(f"error: {args.out} exists; pass --resume to continue it or choose another --out", file=sys.stderr)
        return 2
    history = train_denoiser(net, train_set, loss=loss, noise=noise, classifier=classifier, epochs=args.epochs,
                             lr=args.lr, batch_size=args.batch, seed=args.seed, checkpoint=args.out, meta=meta,
                             resume=args.resume, test_set=test_set, progress=not args.quiet)
    if history:
        last = history[-1]
        metric = "".join(f", {k} {last[k]:.4g}" for k in ("test_psnr", "test_dsm") if k in last)
        print(f"saved {args.out} ({args.kind}, loss {loss.name}, epoch {last['epoch']}, "
              f"train loss {last['loss']:.4g}{metric})")
    return 0


# ------------------------------------------------------------------------- certify / predict


def _dataset_for(args: argparse.Namespace, meta: CheckpointMeta) -> Any:
    """The ``--dataset`` (default: the checkpoint's) split, refused if its inputs do not fit the model."""
    args.dataset = args.dataset or meta.dataset
    dataset = _dataset(args, args.split)
    shape = tuple(dataset.info.input_shape)
    if shape != meta.input_shape:
        raise SystemExit(f"error: dataset {args.dataset} gives inputs {shape} but the model expects {meta.input_shape}")
    return dataset


def _smoothed_from_checkpoint(
    args: argparse.Namespace, loaded: tuple[nn.Module, CheckpointMeta] | None = None
) -> tuple[SmoothedClassifier, CheckpointMeta, Any]:
    """The smoothed classifier of ``--checkpoint`` (or of ``loaded``, the model and metadata already
    read from it, so a command that looked at the metadata first does not load the file twice)."""
    device = _device(args.device)
    if loaded is None:
        model, meta, args.checkpoint_sha256 = _load_classifier(args.checkpoint, device)
    else:
        model, meta = loaded
    noise_name = args.noise or (meta.noise if meta.noise != "none" else None)
    sigma = args.sigma if args.sigma is not None else (meta.sigma or None)
    if noise_name is None or sigma is None:
        raise SystemExit("error: the checkpoint was trained without noise; pass --noise and --sigma")
    dataset = _dataset_for(args, meta)
    noise = get_noise(noise_name, sigma=sigma)
    base, args.denoiser_record = _wrap_denoiser(args, model, noise, meta.in_channels, device)
    smoothed = SmoothedClassifier(base, noise=noise, num_classes=meta.num_classes,
                                  precision=args.precision, channels_last=not args.no_channels_last,
                                  compile=args.compile, compile_mode=args.compile_mode,
                                  fixed_shape=args.fixed_shape,
                                  max_batch_bytes=args.max_batch_bytes,
                                  allow_unbounded=args.allow_unbounded)
    return smoothed, meta, dataset


def _run_facts(args: argparse.Namespace, meta: CheckpointMeta) -> dict[str, Any]:
    sha = getattr(args, "checkpoint_sha256", None) or file_sha256(Path(args.checkpoint))
    facts = {"dataset": args.dataset, "subset": args.subset, "split": args.split, "checkpoint_sha256": sha,
             "arch": meta.arch}
    if getattr(args, "denoiser_record", None) is not None:
        facts["denoiser"] = args.denoiser_record  # absent without --denoiser: earlier result files still resume
    return facts


def _sharded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``command`` as one rank of a sharded run when launched by torchrun: join its process group
    (one GPU per process: cuda:LOCAL_RANK) and pass the :class:`Shard` as ``args.shard`` (None
    otherwise, and nothing changes)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        if not args.dist_timeout > 0:
            raise SystemExit(f"error: --dist-timeout must be a positive number of minutes, got {args.dist_timeout}")
        device = str(_device(args.device))
        with process_group(device=device, timeout=datetime.timedelta(minutes=args.dist_timeout)) as args.shard:
            args.device = str(rank_device(device, args.shard))
            return command(args)

    return run


def cmd_certify(args: argparse.Namespace) -> int:
    smoothed, meta, dataset = _smoothed_from_checkpoint(args)
    indices = select_indices(len(dataset), skip=args.skip, max_count=args.max, start=args.start)
    if args.shard is None or args.shard.rank == 0:
        print(f"certifying {len(indices)} inputs of {args.dataset}/{args.split} with {smoothed!r}, "
              f"n0={args.n0} n={args.n} alpha={args.alpha} -> {args.out}", file=sys.stderr)
    try:
        certify_dataset(smoothed, dataset, args.out, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch,
                        seed=args.seed, indices=indices, norm=args.norm, two_class=args.two_class,
                        target=args.target, radius_loss=args.radius_loss, radii=args.radii or (),
                        stages=_stages(args.stages), config=_run_facts(args, meta), progress=not args.quiet,
                        shard=args.shard, pack=args.pack)
    except ConfigMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _report_engine(smoothed)
    return 0


def _report_engine(smoothed: SmoothedClassifier) -> None:
    # Measured, not configured: the rows "auto" chose and the untimed compile warm-up.
    if smoothed.last_batch_size is not None:
        print(f"engine: {smoothed.last_batch_size} rows per forward pass (last pass), "
              f"compile warm-up {smoothed.compile_seconds:.1f} s (excluded from the time column)", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> int:
    smoothed, meta, dataset = _smoothed_from_checkpoint(args)
    indices = select_indices(len(dataset), skip=args.skip, max_count=args.max, start=args.start)
    try:
        predict_dataset(smoothed, dataset, args.out, n=args.n, alpha=args.alpha, batch_size=args.batch,
                        seed=args.seed, indices=indices, config=_run_facts(args, meta), progress=not args.quiet,
                        shard=args.shard, pack=args.pack)
    except ConfigMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    parts = find_parts(args.out)
    if not parts:
        print(f"no part files beside {args.out}; nothing to merge", file=sys.stderr)
        return 0
    try:
        idx = merge_result_parts(args.out)
    except ConfigMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"merged {len(parts)} part files into {args.out}: {len(idx)} rows")
    return 0


# ------------------------------------------------------------------------------------ attack


def cmd_attack(args: argparse.Namespace) -> int:
    """PGD / DDN on the smoothed classifier (default when the checkpoint was trained with noise or
    --noise is given; --base to attack the network alone) and the summary table."""
    device = _device(args.device)
    model, meta, args.checkpoint_sha256 = _load_classifier(args.checkpoint, device)
    smoothed = args.smoothed if args.smoothed is not None else (args.noise is not None or meta.noise != "none")
    if smoothed:
        target, meta, dataset = _smoothed_from_checkpoint(args, (model, meta))
        what = repr(target)
    else:
        dataset = _dataset_for(args, meta)
        target, what = model, f"the base {meta.arch}"
        if args.denoiser is not None:  # the denoiser is set for a noise level even when only f(D(x)) is attacked
            noise_name = args.noise or (meta.noise if meta.noise != "none" else "gaussian")
            sigma = args.sigma if args.sigma is not None else (meta.sigma or None)
            if sigma is None:
                raise SystemExit("error: --denoiser needs the noise level it denoises: pass --sigma (and --noise)")
            target, args.denoiser_record = _wrap_denoiser(args, model, get_noise(noise_name, sigma=sigma),
                                                          meta.in_channels, device)
            what = f"{target!r} (base)"
    indices = select_indices(len(dataset), skip=args.skip, max_count=args.max, start=args.start)
    print(f"attacking {len(indices)} inputs of {args.dataset}/{args.split} ({args.attack}, {args.steps} steps) on "
          f"{what} -> {args.out}", file=sys.stderr)
    try:
        summary = attack_dataset(target, dataset, args.out, attack=args.attack, eps=args.eps, steps=args.steps,
                                 m=args.m, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch,
                                 attack_batch=args.attack_batch, seed=args.seed, indices=indices,
                                 config=_run_facts(args, meta), progress=not args.quiet)
    except ConfigMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_table(summary))
    return 0


# ---------------------------------------------------------------------------- analyze / plot


def _load_all(paths: Sequence[str], labels: Sequence[str] | None) -> list[analysis.Results]:
    if labels and len(labels) != len(paths):
        raise SystemExit(f"error: {len(labels)} --labels for {len(paths)} files")
    return [analysis.load_results(p, label=labels[i] if labels else None) for i, p in enumerate(paths)]


def cmd_analyze(args: argparse.Namespace) -> int:
    runs = _load_all(args.results, args.labels)
    table = analysis.latex_table if args.latex else analysis.markdown_table
    print(table(runs, args.radii, envelope=not args.no_envelope))
    if args.paired:
        if len(runs) < 2:
            raise SystemExit("error: --paired compares each file with the first: give at least two")
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
                                            envelope=not args.no_envelope)
    print(f"wrote {path}")
    return 0


# -------------------------------------------------------------------------------- quickstart


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Train LeNet on the embedded MNIST subset with Gaussian noise, certify test images, report."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ckpt = out / f"lenet_sigma{args.sigma:g}.pt"
    common = ["--dataset", "embedded", "--device", args.device or ("cuda" if torch.cuda.is_available() else "cpu")]
    if args.quiet:
        common.append("--quiet")
    # --resume: a finished checkpoint is reused as is, an interrupted one is continued.
    rc = main(["train", *common, "--arch", "lenet-small", "--sigma", str(args.sigma), "--epochs", str(args.epochs),
               "--batch", "64", "--lr", "0.02", "--schedule", "cosine", "--seed", str(args.seed),
               "--out", str(ckpt), "--resume"])
    if rc:
        return rc
    tsv = out / f"certify_sigma{args.sigma:g}.tsv"
    rc = main(["certify", *common, "--checkpoint", str(ckpt), "--split", "test", "--n0", "100", "--n", str(args.n),
               "--alpha", "0.001", "--max", str(args.max), "--batch", "250", "--seed", str(args.seed),
               "--out", str(tsv)])
    if rc:
        return rc
    runs = [analysis.load_results(tsv)]
    radii = [r for r in DEFAULT_RADII if r <= 1.0]
    print()
    print(analysis.markdown_table(runs, radii, envelope=False))
    png = analysis.plot_certified_accuracy(runs, out / f"certified_accuracy_sigma{args.sigma:g}.png",
                                           title=f"LeNet, embedded MNIST subset, Gaussian sigma={args.sigma:g}")
    print(f"\nrows: {tsv}\ncurve: {png}\ncheckpoint: {ckpt}\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


# ------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smoothcert", description=__doc__.splitlines()[0])
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
    p.add_argument("--kind", default="dncnn", choices=_denoise_choices("nets"),
                   help="dncnn: one network per noise and sigma; scorenet: one network for every noise (--loss dsm)")
    p.add_argument("--loss", default="mse", choices=_denoise_choices("losses"),
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
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--split", default="test")
        p.add_argument("--noise", default=None, choices=list_noises(), help="default: the checkpoint's")
        p.add_argument("--sigma", type=float, default=None, help="default: the checkpoint's")
        if name == "certify":
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
        p.add_argument("--n", type=int, default=100_000, help="estimation draws")
        p.add_argument("--alpha", type=float, default=0.001, help="failure probability per input")
        p.add_argument("--skip", type=int, default=1, help="certify every skip-th input")
        p.add_argument("--max", type=int, default=-1, help="at most this many inputs (-1: all)")
        p.add_argument("--start", type=int, default=0, help="first index")
        p.add_argument("--batch", type=_batch_arg, default=1000,
                       help="noisy samples per forward pass, or 'auto' (from free memory / --max-batch-bytes)")
        p.add_argument("--pack", type=_positive_int, default=1,
                       help="inputs per engine call: their draws share forward passes (counts stay per input); "
                            "raise it when n0 + n is small against --batch, e.g. PREDICT with n = 1000 on a GPU")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--precision", choices=PRECISIONS, default="fp32")
        p.add_argument("--no-channels-last", action="store_true", help="feed NCHW batches (for models that need it)")
        p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                       help="torch.compile the model (warm-up excluded from timings; for GPUs)")
        p.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                       help="torch.compile mode (implies --compile); reduce-overhead replays CUDA graphs")
        p.add_argument("--fixed-shape", action=argparse.BooleanOptionalAction, default=None,
                       help="pad every forward pass to --batch rows (default: on with --compile)")
        p.add_argument("--max-batch-bytes", type=int, default=None, help="memory budget of --batch auto (bytes)")
        p.add_argument("--allow-unbounded", action="store_true", help="warn instead of failing on pixels outside [0,1]")
        p.add_argument("--quiet", action="store_true")
        p.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT.total_seconds() / 60,
                       help="under torchrun: minutes a process waits for the others (default: %(default)s)")
        p.add_argument("--out", required=True, help="result TSV; re-running the same command resumes it")
        _add_denoiser_args(p)
        p.set_defaults(func=_sharded(func))

    p = sub.add_parser("attack", help="l2 PGD / DDN attacks on the smoothed (or base) classifier; one TSV row each")
    _add_data_args(p, dataset_default=None)
    p.add_argument("--checkpoint", required=True)
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
    p.add_argument("--batch", type=_batch_arg, default=1000,
                   help="smoothed: noisy samples per forward pass of CERTIFY/PREDICT, or 'auto'")
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
    p.set_defaults(func=cmd_attack, compile=False, compile_mode=None, fixed_shape=None, max_batch_bytes=None)

    p = sub.add_parser("merge", help="merge a sharded (torchrun) run's part files into its result file")
    p.add_argument("out", help="the result TSV (its part files are <out>.part-<rank>-of-<size>)")
    p.set_defaults(func=cmd_merge)

    for name, func in (("analyze", cmd_analyze), ("plot", cmd_plot)):
        p = sub.add_parser(name, help="certified-accuracy table" if name == "analyze" else "certified-accuracy curves")
        p.add_argument("results", nargs="+", help="result TSV files (several: best-sigma envelope)")
        p.add_argument("--labels", nargs="+", default=None, help="one label per file (default: sigma = ...)")
        p.add_argument("--no-envelope", action="store_true")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (FileNotFoundError, ValueError) as e:
        # Library errors already say what is wrong and how to fix it; no traceback needed.
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
