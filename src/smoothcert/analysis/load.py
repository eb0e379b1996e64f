"""One certification run's rows as arrays (:class:`Results`), read from a result file.

A results file is a tab-separated table with a header line and one row per input (read by
:func:`smoothcert.results.read_table`, whose rule for damage applies: a torn last row is left out
with a warning, a malformed middle row or a repeated ``idx`` is an error). Its first columns are
the field's layout from Cohen et al. (2019), ``idx label predict radius correct time``;
``predict == -1`` means the smoothed classifier abstained, ``correct`` is 0/1 and ``time`` is
either ``str(datetime.timedelta)`` (``0:02:31.238689``) or plain seconds (``15.4``; some of the
published CIFAR-10 logs use that form). Any further columns (smoothcert writes ``p_lower``,
``count_a``, ``n``, ``alpha``, ``noise``, ``sigma``, ``norm``, ``precision``, ...) are kept in
:attr:`Results.extra`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, ResultFileError
from ..results import COHEN_COLUMNS, read_table

__all__ = ["ABSTAIN", "REQUIRED_COLUMNS", "Results", "format_sigma", "latex_escape", "load_results", "single_value"]

#: ``predict`` value that marks an abstention (Cohen et al. 2019 use -1).
ABSTAIN = -1

#: Columns every results file must have, in the field's order.
REQUIRED_COLUMNS: tuple[str, ...] = COHEN_COLUMNS

# A path component such as ``sigma_0.25`` (Cohen's layout ``noise_0.25/test/sigma_0.25``);
# ``sigma=0.25`` and ``sigma-0.25`` are accepted too.
_SIGMA_COMPONENT = re.compile(r"^sigma[_=-]?(\d+(?:\.\d*)?|\.\d+)$")


@dataclass(eq=False)
class Results:
    """One certification run: one entry per input row of a results file.

    Attributes:
        idx: int64 ``[N]``, dataset index of each input.
        label: int64 ``[N]``, true class.
        predict: int64 ``[N]``, smoothed prediction; :data:`ABSTAIN` (-1) for an abstention.
        radius: float64 ``[N]``, certified radius (0 for abstentions).
        correct: int64 ``[N]``, 1 if the prediction equals the label, else 0.
        seconds: float64 ``[N]``, wall time per input in seconds.
        extra: further columns by name, each ``[N]``: int64 if every value parses as an
            integer, float64 if every value parses as a float, else an array of strings.
        sigma: noise level when known: the ``sigma`` column (if it holds a single value), else
            a ``sigma_X`` component of the path, else ``None``.
        noise: noise family from a ``noise`` column (if it holds a single value), else ``None``.
        path: file the rows came from, if any.
        name: label given explicitly for tables and plots; ``None`` means "derive one"
            (see :meth:`display_name`).
    """

    idx: np.ndarray
    label: np.ndarray
    predict: np.ndarray
    radius: np.ndarray
    correct: np.ndarray
    seconds: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    sigma: float | None = None
    noise: str | None = None
    path: Path | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        n = len(self.idx)
        for attr in ("label", "predict", "radius", "correct", "seconds"):
            if len(getattr(self, attr)) != n:
                raise InputError(f"Results.{attr} has {len(getattr(self, attr))} rows, idx has {n}")
        for key, col in self.extra.items():
            if len(col) != n:
                raise InputError(f"Results.extra[{key!r}] has {len(col)} rows, idx has {n}")

    def __len__(self) -> int:
        return len(self.idx)

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path is not None else ""
        return (
            f"Results(name={self.display_name()!r}, rows={len(self)}, sigma={self.sigma}, "
            f"noise={self.noise!r}, extra={list(self.extra)}{where})"
        )

    def display_name(self, style: str = "text") -> str:
        """The run's label for a table or plot.

        An explicit :attr:`name` is used as given (escaped for LaTeX with ``style="latex"``).
        Otherwise the label is ``sigma = X`` when the sigma is known, else the file name.

        Args:
            style: ``"text"`` (``sigma = 0.25``), ``"markdown"`` (``σ = 0.25``), ``"latex"``
                (``$\\sigma = 0.25$``) or ``"plot"`` (matplotlib mathtext, like ``"latex"``).
        """
        if style not in ("text", "markdown", "latex", "plot"):
            raise InputError(f"style must be 'text', 'markdown', 'latex' or 'plot', got {style!r}")
        if self.name is not None:
            return latex_escape(self.name) if style == "latex" else self.name
        if self.sigma is not None:
            s = format_sigma(self.sigma)
            return {
                "text": f"sigma = {s}",
                "markdown": f"σ = {s}",
                "latex": f"$\\sigma = {s}$",
                "plot": f"$\\sigma = {s}$",
            }[style]
        stem = self.path.name if self.path is not None else "run"
        return latex_escape(stem) if style == "latex" else stem


def format_sigma(sigma: float) -> str:
    """A noise level as the field's tables print it: two decimals (0.12, 0.25, 1.00) unless that
    would lose digits."""
    two = f"{sigma:.2f}"
    return two if abs(float(two) - sigma) < 1e-12 else f"{sigma:g}"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (``_`` -> ``\\_`` etc.)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def single_value(col: np.ndarray | None) -> Any:
    """The one value a column holds in every row, or None (no column, no rows, several values)."""
    if col is None or len(col) == 0:
        return None
    uniq = np.unique(col)
    return uniq[0].item() if len(uniq) == 1 else None


def _sigma_from_path(path: Path) -> float | None:
    # The last matching component wins: in noise_0.25/test/sigma_0.50 the certification sigma
    # is 0.50 (noise_X is the *training* noise, which is not the smoothing sigma).
    for part in reversed(path.parts):
        m = _SIGMA_COMPONENT.match(part)
        if m:
            return float(m.group(1))
    return None


def load_results(path: str | Path, *, label: str | None = None) -> Results:
    """Read a certification results file (tab-separated, header line first).

    Args:
        path: the file.
        label: display name of the run in tables and plots (stored as :attr:`Results.name`);
            by default ``sigma = X`` when the sigma is known, else the file name.

    Returns:
        A :class:`Results` with one entry per row, in file order.

    Raises:
        MissingFileError: the file does not exist.
        ResultFileError: the file is empty, has no data rows, its header lacks a required column
            (they are named) or names a column twice, a row other than a torn last one is
            malformed (a value that does not parse, ``correct`` not 0/1, a radius that is not a
            number >= 0), or an ``idx`` appears twice — naming the file and line.

    A torn last row (no newline: an interrupted write) is left out with a
    :class:`~smoothcert.results.ResultsWarning`. Blank lines are ignored.
    """
    path = Path(path)
    table = read_table(path)
    if not table.columns:
        raise ResultFileError(f"{path}: empty file; expected a header line {' '.join(REQUIRED_COLUMNS)!r}")
    if "heuristic_radius" in table.columns and "radius" not in table.columns:
        raise ResultFileError(f"{path} holds the one-pass HeatSmoothing heuristic (heuristic_radius), not certified "
                              "radii: it is never read as a certified-accuracy table")
    table.require(REQUIRED_COLUMNS)
    if not len(table):
        raise ResultFileError(f"{path}: no data rows")
    for line, correct, radius in zip(table.lines, table.values["correct"], table.values["radius"], strict=True):
        if correct not in (0, 1):
            raise ResultFileError(f"{path}, line {line}: correct must be 0 or 1, got {correct!r}")
        if not radius >= 0.0:  # also rejects NaN
            raise ResultFileError(f"{path}, line {line}: radius must be a number >= 0, got {radius!r}")
    extra = {h: table.array(h) for h in table.columns if h not in REQUIRED_COLUMNS}

    sigma_value = single_value(extra.get("sigma"))
    sigma: float | None
    if isinstance(sigma_value, (int, float)):
        sigma = float(sigma_value)
    else:
        sigma = _sigma_from_path(path)
    noise_value = single_value(extra.get("noise"))
    noise = str(noise_value) if noise_value is not None else None

    return Results(
        idx=table.array("idx"),
        label=table.array("label"),
        predict=table.array("predict"),
        radius=table.array("radius").astype(np.float64),
        correct=table.array("correct"),
        seconds=table.array("time").astype(np.float64),
        extra=extra,
        sigma=sigma,
        noise=noise,
        path=path,
        name=label,
    )
