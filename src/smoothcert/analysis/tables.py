"""Certified accuracy tables: one builder (:func:`accuracy_table`), two renderers (markdown, LaTeX)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .load import Results
from .metrics import (
    abstain_rate,
    acr,
    as_radii,
    certified_accuracy,
    certified_accuracy_interval,
    check_runs,
    envelope_of,
)

__all__ = ["AccuracyTable", "accuracy_table", "latex_table", "markdown_table"]


def _format_radius(r: float) -> str:
    s = f"{r:g}"
    return s if ("." in s or "e" in s or "inf" in s) else s + ".0"


@dataclass(frozen=True, eq=False)
class AccuracyTable:
    """Certified accuracy of runs at radii, with their ACR and abstain rate: the content of a table.

    Attributes:
        runs: the runs (rows of the table), labelled by :meth:`Results.display_name`.
        radii: float64 ``[R]``.
        accuracy: float64 ``[runs, R]``, certified accuracy of each run at each radius.
        acr: each run's ACR, or None (no ACR column).
        abstain: each run's abstain rate, or None (no abstain column).
        envelope: float64 ``[R]``, the best-over-runs accuracy (a last row), or None.
        digits: decimals of every number.
        ci: float64 ``[runs, R, 2]``, a Clopper–Pearson interval on each certified accuracy over
            the sample of inputs (:func:`~smoothcert.analysis.metrics.certified_accuracy_interval`),
            shown as ``0.61 [0.57, 0.65]``, or None.
        confidence: the level of ``ci``.
    """

    runs: tuple[Results, ...]
    radii: np.ndarray
    accuracy: np.ndarray
    acr: tuple[float, ...] | None
    abstain: tuple[float, ...] | None
    envelope: np.ndarray | None
    digits: int
    ci: np.ndarray | None = None
    confidence: float | None = None

    def is_best(self, i: int, j: int) -> bool:
        """Whether run ``i`` is set in bold at radius ``j``: every run tied at the column's
        maximum, with several runs, but not in a column of zeros."""
        best = self.accuracy[:, j].max()
        return len(self.runs) > 1 and best > 0 and self.accuracy[i, j] == best

    def _cells(self, style: str, radius: str, bold: str, missing: str) -> tuple[list[str], list[list[str]]]:
        """Header and body cells (runs, then the envelope) in one renderer's notation."""
        fmt = f"{{:.{self.digits}f}}"
        header = [""] + [radius.format(_format_radius(r)) for r in self.radii]
        header += ["ACR"] * (self.acr is not None) + ["abstain"] * (self.abstain is not None)
        body = []
        for i, run in enumerate(self.runs):
            cells = [run.display_name(style)]
            for j in range(len(self.radii)):
                text = fmt.format(self.accuracy[i, j])
                if self.ci is not None:
                    text += " [" + fmt.format(self.ci[i, j, 0]) + ", " + fmt.format(self.ci[i, j, 1]) + "]"
                cells.append(bold.format(text) if self.is_best(i, j) else text)
            for column in (self.acr, self.abstain):
                if column is not None:
                    cells.append(fmt.format(column[i]))
            body.append(cells)
        if self.envelope is not None:
            label = "best σ" if style == "markdown" else "best $\\sigma$"
            cells = [label] + [fmt.format(a) for a in self.envelope]
            body.append(cells + [missing] * (len(header) - len(cells)))
        return header, body

    def markdown(self) -> str:
        """A GitHub-flavoured markdown table, one line per row, ending with a newline: best values
        in ``**bold**``, the envelope as a last row ``best σ``."""
        header, body = self._cells("markdown", "r = {}", "**{}**", "–")
        for cells in body:
            cells[0] = cells[0].replace("|", "\\|")

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(cells) + " |"

        lines = [line(header), "| --- |" + " ---: |" * (len(header) - 1)]
        return "\n".join(lines + [line(c) for c in body]) + "\n"

    def latex(self) -> str:
        """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), ending with a newline: best
        values in ``\\textbf``, the envelope as a last row ``best $\\sigma$`` after a ``\\midrule``."""
        header, body = self._cells("latex", "$r = {}$", "\\textbf{{{}}}", "--")

        def line(cells: list[str]) -> str:
            return " & ".join(cells) + " \\\\"

        rows = [line(c) for c in body]
        if self.envelope is not None:
            rows.insert(len(self.runs), "\\midrule")
        lines = ["\\begin{tabular}{l" + "r" * (len(header) - 1) + "}", "\\toprule", line(header), "\\midrule",
                 *rows, "\\bottomrule", "\\end{tabular}"]
        return "\n".join(lines) + "\n"


