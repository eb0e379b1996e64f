"""Throughput of ``SmoothedClassifier.certify`` against the 2019 reference certification loop.

The reference is the CERTIFY loop of Cohen, Rosenfeld, Kolter 2019 as published in
locuslab/smoothing (``code/core.py``, ``Smooth.certify`` / ``Smooth._sample_noise``),
re-implemented below (:class:`ReferenceSmooth`) with the same algorithm and the same costs:
one input at a time, ``batch`` copies made with ``x.repeat``, ``torch.randn_like(batch) * sigma``,
argmax, a host copy of the predictions after *every* batch and a per-sample Python loop that
counts them into a NumPy array. Its Clopper–Pearson bound
``proportion_confint(nA, n, alpha=2*alpha, method="beta")[0]`` is computed with
:func:`smoothcert.stats.clopper_pearson_lower`, which gives the identical value (statsmodels is
not a dependency).

Cases (``--case``; issue #3, item 4), all with random weights, Gaussian sigma 0.25, alpha 0.001:

=====================  ============  ===========  ========  ====  =========  ======  =========
case                   model         input        classes   n0    N          batch   device
=====================  ============  ===========  ========  ====  =========  ======  =========
``mnist-lenet``        ``lenet``     1x28x28      10        100   10,000     1000    cpu
``cifar-resnet110``    ``resnet110`` 3x32x32      10        100   100,000    1000    cuda
``imagenet-resnet50``  ``resnet50``  3x224x224    1000      100   100,000    400     cuda
=====================  ============  ===========  ========  ====  =========  ======  =========

``batch`` is the reference's rows per forward pass (the issue's reference settings); smoothcert
uses the same unless ``--ours-batch`` says otherwise (an int, or ``auto`` where the engine
supports it). Inputs: the embedded MNIST test images, or the sample images of
``../shared/data/samples`` (``get_dataset("samples", subset=...)``), falling back to random
images in [0, 1] when those are absent. One more input than timed is used for the warm-up.

In one process, on the same model and inputs: the reference in fp32 (TF32 off) once, and
smoothcert at each ``--precision`` (fp32 tf32 bf16 fp16). Every implementation is warmed up
first (not timed; the warm-up time is reported, since it includes any compilation). Inputs are
then certified one at a time with the implementations interleaved in ABBA order (ref, ours...,
then reversed for the next input) so that drifting load or clock speed falls on all alike; the
reported time is the median seconds per input. Random weights make the predictions nearly
constant, which does not change the cost: every draw is evaluated and counted whatever the class.

Output: one JSON line per implementation — seconds per input, samples per second (n0 + N per
input), achieved TFLOP/s, ratio to the reference, warm-up seconds and peak device memory (CUDA:
``torch.cuda.max_memory_allocated`` during the timed calls; null on CPU) — then one summary line.
FLOPs follow :data:`FLOPS_CONVENTION`: 2 x multiply-accumulates of the conv and linear layers of
one forward pass, counted once per input shape with forward hooks. Agreement with the reference
per precision: the same prediction on every input, ABSTAIN included, and the estimation counts
nA compared by a two-proportion z statistic (|z| < 4 when both sample the same smoothed
classifier, except with probability ~6e-5 per input). Reduced precisions (tf32 on CUDA, bf16,
fp16) evaluate a slightly different network, so for them the check measures how far the
certified classifier moves rather than testing an identity.

Runtime: ``mnist-lenet`` with the defaults on 2 CPU cores (AMD EPYC, torch 2.13 CPU build) takes
45 s on idle cores, up to about 100 s when another job shares them. The GPU command and its
estimated runtime are in benchmarks/README.md.

    PYTHONPATH=src python benchmarks/certify_speed.py                                   # mnist-lenet, CPU
    PYTHONPATH=src python benchmarks/certify_speed.py --noise-dtype float64 float32          # exact vs fast noise
    PYTHONPATH=src python benchmarks/certify_speed.py --case cifar-resnet110 --precision fp32 bf16
    PYTHONPATH=src python benchmarks/certify_speed.py --case imagenet-resnet50 --device cpu --n 200 --inputs 2
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import commit as code_commit
from scipy.stats import norm
from torch import Tensor, nn

from smoothcert.data import get_dataset
from smoothcert.models import build_model, model_input_size
from smoothcert.noise import get_noise
from smoothcert.smooth import ABSTAIN, SmoothedClassifier
from smoothcert.stats import clopper_pearson_lower

#: Arithmetic smoothcert is run in (see smoothcert.engine.PRECISIONS); the reference is fp32.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

FLOPS_CONVENTION = (
    "flops_per_sample = 2 x multiply-accumulates of every Conv1d/2d/3d and Linear layer in one "
    "forward pass of one input, counted once per input shape with forward hooks; batchnorm, "
    "activations, pooling, residual additions, the Normalize layer and the noise are not counted. "
    "achieved_tflops = flops_per_sample * (n0 + n) / s_per_input / 1e12"
)


# --------------------------------------------------------------------------------------------
# The reference: Cohen et al. 2019's certification loop (same algorithm, our own code)
# --------------------------------------------------------------------------------------------


class ReferenceSmooth:
    """REFERENCE implementation: the 2019 ``Smooth`` certification loop (Gaussian noise, l2).

    Deliberately keeps the reference's per-batch costs — a host copy of the predictions after
    every forward pass and a Python loop over the samples to count them — since those are what
    is being compared. Uses torch's global RNG, like the original.
    """

    def __init__(self, base: nn.Module, *, num_classes: int, sigma: float) -> None:
        self.base = base
        self.num_classes = num_classes
        self.sigma = sigma

    def certify(
        self, x: Tensor, *, n0: int, n: int, alpha: float, batch: int
    ) -> tuple[int, float, int, int]:
        """x: one input ``[C, H, W]`` on the model's device.

        Returns ``(prediction or ABSTAIN, radius, selected class cAHat, nA)``.
        """
        self.base.eval()
        counts_selection = self._sample_noise(x, n0, batch)
        c_a_hat = int(counts_selection.argmax())
        counts_estimation = self._sample_noise(x, n, batch)
        n_a = int(counts_estimation[c_a_hat])
        # == proportion_confint(nA, n, alpha=2 * alpha, method="beta")[0] of the original.
        p_a_bar = float(clopper_pearson_lower(n_a, n, alpha))
        if p_a_bar < 0.5:
            return ABSTAIN, 0.0, c_a_hat, n_a
        radius = self.sigma * float(norm.ppf(p_a_bar))
        return c_a_hat, radius, c_a_hat, n_a

    def _sample_noise(self, x: Tensor, num: int, batch_size: int) -> np.ndarray:
        with torch.no_grad():
            counts = np.zeros(self.num_classes, dtype=int)
            remaining = num
            for _ in range(math.ceil(num / batch_size)):
                this_batch_size = min(batch_size, remaining)
                remaining -= this_batch_size
                batch = x.repeat((this_batch_size, 1, 1, 1))
                noise = torch.randn_like(batch) * self.sigma
                predictions = self.base(batch + noise).argmax(1)
                counts += self._count_arr(predictions.cpu().numpy(), self.num_classes)
            return counts

    @staticmethod
    def _count_arr(arr: np.ndarray, length: int) -> np.ndarray:
        counts = np.zeros(length, dtype=int)
        for idx in arr:
            counts[idx] += 1
        return counts


# --------------------------------------------------------------------------------------------
# Cases and set-up
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One benchmark setting: model, input shape, data and the issue's sample sizes."""

    arch: str
    in_channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n: int
    n0: int
    batch: int  # the reference's rows per forward pass (issue #3's reference settings)
    inputs: int  # default timed inputs: sized for the case's device (see benchmarks/README.md)
    data: str  # "embedded" (MNIST) or a subset of the "samples" dataset
    device: str


