"""Dataset runs of the soft-classifier certificates and of the one-pass HeatSmoothing heuristic.

One row per input, flushed as it is produced, resumable like CERTIFY's runs (same configuration
sidecar; rows already written are kept; a different configuration is refused and the file left
as it was). Each input gets its own random stream from ``(seed, idx)``, so a resumed run or one
over another selection reproduces the rows it shares with an uninterrupted one.

* ``certificate="soft-phi"`` / ``"soft-lbound"``: :func:`smoothcert.soft.certify_soft`, rows of
  :data:`smoothcert.results.SOFT_CERTIFY` (Cohen's six columns first, the ``radius`` certified), read
  by the same analysis as CERTIFY's files.
* ``certificate="deterministic"``: :func:`smoothcert.soft.deterministic_radius`, rows of
  :data:`smoothcert.results.DETERMINISTIC`, whose number is ``heuristic_radius`` -- not a
  certificate, and no ``radius`` column, so certified-accuracy tables refuse these files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..checks import check_choice, check_int, check_sample_sizes, model_device
from ..engine import Engine
from ..errors import InputError
from ..noise import Noise
from ..results import (
    CERTIFY,
    DETERMINISTIC,
    MAY_CHANGE,
    SOFT_CERTIFY,
    ResultWriter,
    certify_row,
    deterministic_row,
    result_rows,
    soft_certify_row,
)
from ..rng import input_seed
from ..soft import SELECTIONS, certify_clean_class, certify_soft, deterministic_radius
from ..stats import MEAN_BOUNDS, check_alpha
from .certify import _stack

__all__ = ["SOFT_CERTIFICATES", "certify_clean_class_dataset", "certify_soft_dataset", "deterministic_dataset"]

#: ``--certificate`` values served here (``hard`` is CERTIFY, :mod:`smoothcert.runs.certify`).
SOFT_CERTIFICATES = ("soft-phi", "soft-lbound", "deterministic")
#: Inputs per forward pass of the one-pass heuristic.
DETERMINISTIC_BATCH = 256


def _probe(engine: Engine) -> Engine:
    """An uncompiled engine with ``engine``'s arithmetic, for the one-input check of a run's
    arguments and model outputs: a compiled one would compile (and keep) a graph for its tiny batch."""
    return Engine(precision=engine.precision, channels_last=engine.channels_last, noise_dtype=engine.noise_dtype)


def certify_soft_dataset(
    model: nn.Module,
    dataset: Dataset,
    out: str | os.PathLike[str],
    *,
    noise: Noise,
    num_classes: int,
    certificate: str,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int | str,
    seed: int = 0,
    indices: Iterable[int] | None = None,
    method: str = "best",
    selection: str = "draws",
    engine: Engine | None = None,
    config: dict[str, Any] | None = None,
    progress: bool = True,
) -> ResultWriter:
    """:func:`~smoothcert.soft.certify_soft` on every selected input of ``dataset``, one
    :data:`~smoothcert.results.SOFT_CERTIFY` row each appended to ``out`` (resumable).

    ``certificate``: "soft-phi" or "soft-lbound". Each row holds with probability at least
    1 - alpha on its own (see :func:`~smoothcert.soft.certify_soft`). Arguments are checked before
    anything is written. ``config`` adds run facts (dataset, checkpoint hash) to the guarded
    configuration. Returns the closed writer.
    """
    if certificate not in ("soft-phi", "soft-lbound"):
        raise InputError(f"certificate must be 'soft-phi' or 'soft-lbound' here, got {certificate!r}")
    check_choice("method", method, MEAN_BOUNDS)
    check_choice("selection", selection, SELECTIONS)
    check_alpha(alpha)
    check_int("n", n, minimum=2)
    check_sample_sizes(n=n, n0=n0 if selection == "draws" else None, batch_size=batch_size)
    check_int("num_classes", num_classes, minimum=2)
    engine = Engine() if engine is None else engine
    bound = certificate.removeprefix("soft-")
    # Checks the noise, sizes and the model's outputs on one input before the file is opened.
    todo_all = list(range(len(dataset))) if indices is None else list(indices)
    if todo_all:
        x0, _ = _stack(dataset, todo_all[:1])
        certify_soft(model, x0, noise=noise, num_classes=num_classes, n0=1, n=2, alpha=alpha, batch_size=2,
                     generator=0, bound=bound, method=method, selection=selection, engine=_probe(engine))
    run = {"certificate": certificate, "device": model_device(model).type, "noise": noise.name,
           "sigma": noise.sigma, "num_classes": num_classes, "n0": n0 if selection == "draws" else 0, "n": n,
           "alpha": alpha, "seed": seed, "bound_method": method, "selection": selection, "batch_size": batch_size,
           **engine.settings(), **(config or {})}
    with result_rows(out, config=run, indices=todo_all, columns=SOFT_CERTIFY.columns, ignore=MAY_CHANGE) as (
        writer, todo, kept,
    ):
        bar = tqdm(total=len(todo), desc=certificate, unit="input", postfix={"kept": kept}, disable=not progress)
        for i in todo:
            x, labels = _stack(dataset, [i])
            cert = certify_soft(model, x, noise=noise, num_classes=num_classes, n0=n0, n=n, alpha=alpha,
                                batch_size=batch_size, generator=input_seed(seed, i), bound=bound, method=method,
                                selection=selection, engine=engine)
            writer.write(soft_certify_row(
                idx=i, label=labels[0], predict=int(cert.prediction[0]), radius=float(cert.radius[0]),
                g_lower=float(cert.g_lower[0]), g_upper=float(cert.g_upper[0]), n=n, n0=cert.n0, alpha=alpha,
                certificate=certificate, bound_method=method, selection=selection, noise=noise.name,
                sigma=noise.sigma, precision=engine.precision, seconds=float(cert.seconds[0]),
            ))
            bar.update(1)
        bar.close()
    return writer


def deterministic_dataset(
    model: nn.Module,
    dataset: Dataset,
    out: str | os.PathLike[str],
    *,
    sigma: float,
    num_classes: int,
    bound: str = "lbound",
    indices: Iterable[int] | None = None,
    config: dict[str, Any] | None = None,
    progress: bool = True,
) -> ResultWriter:
    """The one-pass HeatSmoothing **heuristic** (:func:`~smoothcert.soft.deterministic_radius`) on
    every selected input, one :data:`~smoothcert.results.DETERMINISTIC` row each (resumable). Not a
    certificate: the rows have ``heuristic_radius`` and no ``radius``. ``seconds`` is the input's
    share of its batch's forward pass."""
    todo_all = list(range(len(dataset))) if indices is None else list(indices)
    if todo_all:  # checks sigma, bound and the model's outputs before the file is opened
        deterministic_radius(model, _stack(dataset, todo_all[:1])[0], sigma=sigma, num_classes=num_classes,
                             bound=bound)
    run = {"certificate": "deterministic", "heuristic": True, "device": model_device(model).type, "sigma": sigma,
           "num_classes": num_classes, "bound": bound, "precision": "fp32", **(config or {})}
    with result_rows(out, config=run, indices=todo_all, columns=DETERMINISTIC.columns, ignore=MAY_CHANGE) as (
        writer, todo, kept,
    ):
        bar = tqdm(total=len(todo), desc="deterministic (heuristic)", unit="input", postfix={"kept": kept},
                   disable=not progress)
        for s in range(0, len(todo), DETERMINISTIC_BATCH):
            group = todo[s: s + DETERMINISTIC_BATCH]
            x, labels = _stack(dataset, group)
            res = deterministic_radius(model, x, sigma=sigma, num_classes=num_classes, bound=bound)
            for j, i in enumerate(group):
                writer.write(deterministic_row(
                    idx=i, label=labels[j], predict=int(res.prediction[j]),
                    heuristic_radius=float(res.heuristic_radius[j]), p_top=float(res.p_top[j]),
                    p_second=float(res.p_second[j]), bound=bound, sigma=sigma, precision="fp32",
                    seconds=float(res.seconds[j]),
                ))
            bar.update(len(group))
        bar.close()
    return writer


