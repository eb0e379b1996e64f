"""The quickstart demo: train LeNet on the embedded MNIST subset with Gaussian noise, certify test images,
and report the certified accuracy as a table and a curve (CPU, minutes)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .. import analysis
from ..train import TrainConfig
from .classifier import Log
from .launch import run_certify
from .settings import DEFAULT_RADII, CertifyRun, ClassifierSpec, DataSpec, EngineSpec, Selection, TrainRun
from .training import run_train

__all__ = ["QuickstartResult", "quickstart"]


@dataclass(frozen=True)
class QuickstartResult:
    """What :func:`quickstart` wrote, and its certified-accuracy table (markdown)."""

    checkpoint: Path
    rows: Path
    curve: Path
    table: str
    seconds: float


def quickstart(
    *,
    out: str | Path = "runs/quickstart",
    sigma: float = 0.25,
    epochs: int = 3,
    n: int = 1000,
    max_count: int = 500,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    log: Log | None = None,
) -> QuickstartResult:
    """Train ``lenet-small`` on the embedded MNIST subset (``epochs`` of cosine-scheduled SGD, lr
    0.02, batch 64) with Gaussian noise ``sigma``, CERTIFY the first ``max_count`` test images
    (n0 = 100, ``n`` draws, alpha = 0.001) and report radii 0 .. 1.

    Everything goes to the folder ``out``; a finished checkpoint is reused as is, an interrupted one
    continued, and certified rows already there are kept, so running it again costs nothing.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = DataSpec(dataset="embedded")
    ckpt = folder / f"lenet_sigma{sigma:g}.pt"
    run_train(TrainRun(out=ckpt, sigma=sigma, data=data, arch="lenet-small", device=device, resume=True,
                       config=TrainConfig(epochs=epochs, batch_size=64, lr=0.02, schedule="cosine", seed=seed)),
              progress=progress, log=log)
    tsv = folder / f"certify_sigma{sigma:g}.tsv"
    run_certify(CertifyRun(model=ClassifierSpec(checkpoint=str(ckpt), device=device), out=tsv, data=data,
                           split="test", select=Selection(max_count=max_count), engine=EngineSpec(batch_size=250),
                           n0=100, n=n, alpha=0.001, seed=seed),
                progress=progress, log=log)
    results = [analysis.load_results(tsv)]
    table = analysis.markdown_table(results, [r for r in DEFAULT_RADII if r <= 1.0], envelope=False)
    curve = analysis.plot_certified_accuracy(results, folder / f"certified_accuracy_sigma{sigma:g}.png",
                                             title=f"LeNet, embedded MNIST subset, Gaussian sigma={sigma:g}")
    return QuickstartResult(checkpoint=ckpt, rows=tsv, curve=Path(curve), table=table,
                            seconds=time.perf_counter() - t0)
