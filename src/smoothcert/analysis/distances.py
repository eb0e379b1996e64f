"""Minimal adversarial l2 distances and L-bounds in the layout of the HeatSmoothing paper's Tables 3
and 5 (Campbell, Finlay & Oberman, "Adversarial Boot Camp"): per model, the median and mean l2
distance at which PGD and DDN change the answer, the "% attacked vs l2 distance" curve, and the
median and mean L-bound.

Conventions (the paper's, made explicit):

* A distance is the size of the smallest perturbation an attack *found*; it is an upper bound on
  the model's true minimal adversarial distance, not a certificate.
* An input the model already gets wrong has distance 0; an input the attack did not break within
  its budget has distance inf. The median and mean count such a failure **at the budget**
  (the true distance is at least that far from the one found, so the capped mean is a lower bound
  on the mean over the attack's own distances) and :attr:`DistanceSummary.found` says how many
  were broken.
* PGD's distance is the smallest budget of its eps grid at which the attacked point has another
  class (:func:`pgd_distances`); DDN's is its ``min_l2`` column (:func:`ddn_distances`).
  Abstentions of a smoothed model never count as a changed class (as in ``min_l2``).
* The L-bound column is whatever radii the caller passes, labelled ``lbound_kind``: the certified
  L-bound from :func:`smoothcert.soft.certify_soft` bounds, or the one-pass *heuristic*
  (:func:`smoothcert.soft.deterministic_radius`) -- the table header names which.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from .load import ABSTAIN

__all__ = [
    "LBOUND_KINDS",
    "DistanceSummary",
    "RobustnessRow",
    "attacked_curve",
    "ddn_distances",
    "distance_summary",
    "pgd_distances",
    "robustness_row",
    "robustness_table",
]

#: What the L-bound column of a :class:`RobustnessRow` holds.
LBOUND_KINDS = ("certified", "heuristic")


def _floats(values: Iterable[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if any(math.isnan(v) or v < 0 for v in out):
        raise InputError(f"{what} must be >= 0 (inf for 'not found'), got a negative or NaN value")
    return out


@dataclass(frozen=True)
class DistanceSummary:
    """Median and mean of minimal adversarial distances, failures counted at ``budget``.

    Attributes:
        count: inputs summarised.
        found: inputs with a distance <= budget (broken within the budget; distance-0 inputs included).
        budget: the attack's largest l2 perturbation.
        median, mean: of ``min(distance, budget)`` over all inputs (nan for zero inputs).
    """

    count: int
    found: int
    budget: float
    median: float
    mean: float


def distance_summary(distances: Iterable[float], *, budget: float) -> DistanceSummary:
    """:class:`DistanceSummary` of per-input distances (0 = already wrong, inf = not broken)."""
    if not (budget > 0 and math.isfinite(budget)):
        raise InputError(f"budget must be a positive finite l2 distance, got {budget}")
    d = _floats(distances, "distances")
    capped = [min(v, budget) for v in d]
    return DistanceSummary(
        count=len(d),
        found=sum(v <= budget for v in d),
        budget=float(budget),
        median=statistics.median(capped) if capped else math.nan,
        mean=sum(capped) / len(capped) if capped else math.nan,
    )


def attacked_curve(distances: Iterable[float], grid: Sequence[float]) -> list[float]:
    """The fraction of inputs broken within each l2 distance of ``grid`` (``distance <= g``): the
    paper's "% attacked vs l2" curve, as fractions in [0, 1] (nan for zero inputs)."""
    d = _floats(distances, "distances")
    return [sum(v <= g for v in d) / len(d) if d else math.nan for g in grid]


def _grid(rows: Sequence[Mapping[str, Any]]) -> list[tuple[float, str]]:
    """(eps, column) of the rows' PGD predictions, ascending in eps."""
    keys = {k for r in rows for k in r if k.startswith("pgd@")}
    return sorted((float(k.split("@", 1)[1]), k) for k in keys)