def certify_clean_class_dataset(
    model: nn.Module,
    dataset: Dataset,
    out: str | os.PathLike[str],
    *,
    noise: Noise,
    num_classes: int,
    n: int,
    alpha: float,
    batch_size: int | str,
    seed: int = 0,
    indices: Iterable[int] | None = None,
    engine: Engine | None = None,
    config: dict[str, Any] | None = None,
    progress: bool = True,
) -> ResultWriter:
    """CERTIFY with the class from one clean forward pass (:func:`~smoothcert.soft.certify_clean_class`,
    the HeatSmoothing paper's variant) on every selected input: ordinary
    :data:`~smoothcert.results.CERTIFY` rows with ``n0 = 0``, each sound with probability at least
    1 - alpha (the class does not depend on the n estimation draws). Resumable; the configuration
    records ``selection: clean``, so these rows never resume a file of n0-draw CERTIFY rows."""
    check_alpha(alpha)
    check_sample_sizes(n=n, batch_size=batch_size)
    check_int("num_classes", num_classes, minimum=2)
    engine = Engine() if engine is None else engine
    norm = noise.check_norm(None)
    todo_all = list(range(len(dataset))) if indices is None else list(indices)
    if todo_all:  # the model's outputs and the noise, before the file is opened
        certify_clean_class(model, _stack(dataset, todo_all[:1])[0], noise=noise, num_classes=num_classes, n=1,
                            alpha=alpha, batch_size=1, generator=0, engine=_probe(engine))
    run = {"certificate": "hard", "selection": "clean", "device": model_device(model).type, "noise": noise.name,
           "sigma": noise.sigma, "num_classes": num_classes, "n0": 0, "n": n, "alpha": alpha, "seed": seed,
           "norm": norm, "batch_size": batch_size, **engine.settings(), **(config or {})}
    with result_rows(out, config=run, indices=todo_all, columns=CERTIFY.columns, ignore=MAY_CHANGE) as (
        writer, todo, kept,
    ):
        bar = tqdm(total=len(todo), desc="certify (clean class)", unit="input", postfix={"kept": kept},
                   disable=not progress)
        for i in todo:
            x, labels = _stack(dataset, [i])
            cert = certify_clean_class(model, x, noise=noise, num_classes=num_classes, n=n, alpha=alpha,
                                       batch_size=batch_size, generator=input_seed(seed, i), engine=engine)
            writer.write(certify_row(
                idx=i, label=labels[0], predict=int(cert.prediction[0]), radius=float(cert.radius[0]),
                p_lower=float(cert.p_lower[0]), count_a=int(cert.count_a[0]), count_b=int(cert.count_b[0]), n=n,
                n0=0, alpha=alpha, noise=noise.name, sigma=noise.sigma, norm=norm, precision=engine.precision,
                seconds=float(cert.seconds[0]),
            ))
            bar.update(1)
        bar.close()
    return writer