CASES: dict[str, Case] = {
    "mnist-lenet": Case(
        arch="lenet", in_channels=1, size=28, num_classes=10, mean=(0.1307,), std=(0.3081,),
        n=10_000, n0=100, batch=1000, inputs=5, data="embedded", device="cpu",
    ),
    "cifar-resnet110": Case(
        arch="resnet110", in_channels=3, size=32, num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        n=100_000, n0=100, batch=1000, inputs=10, data="cifar10", device="cuda",
    ),
    "imagenet-resnet50": Case(
        arch="resnet50", in_channels=3, size=224, num_classes=1000,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        n=100_000, n0=100, batch=400, inputs=3, data="imagenet", device="cuda",
    ),
}


def _inputs(case: Case, count: int, *, seed: int) -> tuple[Tensor, str]:
    """``count + 1`` images ``[count + 1, C, S, S]`` in [0, 1] (the last one is for the warm-up).

    Real test images where they exist, cycled when fewer than ``count + 1`` are available;
    random images in [0, 1] when the sample folder is absent.
    """
    if case.data == "embedded":
        x, _ = get_dataset("embedded", split="test").subset(range(count + 1)).tensors()
        return x.contiguous(), f"embedded MNIST test images 0..{count}"
    try:
        x, _ = get_dataset("samples", split="test", subset=case.data).tensors()
    except FileNotFoundError as err:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(count + 1, case.in_channels, case.size, case.size, generator=g)
        first_line = str(err).splitlines()[0]
        return x, f"random images in [0, 1], seed {seed} (sample images not found: {first_line})"
    available = len(x)
    x = x[[i % available for i in range(count + 1)]]
    note = f"samples/{case.data} test images 0..{min(count, available - 1)}"
    if count + 1 > available:
        note += f", cycled ({available} available)"
    return x.contiguous(), note


