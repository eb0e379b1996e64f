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

Protocol (defaults): LeNet (``--arch lenet``, random weights unless ``--train-steps``), the first
``--inputs`` MNIST test images of the embedded set, Gaussian sigma 0.25, n0=100, n=10,000,
alpha=0.001, the same ``--batch`` rows per forward pass and fp32 (TF32 off on CUDA) for both,
same model and inputs in one process. Both are warmed up first (not timed). Inputs are then
certified one at a time, the two implementations interleaved in ABBA order (ref, ours, ours,
ref, ...) so that drifting machine load or clock speed falls on both alike; the reported time
is the median seconds per input. Random weights make the predictions nearly constant, which
does not change the cost: every draw is evaluated and counted whatever the class.

Output: one JSON line per implementation, then one summary line with ``ratio = ref_s / ours_s``
(above 1: smoothcert is faster) and an agreement check: the same prediction on every input,
ABSTAIN included, and the estimation counts nA of the selected class compared by a
two-proportion z statistic (|z| < 4 when both sample the same smoothed classifier, except
with probability ~6e-5 per input).

Runtime with the defaults on 2 CPU cores (AMD EPYC, torch 2.13 CPU build): 45 s when the cores
are idle, up to about 100 s when another job shares them. Results and a profile of
where the time goes: benchmarks/README.md.

    PYTHONPATH=src python benchmarks/certify_speed.py              # CPU, all cores
    PYTHONPATH=src python benchmarks/certify_speed.py --device cuda --inputs 20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import numpy as np
import torch
from scipy.stats import norm
import torch.nn.functional as F
from torch import Tensor, nn

from smoothcert.data import get_dataset
from smoothcert.models import build_model, model_input_size
from smoothcert.noise import get_noise
from smoothcert.smooth import ABSTAIN, SmoothedClassifier
from smoothcert.stats import clopper_pearson_lower

NUM_CLASSES = 10
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


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
# Set-up
# --------------------------------------------------------------------------------------------


