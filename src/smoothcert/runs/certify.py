"""Dataset-level runs of CERTIFY and PREDICT that write one result row per input.

Each input gets its own random stream derived from ``(seed, idx)``, so a row does not depend on
which inputs came before it: an interrupted run that is resumed, or a run over a different
``skip``/``max``, reproduces exactly the rows it shares with an uninterrupted one — given the same
batch size and device type, which decide how the stream is cut into noise draws.

With ``pack = K > 1`` the selected inputs are cut into fixed packs of K consecutive ones, certified
in one engine call (their draws share forward passes; counts stay per input) with the stream of
``(seed, first idx of the pack)``. Packs are formed on the whole selection, never on what is left,
so resumed and sharded runs (a shard takes whole packs) reproduce the rows of an uninterrupted
single-process run with the same K; a pack with some rows missing is recomputed whole and only the
missing rows are written.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..certificate import Certificate, CertifyAtResult, PlannedCertificate
from ..checks import check_int, check_sample_sizes
from ..distributed import Shard
from ..errors import InputError
from ..lipschitz import certify_margin
from ..results import (
    CERTIFY,
    GRID,
    MARGIN,
    MAY_CHANGE,
    PREDICT_COLUMNS,
    ResultWriter,
    certify_row,
    margin_row,
    predict_row,
    result_rows,
)
from ..rng import input_seed
from ..smooth import SmoothedClassifier
from ..stats import check_alpha

__all__ = [
    "PREDICT_COLUMNS",
    "certify_dataset",
    "certify_margin_dataset",
    "check_pack",
    "input_seed",
    "predict_dataset",
    "select_indices",
]


def select_indices(length: int, *, skip: int = 1, max_count: int | None = None, start: int = 0) -> list[int]:
    """Indices start, start+skip, ... below ``length``, at most ``max_count`` of them
    (Cohen et al.'s ``--skip``/``--max``: skip=20 on 10,000 test images gives 500)."""
    if skip < 1:
        raise InputError(f"skip must be >= 1, got {skip}")
    if start < 0:
        raise InputError(f"start must be >= 0, got {start}")
    idx = list(range(start, length, skip))
    return idx if max_count is None or max_count < 0 else idx[:max_count]


def check_pack(pack: int) -> int:
    """``pack`` if it is an int >= 1 (inputs per engine call), else a ValueError."""
    return check_int("pack (inputs per engine call)", pack, minimum=1)


def _packs(todo_all: Sequence[int], todo: Iterable[int], pack: int) -> Iterator[tuple[list[int], list[int]]]:
    """``(pack_indices, missing)`` for each fixed pack of ``pack`` consecutive inputs of ``todo_all``
    that has inputs in ``todo``; ``missing`` lists those, in pack order."""
    wanted = set(todo)
    for start in range(0, len(todo_all), pack):
        group = list(todo_all[start : start + pack])
        missing = [i for i in group if i in wanted]
        if missing:
            yield group, missing


def _stack(dataset: Dataset, group: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """Inputs ``[K, ...]`` and labels of ``group``."""
    items = [dataset[i] for i in group]
    return torch.stack([torch.as_tensor(x) for x, _ in items]), [int(y) for _, y in items]


def _run_config(smoothed: SmoothedClassifier, **settings: Any) -> dict[str, Any]:
    return {
        "device": smoothed.device.type,
        "noise": smoothed.noise.name,
        "sigma": smoothed.noise.sigma,
        "num_classes": smoothed.num_classes,
        **smoothed.settings(),  # precision (checked) and the speed-only engine settings
        **settings,
    }


def _desc(what: str, shard: Shard | None) -> str:
    return what if shard is None else f"{what} (rank 0 of {shard.world_size})"


def certify_dataset(
    smoothed: SmoothedClassifier,
    dataset: Dataset,
    out: str | os.PathLike[str],
    *,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    seed: int = 0,
    indices: Iterable[int] | None = None,
    norm: str | None = None,
    two_class: bool = False,
    target: str = "fixed",
    radius_loss: float = 0.02,
    radii: Sequence[float] = (),
    stages: Sequence[int] | str | None = None,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    shard: Shard | None = None,
    pack: int = 1,
    wait: bool = False,
) -> ResultWriter:
    """CERTIFY every selected input of ``dataset`` and append one row each to ``out``.

    ``target``: "fixed" (n draws), "radius" (draws planned per input, at most n; see
    :meth:`SmoothedClassifier.certify_planned`) or "grid": :meth:`SmoothedClassifier.certify_at` on
    ``radii`` with ``stages`` (default 1k, 10k; n is always the last; ``"auto"``: where unanimous
    draws first certify each grid radius, see :func:`smoothcert.adaptive.grid_stages`), whose row
    holds as ``radius`` the largest grid
    radius certified — exact certified accuracy at those radii, but a lower bound on the radius
    (ACR understates) — and ``count_b`` = -1 (not tracked).

    Arguments are checked first. Rows already in ``out`` (same configuration) are kept and
    skipped; a different configuration raises :class:`smoothcert.results.ConfigMismatchError`
    and leaves the file as it was.
    ``config`` adds run facts (dataset, checkpoint hash, ...) to the guarded configuration.
    ``shard`` (from :func:`smoothcert.distributed.process_group`) makes this process one rank of a
    sharded run: it does its share of the inputs and the ranks' rows are merged into ``out``
    (same rows as one process; see :mod:`smoothcert.distributed`). The progress bar is rank 0's.
    Returns the (closed) writer, whose ``done`` lists the indices it finished (in a sharded run,
    this rank's part file, already merged into ``out``).
    ``pack``: inputs certified per engine call (see the module docstring); worth raising when
    n0 + n is small against the rows per forward pass. Each certificate keeps its own guarantee.
    """
    check_alpha(alpha)
    check_sample_sizes(n=n, n0=n0, batch_size=batch_size)
    check_pack(pack)
    if target not in ("fixed", "radius", "grid"):
        raise InputError(f"target must be 'fixed', 'radius' or 'grid', got {target!r}")
    if target != "fixed" and two_class:
        raise InputError(f"target={target!r} works with the one-class certificate; two_class is not supported with it")
    norm = smoothed.noise.check_norm(norm)
    adaptive: dict[str, Any] = {}
    if target == "radius":
        adaptive = {"target": target, "radius_loss": radius_loss}
    elif target == "grid":
        # n is always the last stage; earlier stages beyond it are dropped.
        if not isinstance(stages, str):  # "auto" is resolved per pack by certify_at
            stages = sorted({int(s) for s in (stages or (1000, 10_000)) if s < n} | {n})
        if not radii:
            raise InputError("target='grid' needs the radii to decide (--radii)")
        adaptive = {"target": target, "radii": [float(r) for r in radii], "stages": stages}
    run = _run_config(smoothed, n0=n0, n=n, alpha=alpha, seed=seed, norm=norm, two_class=two_class, **adaptive,
                      batch_size=batch_size, pack=pack, **(config or {}))
    todo_all = list(range(len(dataset))) if indices is None else list(indices)
    columns = _grid_columns(out) if target == "grid" else CERTIFY.columns
    with result_rows(out, config=run, indices=todo_all, columns=columns, ignore=MAY_CHANGE, shard=shard, pack=pack,
                     wait=wait) as (
        writer, todo, kept,
    ):
        bar = tqdm(total=len(todo), desc=_desc("certify", shard), unit="input", postfix={"kept": kept},
                   disable=not progress or (shard is not None and shard.rank != 0))
        started = time.perf_counter()
        for first, (group, missing) in enumerate(_packs(todo_all, todo, pack)):
            x, labels = _stack(dataset, group)
            stream = input_seed(seed, group[0])
            if target == "grid":
                grid = smoothed.certify_at(x, radii, n0=n0, alpha=alpha, batch_size=batch_size, stages=stages,
                                           max_n=n if isinstance(stages, str) else None, generator=stream, norm=norm)
                # certify_at decides the grid radii, so the row's radius is the largest one certified and the
                # runner-up is not tracked (count_b written as NOT_TRACKED).
                radius, count_b, draws = grid.largest_certified_radius(), None, grid.n_used
                cert: Certificate | PlannedCertificate | CertifyAtResult = grid
            elif target == "radius":
                cert = smoothed.certify_planned(x, n0=n0, max_n=n, alpha=alpha, batch_size=batch_size,
                                                radius_loss=radius_loss, generator=stream, norm=norm)
                radius, count_b, draws = cert.radius, cert.count_b, cert.n_used
            else:
                inner = _inner_bar((n0 + n) * len(group), show=not bar.disable)
                cert = smoothed.certify(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size, generator=stream,
                                        norm=norm, two_class=two_class, on_rows=None if inner is None else inner.step)
                if inner is not None:
                    inner.close()
                radius, count_b, draws = cert.radius, cert.count_b, torch.full((len(group),), cert.n)
            for j, i in enumerate(group):
                if i in missing:
                    row = certify_row(
                        idx=i, label=labels[j], predict=int(cert.prediction[j]), radius=float(radius[j]),
                        p_lower=float(cert.p_lower[j]), count_a=int(cert.count_a[j]),
                        count_b=None if count_b is None else int(count_b[j]), n=int(draws[j]), n0=n0, alpha=alpha,
                        noise=smoothed.noise.name, sigma=smoothed.noise.sigma, norm=norm,
                        precision=smoothed.precision, seconds=float(cert.seconds[j]))
                    if columns == GRID.columns:
                        row = GRID.row({**row, "alpha_look": float(cert.alpha_look)})  # type: ignore[union-attr]
                    writer.write(row)
            bar.update(len(missing))
            if first == 0:
                _project(time.perf_counter() - started, done=len(missing), left=len(todo) - len(missing),
                         show=not bar.disable)
        bar.close()
    return writer


#: One engine call of at least this many noisy draws (Cohen et al.'s N = 100,000 for one input: minutes on a
#: CPU) gets a progress bar of its own below the per-input bar.
INNER_BAR_MIN_DRAWS = 100_000


class _InnerBar:
    """A transient tqdm bar over the draws of one engine call; ``step`` is the engine's ``on_rows``."""

    def __init__(self, total: int) -> None:
        self._bar = tqdm(total=total, desc="  draws", unit="draw", unit_scale=True, leave=False)

    def step(self, rows: int) -> None:
        # fixed-shape padding rows are evaluated too: never run past the total
        self._bar.update(min(rows, self._bar.total - self._bar.n))

    def close(self) -> None:
        self._bar.close()


def _inner_bar(draws: int, *, show: bool) -> _InnerBar | None:
    """A bar inside one engine call when it is long enough to need one (:data:`INNER_BAR_MIN_DRAWS`)."""
    return _InnerBar(draws) if show and draws >= INNER_BAR_MIN_DRAWS else None


def _grid_columns(out: str | os.PathLike[str]) -> tuple[str, ...]:
    """The columns of a staged (grid) run's file: :data:`~smoothcert.results.GRID`, or the CERTIFY
    columns of a grid file written before the per-look level had its column, so that it resumes."""
    path = Path(out)
    if path.exists():
        with open(path, encoding="utf-8") as f:
            if f.readline().rstrip("\n").split("\t") == list(CERTIFY.columns):
                return CERTIFY.columns
    return GRID.columns


def _project(seconds: float, *, done: int, left: int, show: bool) -> None:
    """Say on stderr, after the first input(s), how long the rest will take at that pace (it
    includes any warm-up, so it errs long), so a multi-hour run is known before it is waited for."""
    if not show or left < 1 or done < 1:
        return
    each = seconds / done
    total = int(each * left)
    tqdm.write(f"first input: {each:.2f} s; the other {left} inputs will take about "
               f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d} (h:mm:ss) at this pace", file=sys.stderr)


def predict_dataset(
    smoothed: SmoothedClassifier,
    dataset: Dataset,
    out: str | os.PathLike[str],
    *,
    n: int,
    alpha: float,
    batch_size: int,
    seed: int = 0,
    indices: Iterable[int] | None = None,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    shard: Shard | None = None,
    pack: int = 1,
    wait: bool = False,
) -> ResultWriter:
    """PREDICT every selected input and append rows ``idx label predict correct time ...`` to
    ``out`` (resumable, shardable and packed like :func:`certify_dataset`; ABSTAIN = -1 counts as
    incorrect). ``time`` of a packed input is its pack's time split evenly; like certify's, it
    leaves out the "auto" batch probe and the compile warm-up (see :attr:`SmoothedClassifier.compile_seconds`)."""
    check_alpha(alpha)
    check_sample_sizes(n=n, batch_size=batch_size)
    check_pack(pack)
    run = _run_config(smoothed, n=n, alpha=alpha, seed=seed, batch_size=batch_size, pack=pack, **(config or {}))
    todo_all = list(range(len(dataset))) if indices is None else list(indices)
    with result_rows(out, config=run, indices=todo_all, columns=PREDICT_COLUMNS, ignore=MAY_CHANGE,
                     shard=shard, pack=pack, wait=wait) as (writer, todo, _):
        bar = tqdm(total=len(todo), desc=_desc("predict", shard), unit="input",
                   disable=not progress or (shard is not None and shard.rank != 0))
        for group, missing in _packs(todo_all, todo, pack):
            x, labels = _stack(dataset, group)
            # Probe "auto" and warm up a compiled model before the clock starts, as certify does:
            # the time column is the sampling and the test only.
            smoothed.prepare(x, batch_size=batch_size, draws=(n,))  # probe and compile: not timed
            t0 = time.perf_counter()
            preds = smoothed.predict(x, n=n, alpha=alpha, batch_size=batch_size, generator=input_seed(seed, group[0]))
            seconds = (time.perf_counter() - t0) / len(group)
            for j, i in enumerate(group):
                if i in missing:
                    writer.write(predict_row(idx=i, label=labels[j], predict=int(preds[j]), n=n, alpha=alpha,
                                             noise=smoothed.noise.name, sigma=smoothed.noise.sigma,
                                             precision=smoothed.precision, seconds=seconds))
            bar.update(len(missing))
        bar.close()
    return writer


def certify_margin_dataset(
    model: torch.nn.Module,
    dataset: Dataset,
    out: str | os.PathLike[str],
    *,
    batch_size: int = 256,
    indices: Iterable[int] | None = None,
    config: dict[str, Any] | None = None,
    progress: bool = True,
) -> ResultWriter:
    """The FaRS margin certificate (:func:`smoothcert.lipschitz.certify_margin`: a model with a
    declared Lipschitz backbone and a linear head) of every selected input, one
    :data:`~smoothcert.results.MARGIN` row each in ``out``: deterministic, one forward pass per batch
    of ``batch_size`` inputs, no noise. Resumable like :func:`certify_dataset` (rows of the same
    configuration are kept, another configuration is refused)."""
    check_int("batch_size", batch_size, minimum=1)
    device = next(model.parameters()).device
    run = {"certificate": "lipschitz-margin", "device": device.type, "precision": "fp32", "batch_size": batch_size,
           **(config or {})}
    todo_all = list(range(len(dataset))) if indices is None else list(indices)
    with result_rows(out, config=run, indices=todo_all, columns=MARGIN.columns, ignore=MAY_CHANGE) as (
        writer, todo, _,
    ):
        bar = tqdm(total=len(todo), desc="margin", unit="input", disable=not progress)
        for start in range(0, len(todo), batch_size):
            group = todo[start : start + batch_size]
            x, labels = _stack(dataset, group)
            cert = certify_margin(model, x)
            for j, i in enumerate(group):
                writer.write(margin_row(
                    idx=i, label=labels[j], predict=int(cert.prediction[j]), radius=float(cert.radius[j]),
                    feature_radius=float(cert.feature_radius[j]), lipschitz=cert.lipschitz, precision="fp32",
                    seconds=float(cert.seconds[j]),
                ))  # fmt: skip
            bar.update(len(group))
        bar.close()
    return writer
