"""Certification results -> certified accuracy, ACR, tables and plots.

A results file is a tab-separated table with a header line and one row per input. Its first
columns are the field's layout from Cohen et al. (2019), ``idx label predict radius correct
time``; ``predict == -1`` means the smoothed classifier abstained, ``correct`` is 0/1 and
``time`` is either ``str(datetime.timedelta)`` (``0:02:31.238689``) or plain seconds (``15.4``;
some of the published CIFAR-10 logs use that form). Any further columns (smoothcert writes
``p_lower``, ``count_a``, ``n``, ``alpha``, ``noise``, ``sigma``, ``norm``, ``precision``, ...)
are kept in :attr:`Results.extra`.

Definitions (Cohen et al. 2019, Sec. 4; their ``code/analyze.py``):

* certified accuracy at radius ``r`` = fraction of *all* rows with ``correct == 1`` and
  ``radius >= r``; abstentions and wrong predictions count as failures;
* ACR (average certified radius) = mean over all rows of ``radius * correct``;
* the best-sigma envelope is, at each radius, the maximum certified accuracy over several runs
  (typically one run per sigma).

These are "approximate" certified accuracies in Cohen's sense: each row's certificate holds
with probability at least ``1 - alpha`` on its own; no correction over the test set is applied.

Everything here needs only numpy and the standard library; matplotlib is imported inside
:func:`plot_certified_accuracy` only.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, InputTypeError

__all__ = [
    "ABSTAIN",
    "REQUIRED_COLUMNS",
    "Envelope",
    "Results",
    "ResultsWarning",
    "abstain_rate",
    "acr",
    "certified_accuracy",
    "clean_accuracy",
    "envelope",
    "latex_table",
    "load_results",
    "markdown_table",
    "paired_acr_difference",
    "parse_time",
    "plot_certified_accuracy",
    "summary",
]

#: ``predict`` value that marks an abstention (Cohen et al. 2019 use -1).
ABSTAIN = -1

#: Columns every results file must have, in the field's order.
REQUIRED_COLUMNS: tuple[str, ...] = ("idx", "label", "predict", "radius", "correct", "time")

# A path component such as ``sigma_0.25`` (Cohen's layout ``noise_0.25/test/sigma_0.25``);
# ``sigma=0.25`` and ``sigma-0.25`` are accepted too.
_SIGMA_COMPONENT = re.compile(r"^sigma[_=-]?(\d+(?:\.\d*)?|\.\d+)$")

# str(datetime.timedelta): "H:MM:SS", "H:MM:SS.ffffff", "D day(s), H:MM:SS[.ffffff]".
_TIMEDELTA = re.compile(r"^(?:(-?\d+) days?, )?(\d+):(\d{2}):(\d{2}(?:\.\d+)?)$")


class ResultsWarning(UserWarning):
    """Something in a results file or a comparison of runs deserves attention but is not fatal."""


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
            return _latex_escape(self.name) if style == "latex" else self.name
        if self.sigma is not None:
            s = _format_sigma(self.sigma)
            return {
                "text": f"sigma = {s}",
                "markdown": f"σ = {s}",
                "latex": f"$\\sigma = {s}$",
                "plot": f"$\\sigma = {s}$",
            }[style]
        stem = self.path.name if self.path is not None else "run"
        return _latex_escape(stem) if style == "latex" else stem


@dataclass(frozen=True, eq=False)
class Envelope:
    """Best-over-runs certified accuracy (e.g. the best-sigma curve of Cohen et al. 2019).

    Attributes:
        radii: float64 ``[R]``, the radii asked for.
        accuracy: float64 ``[R]``, the maximum certified accuracy over the runs at each radius.
        best: int64 ``[R]``, index (into the list of runs) of the run attaining it; on ties the
            first such run.
        names: the runs' display names, so ``names[best[j]]`` labels radius ``j``.
    """

    radii: np.ndarray
    accuracy: np.ndarray
    best: np.ndarray
    names: tuple[str, ...]

    def best_names(self) -> list[str]:
        """Display name of the best run at each radius, ``[R]``."""
        return [self.names[int(i)] for i in self.best]


# ----------------------------------------------------------------------------- loading


def parse_time(text: str) -> float:
    """Seconds in a ``time`` field: ``str(datetime.timedelta)`` or a plain number of seconds.

    >>> parse_time("0:02:31.5")
    151.5
    >>> parse_time("1 day, 0:00:01")
    86401.0
    >>> parse_time("15.4")
    15.4
    """
    text = text.strip()
    m = _TIMEDELTA.match(text)
    if m:
        days, hours, minutes, secs = m.groups()
        return (int(days) if days else 0) * 86400.0 + int(hours) * 3600.0 + int(minutes) * 60.0 + float(secs)
    try:
        return float(text)
    except ValueError:
        raise InputError(f"cannot parse time {text!r}: expected H:MM:SS[.ffffff] or seconds") from None


def _parse_int(text: str) -> int:
    # Integers are sometimes written as floats ("3.0") by other tools; accept exact ones only.
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise InputError(f"expected an integer, got {text!r}") from None
        return int(value)


def _parse_row(fields: Sequence[str], pos: dict[str, int]) -> tuple[int, int, int, float, int, float]:
    correct = _parse_int(fields[pos["correct"]])
    if correct not in (0, 1):
        raise InputError(f"correct must be 0 or 1, got {fields[pos['correct']]!r}")
    radius = float(fields[pos["radius"]])
    if not radius >= 0.0:  # also rejects NaN
        raise InputError(f"radius must be a number >= 0, got {fields[pos['radius']]!r}")
    return (
        _parse_int(fields[pos["idx"]]),
        _parse_int(fields[pos["label"]]),
        _parse_int(fields[pos["predict"]]),
        radius,
        correct,
        parse_time(fields[pos["time"]]),
    )


def _typed_column(values: list[str]) -> np.ndarray:
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        pass
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=str)


def _single_value(col: np.ndarray | None) -> Any:
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
        A :class:`Results` with one entry per well-formed row, in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the header lacks a required column (they are named), names a column twice,
            the file has no data rows, or a row other than the last holds an unparseable value.

    Rows with the wrong number of fields (e.g. a last line cut short by an interrupted run) are
    skipped with a :class:`ResultsWarning`; so is a last row whose values do not parse. Blank
    lines are ignored.
    """
    path = Path(path)
    with path.open(newline="") as fh:
        lines = list(csv.reader(fh, delimiter="\t"))
    # csv turns a blank line into []; a line of only whitespace into [" "]-like rows.
    numbered = [(i + 1, row) for i, row in enumerate(lines) if any(cell.strip() for cell in row)]
    if not numbered:
        raise InputError(f"{path}: empty file; expected a header line {' '.join(REQUIRED_COLUMNS)!r}")
    header = [h.strip() for h in numbered[0][1]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(
            f"{path}: missing required column(s) {', '.join(missing)}; the header must hold "
            f"{' '.join(REQUIRED_COLUMNS)} (tab-separated), found {header}"
        )
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(f"{path}: column(s) named more than once in the header: {', '.join(dupes)}")
    pos = {name: header.index(name) for name in header}
    extra_names = [h for h in header if h not in REQUIRED_COLUMNS]

    body = numbered[1:]
    parsed: list[tuple[int, int, int, float, int, float]] = []
    extra_raw: list[list[str]] = []
    skipped: list[int] = []
    for k, (lineno, row) in enumerate(body):
        if len(row) != len(header):
            skipped.append(lineno)
            continue
        try:
            parsed.append(_parse_row(row, pos))
        except ValueError as err:
            if k == len(body) - 1:
                skipped.append(lineno)
                continue
            raise InputError(f"{path}, line {lineno}: {err}") from None
        extra_raw.append([row[pos[h]] for h in extra_names])
    if skipped:
        warnings.warn(
            f"{path}: skipped {len(skipped)} malformed row(s) at line(s) "
            f"{', '.join(map(str, skipped[:10]))}{' ...' if len(skipped) > 10 else ''} "
            f"(wrong number of fields or a truncated last line)",
            ResultsWarning,
            stacklevel=2,
        )
    if not parsed:
        raise InputError(f"{path}: no data rows")

    cols = list(zip(*parsed, strict=True))
    extra = {h: _typed_column([r[j] for r in extra_raw]) for j, h in enumerate(extra_names)}

    sigma_value = _single_value(extra.get("sigma"))
    sigma: float | None
    if isinstance(sigma_value, (int, float)):
        sigma = float(sigma_value)
    else:
        sigma = _sigma_from_path(path)
    noise_value = _single_value(extra.get("noise"))
    noise = str(noise_value) if noise_value is not None else None

    return Results(
        idx=np.asarray(cols[0], dtype=np.int64),
        label=np.asarray(cols[1], dtype=np.int64),
        predict=np.asarray(cols[2], dtype=np.int64),
        radius=np.asarray(cols[3], dtype=np.float64),
        correct=np.asarray(cols[4], dtype=np.int64),
        seconds=np.asarray(cols[5], dtype=np.float64),
        extra=extra,
        sigma=sigma,
        noise=noise,
        path=path,
        name=label,
    )


# ----------------------------------------------------------------------------- metrics


def _check_nonempty(results: Results) -> None:
    if len(results) == 0:
        raise InputError(f"{results!r} has no rows")


def _as_radii(radii: float | Iterable[float]) -> np.ndarray:
    if not isinstance(radii, (np.ndarray, Sequence)) and isinstance(radii, Iterable):
        radii = list(radii)  # generators, sets, dict views
    r = np.asarray(radii, dtype=np.float64)
    if r.ndim > 1:
        raise InputError(f"radii must be a number or a 1-D sequence, got shape {r.shape}")
    if np.isnan(r).any() or (r < 0).any():
        raise InputError(f"radii must be numbers >= 0, got {r.tolist()}")
    return r


def certified_accuracy(results: Results, radii: float | Iterable[float]) -> np.ndarray:
    """Certified accuracy at each radius: fraction of rows with ``correct == 1`` and ``radius >= r``.

    This is Cohen et al.'s (2019) approximate certified accuracy: the denominator is every row,
    so abstentions and wrong predictions count as failures, and the comparison is ``>=``.

    Args:
        results: a run.
        radii: a radius ``>= 0`` or a 1-D sequence of them.

    Returns:
        float64 array with the shape of ``radii`` (0-d for a single number), values in [0, 1],
        non-increasing in the radius.
    """
    _check_nonempty(results)
    r = _as_radii(radii)
    certified = np.sort(results.radius[results.correct == 1])
    # count of certified radii >= r, exact for ties thanks to side="left"
    count = len(certified) - np.searchsorted(certified, r, side="left")
    return count / float(len(results))


def clean_accuracy(results: Results) -> float:
    """Accuracy of the smoothed classifier (certified accuracy at radius 0; abstentions are wrong)."""
    return float(certified_accuracy(results, 0.0))


def acr(results: Results) -> float:
    """Average certified radius: mean over all rows of ``radius * correct`` (abstentions and
    wrong predictions contribute 0)."""
    _check_nonempty(results)
    return float(np.mean(results.radius * results.correct))


def abstain_rate(results: Results) -> float:
    """Fraction of rows where the smoothed classifier abstained (``predict == -1``)."""
    _check_nonempty(results)
    return float(np.mean(results.predict == ABSTAIN))


def summary(results: Results, radii: float | Iterable[float]) -> dict[str, Any]:
    """Headline numbers of a run as plain Python values (JSON-serialisable).

    Returns:
        ``{"name", "path", "rows", "sigma", "noise", "clean_accuracy", "acr", "abstain_rate",
        "certified_accuracy": {radius: accuracy}, "mean_seconds", "total_seconds"}``.
    """
    r = np.atleast_1d(_as_radii(radii))
    accs = certified_accuracy(results, r)
    return {
        "name": results.display_name(),
        "path": str(results.path) if results.path is not None else None,
        "rows": len(results),
        "sigma": results.sigma,
        "noise": results.noise,
        "clean_accuracy": clean_accuracy(results),
        "acr": acr(results),
        "abstain_rate": abstain_rate(results),
        "certified_accuracy": {float(a): float(b) for a, b in zip(r, accs, strict=True)},
        "mean_seconds": float(np.mean(results.seconds)),
        "total_seconds": float(np.sum(results.seconds)),
    }


def paired_acr_difference(a: Results, b: Results, *, z: float = 1.96) -> dict[str, Any]:
    """ACR of ``a`` minus ACR of ``b`` on the inputs both runs certified, with a paired standard error.

    Two methods certified on the same test images differ per image; the per-image difference
    d_i = radius_a,i · correct_a,i − radius_b,i · correct_b,i has a smaller spread than either run's
    radii when the runs agree on most images, so the paired interval mean(d) ± z · std(d)/sqrt(n)
    tells a real difference from test-set sampling (a normal approximation over the n images; the
    Monte Carlo error of each certificate is not in it). Rows are matched by ``idx``.

    Returns:
        ``{"inputs", "difference", "standard_error", "low", "high", "a_better", "b_better", "ties"}``
        (``a_better``: images where ``a``'s certified radius is larger).

    Raises:
        ValueError: when the runs share no input, or give one input two different labels.
    """
    common, ia, ib = np.intersect1d(a.idx, b.idx, return_indices=True)
    if len(common) == 0:
        raise InputError("the two runs certified no input in common (rows are matched by idx)")
    if not np.array_equal(a.label[ia], b.label[ib]):
        raise InputError("the two runs give different labels to the same idx: not the same dataset")
    d = a.radius[ia] * a.correct[ia] - b.radius[ib] * b.correct[ib]
    n = len(d)
    se = float(np.std(d, ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    mean = float(np.mean(d))
    return {"inputs": n, "difference": mean, "standard_error": se, "low": mean - z * se, "high": mean + z * se,
            "a_better": int(np.sum(d > 0)), "b_better": int(np.sum(d < 0)), "ties": int(np.sum(d == 0))}


def _check_runs(results_list: Sequence[Results]) -> list[Results]:
    runs = list(results_list)
    if not runs:
        raise InputError("need at least one Results")
    for run in runs:
        if not isinstance(run, Results):
            raise InputTypeError(f"expected Results, got {type(run).__name__}; use load_results(path)")
        _check_nonempty(run)
    norms = {str(_single_value(run.extra["norm"])) if "norm" in run.extra else "l2" for run in runs}
    if len(norms) > 1:
        # Radii in different norms are different units: a shared column or envelope mixes them.
        warnings.warn(f"these runs certify different norms ({', '.join(sorted(norms))}); their radii are "
                      "not comparable", ResultsWarning, stacklevel=3)
    return runs


def envelope(results_list: Sequence[Results], radii: float | Iterable[float]) -> Envelope:
    """Best-over-runs certified accuracy at each radius and the run attaining it.

    Args:
        results_list: the runs (typically one per sigma).
        radii: a radius ``>= 0`` or a 1-D sequence of them.

    Returns:
        An :class:`Envelope` over ``[R]`` radii; ties go to the first run in ``results_list``.

    Warns (:class:`ResultsWarning`) when the runs were evaluated on different inputs (different
    ``idx`` sets), since the envelope then compares different test subsets. Cohen et al.'s
    published ImageNet table does exactly that: their sigma = 0.25 log stops after 427 of 500
    inputs.
    """
    return _envelope(_check_runs(results_list), radii, warn=True, stacklevel=3)


def _envelope(
    runs: list[Results], radii: float | Iterable[float], *, warn: bool, stacklevel: int = 3
) -> Envelope:
    r = np.atleast_1d(_as_radii(radii))
    table = np.stack([certified_accuracy(run, r) for run in runs])  # [runs, R]
    if warn:
        first = set(runs[0].idx.tolist())
        if any(set(run.idx.tolist()) != first for run in runs[1:]):
            sizes = ", ".join(f"{run.display_name()}: {len(run)}" for run in runs)
            warnings.warn(
                f"runs were certified on different inputs (rows: {sizes}); the envelope "
                "compares different test subsets",
                ResultsWarning,
                stacklevel=stacklevel,
            )
    best = np.argmax(table, axis=0).astype(np.int64)
    return Envelope(
        radii=r,
        accuracy=table[best, np.arange(len(r))],
        best=best,
        names=tuple(run.display_name() for run in runs),
    )


# ----------------------------------------------------------------------------- tables


def _format_sigma(sigma: float) -> str:
    # Two decimals as in the field's tables (0.12, 0.25, 1.00) unless that would lose digits.
    two = f"{sigma:.2f}"
    return two if abs(float(two) - sigma) < 1e-12 else f"{sigma:g}"


def _format_radius(r: float) -> str:
    s = f"{r:g}"
    return s if ("." in s or "e" in s or "inf" in s) else s + ".0"


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


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


@dataclass
class _Grid:
    names: list[str]
    radii: np.ndarray
    acc: np.ndarray  # [runs, R]
    acrs: list[float]
    abstains: list[float]
    env: Envelope | None


def _grid(
    results_list: Sequence[Results],
    radii: float | Iterable[float],
    style: str,
    with_envelope: bool,
    digits: int,
) -> _Grid:
    runs = _check_runs(results_list)
    r = np.atleast_1d(_as_radii(radii))
    if len(r) == 0:
        raise InputError("radii is empty")
    if not isinstance(digits, int) or digits < 0:
        raise InputError(f"digits must be an integer >= 0, got {digits!r}")
    env = _envelope(runs, r, warn=True, stacklevel=4) if (with_envelope and len(runs) > 1) else None
    return _Grid(
        names=[run.display_name(style) for run in runs],
        radii=r,
        acc=np.stack([certified_accuracy(run, r) for run in runs]),
        acrs=[acr(run) for run in runs],
        abstains=[abstain_rate(run) for run in runs],
        env=env,
    )


def _is_best(grid: _Grid, i: int, j: int) -> bool:
    # Highlight every run tied at the column's maximum, but not a column of zeros.
    best = grid.acc[:, j].max()
    return len(grid.names) > 1 and best > 0 and grid.acc[i, j] == best


def markdown_table(
    results_list: Sequence[Results],
    radii: float | Iterable[float],
    *,
    envelope: bool = True,
    acr: bool = True,
    abstain: bool = True,
    digits: int = 2,
) -> str:
    """Certified accuracy as a GitHub-flavoured markdown table.

    Rows are runs (labelled by :meth:`Results.display_name`), columns are ``r = ...`` for each
    radius, then ``ACR`` and ``abstain`` when asked. With several runs the best value of each
    radius column is bold (all runs tied at it) and, with ``envelope=True``, a last row
    ``best σ`` holds the envelope. Numbers are fractions with ``digits`` decimals.

    Returns:
        The table, one line per row, ending with a newline.
    """
    grid = _grid(results_list, radii, "markdown", envelope, digits)
    fmt = f"{{:.{digits}f}}"
    header = [""] + [f"r = {_format_radius(r)}" for r in grid.radii]
    if acr:
        header.append("ACR")
    if abstain:
        header.append("abstain")
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for i, name in enumerate(grid.names):
        cells = [name.replace("|", "\\|")]
        for j in range(len(grid.radii)):
            text = fmt.format(grid.acc[i, j])
            cells.append(f"**{text}**" if _is_best(grid, i, j) else text)
        if acr:
            cells.append(fmt.format(grid.acrs[i]))
        if abstain:
            cells.append(fmt.format(grid.abstains[i]))
        lines.append("| " + " | ".join(cells) + " |")
    if grid.env is not None:
        cells = ["best σ"] + [fmt.format(a) for a in grid.env.accuracy]
        cells += ["–"] * (int(acr) + int(abstain))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def latex_table(
    results_list: Sequence[Results],
    radii: float | Iterable[float],
    *,
    envelope: bool = True,
    acr: bool = True,
    abstain: bool = True,
    digits: int = 2,
) -> str:
    """Certified accuracy as a booktabs LaTeX ``tabular`` (needs ``\\usepackage{booktabs}``).

    Same content as :func:`markdown_table`: best value per radius column in ``\\textbf``, an
    envelope row ``best $\\sigma$`` after a ``\\midrule``. Explicit run names are escaped
    (``_`` -> ``\\_`` etc.); default names are set as ``$\\sigma = 0.25$``.

    Returns:
        ``\\begin{tabular}...\\end{tabular}`` ending with a newline.
    """
    grid = _grid(results_list, radii, "latex", envelope, digits)
    fmt = f"{{:.{digits}f}}"
    ncols = len(grid.radii) + int(acr) + int(abstain)
    header = [""] + [f"$r = {_format_radius(r)}$" for r in grid.radii]
    if acr:
        header.append("ACR")
    if abstain:
        header.append("abstain")
    lines = [
        "\\begin{tabular}{l" + "r" * ncols + "}",
        "\\toprule",
        " & ".join(header) + " \\\\",
        "\\midrule",
    ]
    for i, name in enumerate(grid.names):
        cells = [name]
        for j in range(len(grid.radii)):
            text = fmt.format(grid.acc[i, j])
            cells.append(f"\\textbf{{{text}}}" if _is_best(grid, i, j) else text)
        if acr:
            cells.append(fmt.format(grid.acrs[i]))
        if abstain:
            cells.append(fmt.format(grid.abstains[i]))
        lines.append(" & ".join(cells) + " \\\\")
    if grid.env is not None:
        lines.append("\\midrule")
        cells = ["best $\\sigma$"] + [fmt.format(a) for a in grid.env.accuracy]
        cells += ["--"] * (int(acr) + int(abstain))
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def _step_curve(results: Results, max_radius: float) -> tuple[np.ndarray, np.ndarray]:
    # Certified accuracy is constant on (b_{k-1}, b_k] between consecutive certified radii b_k,
    # so evaluating it at the breakpoints and drawing steps "pre" reproduces it exactly.
    certified = results.radius[(results.correct == 1) & (results.radius > 0) & (results.radius < max_radius)]
    xs = np.unique(np.concatenate([[0.0], certified, [max_radius]]))
    return xs, certified_accuracy(results, xs)


def plot_certified_accuracy(
    results_list: Sequence[Results],
    path: str | Path,
    *,
    max_radius: float | None = None,
    title: str | None = None,
    envelope: bool = True,
) -> Path:
    """Plot certified accuracy against radius for each run and save it.

    Each run is an exact step curve; with several runs and ``envelope=True`` their best-over-runs
    envelope is drawn dashed on top. Uses matplotlib's object API with the Agg canvas (no display
    needed, and the caller's pyplot backend is left alone).

    Args:
        results_list: the runs.
        path: output file; the suffix picks the format (``.png``, ``.pdf`` or ``.svg``).
            Missing parent folders are created.
        max_radius: right end of the x axis; default: the largest certified radius, rounded up
            to a multiple of 0.25.
        title: optional title.
        envelope: draw the envelope (ignored for a single run).

    Returns:
        The path written.
    """
    runs = _check_runs(results_list)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".pdf", ".svg"):
        raise InputError(f"unsupported plot format {path.suffix!r} for {path}; use .png, .pdf or .svg")
    if max_radius is None:
        top = max(float(np.max(run.radius * run.correct)) for run in runs)
        max_radius = math.ceil(top * 1.02 / 0.25) * 0.25 if top > 0 else 1.0
    if not max_radius > 0:
        raise InputError(f"max_radius must be > 0, got {max_radius}")

    # Lazy import: matplotlib is needed only here.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ymax = 0.0
    for run in runs:
        xs, ys = _step_curve(run, max_radius)
        ax.step(xs, ys, where="pre", linewidth=1.8, label=run.display_name("plot"))
        ymax = max(ymax, float(ys.max()))
    if envelope and len(runs) > 1:
        grid = np.unique(np.concatenate([_step_curve(run, max_radius)[0] for run in runs]))
        env = _envelope(runs, grid, warn=False)
        ax.step(
            grid,
            env.accuracy,
            where="pre",
            color="black",
            linestyle="--",
            linewidth=1.2,
            label="best $\\sigma$" if all(run.sigma is not None for run in runs) else "envelope",
        )
    ax.set_xlim(0.0, max_radius)
    ax.set_ylim(0.0, min(1.0, math.ceil((ymax + 0.05) * 10.0) / 10.0))
    ax.set_xlabel("radius ($\\ell_2$)" if _all_l2(runs) else "radius")
    ax.set_ylabel("certified accuracy")
    ax.grid(True, alpha=0.35, linewidth=0.6)
    ax.legend(loc="upper right", frameon=True, framealpha=0.9)
    if title:
        ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150 if suffix == ".png" else None)
    return path


def _all_l2(runs: Sequence[Results]) -> bool:
    # Label the axis "l2" only when every file says so or is a legacy Cohen log (l2 by design).
    for run in runs:
        norm = _single_value(run.extra.get("norm"))
        if "norm" in run.extra and str(norm).lower() not in ("l2", "2"):
            return False
    return True
