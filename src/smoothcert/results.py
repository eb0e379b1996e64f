"""Result files: one TSV row per input, flushed as produced, resumable, guarded by a config sidecar.

The first six columns keep the layout of Cohen et al. 2019 (``idx label predict radius correct
time``) so existing analysis scripts read our files; the columns after them record how each row
was obtained. Beside ``run.tsv`` lives ``run.tsv.json``, the configuration that produced it:
re-running the same command appends the missing rows, while a different configuration is
refused instead of being silently mixed into the same file.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigMismatchError, InputError
from .files import atomic_write_text

__all__ = ["COLUMNS", "ResultWriter", "ConfigMismatchError", "config_diff", "format_time", "sidecar_path"]

COLUMNS: tuple[str, ...] = (
    "idx", "label", "predict", "radius", "correct", "time",
    "p_lower", "count_a", "count_b", "n", "n0", "alpha",
    "noise", "sigma", "norm", "precision", "seconds",
)  # fmt: skip



def format_time(seconds: float) -> str:
    """Cohen et al.'s ``time`` column: ``str(timedelta)``, e.g. ``0:00:01.234567``."""
    return str(datetime.timedelta(seconds=float(seconds)))


def sidecar_path(path: Path) -> Path:
    """Where the configuration of the result file ``path`` is kept: ``run.tsv`` -> ``run.tsv.json``."""
    return path.with_name(path.name + ".json")


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
            Keys listed in ``ignore`` (e.g. batch size) are recorded but may change on resume.
        columns: the header; defaults to :data:`COLUMNS`.

    On opening an existing file, a half-written last line (one without its newline) is cut off,
    and :attr:`done` holds the ``idx`` of every complete row; a complete row with the wrong number
    of fields means a foreign or edited file and raises ValueError.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        config: Mapping[str, Any],
        columns: tuple[str, ...] = COLUMNS,
        ignore: tuple[str, ...] = (),
    ) -> None:
        self.path = Path(path)
        self.columns = columns
        self.config = json.loads(json.dumps(dict(config)))  # normalise types (tuples -> lists)
        self.ignore = ignore
        self.done: set[int] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            if self._has_rows():
                self._check_config()
            self._repair_and_scan()
        else:
            with open(self.path, "w", encoding="utf-8") as f:
                f.write("\t".join(columns) + "\n")
        # Atomic: a sidecar cut short by an interrupt would make the rows unreadable on resume.
        atomic_write_text(sidecar_path(self.path), json.dumps(self.config, indent=2, sort_keys=True) + "\n")
        self._file = open(self.path, "a", encoding="utf-8")

    def _has_rows(self) -> bool:
        """Whether the file holds anything beyond its header; an empty file's old configuration
        (say, of a run refused for a bad argument) carries no results and may be replaced."""
        with open(self.path, "rb") as f:
            f.readline()
            return bool(f.read(1))

    def _check_config(self) -> None:
        side = sidecar_path(self.path)
        if not side.exists():
            raise ConfigMismatchError(
                f"{self.path} exists but has no {side.name} describing how it was made; "
                "refusing to append to it — choose another --out or remove the file"
            )
        old = json.loads(side.read_text())
        diff = config_diff(old, self.config, self.ignore)
        if diff:
            details = "; ".join(f"{k}: file has {old.get(k)!r}, now {self.config.get(k)!r}" for k in diff)
            raise ConfigMismatchError(
                f"{self.path} was written with a different configuration ({details}); refusing to "
                "mix results — choose another --out, or re-run with the original settings to resume"
            )

    def _repair_and_scan(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        # After the last newline there is either nothing or a row cut off mid-write.
        complete, keep = lines[:-1], len(raw) - len(lines[-1])
        if not complete:  # interrupted while writing the header itself
            self.path.write_text("\t".join(self.columns) + "\n", encoding="utf-8")
            return
        header = complete[0].decode("utf-8").split("\t") if complete else []
        if header != list(self.columns):
            raise ConfigMismatchError(
                f"{self.path} has columns {header} but this writer expects {list(self.columns)}"
            )
        for line in complete[1:]:
            fields = line.decode("utf-8").split("\t")
            if len(fields) != len(self.columns):
                raise InputError(f"{self.path}: malformed row {line[:80]!r}; fix or remove the file")
            self.done.add(int(fields[0]))
        if keep != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row (keys = columns) and flush it to the OS, so an interrupt loses at most it."""
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise KeyError(f"row lacks columns {missing}")
        self._file.write("\t".join(_format(row[c]) for c in self.columns) + "\n")
        self._file.flush()
        self.done.add(int(row["idx"]))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