def _train(model: nn.Module, *, steps: int, sigma: float, device: torch.device, seed: int) -> float:
    """A few Adam steps with Gaussian augmentation on the embedded train split, so that the
    agreement check compares non-trivial predictions. Returns the last batch's accuracy."""
    x, y = get_dataset("embedded", split="train").tensors()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    acc = float("nan")
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        xb, yb = x[idx].to(device), y[idx].to(device)
        logits = model(xb + sigma * torch.randn_like(xb))
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = float((logits.argmax(1) == yb).float().mean())
    model.eval()
    return acc


def forward_flops(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> int:
    """FLOPs of one forward pass of one input of ``shape`` (no batch dimension), as defined by
    :data:`FLOPS_CONVENTION`: 2 x the multiply-accumulates of conv and linear layers."""
    macs = 0

    def conv_hook(m: nn.Module, _inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs
        # Each output element is a dot product over (in_channels / groups) x kernel taps.
        macs += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def linear_hook(m: nn.Module, _inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs
        macs += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return 2 * macs


def _batch_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value


def _accepts_auto_batch(certify_params: dict[str, inspect.Parameter]) -> bool:
    """Whether ``SmoothedClassifier.certify(batch_size="auto")`` is supported by this smoothcert."""
    param = certify_params.get("batch_size")
    if param is None:
        return False
    return param.default == "auto" or "auto" in str(param.annotation) or "str" in str(param.annotation)


def _engine_options(
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, Any], int | str, dict[str, Any], list[str]]:
    """Split the requested engine options between ``SmoothedClassifier(...)`` and ``certify(...)``,
    by what their signatures accept in the installed smoothcert.

    Returns ``(init_kwargs, certify_kwargs, batch_size, requested, ignored)``; options that neither
    accepts yet are left out (with a warning on stderr) and named in ``ignored``.
    """
    init_params = dict(inspect.signature(SmoothedClassifier.__init__).parameters)
    certify_params = dict(inspect.signature(SmoothedClassifier.certify).parameters)
    requested: dict[str, Any] = {}
    if args.channels_last is not None:
        requested["channels_last"] = args.channels_last
    for key in ("compile", "compile_mode", "fixed_shape", "max_batch_bytes"):
        if getattr(args, key) is not None:
            requested[key] = getattr(args, key)
    init_kw: dict[str, Any] = {}
    certify_kw: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in requested.items():
        if key in init_params:
            init_kw[key] = value
        elif key in certify_params:
            certify_kw[key] = value
        else:
            ignored.append(key)
    batch: int | str = args.batch if args.ours_batch is None else args.ours_batch
    if args.ours_batch is not None:
        requested["batch_size"] = args.ours_batch
    if batch == "auto" and not _accepts_auto_batch(certify_params):
        ignored.append("batch_size=auto")
        batch = args.batch
    for key in ignored:
        print(
            f"certify_speed: this smoothcert does not accept {key!r} yet; running without it",
            file=sys.stderr,
        )
    return init_kw, certify_kw, batch, requested, ignored


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)  # Linux only
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def _weight_layout(model: nn.Module) -> str:
    """'channels_last' if any 4-D weight is stored channels-last, else 'contiguous'."""
    for p in model.parameters():
        if p.ndim == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last):
            return "channels_last"
    return "contiguous"


