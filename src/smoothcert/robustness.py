"""Empirical robustness over a dataset: l2 attacks on plain or smoothed classifiers, one row per input.

For a plain classifier f, :func:`attack_dataset` runs :func:`~smoothcert.attacks.pgd_l2` at each eps
of a grid and/or :func:`~smoothcert.attacks.ddn`, and scores f at the attacked points.

For a :class:`~smoothcert.smooth.SmoothedClassifier` g it first CERTIFIES the clean input (the same
certificate as ``certify_dataset`` with the same seed and batch size), attacks the soft smoothed
classifier with m fresh noise draws per step (:class:`~smoothcert.attacks.SmoothedSoft`), and scores
each attacked point with PREDICT (abstain counts as wrong). Randomized smoothing guarantees that
no attack can change g inside the certified radius, so a point where PREDICT returns a class other
than the certified one at distance < radius is a **violation** — a bug, or one of the alpha-probable
failures of CERTIFY/PREDICT. Empirical robust accuracy at eps should not fall below certified
accuracy at eps; where it does, the rows show why (a violation, or PREDICT abstaining at an attacked
point near the edge of its certified ball, which counts as wrong).

Rows are written as they are produced (:class:`~smoothcert.results.ResultWriter`: resumable, guarded by
a configuration sidecar); the first six columns are the ``idx label predict radius correct time``
of certification logs, so ``smoothcert analyze`` reads a smoothed run's certified accuracy from it.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .attacks import SmoothedSoft, ddn, l2_norms, pgd_l2, smoothed_log_probs
from .evaluate import input_seed
from .noise import Noise
from .results import ResultWriter, format_time
from .smooth import ABSTAIN, SmoothedClassifier
from .stats import check_alpha
from .validation import as_batch, check_sample_sizes, ensure_eval, model_device

__all__ = ["ATTACKS", "DDN_CONFIRM_STEPS", "attack_columns", "attack_dataset", "l2_radius", "summarize_attack", "summary_table"]

#: Values of ``attack``: PGD at each eps, DDN (minimal distances), or both.
ATTACKS = ("pgd", "ddn", "both")

#: Settings that may change when a run is resumed: they only group work (rows of a resumed run may
#: differ from an uninterrupted run's in the last digits, or where DDN met a zero gradient).
_MAY_CHANGE = ("attack_batch", "batch_size", "device", "channels_last", "max_batch_bytes")


def _eps_key(eps: float) -> str:
    return repr(float(eps))


def attack_columns(eps: Sequence[float], attack: str) -> tuple[str, ...]:
    """The header of an attack result file: ``idx label predict radius correct time``, then per eps
    ``pgd@EPS`` (prediction at the PGD point; -1 = abstain) and ``pgd_l2@EPS`` (its distance),
    ``ddn`` / ``ddn_l2`` (the same for DDN's point — for a smoothed model, the point PREDICT
    confirmed, see :data:`DDN_CONFIRM_STEPS`) and ``min_l2`` (``ddn_l2`` where that prediction is
    wrong, else inf), then ``m n n0 alpha noise sigma steps seconds``."""
    cols = ["idx", "label", "predict", "radius", "correct", "time"]
    if attack in ("pgd", "both"):
        for e in eps:
            cols += [f"pgd@{_eps_key(e)}", f"pgd_l2@{_eps_key(e)}"]
    if attack in ("ddn", "both"):
        cols += ["ddn", "ddn_l2", "min_l2"]
    return (*cols, "m", "n", "n0", "alpha", "noise", "sigma", "steps", "seconds")


def l2_radius(noise: Noise, p_lower: Tensor, *, dim: int) -> Tensor:
    """A certified l2 radius from a lower bound on pA: the noise's own l2 radius, or the largest l2
    ball inside its certified ball of another norm — ‖δ‖∞ <= ‖δ‖₂ puts the l2 ball of radius r
    inside the linf ball of radius r, ‖δ‖₁ <= √d‖δ‖₂ puts the l2 ball of radius r/√d inside the
    l1 ball of radius r. 0 where nothing is certified."""
    radii = []
    for norm in noise.norms:
        r = noise.radius(p_lower, norm=norm, dim=dim).double()
        radii.append(r / math.sqrt(dim) if norm == "l1" else r)
    return torch.stack(radii).max(dim=0).values


class _PerInputSoft(SmoothedSoft):
    """SmoothedSoft whose row i draws its noise from its own generator i: a row's draws do not
    depend on which other inputs share the batch."""

    def __init__(self, base: nn.Module, noise: Noise, *, m: int, generators: Sequence[torch.Generator]) -> None:
        super().__init__(base, noise, m=m)
        self.generators = list(generators)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} generators for a batch of {x.shape[0]}")
        deltas = torch.stack([
            self.noise.sample((self.m, *x.shape[1:]), generator=g, device=x.device, dtype=x.dtype)
            for g in self.generators
        ], dim=1)  # fmt: skip
        return smoothed_log_probs(self.base, x, deltas)


def _sub_seed(seed: int, idx: int, *keys: int) -> int:
    """An independent 63-bit stream for one purpose (keys) of input ``idx``; :func:`input_seed`
    (the certificate's stream) hashes ``[seed, idx]`` alone, so these never coincide with it."""
    return int(np.random.SeedSequence([int(seed), int(idx), *keys]).generate_state(1, np.uint64)[0] >> 1)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def attack_dataset(
    model: nn.Module | SmoothedClassifier,
    dataset: Dataset,
    out: str | os.PathLike[str],
    *,
    attack: str = "both",
    eps: Sequence[float] = (0.25, 0.5, 1.0),
    steps: int = 100,
    m: int = 8,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int | str = 1000,
    attack_batch: int = 32,
    seed: int = 0,
    indices: Iterable[int] | None = None,
    config: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Attack every selected input of ``dataset``, append one row each to ``out`` (see
    :func:`attack_columns`) and summarise the selected rows (:func:`summarize_attack`).

    Args:
        model: a plain classifier ([B, ...] in [0, 1] → logits; put in eval mode, with a warning,
            if it is training) or a :class:`SmoothedClassifier`, attacked through its soft version
            with ``m`` fresh draws per step (in fp32, whatever its ``precision``; CERTIFY and
            PREDICT use its precision).
        attack: "pgd" (:func:`~smoothcert.attacks.pgd_l2` at each of ``eps``, ``steps`` steps of
            length 2·eps/steps from x), "ddn" (:func:`~smoothcert.attacks.ddn`, ``steps`` steps,
            unbounded: minimal distances; on a smoothed model its perturbation is then lengthened
            by up to 1.05^:data:`DDN_CONFIRM_STEPS` until PREDICT confirms it) or "both".
        eps: l2 budgets of PGD, and the radii at which the summary reports accuracies.
        n0, n, alpha, batch_size: smoothed models only: CERTIFY's selection and estimation draws
            and failure probability, PREDICT's draws (n) and level (alpha) at each attacked point,
            and noisy rows per forward pass (or "auto").
        attack_batch: inputs attacked together (a smoothed model's forward passes then have
            m·attack_batch rows); their rows are written when the batch is done.
        seed: per-input streams: the certificate uses ``input_seed(seed, idx)`` (as
            :func:`~smoothcert.evaluate.certify_dataset` does), the attack's noise and each
            PREDICT their own independent streams of ``(seed, idx)``.
        indices: inputs to attack (default: all), e.g. from :func:`~smoothcert.evaluate.select_indices`.
        config: run facts (dataset, checkpoint hash, ...) added to the guarded configuration.
    Returns:
        :func:`summarize_attack` of the rows of ``indices`` (including rows kept from an earlier
        run of the same configuration).
    Raises:
        smoothcert.results.ConfigMismatchError: ``out`` holds rows of another configuration.
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
    eps = [float(e) for e in eps]
    if any(not math.isfinite(e) or e < 0 for e in eps):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    if attack != "ddn" and not eps:
        raise ValueError("PGD needs at least one eps")
    if len(set(eps)) != len(eps):
        raise ValueError(f"eps has repeated values: {eps}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if attack_batch < 1:
        raise ValueError(f"attack_batch must be >= 1, got {attack_batch}")
    smoothed = model if isinstance(model, SmoothedClassifier) else None
    if smoothed is not None:
        check_alpha(alpha)
        check_sample_sizes(n=n, n0=n0, batch_size=batch_size)
        if m < 1:
            raise ValueError(f"m (noise draws per attack step) must be >= 1, got {m}")
        base = smoothed.base
        run: dict[str, Any] = {"smoothed": True, "noise": smoothed.noise.name, "sigma": smoothed.noise.sigma,
                               "num_classes": smoothed.num_classes, "m": m, "n0": n0, "n": n, "alpha": alpha,
                               "batch_size": batch_size, **smoothed.settings()}
    else:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or a SmoothedClassifier, got {type(model).__name__}")
        base = ensure_eval(model)
        run = {"smoothed": False}
    device = model_device(base)
    run.update({"attack": attack, "eps": eps, "steps": steps, "seed": seed, "attack_batch": attack_batch,
                "device": device.type, **(config or {})})
    columns = attack_columns(eps, attack)
    selected = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    with ResultWriter(out, config=run, columns=columns, ignore=_MAY_CHANGE) as writer:
        todo = [i for i in selected if i not in writer.done]
        bar = tqdm(total=len(todo), desc="attack", unit="input", disable=not progress)
        for start in range(0, len(todo), attack_batch):
            chunk = todo[start:start + attack_batch]
            for row in _attack_chunk(base, smoothed, dataset, chunk, device, attack=attack, eps=eps, steps=steps,
                                     m=m, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed):
                writer.write(row)
            bar.update(len(chunk))
        bar.close()
    return summarize_attack(out, indices=selected, eps=eps)


def _attack_chunk(
    base: nn.Module,
    smoothed: SmoothedClassifier | None,
    dataset: Dataset,
    chunk: list[int],
    device: torch.device,
    *,
    attack: str,
    eps: list[float],
    steps: int,
    m: int,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int | str,
    seed: int,
) -> list[dict[str, Any]]:
    items = [dataset[i] for i in chunk]
    x = as_batch(torch.stack([torch.as_tensor(it[0]) for it in items])).to(device)
    y = torch.stack([torch.as_tensor(it[1]) for it in items]).long().view(-1).to(device)
    labels = y.tolist()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = [{"idx": i, "label": labels[j]} for j, i in enumerate(chunk)]

    if smoothed is None:
        def score(x_adv: Tensor, key: int) -> list[int]:
            with torch.no_grad():
                return base(x_adv).argmax(dim=1).tolist()

        target: nn.Module = base
        clean = score(x, 0)
        radius = [math.nan] * len(chunk)
    else:
        dim = math.prod(x.shape[1:])

        def score(x_adv: Tensor, key: int) -> list[int]:
            return [int(smoothed.predict(x_adv[j], n=n, alpha=alpha, batch_size=batch_size,
                                         generator=_sub_seed(seed, i, 2, key))[0]) for j, i in enumerate(chunk)]

        target = _PerInputSoft(base, smoothed.noise, m=m,
                               generators=[_generator(_sub_seed(seed, i, 1), device) for i in chunk])
        clean, radius = [], []
        for j, i in enumerate(chunk):
            cert = smoothed.certify(x[j], n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                                    generator=input_seed(seed, i))
            clean.append(int(cert.prediction[0]))
            radius.append(float(l2_radius(smoothed.noise, cert.p_lower, dim=dim)[0])
                          if clean[-1] != ABSTAIN else 0.0)
    for j, row in enumerate(rows):
        row.update(predict=clean[j], radius=radius[j], correct=int(clean[j] == labels[j]))

    if attack in ("pgd", "both"):
        for k, e in enumerate(eps):
            x_adv = pgd_l2(target, x, y, eps=e, steps=steps)
            pred, l2 = score(x_adv, 1 + k), l2_norms(x_adv - x).tolist()
            for j, row in enumerate(rows):
                row[f"pgd@{_eps_key(e)}"], row[f"pgd_l2@{_eps_key(e)}"] = pred[j], l2[j]
    if attack in ("ddn", "both"):
        x_adv = ddn(target, x, y, steps=steps, generator=_generator(_sub_seed(seed, chunk[0], 3), device))
        if smoothed is None:
            pred, l2 = score(x_adv, 0), l2_norms(x_adv - x).tolist()
        else:
            pred, l2 = _confirm(smoothed, x, x_adv, labels, chunk, n=n, alpha=alpha, batch_size=batch_size, seed=seed)
        for j, row in enumerate(rows):
            row.update(ddn=pred[j], ddn_l2=l2[j], min_l2=l2[j] if pred[j] != labels[j] else math.inf)

    seconds = (time.perf_counter() - t0) / len(chunk)
    noise = smoothed.noise if smoothed is not None else None
    for row in rows:
        row.update(time=format_time(seconds), seconds=seconds, steps=steps,
                   m=m if noise else 0, n=n if noise else 0, n0=n0 if noise else 0, alpha=alpha if noise else 0.0,
                   noise=noise.name if noise else "none", sigma=noise.sigma if noise else 0.0)
    return rows


#: DDN on a smoothed model keeps the smallest iterate its noisy soft estimate called adversarial,
#: which tends to sit just inside g's boundary (on the embedded-MNIST quickstart model, 100 DDN
#: steps with m = 8: PREDICT confirmed 3 of 100 such points; at 20 steps, 49). So its perturbation
#: is scaled by (1 + DDN's gamma)^k, k = 0 .. this, until PREDICT confirms (up to 1.28x the length).
DDN_CONFIRM_STEPS = 5
_DDN_GAMMA = 0.05  # ddn's default norm adaptation factor


def _confirm(
    smoothed: SmoothedClassifier,
    x: Tensor,
    x_adv: Tensor,
    labels: list[int],
    chunk: list[int],
    *,
    n: int,
    alpha: float,
    batch_size: int | str,
    seed: int,
) -> tuple[list[int], list[float]]:
    """Per input: PREDICT along DDN's perturbation, scaled by 1.05^k (clipped to [0, 1]), at the
    first k whose answer is not the label (abstain included), or at the last k; (answers, distances)."""
    preds, dists = [], []
    for j, i in enumerate(chunk):
        delta = x_adv[j] - x[j]
        tries = DDN_CONFIRM_STEPS + 1 if bool(delta.any()) else 1
        for k in range(tries):
            point = (x[j] + (1 + _DDN_GAMMA) ** k * delta).clamp(0, 1)
            pred = int(smoothed.predict(point, n=n, alpha=alpha, batch_size=batch_size,
                                        generator=_sub_seed(seed, i, 4, k))[0])
            if pred != labels[j]:
                break
        preds.append(pred)
        dists.append(float(l2_norms((point - x[j]).unsqueeze(0))[0]))
    return preds, dists


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
    """Summary of attack rows (a result file or row dicts with the :func:`attack_columns` keys).

    Per input, clean correct = ``predict == label`` (for a smoothed model, the certified class;
    abstain is wrong). At each radius eps (default: the PGD grid of the rows):

    - ``adversarial_accuracy``: clean correct, the PGD point at eps (if run) still classified
      ``label`` (PREDICT abstaining counts as wrong), and no DDN adversarial within eps
      (``min_l2 > eps``, if run) — robust against every attack run;
    - ``certified_accuracy`` (smoothed rows): correct and certified radius >= eps;
    - ``certified_abstained`` (smoothed): inputs certified at eps where PREDICT abstained at an
      attacked point within eps — the only way, besides a violation, for empirical accuracy to fall
      below certified accuracy (the point sits near the edge of g's region, where pA ≈ 1/2).

    ``violations``: for smoothed rows, every attacked point (PGD or DDN) where PREDICT returned a
    class (not abstain) other than the certified class at distance < certified radius. Each is a
    dict ``idx, attack, eps (None for DDN), l2, radius, certified, predicted``. There must be none.

    ``median_l2`` / ``mean_l2``: of ``min_l2`` over all inputs (inf where DDN found nothing, so the
    median may be inf) / over inputs where DDN found an adversarial (nan if none); ``ddn_found``:
    the fraction of those inputs. Accuracies are nan for zero rows.
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
        raise ValueError(f"no attack was run at eps {sorted(set(radii) - set(grid))}: PGD ran at {grid}, DDN not at all")
    smoothed = any(float(r["radius"]) == float(r["radius"]) for r in data)  # radius is nan for plain models

    def f(r: Mapping[str, Any], key: str) -> float:
        return float(r[key])

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
                robust = robust and f(r, "min_l2") > e
                if f(r, "ddn_l2") <= e:
                    points.append((int(r["ddn"]), f(r, "ddn_l2")))
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
    summary["violations"] = _violations(data, grid, has_ddn) if smoothed else []
    return summary


def _violations(data: Sequence[Mapping[str, Any]], grid: list[float], has_ddn: bool) -> list[dict[str, Any]]:
    found = []
    for r in data:
        certified, radius = int(r["predict"]), float(r["radius"])
        if certified == ABSTAIN:
            continue
        points = [("pgd", e, int(r[f"pgd@{_eps_key(e)}"]), float(r[f"pgd_l2@{_eps_key(e)}"])) for e in grid]
        if has_ddn:
            points.append(("ddn", None, int(r["ddn"]), float(r["ddn_l2"])))
        for name, e, pred, l2 in points:
            if pred != ABSTAIN and pred != certified and l2 < radius:
                found.append({"idx": int(r["idx"]), "attack": name, "eps": e, "l2": l2, "radius": radius,
                              "certified": certified, "predicted": pred})
    return found


def summary_table(summary: Mapping[str, Any]) -> str:
    """A markdown table of :func:`summarize_attack`'s accuracies per eps, then one line each for
    clean accuracy, DDN distances and violations."""
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
    if "median_l2" in summary:
        lines.append(f"minimal adversarial l2 (DDN): median {summary['median_l2']:.4g}, "
                     f"mean {summary['mean_l2']:.4g} over the {summary['ddn_found']:.1%} of inputs where one was found")
    if smoothed:
        v = summary["violations"]
        lines.append(f"violations (another class inside the certified radius): {len(v)}"
                     + ("".join(f"\n  idx {d['idx']} {d['attack']}"
                                + (f" eps={d['eps']:g}" if d["eps"] is not None else "")
                                + f": l2 {d['l2']:.4g} < radius {d['radius']:.4g}, "
                                f"class {d['predicted']} != certified {d['certified']}" for d in v)))
    return "\n".join(lines)
