"""Summaries of attack result files (written by :func:`smoothcert.runs.attack.attack_dataset`): empirical
and certified accuracy per eps, DDN distances, violations of the certificate and their false-alarm bounds.

Randomized smoothing guarantees that no attack can change g inside the certified radius, so a point
where PREDICT returns a class other than the certified one at distance < radius is a **violation**.
A violation is not by itself proof of a bug: per input it needs only one wrong answer among one
CERTIFY and up to ``len(eps) + DDN_CONFIRM_STEPS + 1`` PREDICTs, each wrong with probability <= alpha,
so the expected number of spurious violations over N certified inputs is at most
N·(1 + len(eps) + DDN_CONFIRM_STEPS + 1)·alpha (≈ 5 for 500 inputs, 3 eps, alpha = 0.001).
Every violation is therefore re-checked by the run with fresh draws at level
alpha/:data:`RECHECK_ALPHA_DIVISOR`; one that survives is **confirmed**, the bug signal (see
:mod:`smoothcert.runs.attack`).
"""

from __future__ import annotations

import csv
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import InputError
from .noise import get_noise
from .smooth import ABSTAIN

__all__ = [
    "DDN_CONFIRM_STEPS",
    "RECHECK_ALPHA_DIVISOR",
    "summarize_attack",
    "summary_table",
]

#: A violation is re-checked at level alpha / this (CERTIFY and PREDICT both).
RECHECK_ALPHA_DIVISOR = 100


def _eps_key(eps: float) -> str:
    return repr(float(eps))


def _l2_conversion(noise_name: str) -> str:
    """How :func:`smoothcert.runs.attack.l2_radius` turns ``noise_name``'s certificate into an l2
    radius, for the summary."""
    terms = {"l1": "r_l1/√d", "linf": "r_linf", "l2": "r_l2"}
    norms = [terms[n] for n in get_noise(noise_name, sigma=1.0).norms]
    return norms[0] if len(norms) == 1 else f"max({', '.join(norms)})"


def _point_key(attack: str, eps: float | None) -> str:
    """The column key of an attacked point: ``pgd@EPS`` or ``ddn``."""
    return "ddn" if attack == "ddn" else f"pgd@{_eps_key(eps)}"  # type: ignore[arg-type]


#: DDN on a smoothed model keeps the smallest iterate its noisy soft estimate called adversarial,
#: which tends to sit just inside g's boundary (on the embedded-MNIST quickstart model, 100 DDN
#: steps with m = 8: PREDICT confirmed 3 of 100 such points; at 20 steps, 49). So its perturbation
#: is scaled by (1 + DDN's gamma)^k, k = 0 .. this, until PREDICT confirms (up to 1.28x the length).
DDN_CONFIRM_STEPS = 5


def _read_rows(path: str | os.PathLike[str]) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        return header, [dict(zip(header, r, strict=True)) for r in reader if len(r) == len(header)]