def _build(results_list: Sequence[Results], radii: float | Iterable[float], *, envelope: bool, acr_column: bool,
           abstain: bool, digits: int, stacklevel: int, ci: float | None = None) -> AccuracyTable:
    runs = check_runs(results_list)
    r = np.atleast_1d(as_radii(radii))
    if len(r) == 0:
        raise InputError("radii is empty")
    if not isinstance(digits, int) or digits < 0:
        raise InputError(f"digits must be an integer >= 0, got {digits!r}")
    env = envelope_of(runs, r, warn=True, stacklevel=stacklevel) if (envelope and len(runs) > 1) else None
    return AccuracyTable(
        runs=tuple(runs),
        radii=r,
        accuracy=np.stack([certified_accuracy(run, r) for run in runs]),
        acr=tuple(acr(run) for run in runs) if acr_column else None,
        abstain=tuple(abstain_rate(run) for run in runs) if abstain else None,
        envelope=None if env is None else env.accuracy,
        digits=digits,
        ci=None if ci is None else np.stack([np.stack(certified_accuracy_interval(run, r, confidence=ci), axis=-1)
                                            for run in runs]),
        confidence=ci,
    )


def accuracy_table(
    results_list: Sequence[Results],
    radii: float | Iterable[float],
    *,
    envelope: bool = True,
    acr: bool = True,
    abstain: bool = True,
    digits: int = 2,
    ci: float | None = None,
) -> AccuracyTable:
    """The table of ``results_list`` at ``radii``: rows are runs, columns ``r = ...`` for each
    radius, then ``ACR`` and ``abstain`` when asked; with several runs and ``envelope=True``, a
    last row with the best-over-runs accuracy (warns when the runs were certified on different
    inputs). Numbers are fractions with ``digits`` decimals. Render with :meth:`AccuracyTable.markdown`
    or :meth:`AccuracyTable.latex`. ``ci``: a confidence level (e.g. 0.95) adds to every accuracy its
    Clopper–Pearson interval over the sample of inputs (``0.61 [0.57, 0.65]``)."""
    return _build(results_list, radii, envelope=envelope, acr_column=acr, abstain=abstain, digits=digits,
                  stacklevel=4, ci=ci)


def markdown_table(
    results_list: Sequence[Results],
    radii: float | Iterable[float],
    *,
    envelope: bool = True,
    acr: bool = True,
    abstain: bool = True,
    digits: int = 2,
    ci: float | None = None,
) -> str:
    """:func:`accuracy_table` as a GitHub-flavoured markdown table (:meth:`AccuracyTable.markdown`)."""
    return _build(results_list, radii, envelope=envelope, acr_column=acr, abstain=abstain, digits=digits,
                  stacklevel=4, ci=ci).markdown()


def latex_table(
    results_list: Sequence[Results],
    radii: float | Iterable[float],
    *,
    envelope: bool = True,
    acr: bool = True,
    abstain: bool = True,
    digits: int = 2,
    ci: float | None = None,
) -> str:
    """:func:`accuracy_table` as a booktabs LaTeX ``tabular`` (:meth:`AccuracyTable.latex`). Explicit
    run names are escaped (``_`` -> ``\\_`` etc.); default names are set as ``$\\sigma = 0.25$``."""
    return _build(results_list, radii, envelope=envelope, acr_column=acr, abstain=abstain, digits=digits,
                  stacklevel=4, ci=ci).latex()
