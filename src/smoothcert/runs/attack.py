"""Empirical robustness over a dataset: l2 attacks on plain or smoothed classifiers, one row per input.

For a plain classifier f, :func:`attack_dataset` runs :func:`~smoothcert.attacks.pgd_l2` at each eps
of a grid and/or :func:`~smoothcert.attacks.ddn`, and scores f at the attacked points.

For a :class:`~smoothcert.smooth.SmoothedClassifier` g it first CERTIFIES the clean input (the same
certificate as ``certify_dataset`` with the same seed and batch size), attacks the soft smoothed
classifier with m fresh noise draws per step (:class:`~smoothcert.attacks.SmoothedSoft`) away from
the certified class (away from the label where CERTIFY abstained), and scores each attacked point
with PREDICT (abstain counts as wrong).

Randomized smoothing guarantees that no attack can change g inside the certified radius, so a point
where PREDICT returns a class other than the certified one at distance < radius is a **violation**.
A violation is not by itself proof of a bug: per input it needs only one wrong answer among one
CERTIFY and up to ``len(eps) + DDN_CONFIRM_STEPS + 1`` PREDICTs, each wrong with probability <= alpha,
so the expected number of spurious violations over N certified inputs is at most
N·(1 + len(eps) + DDN_CONFIRM_STEPS + 1)·alpha (≈ 5 for 500 inputs, 3 eps, alpha = 0.001).
Every violation is therefore **re-checked** with fresh draws: CERTIFY again (its own stream,
``recheck_n`` draws, level alpha/:data:`RECHECK_ALPHA_DIVISOR`) and PREDICT again at the point (same
``recheck_n`` and level). A violation that survives (the re-certified class is the same, its radius
still exceeds the distance, and the re-PREDICT gives another class) is **confirmed**. The re-check's
streams are independent of how the point was found, so the expected number of inputs with a spurious
confirmed violation is at most Σ (1 + violations of the input)·alpha/100 over the re-checked inputs.
A confirmed violation is the bug signal.

What the numbers bound: empirical robust accuracy is an upper bound on the robust accuracy of the
smoothed classifier *as answered by PREDICT* (abstain = wrong, each answer wrong with probability
<= alpha) — not of g itself, which it can undercut where PREDICT abstains near g's boundary;
certified accuracy is a lower bound on g's robust accuracy with probability >= 1 − alpha per input.
Where empirical accuracy falls below certified accuracy the rows show why (a violation, or PREDICT
abstaining at an attacked point near the edge of its certified ball, which counts as wrong).

Radii are l2. For noises that certify another norm (Laplace: l1; uniform: l1 and linf) the ``radius``
column is the largest l2 ball inside the certified ball (:func:`l2_radius`: r_l1/√d, r_linf), far
smaller than the l1 radius of ``certify_dataset``; ``radius_native`` / ``native_norm`` keep the
certificate in its own norm.

Rows are written as they are produced (:class:`~smoothcert.results.ResultWriter`: resumable, guarded by
a configuration sidecar); the first six columns are the ``idx label predict radius correct time``
of certification logs, so ``smoothcert analyze`` reads a smoothed run's certified accuracy from it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..analysis.attack import AttackSummary, find_violations, summarize_attack, summary_table
from ..attacks import SmoothedSoft, ddn, l2_norms, pgd_l2, smoothed_log_probs
from ..certificate import ABSTAIN
from ..checks import as_batch, check_sample_sizes, ensure_eval, model_device
from ..errors import InputError, InputTypeError
from ..noise import Noise
from ..results import (
    ATTACKS,
    DDN_CONFIRM_STEPS,
    MAY_CHANGE,
    RECHECK_ALPHA_DIVISOR,
    ResultWriter,
    attack_columns,
    eps_key,
    format_time,
)
from ..rng import input_seed, sub_seed
from ..smooth import SmoothedClassifier
from ..stats import check_alpha

__all__ = [
    "ATTACKS",
    "DDN_CONFIRM_STEPS",
    "RECHECK_ALPHA_DIVISOR",
    "attack_columns",
    "attack_dataset",
    "l2_radius",
    "summarize_attack",
    "summary_table",
]


def l2_radius(noise: Noise, p_lower: Tensor, *, dim: int) -> Tensor:
    """A certified l2 radius [B] (float64) from lower bounds ``p_lower`` [B] on pA: the noise's own
    l2 radius, or the largest l2 ball inside its certified ball of another norm (r_l1/√d, r_linf;
    :meth:`~smoothcert.noise.Noise.converted_radius`), the largest over the noise's norms. 0 where
    nothing is certified (pA <= 1/2)."""
    return noise.converted_radius(p_lower, norm="l2", dim=dim)


class _PerInputSoft(SmoothedSoft):
    """SmoothedSoft whose row i draws its noise from its own generator i: a row's draws do not
    depend on which other inputs share the batch."""

    def __init__(self, base: nn.Module, noise: Noise, *, m: int, generators: Sequence[torch.Generator]) -> None:
        super().__init__(base, noise, m=m)
        self.generators = list(generators)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] != len(self.generators):
            raise InputError(f"{len(self.generators)} generators for a batch of {x.shape[0]}")
        deltas = torch.stack([
            self.noise.sample((self.m, *x.shape[1:]), generator=g, device=x.device, dtype=x.dtype)
            for g in self.generators
        ], dim=1)  # fmt: skip
        return smoothed_log_probs(self.base, x, deltas)


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
    n_predict: int | None = None,
    recheck_n: int | None = None,
) -> AttackSummary:
    """Attack every selected input of ``dataset``, append one row each to ``out`` (see
    :func:`attack_columns`) and summarise the selected rows (:func:`summarize_attack`).

    Args:
        model: a plain classifier ([B, ...] in [0, 1] → logits; put in eval mode, with a warning,
            if it is training) or a :class:`SmoothedClassifier`, attacked through its soft version
            with ``m`` fresh draws per step (in fp32, whatever its ``precision``; CERTIFY and
            PREDICT use its precision). A smoothed model is attacked away from the certified class
            (from the label where CERTIFY abstained), so every certificate is probed; for inputs
            certified with the label — the only ones that can count as robust — that is the label.
        attack: "pgd" (:func:`~smoothcert.attacks.pgd_l2` at each of ``eps``, ``steps`` steps of
            length 2·eps/steps from x), "ddn" (:func:`~smoothcert.attacks.ddn`, ``steps`` steps,
            unbounded: minimal distances; on a smoothed model its perturbation is then lengthened
            by up to 1.05^:data:`DDN_CONFIRM_STEPS` until PREDICT gives a class other than the
            attacked one, abstentions passed over) or "both".
        eps: l2 budgets of PGD, and the radii at which the summary reports accuracies.
        n0, n, alpha, batch_size: smoothed models only: CERTIFY's selection and estimation draws
            and failure probability (also PREDICT's level at each attacked point), and noisy rows
            per forward pass (or "auto").
        n_predict: PREDICT's draws at each attacked point (default ``n``). Cost per input: one
            CERTIFY (n0 + n draws), then ``n_predict`` draws at each of up to
            ``len(eps) + DDN_CONFIRM_STEPS + 1`` attacked points — with n_predict = n and the CLI
            defaults (3 eps) up to 9·n, about 9 certifications; plus the attacks' own
            ``steps``·m forward and backward passes per eps (and for DDN).
        recheck_n: draws of the re-check of a violation (default 4·n): CERTIFY again (n0 +
            recheck_n) and PREDICT again at each violating point (recheck_n each), both at level
            alpha/:data:`RECHECK_ALPHA_DIVISOR` with fresh streams. Only inputs with a violation pay it.
        attack_batch: inputs attacked together (a smoothed model's forward passes then have
            m·attack_batch rows); their rows are written when the batch is done.
        seed: per-input streams: the certificate uses ``input_seed(seed, idx)`` (as
            :func:`~smoothcert.runs.certify.certify_dataset` does), the attack's noise, each PREDICT
            and each re-check their own independent streams of ``(seed, idx)``.
        indices: inputs to attack (default: all), e.g. from :func:`~smoothcert.runs.certify.select_indices`.
        config: run facts (dataset, checkpoint hash, ...) added to the guarded configuration.
    Returns:
        :func:`summarize_attack` of the rows of ``indices`` (including rows kept from an earlier
        run of the same configuration): ``violations`` (each may be a false alarm, see the module
        docstring for the bound) and ``confirmed_violations`` (the bug signal).
    Raises:
        smoothcert.results.ConfigMismatchError: ``out`` holds rows of another configuration.
    """
    if attack not in ATTACKS:
        raise InputError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
    eps = [float(e) for e in eps]
    if any(not math.isfinite(e) or e < 0 for e in eps):
        raise InputError(f"eps must be finite and >= 0, got {eps}")
    if attack != "ddn" and not eps:
        raise InputError("PGD needs at least one eps")
    if len(set(eps)) != len(eps):
        raise InputError(f"eps has repeated values: {eps}")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if attack_batch < 1:
        raise InputError(f"attack_batch must be >= 1, got {attack_batch}")
    n_predict = n if n_predict is None else n_predict
    recheck_n = 4 * n if recheck_n is None else recheck_n
    smoothed = model if isinstance(model, SmoothedClassifier) else None
    if smoothed is not None:
        check_alpha(alpha)
        check_sample_sizes(n=n, n0=n0, batch_size=batch_size)
        check_sample_sizes(n=recheck_n, n0=n0, batch_size=batch_size)
        if n_predict < 1:
            raise InputError(f"n_predict must be >= 1, got {n_predict}")
        if m < 1:
            raise InputError(f"m (noise draws per attack step) must be >= 1, got {m}")
        base = smoothed.base
        run: dict[str, Any] = {"smoothed": True, "noise": smoothed.noise.name, "sigma": smoothed.noise.sigma,
                               "num_classes": smoothed.num_classes, "m": m, "n0": n0, "n": n, "alpha": alpha,
                               "n_predict": n_predict, "recheck_n": recheck_n,
                               "recheck_alpha": alpha / RECHECK_ALPHA_DIVISOR, "batch_size": batch_size,
                               **smoothed.settings()}
    else:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be a torch.nn.Module or a SmoothedClassifier, got {type(model).__name__}")
        base = ensure_eval(model)
        run = {"smoothed": False}
    device = model_device(base)
    run.update({"attack": attack, "eps": eps, "steps": steps, "seed": seed, "attack_batch": attack_batch,
                "device": device.type, **(config or {})})
    columns = attack_columns(eps, attack)
    selected = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    settings = _Settings(attack=attack, eps=eps, steps=steps, m=m, n0=n0, n=n, n_predict=n_predict,
                         recheck_n=recheck_n, alpha=alpha, batch_size=batch_size, seed=seed)
    with ResultWriter(out, config=run, columns=columns, ignore=MAY_CHANGE) as writer:
        todo = [i for i in selected if i not in writer.done]
        bar = tqdm(total=len(todo), desc="attack", unit="input", disable=not progress)
        for start in range(0, len(todo), attack_batch):
            chunk = todo[start:start + attack_batch]
            for row in _attack_chunk(base, smoothed, dataset, chunk, device, settings):
                writer.write(row)
            bar.update(len(chunk))
        bar.close()
    return summarize_attack(out, indices=selected, eps=eps)


@dataclass(frozen=True)
class _Settings:
    attack: str
    eps: list[float]
    steps: int
    m: int
    n0: int
    n: int
    n_predict: int
    recheck_n: int
    alpha: float
    batch_size: int | str
    seed: int


def _attack_chunk(
    base: nn.Module,
    smoothed: SmoothedClassifier | None,
    dataset: Dataset,
    chunk: list[int],
    device: torch.device,
    s: _Settings,
) -> list[dict[str, Any]]:
    items = [dataset[i] for i in chunk]
    x = as_batch(torch.stack([torch.as_tensor(it[0]) for it in items])).to(device)
    y = torch.stack([torch.as_tensor(it[1]) for it in items]).long().view(-1).to(device)
    labels = y.tolist()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = [{"idx": i, "label": labels[j]} for j, i in enumerate(chunk)]
    dim = math.prod(x.shape[1:])

    if smoothed is None:
        def score(x_adv: Tensor, key: int) -> list[int]:
            with torch.no_grad():
                return base(x_adv).argmax(dim=1).tolist()

        target: nn.Module = base
        clean = score(x, 0)
        radius = native = [math.nan] * len(chunk)
        native_norm = "l2"
        y_attack = y
    else:
        def score(x_adv: Tensor, key: int) -> list[int]:
            return [int(smoothed.predict(x_adv[j], n=s.n_predict, alpha=s.alpha, batch_size=s.batch_size,
                                         generator=sub_seed(s.seed, i, 2, key))[0]) for j, i in enumerate(chunk)]

        target = _PerInputSoft(base, smoothed.noise, m=s.m,
                               generators=[_generator(sub_seed(s.seed, i, 1), device) for i in chunk])
        clean, radius, native = [], [], []
        native_norm = smoothed.noise.default_norm
        for j, i in enumerate(chunk):
            cert = smoothed.certify(x[j], n0=s.n0, n=s.n, alpha=s.alpha, batch_size=s.batch_size,
                                    generator=input_seed(s.seed, i))
            clean.append(int(cert.prediction[0]))
            certified = clean[-1] != ABSTAIN
            radius.append(float(l2_radius(smoothed.noise, cert.p_lower, dim=dim)[0]) if certified else 0.0)
            native.append(float(cert.radius[0]))
            native_norm = cert.norm
        # Probe the certificate: attack away from the certified class (the label where CERTIFY abstained).
        c_a = torch.tensor(clean, device=device)
        y_attack = torch.where(c_a != ABSTAIN, c_a, y)
    for j, row in enumerate(rows):
        row.update(predict=clean[j], radius=radius[j], correct=int(clean[j] == labels[j]))

    points: dict[str, Tensor] = {}  # attacked points by column key, for the re-check
    if s.attack in ("pgd", "both"):
        for k, e in enumerate(s.eps):
            x_adv = pgd_l2(target, x, y_attack, eps=e, steps=s.steps,
                           generator=_generator(sub_seed(s.seed, chunk[0], 7, k), device))
            pred, l2 = score(x_adv, 1 + k), l2_norms(x_adv - x).tolist()
            key = f"pgd@{eps_key(e)}"
            points[key] = x_adv
            for j, row in enumerate(rows):
                row[key], row[f"pgd_l2@{eps_key(e)}"] = pred[j], l2[j]
    if s.attack in ("ddn", "both"):
        x_adv = ddn(target, x, y_attack, steps=s.steps, generator=_generator(sub_seed(s.seed, chunk[0], 3), device))
        if smoothed is None:
            pred, l2, abstain_l2 = score(x_adv, 0), l2_norms(x_adv - x).tolist(), [math.inf] * len(chunk)
        else:
            x_adv, pred, l2, abstain_l2 = _confirm(smoothed, x, x_adv, y_attack.tolist(), chunk, n=s.n_predict,
                                                   alpha=s.alpha, batch_size=s.batch_size, seed=s.seed)
        points["ddn"] = x_adv
        for j, row in enumerate(rows):
            if clean[j] not in (labels[j], ABSTAIN):
                min_l2 = 0.0  # the clean input already gets another class
            else:
                min_l2 = l2[j] if pred[j] not in (labels[j], ABSTAIN) else math.inf
            row.update(ddn=pred[j], ddn_l2=l2[j], min_l2=min_l2, ddn_abstain_l2=abstain_l2[j])

    for j, row in enumerate(rows):
        row.update(recheck_radius=math.nan, confirmed="-")
        if smoothed is not None:
            _recheck(smoothed, x[j], row, points, j, s, dim=dim)

    seconds = (time.perf_counter() - t0) / len(chunk)
    noise = smoothed.noise if smoothed is not None else None
    for j, row in enumerate(rows):
        row.update(time=format_time(seconds), seconds=seconds, steps=s.steps,
                   m=s.m if noise else 0, n=s.n if noise else 0, n0=s.n0 if noise else 0,
                   n_predict=s.n_predict if noise else 0, recheck_n=s.recheck_n if noise else 0,
                   alpha=s.alpha if noise else 0.0, noise=noise.name if noise else "none",
                   sigma=noise.sigma if noise else 0.0, norm="l2", native_norm=native_norm,
                   radius_native=native[j])
    return rows


def _recheck(
    smoothed: SmoothedClassifier, x: Tensor, row: dict[str, Any], points: Mapping[str, Tensor], j: int,
    s: _Settings, *, dim: int,
) -> None:
    """Re-check the violations of one row with fresh streams at level alpha/RECHECK_ALPHA_DIVISOR:
    CERTIFY x again and PREDICT again at each violating point; fill ``recheck_radius`` and
    ``confirmed``. Rows without a violation draw nothing."""
    found = find_violations([row], [e for e in s.eps if f"pgd@{eps_key(e)}" in row], "ddn" in row)
    if not found:
        return
    idx, alpha = int(row["idx"]), s.alpha / RECHECK_ALPHA_DIVISOR
    cert = smoothed.certify(x, n0=s.n0, n=s.recheck_n, alpha=alpha, batch_size=s.batch_size,
                            generator=sub_seed(s.seed, idx, 6))
    same = int(cert.prediction[0]) == int(row["predict"])
    radius = float(l2_radius(smoothed.noise, cert.p_lower, dim=dim)[0]) if same else 0.0
    keys = list(points)
    confirmed = []
    for v in found:
        key = v.key
        if not v.l2 < radius:  # the fresh certificate does not reach the point: nothing to re-test
            continue
        answer = int(smoothed.predict(points[key][j], n=s.recheck_n, alpha=alpha, batch_size=s.batch_size,
                                      generator=sub_seed(s.seed, idx, 5, keys.index(key)))[0])
        if answer not in (ABSTAIN, int(row["predict"])):
            confirmed.append(key)
    row.update(recheck_radius=radius, confirmed=";".join(confirmed) or "-")


_DDN_GAMMA = 0.05  # ddn's default norm adaptation factor


def _confirm(
    smoothed: SmoothedClassifier,
    x: Tensor,
    x_adv: Tensor,
    attacked: list[int],
    chunk: list[int],
    *,
    n: int,
    alpha: float,
    batch_size: int | str,
    seed: int,
) -> tuple[Tensor, list[int], list[float], list[float]]:
    """Per input: PREDICT along DDN's perturbation, scaled by 1.05^k (clipped to [0, 1]), k = 0 ..
    DDN_CONFIRM_STEPS, stopping at the first answer that is a class other than the attacked one;
    abstentions do not stop it (an abstention near the boundary is no adversarial example of g).
    Returns (points [B, ...]: the stopping point, or the last; their answers; their distances; the
    distance of the first point where PREDICT abstained, inf if none)."""
    finals, preds, dists, abstains = [], [], [], []
    for j, i in enumerate(chunk):
        delta = x_adv[j] - x[j]
        tries = DDN_CONFIRM_STEPS + 1 if bool(delta.any()) else 1
        abstain_l2 = math.inf
        for k in range(tries):
            point = (x[j] + (1 + _DDN_GAMMA) ** k * delta).clamp(0, 1)
            pred = int(smoothed.predict(point, n=n, alpha=alpha, batch_size=batch_size,
                                        generator=sub_seed(seed, i, 4, k))[0])
            dist = float(l2_norms((point - x[j]).unsqueeze(0))[0])
            if pred == ABSTAIN:
                abstain_l2 = min(abstain_l2, dist)
            elif pred != attacked[j]:
                break
        finals.append(point)
        preds.append(pred)
        dists.append(dist)
        abstains.append(abstain_l2)
    return torch.stack(finals), preds, dists, abstains
