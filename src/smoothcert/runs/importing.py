"""Import another code base's checkpoint (:class:`~smoothcert.runs.settings.ImportRun`): read,
map onto this project's architecture, write a smoothcert checkpoint with its provenance."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..models import CheckpointMeta, import_checkpoint, infer_sigma, save_checkpoint
from .classifier import Log
from .settings import ImportRun

__all__ = ["run_import"]


def run_import(run: ImportRun, *, log: Log | None = None) -> tuple[Path, CheckpointMeta]:
    """Write ``run.out`` from ``run.source``; returns ``(path written, its metadata)``. The noise
    level comes from ``run.sigma`` or, failing that, from a ``noise_<sigma>`` directory on the
    source path (said in ``log``); neither is refused, since the files do not record it."""
    sigma = run.sigma
    if sigma is None:
        sigma = infer_sigma(run.source)
        if sigma is None:
            raise InputError(f"{run.source} does not say its training noise level: pass --sigma "
                             "(the 2019 release keeps it in the directory name, noise_0.25)")
        if log is not None:
            log(f"sigma {sigma:g} read from the path {run.source}")
    imported = import_checkpoint(run.source, source_format=run.source_format, dataset=run.dataset,
                                 sigma=sigma, arch=run.arch)
    path = save_checkpoint(run.out, imported.model, meta=imported.meta)
    return path, imported.meta
