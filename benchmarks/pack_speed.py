"""Seconds per input of dataset-level CERTIFY with several inputs per engine call (``pack``).

When n0 + n is small against the rows a device takes per forward pass (PREDICT or CERTIFY with
n = 1,000 on a GPU), one input per call leaves the device mostly idle and pays the fixed cost of
a call (noise buffer, two sampling passes, the final host read) per input. ``pack = K`` certifies
K inputs per call (:func:`smoothcert.runs.certify.certify_dataset`). This runs the same inputs at
each ``--packs`` value, in ABBA order, with a random-weight LeNet (speed only) on the embedded
MNIST test images, and prints one JSON line per pack value: median seconds per input over
``--repeats`` rounds, samples per second, and the ratio to pack = 1.

    PYTHONPATH=src python benchmarks/pack_speed.py                   # CPU
    PYTHONPATH=src python benchmarks/pack_speed.py --device cuda --batch 10000
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from smoothcert import SmoothedClassifier, get_noise
from smoothcert.data import get_dataset
from smoothcert.runs.certify import certify_dataset
from smoothcert.models import build_model


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="lenet-small")
    p.add_argument("--inputs", type=int, default=64)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1000, help="rows per forward pass")
    p.add_argument("--packs", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--repeats", type=int, default=3, help="rounds; each runs every pack value (ABBA order)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    data = get_dataset("embedded", split="test")
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=10, in_channels=1, mean=[0.1307], std=[0.3081]).to(device).eval()
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=10)
    indices = list(range(args.inputs))
    smoothed.warmup(data[0][0], batch_size=args.batch)
    times: dict[int, list[float]] = {k: [] for k in args.packs}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            order = args.packs if rep % 2 == 0 else args.packs[::-1]
            for k in order:
                out = Path(tmp) / f"r{rep}_p{k}.tsv"
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                certify_dataset(smoothed, data, out, n0=args.n0, n=args.n, alpha=0.001, batch_size=args.batch,
                                indices=indices, pack=k, progress=False)
                times[k].append((time.perf_counter() - t0) / len(indices))
    base = statistics.median(times[args.packs[0]])
    rows = []
    for k in args.packs:
        s = statistics.median(times[k])
        rows.append({"benchmark": "pack_speed", "device": str(device),
                     "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                     else platform.processor() or platform.machine(), "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "arch": args.arch, "inputs": len(indices), "n0": args.n0,
                     "n": args.n, "batch": args.batch, "pack": k, "s_per_input": s,
                     "samples_per_s": (args.n0 + args.n) / s, f"ratio_to_pack_{args.packs[0]}": base / s,
                     "s_per_input_all": times[k]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
