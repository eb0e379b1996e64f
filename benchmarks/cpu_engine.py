"""Milliseconds per forward pass of the CPU engine's options (issue #17): eager, eager in bf16
autocast, the compiled graph (``Engine(compile=True)``: weights stay graph inputs), the frozen graph
(``Engine(compile_mode="frozen")``: inductor's ``freezing``, weights folded in as constants) and
both compiled graphs in bf16 autocast, at several rows per pass and thread counts, plus each
compile's one-off cost. Compiled variants are what the engine itself builds (its channels-last
copy of the model, and for "frozen" the flag around each call). ``eager-contiguous-weights`` is
the model as built (what the 2019 code evaluates, and what the engine fed before it kept weights
channels-last) on the same channels-last input. Then the noise: microseconds per noisy row
(1 x 28 x 28) for float64 ``normal_``, the engine's vectorised float64 Box-Muller
(:func:`smoothcert.noise.standard_normal_f64_`) and float32 ``normal_``.

Random-weight LeNet / LeNet-small (the cost does not depend on the weights), inputs in [0, 1] of
shape ``[rows, 1, 28, 28]`` in channels-last layout, under ``torch.inference_mode()``; each
timing is the median of ``--reps`` passes after one untimed pass (where a new row count
compiles). Prints one JSON line per (model, variant, threads, rows) and one per compile.

    PYTHONPATH=src python benchmarks/cpu_engine.py                      # ~5-15 min on 2 busy cores
    PYTHONPATH=src python benchmarks/cpu_engine.py --models lenet --rows 256 1000 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch

from smoothcert.engine import Engine, cxx_compiler
from smoothcert.models import build_model
from smoothcert.noise import standard_normal_f64_


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512_fp16", "avx512f")))


def _time(fn, x: torch.Tensor, reps: int) -> float:
    with torch.inference_mode():
        fn(x)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["lenet-small", "lenet"])
    p.add_argument("--rows", nargs="+", type=int, default=[128, 256, 500, 1000])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()
    # Every compiled variant here compiles once per (rows, threads, autocast) of the same forward
    # code; dynamo's default limit of 8 graphs per code object would send the later ones back to
    # eager silently (seen: "hit config.recompile_limit (8)").
    torch._dynamo.config.recompile_limit = 256
    print(json.dumps({"cpu": platform.processor() or platform.machine(), "flags": _cpu_flags(),
                      "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                      "cxx": cxx_compiler()}), flush=True)
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name, num_classes=10, in_channels=1, mean=[0.1307], std=[0.3081]).eval()
        as_built = copy.deepcopy(model)
        model = model.to(memory_format=torch.channels_last)
        variants = {"eager": model, "eager-contiguous-weights": as_built}
        if args.bf16:
            def bf16_eager(x, model=model):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return model(x)
            variants["eager-bf16"] = bf16_eager
        torch.set_num_threads(max(args.threads))
        # Frozen engines first: a frozen build may clear dynamo's cache (Engine.forward, when the tensors
        # it freezes may be held with other values), which would drop the graphs built before it.
        builds = (("frozen", "frozen", None), ("frozen-bf16", "frozen", torch.bfloat16),
                  ("compiled", None, None), ("compiled-bf16", None, torch.bfloat16))
        for label, mode, dtype in builds:
            if dtype is not None and not args.bf16:
                continue
            graph = Engine(compile=True, compile_mode=mode).forward(as_built)

            def run(x, graph=graph, dtype=dtype):
                if dtype is None:
                    return graph(x)
                with torch.autocast("cpu", dtype=dtype):
                    return graph(x)

            x = torch.rand(args.rows[0], 1, 28, 28).contiguous(memory_format=torch.channels_last)
            start = time.perf_counter()
            with torch.inference_mode():
                run(x)
            print(json.dumps({"model": name, "variant": label, "compile_s": round(time.perf_counter() - start, 2),
                              "rows": args.rows[0]}), flush=True)
            variants[label] = run
        for threads in args.threads:
            torch.set_num_threads(threads)
            for rows in args.rows:
                x = torch.rand(rows, 1, 28, 28).contiguous(memory_format=torch.channels_last)
                for label, fn in variants.items():
                    ms = _time(fn, x, args.reps)  # a new row count compiles once, in the untimed pass
                    print(json.dumps({"model": name, "variant": label, "threads": threads, "rows": rows,
                                      "ms": round(ms, 2), "us_per_row": round(1000 * ms / rows, 2)}), flush=True)
    _noise_rows(args)


def _noise_rows(args: argparse.Namespace) -> None:
    """Microseconds per 1 x 28 x 28 row of Gaussian draws, at the largest thread count."""
    torch.set_num_threads(max(args.threads))
    gen = torch.Generator().manual_seed(0)
    for rows in args.rows:
        f64 = torch.empty(rows, 1, 28, 28, dtype=torch.float64)
        f32 = torch.empty(rows, 1, 28, 28)
        for label, fn in (("float64 normal_", lambda t: f64.normal_(generator=gen)),
                          ("float64 vectorised Box-Muller", lambda t: standard_normal_f64_(f64, generator=gen)),
                          ("float32 normal_", lambda t: f32.normal_(generator=gen))):
            ms = _time(fn, f64, args.reps)
            print(json.dumps({"noise": label, "threads": max(args.threads), "rows": rows,
                              "us_per_row": round(1000 * ms / rows, 2)}), flush=True)


if __name__ == "__main__":
    main()
