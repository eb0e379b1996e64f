"""The one reader of result files: header and typed rows, with one rule for damage.

A result file is tab-separated: a header line, then one line per input, each ended by a newline.
The writer flushes whole lines, so an interrupted write can only leave a last line *without* its
newline. Hence the rule, the same for the writer (on resume), the merge of part files and
analysis:

* a last line without its newline is a **torn row**: it is left out, with a
  :class:`ResultsWarning` (the writer cuts it off and does that input again) — even when its fields
  happen to parse, since a value cut short may still parse (``0.4999`` -> ``0.4``);
* any other row that does not parse (wrong number of fields, a value that is not of its column's
  type) is an error, :class:`~smoothcert.errors.ResultFileError` naming the file and the line;
* so is an ``idx`` that appears twice: a file holds one row per input.

Blank lines hold no row and are skipped; ``\\r\\n`` line ends are read as ``\\n``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MissingFileError, ResultFileError
from .schema import field_parser

__all__ = ["ResultTable", "ResultsWarning", "read_table"]


class ResultsWarning(UserWarning):
    """Something in a results file or a comparison of runs deserves attention but is not fatal."""


@dataclass(frozen=True, eq=False)
class ResultTable:
    """The complete rows of one result file, in file order.

    Attributes:
        path: the file.
        columns: its header; ``()`` when the file has no complete header line (empty, or
            interrupted while the header was written).
        values: per column, its ``[N]`` values, typed by :func:`~smoothcert.results.schema.field_parser`
            (int, float, str; ``time`` in seconds); a column no schema knows is int if every value is
            an integer, else float if every value is a number, else str.
        text: ``[N]`` each row's line as written (without its newline).
        lines: ``[N]`` each row's line number (1 = the header).
        torn_line: the line number of a torn last row that was left out, else None.
        end: bytes of the file up to the end of its last complete line (what a resume keeps).
    """

    path: Path
    columns: tuple[str, ...]
    values: dict[str, list[Any]]
    text: tuple[str, ...]
    lines: tuple[int, ...]
    torn_line: int | None
    end: int

    def __len__(self) -> int:
        return len(self.text)

    @property
    def idx(self) -> list[int]:
        """``[N]`` the ``idx`` of each row (unique)."""
        return self.values.get("idx", [])

    def require(self, columns: Iterable[str]) -> None:
        """Raise ResultFileError naming the ``columns`` the header lacks, if any."""
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise ResultFileError(
                f"{self.path}: missing required column(s) {', '.join(missing)}; the header must hold "
                f"{' '.join(columns)} (tab-separated), found {list(self.columns)}"
            )

    def array(self, name: str) -> np.ndarray:
        """Column ``name`` as an ``[N]`` array: int64, float64 or str."""
        self.require([name])
        values = self.values[name]
        if values and isinstance(values[0], str):
            return np.array(values, dtype=str)
        if values and all(isinstance(v, int) for v in values):
            return np.array(values, dtype=np.int64)
        return np.array(values, dtype=np.float64)

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts from column name to typed value, in file order."""
        return [dict(zip(self.columns, row, strict=True)) for row in zip(*self.values.values(), strict=True)] \
            if self.columns else []


def _infer(values: list[str]) -> list[Any]:
    for parse in (int, float):
        try:
            return [parse(v) for v in values]
        except ValueError:
            pass
    return values


def read_table(path: str | os.PathLike[str], *, warn: bool = True) -> ResultTable:
    """Read a result file by the rule of this module; ``warn=False`` leaves out a torn row silently
    (for a caller that reports it itself).

    Raises:
        MissingFileError: no such file.
        ResultFileError: a malformed row (not the torn last one), a repeated ``idx``, a header that
            names a column twice or lacks ``idx``, or bytes that are not UTF-8 — naming file and line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"no result file {path}") from None
    except IsADirectoryError:
        raise ResultFileError(f"{path} is a folder, not a result file") from None
    pieces = raw.split(b"\n")
    end = len(raw) - len(pieces[-1])  # after the last newline: nothing, or a torn row
    torn_line = len(pieces) if pieces[-1].strip() else None

    header: list[str] | None = None
    fields: list[list[str]] = []
    text: list[str] = []
    lines: list[int] = []
    for number, piece in enumerate(pieces[:-1], start=1):
        try:
            line = piece.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError:
            raise ResultFileError(f"{path}, line {number}: not UTF-8 text; is this a result file?") from None
        if not line.strip():
            continue
        if header is None:
            header = [h.strip() for h in line.split("\t")]
            continue
        row = line.split("\t")
        if len(row) != len(header):
            raise ResultFileError(f"{path}, line {number}: malformed row {line[:80]!r}: {len(row)} fields, the "
                                  f"header has {len(header)}; fix or remove the file")
        fields.append(row)
        text.append(line)
        lines.append(number)

    if torn_line is not None and warn:
        what = "the header" if header is None and torn_line == 1 else "a row"
        warnings.warn(f"{path}: line {torn_line} has no newline at its end — {what} cut short by an interrupted "
                      "write; left out (add the newline if it is complete)", ResultsWarning, stacklevel=2)
    if header is None:
        return ResultTable(path, (), {}, (), (), torn_line, end)
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise ResultFileError(f"{path}: column(s) named more than once in the header: {', '.join(dupes)}")
    if "idx" not in header:
        raise ResultFileError(f"{path}: the header has no idx column (found {header}); is this a result file?")

    values: dict[str, list[Any]] = {}
    for k, name in enumerate(header):
        column = [row[k] for row in fields]
        parse = field_parser(name)
        values[name] = _infer(column) if parse is None else _parse_column(path, name, column, lines, parse)
    seen: dict[int, int] = {}
    for i, number in zip(values["idx"], lines, strict=True):
        if i in seen:
            raise ResultFileError(f"{path}: idx {i} appears twice (lines {seen[i]} and {number}); a result file "
                                  "holds one row per input — remove one of them")
        seen[i] = number
    return ResultTable(path, tuple(header), values, tuple(text), tuple(lines), torn_line, end)


def _parse_column(path: Path, name: str, column: list[str], lines: list[int],
                  parse: Callable[[str], Any]) -> list[Any]:
    out = []
    for value, number in zip(column, lines, strict=True):
        try:
            out.append(parse(value))
        except (InputError, ValueError) as err:
            raise ResultFileError(f"{path}, line {number}: column {name}: {err}") from None
    return out

