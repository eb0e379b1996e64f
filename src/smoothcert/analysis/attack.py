"""Attack rows (:func:`smoothcert.results.attack_columns`) -> empirical and certified accuracy per eps,
minimal adversarial distances, and certificate violations (:class:`AttackSummary`).

Randomized smoothing guarantees that no attack can change g inside the certified radius, so an
attacked point where PREDICT returns a class other than the certified one at distance < radius is
a **violation**. Each answer may be wrong with probability alpha, so a violation may be a false
alarm; the attack run re-checks it with fresh draws at alpha / RECHECK_ALPHA_DIVISOR, and one that
survives is **confirmed** — the bug signal.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..noise import get_noise
from ..results import DDN_CONFIRM_STEPS, RECHECK_ALPHA_DIVISOR, eps_key, read_table
from .load import ABSTAIN

__all__ = ["AttackSummary", "Violation", "find_violations", "summarize_attack", "summary_table"]


@dataclass(frozen=True)
class Violation:
    """An attacked point where PREDICT gave a class other than the certified one inside the
    certified radius.

    Attributes:
        idx: the input.
        attack: ``"pgd"`` or ``"ddn"``.
        eps: PGD's budget; None for DDN.
        l2: the point's distance from the input.
        radius: the certified l2 radius.
        certified: the certified class.
        predicted: PREDICT's answer at the point.
        confirmed: whether the re-check with fresh draws confirmed it.
    """

    idx: int
    attack: str
    eps: float | None
    l2: float
    radius: float
    certified: int
    predicted: int
    confirmed: bool

    @property
    def key(self) -> str:
        """The column key of the attacked point: ``pgd@EPS`` or ``ddn`` (as in ``confirmed``)."""
        return "ddn" if self.attack == "ddn" else f"pgd@{eps_key(self.eps)}"  # type: ignore[arg-type]


@dataclass(frozen=True)
class AttackSummary:
    """What an attack run's rows say, per eps and overall (see :func:`summarize_attack`).

    Attributes:
        inputs: rows summarised.
        smoothed: whether the attacked model was a smoothed classifier (rows with a radius).
        clean_accuracy: fraction with ``predict == label`` (for a smoothed model, the certified class;
            abstain is wrong); nan for zero rows.
        eps: the radii reported, ascending.
        adversarial_accuracy: per eps, the fraction robust against every attack run.
        certified_accuracy: per eps, correct and certified radius >= eps (smoothed only, else None).
        certified_abstained: per eps, inputs certified at eps where PREDICT abstained at an attacked
            point within eps (smoothed only, else None).
        ddn_found, median_l2, mean_l2: DDN's minimal distances (None without DDN).
        violations: every violation (smoothed only), each possibly a false alarm.
        confirmed_violations: those the re-check confirmed: the bug signal.
        false_alarm_bound: bound on the expected number of spurious violations.
        confirmed_false_alarm_bound: bound on the expected number of inputs with a spurious
            confirmed violation (nan for rows without a re-check).
        radius_conversion: how l2 radii were obtained from another norm's certificate, or None.
    """

    inputs: int
    smoothed: bool
    clean_accuracy: float
    eps: tuple[float, ...]
    adversarial_accuracy: dict[float, float]
    certified_accuracy: dict[float, float] | None
    certified_abstained: dict[float, int] | None
    ddn_found: float | None
    median_l2: float | None
    mean_l2: float | None
    violations: tuple[Violation, ...]
    confirmed_violations: tuple[Violation, ...]
    false_alarm_bound: float
    confirmed_false_alarm_bound: float
    radius_conversion: str | None

    def table(self) -> str:
        """A markdown table of the accuracies per eps, then one line each for clean accuracy, the
        radius conversion (if any), DDN distances, violations with the bound on their expected
        number of false alarms, and confirmed violations."""
        smoothed = self.smoothed
        head = ["eps", "adversarial acc."] + (["certified acc.", "certified, abstained"] if smoothed else [])
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for e in self.eps:
            cells = [f"{e:g}", f"{self.adversarial_accuracy[e]:.3f}"]
            if smoothed and self.certified_accuracy is not None and self.certified_abstained is not None:
                cells += [f"{self.certified_accuracy[e]:.3f}", str(self.certified_abstained[e])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"inputs: {self.inputs}, clean accuracy: {self.clean_accuracy:.3f}"
                     + (" (certified class; abstain counts as wrong)" if smoothed else ""))
        if self.radius_conversion:
            lines.append(f"certified radii are l2: {self.radius_conversion}")
        if self.median_l2 is not None:
            lines.append(f"minimal adversarial l2 (DDN): median {self.median_l2:.4g}, mean {self.mean_l2:.4g} over "
                         f"the {self.ddn_found:.1%} of inputs where one was found"
                         + (" (a point where PREDICT abstains is not one)" if smoothed else ""))
        if smoothed:
            lines.append(f"violations (another class inside the certified radius): {len(self.violations)}; "
                         f"expected spurious <= {self.false_alarm_bound:.3g} (N·(1+k)·alpha: each CERTIFY and "
                         "PREDICT may err with probability alpha)"
                         + "".join(f"\n  {_describe(v)}" for v in self.violations))
            lines.append(f"confirmed violations (re-checked with fresh draws at alpha/{RECHECK_ALPHA_DIVISOR}): "
                         f"{len(self.confirmed_violations)}; expected spurious <= "
                         f"{self.confirmed_false_alarm_bound:.3g}"
                         + (" — a bug: please report it" if self.confirmed_violations else ""))
        return "\n".join(lines)


def _describe(v: Violation) -> str:
    return (f"idx {v.idx} {v.attack}" + (f" eps={v.eps:g}" if v.eps is not None else "")
            + f": l2 {v.l2:.4g} < radius {v.radius:.4g}, class {v.predicted} != certified {v.certified}"
            + (" [confirmed]" if v.confirmed else " [not confirmed]"))


def summary_table(summary: AttackSummary) -> str:
    """:meth:`AttackSummary.table`."""
    return summary.table()


def _l2_conversion(noise_name: str) -> str:
    """How an attack run turns ``noise_name``'s certificate into an l2 radius (the largest l2 ball
    inside the certified ball of each of its norms; :meth:`Noise.conversion_formula`), for the summary."""
    return get_noise(noise_name, sigma=1.0).conversion_formula("l2")


def summarize_attack(
    rows: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    *,
    indices: Iterable[int] | None = None,
    eps: Sequence[float] | None = None,
) -> AttackSummary:
    """Summary of attack rows: a result file (read by :func:`smoothcert.results.read_table`) or row
    dicts with the :func:`~smoothcert.results.attack_columns` keys.

    Per input, clean correct = ``predict == label`` (for a smoothed model, the certified class;
    abstain is wrong). At each radius eps (default: the PGD grid of the rows):

    - ``adversarial_accuracy``: clean correct, the PGD point at eps (if run) still classified
      ``label`` (PREDICT abstaining counts as wrong), and neither a DDN adversarial nor a DDN point
      where PREDICT abstained within eps (``min(min_l2, ddn_abstain_l2) > eps``, if run) — robust
      against every attack run. For a smoothed model: an upper bound on the robust accuracy of g as
      answered by PREDICT (abstain = wrong), not of g itself;
    - ``certified_accuracy`` (smoothed rows): correct and certified l2 radius >= eps (a lower bound
      on g's robust accuracy, with probability >= 1 − alpha per input);
    - ``certified_abstained`` (smoothed): inputs certified at eps where PREDICT abstained at an
      attacked point within eps — the only way, besides a violation, for empirical accuracy to fall
      below certified accuracy (the point sits near the edge of g's region, where pA ≈ 1/2).

    ``violations``: for smoothed rows, every attacked point (PGD or DDN) where PREDICT returned a
    class (not abstain) other than the certified class at distance < certified radius
    (:class:`Violation`). Each may be a false alarm: ``false_alarm_bound`` = N·(1 + k)·alpha bounds
    their expected number, N the certified inputs and k the PREDICTs per input (len(grid), plus
    DDN_CONFIRM_STEPS + 1 with DDN). ``confirmed_violations``: those the re-check confirmed;
    ``confirmed_false_alarm_bound`` = Σ (1 + violations of the input)·alpha/RECHECK_ALPHA_DIVISOR
    over the re-checked inputs bounds the expected number of inputs with a spurious one. A
    confirmed violation is the bug signal. (Bounds are nan for rows without an ``alpha`` column.)

    ``median_l2`` / ``mean_l2``: of ``min_l2`` over all inputs (inf where DDN found no point with
    another class, so the median may be inf; abstentions never count) / over inputs where it found
    one (nan if none); ``ddn_found``: the fraction of those inputs. ``radius_conversion``: how the
    l2 radii were obtained from a certificate in another norm (None for l2 certificates). Accuracies
    are nan for zero rows.
    """
    if isinstance(rows, (str, os.PathLike)):
        table = read_table(rows)
        header: list[str] = list(table.columns)
        data: list[Mapping[str, Any]] = list(table.records())
    else:
        data = list(rows)
        header = list(data[0]) if data else []
    if indices is not None:
        wanted = {int(i) for i in indices}
        by_idx = {int(r["idx"]): r for r in data}
        data = [by_idx[i] for i in sorted(wanted) if i in by_idx]
    grid = sorted({float(h.split("@", 1)[1]) for h in header if h.startswith("pgd@")})
    radii = sorted(float(e) for e in eps) if eps is not None else grid
    has_ddn = "min_l2" in header
    if not has_ddn and set(radii) - set(grid):
        raise InputError(f"no attack was run at eps {sorted(set(radii) - set(grid))}: PGD ran at {grid}, DDN not at all")
    smoothed = any(float(r["radius"]) == float(r["radius"]) for r in data)  # radius is nan for plain models

    def f(r: Mapping[str, Any], key: str, default: float = math.inf) -> float:
        return float(r[key]) if key in r else default

    count = len(data)
    mean = (lambda xs: sum(xs) / count) if count else (lambda xs: math.nan)
    correct = [int(r["correct"]) == 1 for r in data]
    adv, cert, cert_abst = {}, {}, {}
    for e in radii:
        ok, certified, abstained = [], [], []
        for r, c in zip(data, correct, strict=True):
            robust = c
            points = []  # (prediction, distance) of attacked points within eps
            if e in grid:
                p = int(r[f"pgd@{eps_key(e)}"])
                robust = robust and p == int(r["label"])
                points.append((p, f(r, f"pgd_l2@{eps_key(e)}")))
            if has_ddn:
                robust = robust and min(f(r, "min_l2"), f(r, "ddn_abstain_l2")) > e
                if f(r, "ddn_l2") <= e:
                    points.append((int(r["ddn"]), f(r, "ddn_l2")))
                if f(r, "ddn_abstain_l2") <= e:
                    points.append((ABSTAIN, f(r, "ddn_abstain_l2")))
            ok.append(robust)
            is_cert = c and smoothed and f(r, "radius") >= e
            certified.append(is_cert)
            abstained.append(is_cert and any(p == ABSTAIN for p, _ in points))
        adv[e], cert[e] = mean(ok), mean(certified)
        cert_abst[e] = sum(abstained)
    ddn_found = median_l2 = mean_l2 = None
    if has_ddn:
        dist = [f(r, "min_l2") for r in data]
        found = [d for d in dist if math.isfinite(d)]
        ddn_found = len(found) / count if count else math.nan
        median_l2 = statistics.median(dist) if dist else math.nan
        mean_l2 = sum(found) / len(found) if found else math.nan
    violations = find_violations(data, grid, has_ddn) if smoothed else []
    alphas = {float(r["alpha"]) for r in data if "alpha" in r}
    alpha = max(alphas) if alphas else math.nan
    tests = 1 + len(grid) + (DDN_CONFIRM_STEPS + 1 if has_ddn else 0)
    certified_inputs = sum(int(r["predict"]) != ABSTAIN for r in data) if smoothed else 0
    per_input: dict[int, int] = {}
    for v in violations:
        per_input[v.idx] = per_input.get(v.idx, 0) + 1
    rechecked = all("recheck_radius" in r for r in data)
    natives = {str(r["native_norm"]) for r in data if "native_norm" in r}
    noises = {str(r["noise"]) for r in data if "noise" in r}
    conversion = None
    if smoothed and natives - {"l2"} and len(noises) == 1:
        conversion = f"{_l2_conversion(noises.pop())} (radii from the {'/'.join(sorted(natives))} certificate)"
    return AttackSummary(
        inputs=count,
        smoothed=smoothed,
        clean_accuracy=mean(correct),
        eps=tuple(radii),
        adversarial_accuracy=adv,
        certified_accuracy=cert if smoothed else None,
        certified_abstained=cert_abst if smoothed else None,
        ddn_found=ddn_found,
        median_l2=median_l2,
        mean_l2=mean_l2,
        violations=tuple(violations),
        confirmed_violations=tuple(v for v in violations if v.confirmed),
        false_alarm_bound=certified_inputs * tests * alpha if smoothed else 0.0,
        confirmed_false_alarm_bound=(
            sum(1 + k for k in per_input.values()) * alpha / RECHECK_ALPHA_DIVISOR if rechecked else math.nan
        ),
        radius_conversion=conversion,
    )


def find_violations(data: Sequence[Mapping[str, Any]], grid: Sequence[float], has_ddn: bool) -> list[Violation]:
    """The violations in attack rows ``data`` (dicts with the attack columns) at the PGD budgets
    ``grid`` and, with ``has_ddn``, at DDN's point: a class other than the certified one (abstaining
    is none) at distance < the certified radius. Rows that abstained certify nothing."""
    found = []
    for r in data:
        certified, radius = int(r["predict"]), float(r["radius"])
        if certified == ABSTAIN:
            continue
        confirmed = set(str(r.get("confirmed", "-")).split(";")) - {"-", ""}
        points = [("pgd", e, int(r[f"pgd@{eps_key(e)}"]), float(r[f"pgd_l2@{eps_key(e)}"])) for e in grid]
        if has_ddn:
            points.append(("ddn", None, int(r["ddn"]), float(r["ddn_l2"])))
        for name, e, pred, l2 in points:
            if pred != ABSTAIN and pred != certified and l2 < radius:
                key = "ddn" if name == "ddn" else f"pgd@{eps_key(e)}"  # type: ignore[arg-type]
                found.append(Violation(idx=int(r["idx"]), attack=name, eps=e, l2=l2, radius=radius,
                                       certified=certified, predicted=pred, confirmed=key in confirmed))
    return found
