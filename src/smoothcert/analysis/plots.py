"""Certified accuracy against radius, as exact step curves (matplotlib, imported only when plotting)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import check_output_path
from .load import Results, single_value
from .metrics import certified_accuracy, certified_accuracy_interval, check_runs, envelope_of

__all__ = ["plot_certified_accuracy"]


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
    ci: float | None = None,
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
        ci: a confidence level (e.g. 0.95): draw each run's Clopper–Pearson interval over the
            sample of inputs as a band (:func:`~smoothcert.analysis.metrics.certified_accuracy_interval`).

    Returns:
        The path written.
    """
    runs = check_runs(results_list)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".pdf", ".svg"):
        raise InputError(f"unsupported plot format {path.suffix!r} for {path}; use .png, .pdf or .svg")
    check_output_path(path, what="plot")
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
        line = ax.step(xs, ys, where="pre", linewidth=1.8, label=run.display_name("plot"))[0]
        if ci is not None:
            # The interval over the sample of inputs, on the curve's own radii (a step function).
            low, high = certified_accuracy_interval(run, xs, confidence=ci)
            ax.fill_between(xs, low, high, step="pre", color=line.get_color(), alpha=0.18, linewidth=0)
            ys = np.maximum(ys, high)
        ymax = max(ymax, float(ys.max()))
    if envelope and len(runs) > 1:
        grid = np.unique(np.concatenate([_step_curve(run, max_radius)[0] for run in runs]))
        env = envelope_of(runs, grid, warn=False)
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
    fig.savefig(path, dpi=150 if suffix == ".png" else None)
    return path


def _all_l2(runs: Sequence[Results]) -> bool:
    # Label the axis "l2" only when every file says so or is a legacy Cohen log (l2 by design).
    for run in runs:
        norm = single_value(run.extra.get("norm"))
        if "norm" in run.extra and str(norm).lower() not in ("l2", "2"):
            return False
    return True