def pgd_distances(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Per attack row (:func:`smoothcert.results.attack_columns`, with PGD): 0 where the clean answer
    is wrong (``correct`` is 0), else the smallest eps of the row's PGD grid whose point
    ``pgd@EPS`` is a class other than ``label`` (an abstention is none), else inf."""
    grid = _grid(rows)
    if rows and not grid:
        raise InputError("the rows have no pgd@EPS columns: PGD was not run")
    out = []
    for r in rows:
        if int(r["correct"]) != 1:
            out.append(0.0)
            continue
        label = int(r["label"])
        hit = math.inf
        for e, key in grid:
            p = int(r[key])
            if p != ABSTAIN and p != label:
                hit = e
                break
        out.append(hit)
    return out


def ddn_distances(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Per attack row with DDN: its ``min_l2`` (0 where the clean answer is already another class,
    inf where DDN found none; abstentions never count)."""
    if rows and "min_l2" not in rows[0]:
        raise InputError("the rows have no min_l2 column: DDN was not run")
    return [float(r["min_l2"]) for r in rows]


@dataclass(frozen=True)
class RobustnessRow:
    """One model's line of the Table 3/5 layout.

    Attributes:
        model: the name shown.
        pgd, ddn: distance summaries (None where the attack was not run).
        lbound_median, lbound_mean: of the L-bound radii passed (0 where nothing is certified).
        lbound_kind: "certified" or "heuristic" (see the module docstring).
        attacked_as: how the model was attacked, e.g. "network" (eq. 8) or "smoothed, m = 8" (eq. 9).
    """

    model: str
    pgd: DistanceSummary | None
    ddn: DistanceSummary | None
    lbound_median: float
    lbound_mean: float
    lbound_kind: str
    attacked_as: str


def robustness_row(
    model: str,
    *,
    pgd: Iterable[float] | None,
    ddn: Iterable[float] | None,
    lbound: Iterable[float],
    budget: float,
    lbound_kind: str,
    attacked_as: str,
) -> RobustnessRow:
    """A :class:`RobustnessRow` from per-input PGD / DDN distances (None: not run) and L-bounds."""
    if lbound_kind not in LBOUND_KINDS:
        raise InputError(f"lbound_kind must be one of {', '.join(LBOUND_KINDS)}, got {lbound_kind!r}")
    lb = _floats(lbound, "L-bound radii")
    return RobustnessRow(
        model=model,
        pgd=None if pgd is None else distance_summary(pgd, budget=budget),
        ddn=None if ddn is None else distance_summary(ddn, budget=budget),
        lbound_median=statistics.median(lb) if lb else math.nan,
        lbound_mean=sum(lb) / len(lb) if lb else math.nan,
        lbound_kind=lbound_kind,
        attacked_as=attacked_as,
    )


def _cell(s: DistanceSummary | None) -> str:
    return "—" if s is None else f"{s.median:.3f} / {s.mean:.3f} ({s.found}/{s.count})"


def robustness_table(rows: Sequence[RobustnessRow]) -> str:
    """The paper's Table 3/5 layout in markdown: L-bound median / mean, then PGD and DDN median /
    mean l2 distance (failures at the budget; broken / inputs in brackets), and how each model was
    attacked. Rows with different L-bound kinds get the kind in the cell."""
    kinds = {r.lbound_kind for r in rows}
    one_kind = len(kinds) == 1
    head = f"L-bound ({next(iter(kinds))}) median / mean" if one_kind else "L-bound median / mean"
    lines = [f"| model | {head} | PGD median / mean (broken) | DDN median / mean (broken) | attacked as |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lb = f"{r.lbound_median:.3f} / {r.lbound_mean:.3f}" + ("" if one_kind else f" ({r.lbound_kind})")
        lines.append(f"| {r.model} | {lb} | {_cell(r.pgd)} | {_cell(r.ddn)} | {r.attacked_as} |")
    return "\n".join(lines)