def summarize_attack(
    rows: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
    *,
    indices: Iterable[int] | None = None,
    eps: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Summary of attack rows (a result file or row dicts with the keys of
    :func:`smoothcert.runs.attack.attack_columns`).

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
    class (not abstain) other than the certified class at distance < certified radius. Each is a
    dict ``idx, attack, eps (None for DDN), l2, radius, certified, predicted, confirmed``. Each may
    be a false alarm: ``false_alarm_bound`` = N·(1 + k)·alpha bounds their expected number, N the
    certified inputs and k the PREDICTs per input (len(grid), plus DDN_CONFIRM_STEPS + 1 with DDN).
    ``confirmed_violations``: those the re-check confirmed (see
    :func:`smoothcert.runs.attack.attack_dataset`);
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
        header, raw = _read_rows(rows)
        data: list[Mapping[str, Any]] = raw
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
    summary: dict[str, Any] = {"inputs": count, "smoothed": smoothed, "clean_accuracy": mean(correct), "eps": radii}
    adv, cert, cert_abst = {}, {}, {}
    for e in radii:
        ok, certified, abstained = [], [], []
        for r, c in zip(data, correct, strict=True):
            robust = c
            points = []  # (prediction, distance) of attacked points within eps
            if e in grid:
                p = int(r[f"pgd@{_eps_key(e)}"])
                robust = robust and p == int(r["label"])
                points.append((p, f(r, f"pgd_l2@{_eps_key(e)}")))
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
    summary["adversarial_accuracy"] = adv
    if smoothed:
        summary["certified_accuracy"] = cert
        summary["certified_abstained"] = cert_abst
    if has_ddn:
        dist = [f(r, "min_l2") for r in data]
        found = [d for d in dist if math.isfinite(d)]
        summary["ddn_found"] = len(found) / count if count else math.nan
        summary["median_l2"] = statistics.median(dist) if dist else math.nan
        summary["mean_l2"] = sum(found) / len(found) if found else math.nan
    violations = _violations(data, grid, has_ddn) if smoothed else []
    summary["violations"] = violations
    summary["confirmed_violations"] = [v for v in violations if v["confirmed"]]
    alphas = {float(r["alpha"]) for r in data if "alpha" in r}
    alpha = max(alphas) if alphas else math.nan
    tests = 1 + len(grid) + (DDN_CONFIRM_STEPS + 1 if has_ddn else 0)
    certified_inputs = sum(int(r["predict"]) != ABSTAIN for r in data) if smoothed else 0
    summary["false_alarm_bound"] = certified_inputs * tests * alpha if smoothed else 0.0
    per_input: dict[int, int] = {}
    for v in violations:
        per_input[v["idx"]] = per_input.get(v["idx"], 0) + 1
    rechecked = all("recheck_radius" in r for r in data)
    summary["confirmed_false_alarm_bound"] = (
        sum(1 + k for k in per_input.values()) * alpha / RECHECK_ALPHA_DIVISOR if rechecked else math.nan
    )
    natives = {str(r["native_norm"]) for r in data if "native_norm" in r}
    noises = {str(r["noise"]) for r in data if "noise" in r}
    summary["radius_conversion"] = None
    if smoothed and natives - {"l2"} and len(noises) == 1:
        summary["radius_conversion"] = f"{_l2_conversion(noises.pop())} (radii from the {'/'.join(sorted(natives))} certificate)"
    return summary


def _violations(data: Sequence[Mapping[str, Any]], grid: list[float], has_ddn: bool) -> list[dict[str, Any]]:
    found = []
    for r in data:
        certified, radius = int(r["predict"]), float(r["radius"])
        if certified == ABSTAIN:
            continue
        confirmed = set(str(r.get("confirmed", "-")).split(";")) - {"-", ""}
        points = [("pgd", e, int(r[f"pgd@{_eps_key(e)}"]), float(r[f"pgd_l2@{_eps_key(e)}"])) for e in grid]
        if has_ddn:
            points.append(("ddn", None, int(r["ddn"]), float(r["ddn_l2"])))
        for name, e, pred, l2 in points:
            if pred != ABSTAIN and pred != certified and l2 < radius:
                found.append({"idx": int(r["idx"]), "attack": name, "eps": e, "l2": l2, "radius": radius,
                              "certified": certified, "predicted": pred,
                              "confirmed": _point_key(name, e) in confirmed})
    return found


def summary_table(summary: Mapping[str, Any]) -> str:
    """A markdown table of :func:`summarize_attack`'s accuracies per eps, then one line each for
    clean accuracy, the radius conversion (if any), DDN distances, violations with the bound on
    their expected number of false alarms, and confirmed violations."""
    smoothed = summary["smoothed"]
    head = ["eps", "adversarial acc."] + (["certified acc.", "certified, abstained"] if smoothed else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary["eps"]:
        cells = [f"{e:g}", f"{summary['adversarial_accuracy'][e]:.3f}"]
        if smoothed:
            cells += [f"{summary['certified_accuracy'][e]:.3f}", str(summary["certified_abstained"][e])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"inputs: {summary['inputs']}, clean accuracy: {summary['clean_accuracy']:.3f}"
                 + (" (certified class; abstain counts as wrong)" if smoothed else ""))
    if summary.get("radius_conversion"):
        lines.append(f"certified radii are l2: {summary['radius_conversion']}")
    if "median_l2" in summary:
        lines.append(f"minimal adversarial l2 (DDN): median {summary['median_l2']:.4g}, "
                     f"mean {summary['mean_l2']:.4g} over the {summary['ddn_found']:.1%} of inputs where one was found"
                     + (" (a point where PREDICT abstains is not one)" if smoothed else ""))
    if smoothed:
        v = summary["violations"]
        confirmed = summary.get("confirmed_violations", [])
        lines.append(f"violations (another class inside the certified radius): {len(v)}; expected spurious "
                     f"<= {summary.get('false_alarm_bound', math.nan):.3g} (N·(1+k)·alpha: each CERTIFY and PREDICT "
                     "may err with probability alpha)"
                     + ("".join(f"\n  idx {d['idx']} {d['attack']}"
                                + (f" eps={d['eps']:g}" if d["eps"] is not None else "")
                                + f": l2 {d['l2']:.4g} < radius {d['radius']:.4g}, "
                                f"class {d['predicted']} != certified {d['certified']}"
                                + (" [confirmed]" if d.get("confirmed") else " [not confirmed]") for d in v)))
        lines.append(f"confirmed violations (re-checked with fresh draws at alpha/{RECHECK_ALPHA_DIVISOR}): "
                     f"{len(confirmed)}; expected spurious <= {summary.get('confirmed_false_alarm_bound', math.nan):.3g}"
                     + (" — a bug: please report it" if confirmed else ""))
    return "\n".join(lines)
