"""Run a certify, predict or attack run from its settings: load the classifier and its data, wire
the denoiser, build the smoothed classifier, record the run facts, shard under torchrun, and write
the result file (:mod:`smoothcert.runs.certify`, :mod:`smoothcert.runs.attack`).

``log`` receives one line describing each run (what is certified, on which data, into which file)
and the engine's measured facts; with ``progress`` also the notes on decisions taken on the way
(the denoiser wiring). None drops them.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..analysis import AttackSummary
from ..distributed import Shard, process_group, rank_device
from ..engine import default_compile
from ..errors import InputError
from ..lipschitz import FeatureSmoothedClassifier
from ..models import CheckpointMeta
from ..noise import get_noise
from ..results import find_parts, read_config
from ..smooth import SmoothedClassifier
from .attack import attack_dataset
from .certify import certify_dataset, certify_margin_dataset, predict_dataset
from .classifier import (
    Log,
    load_base,
    load_split,
    resolve_device,
    run_facts,
    smoothed_classifier,
    smoothing_noise,
    wire_denoiser,
)
from .settings import AttackRun, CertifyRun, ClassifierSpec, DataSpec, EngineSpec, PredictRun
from .soft import SOFT_CERTIFICATES, certify_clean_class_dataset, certify_soft_dataset, deterministic_dataset

__all__ = ["resolve_compile", "run_attack", "run_certify", "run_predict"]


def _say(log: Log | None, message: str) -> None:
    if log is not None:
        log(message)


@contextmanager
def _sharded(device: str | None, minutes: float) -> Iterator[tuple[Shard | None, torch.device]]:
    """``(shard, device)``: under torchrun this process's :class:`Shard` (in its process group for
    the block) and its GPU (``cuda:LOCAL_RANK`` for a bare ``cuda``); otherwise ``(None, device)``."""
    name = str(resolve_device(device))
    with process_group(device=name, timeout=datetime.timedelta(minutes=minutes)) as shard:
        yield shard, rank_device(name, shard)


def _recorded_compile(out: Path) -> bool | None:
    """The ``compile`` recorded by an existing result file at ``out`` (or its first part file)."""
    for path in (Path(out), *find_parts(out)):
        config = read_config(path) if path.exists() else None
        if config is not None and isinstance(config.get("compile"), bool):
            return config["compile"]
    return None


def resolve_compile(
    engine: EngineSpec, *, out: Path | None, device: torch.device, rows: int, log: Log | None = None
) -> EngineSpec:
    """``engine`` with ``compile`` decided when it is None ("auto"): an existing result file's
    record first (a resumed run keeps what its rows were computed with: ``compile`` is not among
    the settings a resume may change, and files written before the automatic default recorded
    ``false``), else :func:`~smoothcert.engine.default_compile` of the device and the run's
    ``rows`` (inputs x draws). An explicit ``compile`` is returned unchanged."""
    if engine.compile is not None:
        return engine
    if engine.compile_mode is not None:  # a compile mode asks for compilation
        return dataclasses.replace(engine, compile=True)
    recorded = None if out is None else _recorded_compile(out)
    if recorded is not None:
        decision, why = recorded, f"{'compiled' if recorded else 'eager'}, as recorded by {Path(out).name}"
    else:
        decision, why = default_compile(device, rows=rows)
    _say(log, f"engine: {why}")
    return dataclasses.replace(engine, compile=decision)


def _smoothed(
    spec: ClassifierSpec, data: DataSpec, split: str, engine: EngineSpec, device: torch.device, *,
    loaded: tuple[Any, CheckpointMeta, str] | None = None, log: Log | None = None, progress: bool = True,
    out: Path | None = None, count_rows: Callable[[Dataset], int] | None = None,
    space: str = "input",
) -> tuple[SmoothedClassifier, Dataset, dict[str, Any]]:
    """``(smoothed classifier, split, run facts)`` of ``spec``; ``loaded`` is the checkpoint already
    read by :func:`load_base`, so a run that looked at its metadata first reads it once.
    ``count_rows(dataset)``: the noisy rows the run will evaluate, for ``compile=None``
    (:func:`resolve_compile`, with ``out``'s record)."""
    model, meta, sha = load_base(spec, data, device) if loaded is None else loaded
    noise = smoothing_noise(spec, meta)
    dataset, name = load_split(data, split, meta)
    if engine.compile is None and count_rows is not None:
        engine = resolve_compile(engine, out=out, device=device, rows=int(count_rows(dataset)),
                                 log=log if progress else None)
    base, record = wire_denoiser(model, spec.denoiser, noise=noise, in_channels=meta.in_channels, device=device)
    if record is not None and progress:
        _say(log, f"denoised smoothing: {base!r}")
    if space == "features":  # FaRS: the noise goes on the backbone's features (no denoiser: checked by CertifyRun)
        smoothed: SmoothedClassifier = FeatureSmoothedClassifier(model, noise=noise, num_classes=meta.num_classes,
                                                                 **_feature_options(engine))
    else:
        smoothed = smoothed_classifier(base, noise=noise, meta=meta, engine=engine)
    facts = run_facts(dataset=name, data=data, split=split, checkpoint_sha256=sha, meta=meta, denoiser=record)
    return smoothed, dataset, facts


def _shard_share(inputs: int, shard: Shard | None) -> int:
    """Inputs this process certifies: its share under torchrun."""
    return inputs if shard is None else -(-inputs // shard.world_size)


def _feature_options(engine: EngineSpec) -> dict[str, Any]:
    """The engine keywords for sampling a head over features: vectors, so no channels-last layout,
    and unbounded by design (the [0, 1] check is the backbone's input's)."""
    options = engine.classifier_options()
    options.pop("allow_unbounded")
    return {**options, "channels_last": False}


def _report_engine(smoothed: SmoothedClassifier, log: Log | None) -> None:
    # Measured, not configured: the rows "auto" chose and the untimed compile warm-up.
    if smoothed.last_batch_size is not None:
        _say(log, f"engine: {smoothed.last_batch_size} rows per forward pass (last pass), "
                  f"compile warm-up {smoothed.compile_seconds:.1f} s (excluded from the time column)")


def run_certify(run: CertifyRun, *, progress: bool = True, log: Log | None = None) -> Path:
    """CERTIFY the selected inputs of ``run`` into ``run.out`` (resumable; one rank of a sharded run
    under torchrun, the ranks' rows merged into ``run.out``). Returns ``run.out``.

    Raises :class:`~smoothcert.errors.ConfigMismatchError` if ``run.out`` holds rows of another
    configuration (nothing is written then)."""
    if run.certificate == "lipschitz-margin":
        return _run_margin(run, progress=progress, log=log)
    run = dataclasses.replace(run, engine=run.engine.for_device(resolve_device(run.model.device)))
    with _sharded(run.model.device, run.dist_timeout) as (shard, device):
        smoothed, dataset, facts = _smoothed(
            run.model, run.data, run.split, run.engine, device, log=log, progress=progress, out=Path(run.out),
            count_rows=lambda ds: _shard_share(len(run.select.indices(len(ds))), shard) * (run.n0 + run.n),
            space="features" if run.certificate == "feature-smoothing" else "input")
        if run.certificate != "smoothing":
            facts = {**facts, "certificate": run.certificate}
        indices = run.select.indices(len(dataset))
        if run.certificate in SOFT_CERTIFICATES or run.selection != "draws":
            if shard is not None:
                raise InputError(f"certificate={run.certificate!r} (selection={run.selection!r}) runs in one "
                                 "process: start it without torchrun")
            _run_soft(run, smoothed, dataset, indices, facts, progress=progress, log=log)
            return Path(run.out)
        if shard is None or shard.rank == 0:
            _say(log, f"certifying {len(indices)} inputs of {facts['dataset']}/{run.split} with {smoothed!r}, "
                      f"n0={run.n0} n={run.n} alpha={run.alpha} -> {run.out}")
        certify_dataset(smoothed, dataset, run.out, n0=run.n0, n=run.n, alpha=run.alpha,
                        batch_size=run.engine.batch_size, seed=run.seed, indices=indices, norm=run.norm,
                        two_class=run.two_class, target=run.target, radius_loss=run.radius_loss, radii=run.radii,
                        stages=run.stages, config=facts, progress=progress, shard=shard, pack=run.pack,
                        wait=run.wait)
        _report_engine(smoothed, log)
    return Path(run.out)


def _run_margin(run: CertifyRun, *, progress: bool, log: Log | None) -> Path:
    """``run_certify`` with ``certificate="lipschitz-margin"``: one forward pass per batch, MARGIN rows."""
    device = resolve_device(run.model.device)
    model, meta, sha = load_base(run.model, run.data, device)
    dataset, name = load_split(run.data, run.split, meta)
    indices = run.select.indices(len(dataset))
    facts = run_facts(dataset=name, data=run.data, split=run.split, checkpoint_sha256=sha, meta=meta, denoiser=None)
    rows = run.engine.for_device(device).batch_size  # no noise: "auto" (CPU) means a plain 256-input batch
    batch = rows if isinstance(rows, int) else 256
    _say(log, f"margin certificate of {len(indices)} inputs of {name}/{run.split} -> {run.out}")
    certify_margin_dataset(model, dataset, run.out, batch_size=batch, indices=indices, config=facts,
                           progress=progress)
    return Path(run.out)


def _run_soft(run: CertifyRun, smoothed: SmoothedClassifier, dataset: Dataset, indices: list[int],
              facts: dict[str, Any], *, progress: bool, log: Log | None) -> None:
    """The certificates of :mod:`smoothcert.runs.soft` on the smoothed classifier's base model."""
    model, noise, k = smoothed.base, smoothed.noise, smoothed.num_classes
    where = f"{len(indices)} inputs of {facts['dataset']}/{run.split} -> {run.out}"
    if run.certificate == "deterministic":
        _say(log, f"one-pass heuristic radius (HEURISTIC, not certified; sigma {noise.sigma}) on {where}")
        deterministic_dataset(model, dataset, run.out, sigma=noise.sigma, num_classes=k, indices=indices,
                              config=facts, progress=progress)
    elif run.certificate == "smoothing":  # selection "clean"
        _say(log, f"certifying (class from one clean pass) {where}, n={run.n} alpha={run.alpha}")
        certify_clean_class_dataset(model, dataset, run.out, noise=noise, num_classes=k, n=run.n, alpha=run.alpha,
                                    batch_size=run.engine.batch_size, seed=run.seed, indices=indices,
                                    engine=smoothed.engine, config=facts, progress=progress)
    else:
        _say(log, f"{run.certificate} certificate of the soft smoothed classifier on {where}, n0={run.n0} "
                  f"n={run.n} alpha={run.alpha} ({run.bound_method} bounds, class from {run.selection})")
        certify_soft_dataset(model, dataset, run.out, noise=noise, num_classes=k, certificate=run.certificate,
                             n0=run.n0, n=run.n, alpha=run.alpha, batch_size=run.engine.batch_size, seed=run.seed,
                             indices=indices, method=run.bound_method, selection=run.selection,
                             engine=smoothed.engine, config=facts, progress=progress)


def run_predict(run: PredictRun, *, progress: bool = True, log: Log | None = None) -> Path:
    """PREDICT the selected inputs of ``run`` into ``run.out`` (resumable, sharded like
    :func:`run_certify`). Returns ``run.out``."""
    run = dataclasses.replace(run, engine=run.engine.for_device(resolve_device(run.model.device)))
    with _sharded(run.model.device, run.dist_timeout) as (shard, device):
        smoothed, dataset, facts = _smoothed(
            run.model, run.data, run.split, run.engine, device, log=log, progress=progress, out=Path(run.out),
            count_rows=lambda ds: _shard_share(len(run.select.indices(len(ds))), shard) * run.n)
        indices = run.select.indices(len(dataset))
        predict_dataset(smoothed, dataset, run.out, n=run.n, alpha=run.alpha, batch_size=run.engine.batch_size,
                        seed=run.seed, indices=indices, config=facts, progress=progress, shard=shard, pack=run.pack,
                        wait=run.wait)
    return Path(run.out)


def run_attack(run: AttackRun, *, progress: bool = True, log: Log | None = None) -> AttackSummary:
    """Attack the selected inputs of ``run`` into ``run.out`` (resumable) and return
    :func:`~smoothcert.analysis.summarize_attack` of their rows.

    The smoothed classifier is attacked when ``run.smoothed`` says so, or (None) when the checkpoint
    was trained with noise or ``run.model.noise`` is given; else the base network. A denoiser is set
    for the smoothing noise even when only the base ``f(D(x))`` is attacked, so the base attack needs
    a noise level (``run.model.sigma``, else the checkpoint's; the noise defaults to Gaussian).
    """
    spec = run.model
    device = resolve_device(spec.device)
    run = dataclasses.replace(run, engine=run.engine.for_device(device))
    model, meta, sha = load_base(spec, run.data, device)
    smoothed = run.smoothed if run.smoothed is not None else (spec.noise is not None or meta.noise != "none")
    target: Any
    if smoothed:
        target, dataset, facts = _smoothed(spec, run.data, run.split, run.engine, device, loaded=(model, meta, sha),
                                           log=log, progress=progress)
        what = repr(target)
    else:
        dataset, name = load_split(run.data, run.split, meta)
        target, what, record = model, f"the base {meta.arch}", None
        if spec.denoiser is not None:
            sigma = spec.sigma if spec.sigma is not None else (meta.sigma or None)
            if sigma is None:
                raise InputError("--denoiser needs the noise level it denoises: pass --sigma (and --noise)")
            noise_name = spec.noise or (meta.noise if meta.noise != "none" else "gaussian")
            target, record = wire_denoiser(model, spec.denoiser, noise=get_noise(noise_name, sigma=sigma),
                                           in_channels=meta.in_channels, device=device)
            if progress:
                _say(log, f"denoised smoothing: {target!r}")
            what = f"{target!r} (base)"
        facts = run_facts(dataset=name, data=run.data, split=run.split, checkpoint_sha256=sha, meta=meta,
                          denoiser=record)
    indices = run.select.indices(len(dataset))
    _say(log, f"attacking {len(indices)} inputs of {facts['dataset']}/{run.split} ({run.attack}, {run.steps} steps) "
              f"on {what} -> {run.out}")
    return attack_dataset(target, dataset, run.out, attack=run.attack, eps=run.eps, steps=run.steps, m=run.m,
                          n0=run.n0, n=run.n, alpha=run.alpha, batch_size=run.engine.batch_size,
                          attack_batch=run.attack_batch, seed=run.seed, indices=indices, config=facts,
                          progress=progress)
