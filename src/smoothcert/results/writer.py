"""Result files: one TSV row per input, flushed as produced, resumable, guarded by a config sidecar.

The columns are a :class:`~smoothcert.results.schema.RowSchema`'s (Cohen et al. 2019's
``idx label predict radius correct time`` first). Beside ``run.tsv`` lives ``run.tsv.json``, the
configuration that produced it: re-running the same command appends the missing rows, while a
different configuration (apart from :data:`~smoothcert.results.schema.MAY_CHANGE`) is refused
instead of being silently mixed into the same file. Reading an existing file on resume follows the
rule of :mod:`smoothcert.results.reader`: a torn last row is cut off (and done again), any other
damage is an error.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigMismatchError, InputError
from ..files import FileLock, atomic_write_text, check_output_path
from .reader import ResultsWarning, read_table
from .schema import COLUMNS, MAY_CHANGE, format_time

__all__ = ["ResultWriter", "config_diff", "format_time", "normalise_config", "read_config", "sidecar_path",
           "sidecar_text"]


def sidecar_path(path: Path) -> Path:
    """Where the configuration of the result file ``path`` is kept: ``run.tsv`` -> ``run.tsv.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def normalise_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as it reads back from its sidecar (tuples become lists, keys strings)."""
    return json.loads(json.dumps(dict(config)))


def sidecar_text(config: Mapping[str, Any]) -> str:
    """The sidecar's content for ``config``: sorted, indented JSON."""
    return json.dumps(dict(config), indent=2, sort_keys=True) + "\n"


def read_config(path: Path) -> dict[str, Any] | None:
    """The configuration recorded beside the result file ``path``, or None when it has no sidecar."""
    side = sidecar_path(path)
    return json.loads(side.read_text()) if side.exists() else None


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Sorted keys whose values differ between two run configurations, ``ignore`` excepted."""
    keys = (set(old) | set(new)) - set(ignore)
    return sorted(k for k in keys if old.get(k) != new.get(k))


def _format(value: Any) -> str:
    # repr is the shortest string that reads back as the same float: a radius or bound is
    # never rounded up on its way to disk.
    return repr(value) if isinstance(value, float) else str(value)


class ResultWriter:
    """Appends rows to a TSV result file; resumes an interrupted file of the same configuration.

    Args:
        path: the ``.tsv`` file; created with its header (and parent folders) when absent.
        config: what determines the rows (model, data, noise, n, alpha, seed, ...): JSON-able.
            Keys listed in ``ignore`` are recorded but may change on resume.
        columns: the header; defaults to :data:`~smoothcert.results.schema.COLUMNS` (a CERTIFY row).
        ignore: the settings a resume may change; default :data:`~smoothcert.results.schema.MAY_CHANGE`.
        lock: hold an exclusive :class:`~smoothcert.files.FileLock` on ``path`` from opening to
            :meth:`close`, so a second writer of the same file (another run, or another writer in
            this process) is refused with a ResultFileError naming it; False when the caller holds
            the lock already (:func:`~smoothcert.results.parts.result_rows`).
        wait: with ``lock``, wait for another writer to finish instead of refusing.

    On opening an existing file with rows, its sidecar must record the same configuration (up to
    ``ignore``) and its header must be ``columns`` (else ConfigMismatchError, nothing touched); the
    file is read by :func:`~smoothcert.results.reader.read_table` — a torn last row (no newline) is
    cut off with a :class:`~smoothcert.results.reader.ResultsWarning`, any other malformed row or a
    repeated ``idx`` raises ResultFileError — and :attr:`done` holds the ``idx`` of every row.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        config: Mapping[str, Any],
        columns: tuple[str, ...] = COLUMNS,
        ignore: Iterable[str] = MAY_CHANGE,
        lock: bool = True,
        wait: bool = False,
    ) -> None:
        self.path = check_output_path(path, what="result file")
        self._lock = FileLock(self.path, wait=wait).acquire() if lock else None
        try:
            self._open(config, columns, ignore)
        except BaseException:
            self.release_lock()
            raise

    def _open(self, config: Mapping[str, Any], columns: tuple[str, ...], ignore: Iterable[str]) -> None:
        self.columns = tuple(columns)
        self.config = normalise_config(config)
        self.ignore = tuple(ignore)
        self.done: set[int] = set()
        if self.path.exists() and self.path.stat().st_size > 0:
            self._resume()
        else:
            with open(self.path, "w", encoding="utf-8") as f:
                f.write("\t".join(self.columns) + "\n")
        # Atomic: a sidecar cut short by an interrupt would make the rows unreadable on resume.
        atomic_write_text(sidecar_path(self.path), sidecar_text(self.config))
        self._file = open(self.path, "a", encoding="utf-8")

    def _resume(self) -> None:
        table = read_table(self.path, warn=False)
        if not table.columns:  # interrupted while writing the header itself
            self.path.write_text("\t".join(self.columns) + "\n", encoding="utf-8")
            return
        # A file with nothing beyond its header carries no results: its old configuration (say, of
        # a run refused for a bad argument) may be replaced.
        if len(table) or table.torn_line is not None:
            self._check_config()
        if table.columns != self.columns:
            raise ConfigMismatchError(
                f"{self.path} has columns {list(table.columns)} but this writer expects {list(self.columns)}"
            )
        if table.torn_line is not None:
            warnings.warn(f"{self.path}: line {table.torn_line} has no newline at its end (a row cut short by an "
                          "interrupted write); cut off, that input is done again", ResultsWarning, stacklevel=4)
        if table.end != self.path.stat().st_size:  # a torn row, or blanks without a newline
            with open(self.path, "r+b") as f:
                f.truncate(table.end)
        self.done.update(table.idx)

    def _check_config(self) -> None:
        old = read_config(self.path)
        if old is None:
            raise ConfigMismatchError(
                f"{self.path} exists but has no {sidecar_path(self.path).name} describing how it was made; "
                "refusing to append to it — choose another --out or remove the file"
            )
        diff = config_diff(old, self.config, self.ignore)
        if diff:
            details = "; ".join(f"{k}: file has {old.get(k)!r}, now {self.config.get(k)!r}" for k in diff)
            raise ConfigMismatchError(
                f"{self.path} was written with a different configuration ({details}); refusing to "
                "mix results — choose another --out, or re-run with the original settings to resume"
            )

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row (keys = columns) and flush it to the OS, so an interrupt loses at most it."""
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise KeyError(f"row lacks columns {missing}")
        idx = int(row["idx"])
        if idx in self.done:  # a file holds one row per input; readers refuse a repeated idx
            raise InputError(f"{self.path} already has a row for idx {idx}")
        self._file.write("\t".join(_format(row[c]) for c in self.columns) + "\n")
        self._file.flush()
        self.done.add(idx)

    def close(self) -> None:
        self._file.close()
        self.release_lock()

    def release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