def _inputs(count: int, *, in_channels: int, size: int) -> tuple[Tensor, str]:
    """``count + 1`` real MNIST test images ``[count + 1, C, size, size]`` in [0, 1] (the last one
    is for the warm-up); zero-padded and repeated over channels for non-MNIST shapes."""
    x, _ = get_dataset("embedded", split="test").subset(range(count + 1)).tensors()
    note = "embedded MNIST test images 0..%d" % (count - 1)
    if size != x.shape[-1]:
        if size < x.shape[-1]:
            raise SystemExit(f"--arch expects {size}x{size} inputs, smaller than MNIST's 28x28")
        pad = size - x.shape[-1]
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
        note += f", zero-padded to {size}x{size}"
    if in_channels != 1:
        x = x.repeat(1, in_channels, 1, 1)
        note += f", repeated over {in_channels} channels"
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def _two_proportion_z(k1: int, k2: int, n: int) -> float:
    """z statistic of k1/n vs k2/n (0 when both are 0 or n: no variance, identical)."""
    p = (k1 + k2) / (2 * n)
    var = 2 * p * (1 - p) / n
    return 0.0 if var == 0 else (k1 - k2) / n / math.sqrt(var)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="lenet", help="registered model name (default lenet)")
    p.add_argument("--in-channels", type=int, help="default: 1 for 28x28 models (MNIST), else 3")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    p.add_argument("--threads", type=int, default=_cores(), help="CPU threads (default: all cores)")
    p.add_argument("--inputs", type=int, default=5, help="timed inputs (default 5)")
    p.add_argument("--batch", type=int, default=1000, help="rows per forward pass, both (default 1000)")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--train-steps", type=int, default=0, help="training steps first (default 0: random)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.inputs < 1 or args.batch < 1 or args.threads < 1:
        p.error("--inputs, --batch and --threads must be positive")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda given but CUDA is not available")
    torch.set_num_threads(args.threads)
    # fp32 for both: TF32 off globally; smoothcert's precision="fp32" also turns it off itself.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(args.seed)

    size = model_input_size(args.arch)
    in_channels = args.in_channels or (1 if size == 28 else 3)
    model = build_model(
        args.arch,
        num_classes=NUM_CLASSES,
        in_channels=in_channels,
        mean=[MNIST_MEAN] * in_channels,
        std=[MNIST_STD] * in_channels,
    ).to(device)
    train_acc = None
    if args.train_steps > 0:
        train_acc = _train(
            model, steps=args.train_steps, sigma=args.sigma, device=device, seed=args.seed
        )
    model.eval()
    x_all, inputs_note = _inputs(args.inputs, in_channels=in_channels, size=size)
    x_all = x_all.to(device)
    warm_x, xs = x_all[-1], x_all[:-1]

    ref = ReferenceSmooth(model, num_classes=NUM_CLASSES, sigma=args.sigma)
    ours = SmoothedClassifier(
        model, noise=get_noise("gaussian", sigma=args.sigma), num_classes=NUM_CLASSES, precision="fp32"
    )
    gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    cert = dict(n0=args.n0, n=args.n, alpha=args.alpha)

    # Each runner returns (prediction or ABSTAIN, nA = estimation count of the selected class).
    def run_ref(x: Tensor, **kw: float) -> tuple[int, int]:
        prediction, _, _, n_a = ref.certify(x, batch=args.batch, **{**cert, **kw})
        return prediction, n_a

    def run_ours(x: Tensor, **kw: float) -> tuple[int, int]:
        c = ours.certify(x[None], batch_size=args.batch, generator=gen, **{**cert, **kw})
        return int(c.prediction[0]), int(c.count_a[0])

    runners = {"reference_cohen2019": run_ref, "smoothcert": run_ours}
    # Warm-up (not timed): the same batch shapes as the timed runs (n0-row and batch-row passes).
    warm_n = max(min(args.n, 2 * args.batch + args.n % args.batch), args.n0 + 1)
    for run in runners.values():
        run(warm_x, n=warm_n)
    _sync(device)

    times: dict[str, list[float]] = {k: [] for k in runners}
    results: dict[str, list[tuple[int, int]]] = {k: [] for k in runners}
    names = list(runners)
    for i, x in enumerate(xs):
        order = names if i % 2 == 0 else names[::-1]  # ABBA: ref, ours, ours, ref, ...
        for name in order:
            _sync(device)
            start = time.perf_counter()
            results[name].append(runners[name](x))
            _sync(device)
            times[name].append(time.perf_counter() - start)

    common = {
        "benchmark": "certify_speed",
        "device": str(device),
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": args.arch,
        "weights": "random" if train_acc is None else f"trained {args.train_steps} steps",
        "precision": "fp32",
        "noise": f"gaussian sigma={args.sigma:g}",
        "n0": args.n0,
        "n": args.n,
        "alpha": args.alpha,
        "batch": args.batch,
        "inputs": args.inputs,
    }
    medians = {}
    for name in names:
        s = statistics.median(times[name])
        medians[name] = s
        line = {
            **common,
            "implementation": name,
            "s_per_input": round(s, 4),
            "samples_per_s": round((args.n0 + args.n) / s, 1),
            "s_per_input_all": [round(t, 4) for t in times[name]],
            "predictions": [r[0] for r in results[name]],
        }
        print(json.dumps(line), flush=True)

    ref_res, our_res = results["reference_cohen2019"], results["smoothcert"]
    z = [_two_proportion_z(a[1], b[1], args.n) for a, b in zip(ref_res, our_res)]
    same_class = all(a[0] == b[0] for a, b in zip(ref_res, our_res))
    summary = {
        **common,
        "ratio": round(medians["reference_cohen2019"] / medians["smoothcert"], 3),
        "ref_s": round(medians["reference_cohen2019"], 4),
        "ours_s": round(medians["smoothcert"], 4),
        "agree": bool(same_class and max(abs(v) for v in z) < 4.0),
        "same_predictions": same_class,
        "max_abs_z_count_a": round(max(abs(v) for v in z), 2),
        "count_a_ref": [r[1] for r in ref_res],
        "count_a_ours": [r[1] for r in our_res],
        "inputs_used": inputs_note,
        "train_batch_acc": train_acc,
        "loadavg_1min_end": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
