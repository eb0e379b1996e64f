"""Where LeNet's fp32 forward pass spends its time on this CPU, against what the CPU can do (issue #17):
why ``smoothcert certify`` cannot reach 3x the 2019 loop for LeNet in fp32 on a small CPU.

Prints JSON lines:

* ``layer``: microseconds per row of each stage of a random-weight LeNet (channels-last copy, as the
  engine evaluates it; eager, ``torch.inference_mode()``), with the stage's FLOPs (2 x multiply-adds)
  and the rate they run at;
* ``gemm``: the fp32 rate of one square matrix product (``--gemm`` side), the practical peak of these
  cores for the matrix products convolutions are lowered to;
* ``winograd``: the largest convolution (5x5, 32 -> 64 channels on 14x14) computed with the
  Winograd algorithm F(2x2, 5x5) in tensor operations (input and output transforms as einsums,
  36 batched matrix products over the channels; matrices by the Toom-Cook construction with the
  points 0, 1, -1, 2, -2 and infinity, Lavin & Gray 2016), eager and compiled, against oneDNN's
  direct convolution -- 2.8x fewer multiplications, and the question is whether the memory its
  transforms move costs more than that saves; ``max_abs_err`` against the direct convolution; and
  its 36 batched matrix products alone.

Every timing: best of ``--reps`` repetitions of ``--inner`` calls after 3 untimed calls.

    PYTHONPATH=src python benchmarks/lenet_roofline.py                  # ~1 min on 2 cores
    PYTHONPATH=src python benchmarks/lenet_roofline.py --rows 256 576 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smoothcert.models import lenet


def _us_per_row(fn: Callable[[], object], rows: int, *, reps: int, inner: int) -> float:
    with torch.inference_mode():
        for _ in range(3):
            fn()
        best = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            best = min(best, (time.perf_counter() - start) / inner)
    return best / rows * 1e6


def winograd_matrices(m: int = 2, r: int = 5) -> tuple[Tensor, Tensor, Tensor]:
    """``(A^T [m, a], G [a, r], B^T [a, a])`` of F(m, r), a = m + r - 1, so that the correlation
    ``y_i = sum_k d_{i+k} g_k`` is ``A^T ((G g) * (B^T d))``: the transpose of Toom-Cook's linear
    convolution (evaluate at 0, 1, -1, 2, -2, ..., infinity; multiply; interpolate)."""
    a = m + r - 1
    points = [0.0] + [s * k for k in range(1, a) for s in (1.0, -1.0)][: a - 2]

    def evaluation(n: int) -> np.ndarray:  # [a, n]: a polynomial of n coefficients at the points and infinity
        e = np.zeros((a, n))
        for j, p in enumerate(points):
            e[j] = [p**k for k in range(n)]
        e[a - 1, n - 1] = 1.0
        return e

    interpolation = np.linalg.inv(evaluation(a))
    return tuple(torch.tensor(t, dtype=torch.float32) for t in (evaluation(m).T, evaluation(r), interpolation.T))


def winograd_conv5x5(conv: nn.Conv2d) -> Callable[[Tensor], Tensor]:
    """``conv`` (5x5, stride 1, padding 2) on ``[B, C, H, W]`` with even H, W by F(2x2, 5x5)."""
    at, g, bt = winograd_matrices()
    out_c, in_c = conv.weight.shape[:2]
    u = torch.einsum("ia,ocab,jb->ijco", g, conv.weight.detach(), g).reshape(36, in_c, out_c).contiguous()
    bias = conv.bias.detach().view(1, out_c, 1, 1)

    def run(x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        th, tw = h // 2, w // 2
        d = F.pad(x, (2, 2, 2, 2)).unfold(2, 6, 2).unfold(3, 6, 2)  # [B, C, th, tw, 6, 6]
        v = torch.einsum("ip,nctupq,jq->ijntuc", bt, d, bt).reshape(36, b * th * tw, in_c)
        mm = torch.bmm(v, u).reshape(6, 6, b, th, tw, out_c)
        y = torch.einsum("ip,pqntuo,jq->notiuj", at, mm, at)
        return y.reshape(b, out_c, h, w) + bias

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", type=int, default=[256])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--gemm", type=int, default=2048)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--inner", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = copy.deepcopy(lenet()).eval().to(memory_format=torch.channels_last)
    feats, head = model.features, model.classifier
    conv1, conv2 = feats[0], feats[3]
    timing = {"reps": args.reps, "inner": args.inner, "threads": args.threads}

    a = torch.randn(args.gemm, args.gemm)
    us = _us_per_row(lambda: a @ a, 1, reps=args.reps, inner=2)
    print(json.dumps({"gemm": args.gemm, "tflops": round(2 * args.gemm**3 / us / 1e6, 3), **timing}), flush=True)

    for rows in args.rows:
        x = torch.rand(rows, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            a1 = conv1(x)
            a2 = feats[2](feats[1](a1.clone()))
            a3 = conv2(a2)
            a4 = feats[5](feats[4](a3.clone()))
        stages = {
            "conv1 5x5 1->32": (lambda: conv1(x), 2 * 28 * 28 * 32 * 25),
            "relu + maxpool": (lambda: feats[2](feats[1](a1.clone())), 0),
            "conv2 5x5 32->64": (lambda: conv2(a2), 2 * 14 * 14 * 64 * 32 * 25),
            "relu + maxpool 2": (lambda: feats[5](feats[4](a3.clone())), 0),
            "classifier 3136->1024->10": (lambda: head(a4), 2 * (3136 * 1024 + 1024 * 10)),
            "whole model": (lambda: model(x), 0),
        }
        for name, (fn, flops) in stages.items():
            us = _us_per_row(fn, rows, reps=args.reps, inner=args.inner)
            print(json.dumps({"layer": name, "rows": rows, "us_per_row": round(us, 1), "mflop_per_row": flops / 1e6,
                              "tflops": round(flops / us / 1e6, 3) if flops else None, **timing}), flush=True)

        wino = winograd_conv5x5(conv2)
        wino_compiled = torch.compile(wino, dynamic=False)
        plain = a2.contiguous()
        with torch.inference_mode():
            err = (wino(plain) - conv2(a2)).abs().max().item()
        # its 36 matrix products alone ([rows x 49, 32] x [32, 64] each): K = 32 makes them memory-bound
        v, u = torch.randn(36, rows * 49, 32), torch.randn(36, 32, 64)
        for label, fn in (("oneDNN direct", lambda: conv2(a2)), ("winograd eager", lambda: wino(plain)),
                          ("winograd compiled", lambda: wino_compiled(plain)),
                          ("winograd batched products only", lambda: torch.bmm(v, u))):
            us = _us_per_row(fn, rows, reps=args.reps, inner=args.inner)
            print(json.dumps({"winograd": label, "rows": rows, "us_per_row": round(us, 1),
                              "max_abs_err": err if label.startswith("winograd ") and "only" not in label else None,
                              **timing}), flush=True)


if __name__ == "__main__":
    main()