def _two_proportion_z(k1: int, k2: int, n: int) -> float:
    """z statistic of k1/n vs k2/n (0 when both are 0 or n: no variance, identical)."""
    p = (k1 + k2) / (2 * n)
    var = 2 * p * (1 - p) / n
    return 0.0 if var == 0 else (k1 - k2) / n / math.sqrt(var)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

REFERENCE = "reference_cohen2019"


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=sorted(CASES), default="mnist-lenet",
                   help="model, input shape and sizes (default mnist-lenet)")
    p.add_argument("--arch", help="registered model for the case's input shape (default: the case's)")
    p.add_argument("--device", help="cpu or cuda / cuda:N (default: cpu for mnist-lenet, cuda otherwise)")
    p.add_argument("--threads", type=int, default=_cores(), help="CPU threads (default: all cores)")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"],
                   help="smoothcert precisions, each timed against the one fp32 reference (default fp32)")
    p.add_argument("--inputs", type=int, help="timed inputs (default: the case's)")
    p.add_argument("--n", type=int, help="estimation draws N (default: the case's)")
    p.add_argument("--n0", type=int, help="selection draws (default: the case's)")
    p.add_argument("--batch", type=int, help="rows per forward pass, reference and smoothcert (default: the case's)")
    p.add_argument("--ours-batch", type=_batch_arg,
                   help="smoothcert's rows per forward pass: an int or 'auto' (default: --batch)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="smoothcert's channels_last (default: the engine's default)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="smoothcert's compile (torch.compile), where supported (default: the engine's)")
    p.add_argument("--compile-mode", default=None,
                   help="smoothcert's compile mode: frozen (weights as constants) or a torch.compile mode, e.g. "
                        "reduce-overhead (CUDA graphs); implies --compile")
    p.add_argument("--fixed-shape", action=argparse.BooleanOptionalAction, default=None,
                   help="smoothcert's fixed_shape (every batch the same shape), where supported "
                   "(default: the engine's)")
    p.add_argument("--max-batch-bytes", type=int,
                   help="smoothcert's device-memory budget for --ours-batch auto, where supported")
    p.add_argument("--noise-dtype", nargs="+", choices=("float64", "float32"), default=["float64"],
                   help="smoothcert's noise dtype(s) (issue #16): float64 is the exact default; float32 the "
                   "fast path whose Gaussian tail stops at 5.77 sigma; rows of float32 runs are named "
                   "'<precision>+float32noise' and carry noise_dtype")
    p.add_argument("--alpha", type=float, default=0.001, help="default 0.001")
    p.add_argument("--sigma", type=float, default=0.25, help="Gaussian sigma (default 0.25)")
    p.add_argument("--train-steps", type=int, default=0, help="training steps first, mnist-lenet only (0: random)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    args = p.parse_args(argv)

    case = CASES[args.case]
    args.inputs = case.inputs if args.inputs is None else args.inputs
    args.n = case.n if args.n is None else args.n
    args.n0 = case.n0 if args.n0 is None else args.n0
    args.batch = case.batch if args.batch is None else args.batch
    arch = args.arch or case.arch
    if min(args.inputs, args.batch, args.threads, args.n, args.n0) < 1:
        p.error("--inputs, --batch, --threads, --n and --n0 must be positive")
    if args.n0 >= args.n:
        p.error(f"--n0 ({args.n0}) must be smaller than --n ({args.n})")
    if args.train_steps > 0 and args.case != "mnist-lenet":
        p.error("--train-steps trains on MNIST: only with --case mnist-lenet")
    if model_input_size(arch) != case.size:
        p.error(f"--arch {arch} takes {model_input_size(arch)}-pixel inputs; case {args.case} has {case.size}")
    precisions = list(dict.fromkeys(args.precision))  # unique, in the given order

    device = torch.device(args.device or case.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"device {device} but CUDA is not available; pass --device cpu (with a small --n for GPU cases)")
    torch.set_num_threads(args.threads)
    # The reference runs in fp32: TF32 off globally. smoothcert sets (and restores) the
    # switches for its own precision on every call.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(args.seed)

    model = build_model(
        arch, num_classes=case.num_classes, in_channels=case.in_channels, mean=case.mean, std=case.std
    ).to(device)
    train_acc = None
    if args.train_steps > 0:
        train_acc = _train(model, steps=args.train_steps, sigma=args.sigma, device=device, seed=args.seed)
    model.eval()
    shape = (case.in_channels, case.size, case.size)
    flops = forward_flops(model, shape, device)
    x_all, inputs_note = _inputs(case, args.inputs, seed=args.seed)
    x_all = x_all.to(device)
    warm_x, xs = x_all[-1], x_all[:-1]

    init_kw, certify_kw, our_batch, requested, ignored = _engine_options(args)
    noise = get_noise("gaussian", sigma=args.sigma)
    # The reference gets its own copy: smoothcert's engine keeps the weights channels-last (in
    # place), and the 2019 code evaluates the model as built (contiguous weights).
    ref = ReferenceSmooth(copy.deepcopy(model), num_classes=case.num_classes, sigma=args.sigma)
    # One smoothed classifier per (precision, noise dtype); the label names its result lines.
    variants = {
        (prec if nd == "float64" else f"{prec}+float32noise"): (prec, nd)
        for prec in precisions for nd in dict.fromkeys(args.noise_dtype)
    }
    ours = {
        label: SmoothedClassifier(model, noise=noise, num_classes=case.num_classes, precision=prec,
                                  **({"noise_dtype": nd} if nd != "float64" else {}), **init_kw)
        for label, (prec, nd) in variants.items()
    }
    gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    cert = dict(n0=args.n0, n=args.n, alpha=args.alpha)

    # Each runner returns (prediction or ABSTAIN, nA = estimation count of the selected class).
    def run_ref(x: Tensor, **kw: float) -> tuple[int, int]:
        prediction, _, _, n_a = ref.certify(x, batch=args.batch, **{**cert, **kw})
        return prediction, n_a

    def runner_ours(smoothed: SmoothedClassifier) -> Callable[..., tuple[int, int]]:
        def run(x: Tensor, **kw: float) -> tuple[int, int]:
            c = smoothed.certify(x[None], batch_size=our_batch, generator=gen, **certify_kw, **{**cert, **kw})
            return int(c.prediction[0]), int(c.count_a[0])

        return run

    runners: dict[str, Callable[..., tuple[int, int]]] = {REFERENCE: run_ref}
    for prec, smoothed in ours.items():
        runners[f"smoothcert_{prec}"] = runner_ours(smoothed)
    names = list(runners)

    # Warm-up (not timed): the batch shapes of the timed runs (an n0-row pass, full batches and
    # the remainder). An automatic batch size is resolved first where the engine can say what it
    # will be; otherwise that warm-up uses the full n.
    def warm_n(name: str) -> int:
        batch: int | str = args.batch if name == REFERENCE else our_batch
        if not isinstance(batch, int):
            resolve = getattr(ours[name.removeprefix("smoothcert_")], "resolve_batch_size", None)
            if resolve is None:
                return args.n
            batch = int(resolve(warm_x[None], batch))
        return max(min(args.n, 2 * batch + args.n % batch), args.n0 + 1)

    warmup_s: dict[str, float] = {}
    for name, run in runners.items():
        _sync(device)
        start = time.perf_counter()
        run(warm_x, n=warm_n(name))
        _sync(device)
        warmup_s[name] = time.perf_counter() - start

    times: dict[str, list[float]] = {k: [] for k in names}
    peaks: dict[str, list[float]] = {k: [] for k in names}
    results: dict[str, list[tuple[int, int]]] = {k: [] for k in names}
    reference_layouts: set[str] = set()
    for i, x in enumerate(xs):
        order = names if i % 2 == 0 else names[::-1]  # ABBA: ref, ours..., ours..., ref, ...
        for name in order:
            if name == REFERENCE:
                reference_layouts.add(_weight_layout(ref.base))
            _sync(device)
            _reset_peak(device)
            start = time.perf_counter()
            results[name].append(runners[name](x))
            _sync(device)
            times[name].append(time.perf_counter() - start)
            peak = _peak_mib(device)
            if peak is not None:
                peaks[name].append(peak)

    samples = args.n0 + args.n
    common = {
        "benchmark": "certify_speed",
        "case": args.case,
        "device": str(device),
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": code_commit(),
        "model": arch,
        "parameters": sum(q.numel() for q in model.parameters()),
        "input_shape": list(shape),
        "num_classes": case.num_classes,
        "weights": "random" if train_acc is None else f"trained {args.train_steps} steps",
        "noise": f"gaussian sigma={args.sigma:g}",
        "n0": args.n0,
        "n": args.n,
        "alpha": args.alpha,
        "inputs": args.inputs,
        "flops_per_sample": flops,
        "flops_convention": FLOPS_CONVENTION,
    }
    medians = {name: statistics.median(times[name]) for name in names}
    ref_res = results[REFERENCE]
    per_precision: dict[str, dict[str, object]] = {}
    for name in names:
        s = medians[name]
        is_ref = name == REFERENCE
        line: dict[str, object] = {
            **common,
            "implementation": name,
            "precision": "fp32" if is_ref else variants[name.removeprefix("smoothcert_")][0],
            "noise_dtype": "float32" if is_ref else variants[name.removeprefix("smoothcert_")][1],
            "batch": args.batch if is_ref else our_batch,
            "s_per_input": round(s, 4),
            "samples_per_s": round(samples / s, 1),
            "achieved_tflops": round(flops * samples / s / 1e12, 4),
            "ratio_to_reference": None if is_ref else round(medians[REFERENCE] / s, 3),
            "warmup_s": round(warmup_s[name], 3),
            "peak_device_mem_mib": round(max(peaks[name]), 1) if peaks[name] else None,
            "s_per_input_all": [round(t, 4) for t in times[name]],
            "predictions": [r[0] for r in results[name]],
            "count_a": [r[1] for r in results[name]],
        }
        if not is_ref:
            prec = name.removeprefix("smoothcert_")
            smoothed = ours[prec]
            settings = getattr(smoothed, "settings", None)
            line.update(
                engine=repr(smoothed),
                engine_settings=settings() if callable(settings) else None,
                engine_requested=requested,
                engine_ignored=ignored,
                # What the engine reports of itself, where it does: rows per forward pass actually
                # used (an automatic batch resolved) and seconds of compilation in its warm-up.
                rows_per_pass=getattr(smoothed, "last_batch_size", None),
                compile_s=getattr(smoothed, "compile_seconds", None),
            )
            z = [_two_proportion_z(a[1], b[1], args.n) for a, b in zip(ref_res, results[name])]
            same = all(a[0] == b[0] for a, b in zip(ref_res, results[name]))
            max_z = max(abs(v) for v in z)
            line.update(same_predictions=same, max_abs_z_count_a=round(max_z, 2), agree=bool(same and max_z < 4.0))
            per_precision[prec] = {
                key: line[key]
                for key in ("s_per_input", "samples_per_s", "achieved_tflops", "ratio_to_reference",
                            "peak_device_mem_mib", "same_predictions", "max_abs_z_count_a", "agree")
            }
        print(json.dumps(line), flush=True)

    first = per_precision[next(iter(variants))]
    summary = {
        **common,
        "implementation": "summary",
        "reference_batch": args.batch,
        "ours_batch": our_batch,
        "ref_s": round(medians[REFERENCE], 4),
        # The first --precision, under the key names of earlier versions of this script.
        "ratio_precision": precisions[0],
        "ours_s": first["s_per_input"],
        "ratio": first["ratio_to_reference"],
        "agree": first["agree"],
        "per_precision": per_precision,
        "engine_requested": requested,
        "engine_ignored": ignored,
        "reference_weight_layouts": sorted(reference_layouts),
        "inputs_used": inputs_note,
        "train_batch_acc": train_acc,
        "loadavg_1min_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
