"""Randomized smoothing for ×2 super-resolution: the thesis's Tables 1–2, an image grid, certified curves.

Models (the thesis's U-Net, channels 8/16/32/64/128): standard training, Gaussian noise augmentation
(sigma_f in --sigmas-f) and adversarial training (l2 PGD at --adv-eps-rel). Standard training runs
--steps Adam steps from scratch; the others are fine-tuned from it for --ft-steps (a CPU budget; the
thesis trained every model from scratch on Mini-ImageNet). Training patches: ../shared/data/photos
(minus --val-photos) and scikit-image's bundled photos; validation: crops of the held-out photos;
test: the 20 ImageNet images of ../shared/data/samples, centre crops of --test-crop.

Evaluation per model and relative budget eps_rel (eps = sqrt(d)·eps_rel, thesis eq. 9):
  * base models: l2 PGD on ‖f(y + e) − x‖² (eq. 10), --pgd-steps steps;
  * smoothed models g(y) = mean of f(y + δ), δ ~ N(0, sigma_g²): sigma_g chosen per model and budget on
    the validation crops (best MSE under the transfer attack) from --sigma-g-factors × sigma_f (0: the
    base model without smoothing); then on
    the test set under two attacks: PGD on the base model (transfer) and EOT-PGD on the smoothed
    estimate with --eot-samples draws per step (adaptive); the tables report the worse of the two.
Certified (one model, --cert-sigma): median bounds and center smoothing on --cert-images test images
for absolute l2 radii --cert-eps; certified worst-case PSNR beside the PSNR of the attacked
median/centre (EOT-PGD at that radius), and a check that every attacked output is inside its set.

Writes into --workdir: one checkpoint per model (written every --save-every steps), results.json
(one entry per finished (model, budget) cell and certified radius), tables.md, grid.png,
certified.png; prints one JSON line per result. Rerunning the same command resumes: finished
models are loaded, an interrupted one continues from its last checkpoint (exactly: the training
loop's resume), and finished cells are read back rather than recomputed. A rerun may ADD
--adv-eps-rel budgets (new models, trained and evaluated alone) and --sigma-g-factors (each smoothed
cell scores only the new factors on the validation crops and is recomputed only if one of them wins:
the cells equal a fresh run's); any other change of a result-bearing option is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from smoothcert.attacks_regression import eot_pgd_regression, pgd_regression, relative_eps
from smoothcert.data.superres import center_crop, degrade, load_folder, random_crops, skimage_photos
from smoothcert.models.unet import UNet
from smoothcert.noise import get_noise
from smoothcert.regression import (
    SmoothedRegressor,
    center_from_draws,
    certified_psnr,
    median_bounds_from_draws,
    mse,
    psnr,
    select_sigma_g,
    smoothed_mean,
    ssim,
    worst_mse_box,
)
from smoothcert.train.superres import SRTrainConfig, train_superres

BUDGETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
#: The thesis's Tables 1–2 (Mini-ImageNet, 160×160 crops): (MSE, PSNR, SSIM) per eps_rel.
THESIS = {
    "std": [(0.0030, 25.29, 0.8562), (0.0052, 22.87, 0.7810), (0.0071, 21.53, 0.7159), (0.0118, 19.31, 0.6035),
            (0.0187, 17.30, 0.5859), (0.305, 15.17, 0.5354)],
    "noise0.1": [(0.0028, 25.55, 0.8140), (0.0032, 25.04, 0.7976), (0.0038, 24.26, 0.7776), (0.0064, 21.94, 0.7115),
                 (0.0112, 19.55, 0.5868), (0.0210, 16.87, 0.3725)],
    "noise0.2": [(0.0033, 24.87, 0.7922), (0.0039, 24.16, 0.7716), (0.0048, 23.26, 0.7482), (0.0069, 21.66, 0.6873),
                 (0.0103, 19.87, 0.6080), (0.0183, 17.41, 0.4595)],
    "noise0.5": [(0.0037, 24.33, 0.7462), (0.0039, 24.14, 0.7390), (0.0041, 23.89, 0.7302), (0.0051, 22.95, 0.6979),
                 (0.0074, 21.32, 0.6402), (0.0131, 18.85, 0.5349)],
    "adv0.02": [(0.0031, 25.13, 0.8242), (0.0034, 24.69, 0.8047), (0.0039, 24.14, 0.7766), (0.0060, 22.24, 0.6714),
                (0.0099, 20.07, 0.5484), (0.0179, 17.49, 0.4012)],
    "adv0.05": [(0.0035, 24.65, 0.7906), (0.0037, 24.42, 0.7784), (0.0039, 24.15, 0.7637), (0.0049, 23.17, 0.7035),
                (0.0073, 21.38, 0.5735), (0.0145, 18.39, 0.3816)],
    "adv0.1": [(0.0043, 23.69, 0.7432), (0.0045, 23.53, 0.7359), (0.0047, 23.36, 0.7276), (0.0054, 22.75, 0.6981),
               (0.0070, 21.62, 0.6311), (0.0113, 19.49, 0.4928)],
}


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def metrics(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    m = mse(out, ref)
    return {"mse": float(m.mean()), "psnr": float(psnr(m).mean()), "ssim": float(ssim(out, ref).mean())}


#: Options that do not change any result (where and how verbosely a run goes), left out of the
#: settings a results.json is tied to.
NOT_RESULTS = ("workdir", "progress", "threads", "pilot_steps", "data_root")


#: List options a rerun may EXTEND (never shrink or reorder away): added adversarial budgets are new
#: models and cells; added sigma_g factors re-open the selection of every smoothed cell (see evaluate).
GROWABLE = ("adv_eps_rel", "sigma_g_factors")


class Store:
    """results.json in the workdir: finished cells and radii (a dict rewritten atomically after each)
    and, under ``"settings"``, the options they were computed with: a rerun with other settings is
    refused rather than mixing old cells into new tables. The one exception: the lists of
    :data:`GROWABLE` may gain entries (every old entry kept); the recorded settings become the new
    ones and :func:`evaluate` decides which finished cells still hold."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        if path.exists() and "settings" not in self.data:  # written before settings were recorded: adopted
            self.put("settings", settings)
        old = self.data.setdefault("settings", settings)
        diff = {k: (old.get(k), settings.get(k)) for k in sorted(set(old) | set(settings))
                if old.get(k) != settings.get(k)
                and not (k in GROWABLE and isinstance(old.get(k), list) and isinstance(settings.get(k), list)
                         and set(old[k]) <= set(settings[k]))}
        if diff:
            raise SystemExit(f"{path} holds results computed with other settings (was, now): {diff}; "
                             f"use another --workdir (only {', '.join(GROWABLE)} may gain entries)")
        if old != settings:
            self.put("settings", settings)

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def model_specs(args: argparse.Namespace) -> list[tuple[str, SRTrainConfig]]:
    common = {"batch_size": args.batch, "crop": args.train_crop, "seed": args.seed, "save_every": args.save_every}
    specs = [("std", SRTrainConfig(method="standard", steps=args.steps, lr=args.lr, **common))]
    for s in args.sigmas_f:
        specs.append((f"noise{s:g}", SRTrainConfig(method="noise", sigma_f=s, steps=args.ft_steps, lr=args.lr / 2, **common)))
    for e in args.adv_eps_rel:
        specs.append((f"adv{e:g}", SRTrainConfig(method="adversarial", eps_rel=e, pgd_steps=args.train_pgd_steps,
                                                 steps=args.ft_steps, lr=args.lr / 2, **common)))
    return specs


def train_all(args, images, work: Path) -> dict[str, UNet]:
    """Every model of :func:`model_specs`, trained into ``work/<name>.pt`` or resumed from there (a
    finished checkpoint is only loaded; an interrupted one continues from its last epoch)."""
    models: dict[str, UNet] = {}
    for name, cfg in model_specs(args):
        torch.manual_seed(args.seed)
        net = UNet(residual=not args.plain)
        if name != "std":
            net.load_state_dict(models["std"].state_dict())  # fine-tuned from the standard model
        t0 = time.perf_counter()
        hist = train_superres(net, images, config=cfg, checkpoint=work / f"{name}.pt", resume=True,
                              info={"name": name, "init": "std" if name != "std" else "scratch"},
                              progress=args.progress)
        emit({"kind": "train", "model": name, "steps": hist[-1]["step"], "final_loss": hist[-1]["loss"],
              "seconds_this_run": round(time.perf_counter() - t0, 1),
              "seconds_total": round(sum(h["seconds"] for h in hist), 1)})
        models[name] = net.eval()
    return models


def pilot(args, images, test, work: Path) -> dict[str, Any]:
    """The first --pilot-steps steps of the standard model (its checkpoint, which a full run then
    continues exactly), and its clean test MSE/PSNR/SSIM beside bilinear interpolation's."""
    name, cfg = model_specs(args)[0]
    torch.manual_seed(args.seed)
    net = UNet(residual=not args.plain)
    hist = train_superres(net, images, config=cfg, checkpoint=work / f"{name}.pt", resume=True,
                          info={"name": name, "init": "scratch"}, progress=args.progress, stop_at=args.pilot_steps)
    xt, yt = test
    with torch.no_grad():
        rec = {"kind": "pilot", "model": name, "step": hist[-1]["step"], "of": cfg.steps,
               "train_loss": hist[-1]["loss"], "seconds": round(sum(h["seconds"] for h in hist), 1),
               "std": metrics(net(yt), xt), "bilinear": metrics(yt, xt)}
    emit(rec)
    return rec


def evaluate(args, models, val, test, store: Store) -> None:
    """Every (model, budget) cell into ``store``. A finished cell is kept, except a smoothed one whose
    recorded sigma_g candidates lack some of --sigma-g-factors (the grid was extended): the missing
    candidates are scored on the validation crops (each candidate's score is seeded alone, so the old
    scores stand) and the cell is kept if its chosen sigma_g still wins, else recomputed in full —
    either way it equals what a fresh run with the extended grid writes."""
    xv, yv = val
    xt, yt = test
    shape = xt.shape[1:]
    for name, net in models.items():
        sigma_f = float(name[5:]) if name.startswith("noise") else None
        for eps_rel in BUDGETS:
            key = f"eval/{name}/{eps_rel:g}"
            old = store.get(key)
            if old is not None and (sigma_f is None or all(f"{f:g}" in old["val_mse_by_factor"]
                                                           for f in args.sigma_g_factors)):
                continue
            t0 = time.perf_counter()
            eps = relative_eps(eps_rel, shape)
            rec: dict[str, Any] = {}
            if sigma_f is not None:
                # sigma_g on the validation crops under the transfer attack (thesis: tuned per model and
                # budget); a factor 0 is the base model itself (no smoothing at evaluation).
                eps_v = relative_eps(eps_rel, xv.shape[1:])
                adv_v = yv if eps == 0 else pgd_regression(net, yv, xv, eps=eps_v, steps=args.pgd_steps, generator=args.seed)
                known = {} if old is None else {float(k) * sigma_f: v for k, v in old["val_mse_by_factor"].items()}
                factors = list(dict.fromkeys([*(float(k) for k in (old or {}).get("val_mse_by_factor", {})),
                                              *args.sigma_g_factors]))
                sigma_g, scores = select_sigma_g(net, adv_v, xv, sigma_gs=[f * sigma_f for f in factors],
                                                 n=args.n_val, generator=args.seed, scores=known)
                best = factors[[f * sigma_f for f in factors].index(sigma_g)]
                by_factor = {f"{f:g}": scores[f * sigma_f] for f in factors}
                if old is not None and old["sigma_g_factor"] == best:  # the extended grid keeps the choice
                    store.put(key, {**old, "val_mse_by_factor": by_factor})
                    emit({"kind": "eval_kept", "model": name, "eps_rel": eps_rel, "sigma_g_factor": best,
                          "val_mse_by_factor": by_factor})
                    continue
                rec.update({"sigma_g": sigma_g, "sigma_g_factor": best, "val_mse_by_factor": by_factor})
            adv = yt if eps == 0 else pgd_regression(net, yt, xt, eps=eps, steps=args.pgd_steps, generator=args.seed)
            with torch.no_grad():
                rec = {"base": metrics(net(adv), xt), **rec}
            if sigma_f is not None:
                sigma_g = rec["sigma_g"]
                if sigma_g == 0:
                    rec["smoothed_transfer"] = rec["smoothed_eot"] = rec["smoothed"] = rec["base"]
                    rec["seconds"] = round(time.perf_counter() - t0, 1)
                    store.put(key, rec)
                    emit({"kind": "eval", "model": name, "eps_rel": eps_rel, **rec})
                    continue
                sr = SmoothedRegressor(net, noise=get_noise("gaussian", sigma=sigma_g))
                rec["smoothed_transfer"] = metrics(sr.mean(adv, n=args.n_eval, batch_size=256, generator=args.seed + 1), xt)
                if eps > 0:
                    adv_s = eot_pgd_regression(net, yt, xt, noise=sr.noise, eps=eps, steps=args.pgd_steps,
                                               samples=args.eot_samples, generator=args.seed + 2)
                    rec["smoothed_eot"] = metrics(sr.mean(adv_s, n=args.n_eval, batch_size=256, generator=args.seed + 1), xt)
                else:
                    rec["smoothed_eot"] = rec["smoothed_transfer"]
                worse = max((rec["smoothed_transfer"], rec["smoothed_eot"]), key=lambda r: r["mse"])
                rec["smoothed"] = worse
            rec["seconds"] = round(time.perf_counter() - t0, 1)
            store.put(key, rec)
            emit({"kind": "eval", "model": name, "eps_rel": eps_rel, **rec})


def tables(args, store: Store, models, n_test: int) -> str:
    lines = []
    for title, budgets in (("Table 1", BUDGETS[:3]), ("Table 2", BUDGETS[3:])):
        head = "| model | σ_g | " + " | ".join(f"ε_rel={b:g} MSE | PSNR | SSIM" for b in budgets) + " |"
        lines += [(f"**{title}** (ours: {n_test} ImageNet test crops of {args.test_crop}×{args.test_crop}; thesis's "
                   "values in brackets where the thesis has that model)"), "", head,
                  "|" + "---|" * (2 + 3 * len(budgets))]
        for name in models:
            cells, sig = [], []
            for b in budgets:
                rec = store.get(f"eval/{name}/{b:g}")
                r = rec["smoothed"] if "smoothed" in rec else rec["base"]
                if "sigma_g" in rec:
                    sig.append(f"{rec['sigma_g']:.3g}")
                t = THESIS.get(name)
                th = [f" [{v:g}]" for v in t[BUDGETS.index(b)]] if t else ["", "", ""]
                cells += [f"{r['mse']:.4f}{th[0]}", f"{r['psnr']:.2f}{th[1]}", f"{r['ssim']:.3f}{th[2]}"]
            label = (f"smoothed σ_f={name[5:]}" if name.startswith("noise") else "standard" if name == "std"
                     else "bilinear input (no model)" if name == "bilinear" else f"adv. tr. ε_rel={name[3:]}")
            lines.append(f"| {label} | {'/'.join(sig) or '–'} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def smoothed(net, sigma_g: float, y: torch.Tensor, *, n: int, generator: int) -> torch.Tensor:
    """The smoothed mean of ``net`` at ``y`` (``net(y)`` itself when sigma_g = 0)."""
    return smoothed_mean(net, y, sigma_g=sigma_g, n=n, batch_size=256, generator=generator)


def attack_smoothed(args, net, sigma_g: float, y, x, *, eps: float, generator: int) -> torch.Tensor:
    """EOT-PGD on the smoothed mean (plain PGD when sigma_g = 0)."""
    if sigma_g == 0:
        return pgd_regression(net, y, x, eps=eps, steps=args.pgd_steps, generator=generator)
    return eot_pgd_regression(net, y, x, noise=get_noise("gaussian", sigma=sigma_g), eps=eps, steps=args.pgd_steps,
                              samples=args.eot_samples, generator=generator)


def grid(args, models, store, test, work: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xt, yt = test
    i, eps_rel = args.grid_image, args.grid_eps_rel
    x, y = xt[i:i + 1], yt[i:i + 1]
    eps = relative_eps(eps_rel, x.shape)
    std = models["std"]
    adv_name = f"adv{max(args.adv_eps_rel):g}"
    sm_name = f"noise{args.grid_sigma_f:g}"
    sigma_g = store.get(f"eval/{sm_name}/{eps_rel:g}")["sigma_g"]
    sm = models[sm_name]
    y_std = pgd_regression(std, y, x, eps=eps, steps=args.pgd_steps, generator=0)
    y_adv = pgd_regression(models[adv_name], y, x, eps=eps, steps=args.pgd_steps, generator=0)
    y_sm = attack_smoothed(args, sm, sigma_g, y, x, eps=eps, generator=0)
    with torch.no_grad():
        rows = [
            ("clean input", [("LR input y", y), ("standard f(y)", std(y)), (f"adv. tr. ({adv_name})", models[adv_name](y)),
                             (f"smoothed ({sm_name}, σ_g={sigma_g:.2g})", smoothed(sm, sigma_g, y, n=args.n_eval, generator=0)),
                             ("reference x", x)]),
            (f"attacked ε_rel={eps_rel:g}", [("attacked input (vs std)", y_std), ("standard", std(y_std)),
                                            ("adv. tr.", models[adv_name](y_adv)),
                                            ("smoothed (EOT attack)", smoothed(sm, sigma_g, y_sm, n=args.n_eval, generator=0)),
                                            ("reference x", x)]),
        ]
    fig, axes = plt.subplots(2, 5, figsize=(12, 5.4))
    for r, (rowname, cells) in enumerate(rows):
        for c, (title, img) in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(img[0].clamp(0, 1).permute(1, 2, 0).numpy())
            p = "" if title.startswith(("LR", "attacked input", "reference")) else f"\n{float(psnr(mse(img, x))[0]):.2f} dB"
            ax.set_title(title + p, fontsize=8)
            ax.axis("off")
        axes[r][0].text(-0.15, 0.5, rowname, transform=axes[r][0].transAxes, rotation=90, va="center", fontsize=9)
    fig.tight_layout()
    path = work / "grid.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def certified(args, models, test, store: Store, work: Path) -> list[dict[str, Any]]:
    xt, yt = test
    sigma = args.cert_sigma
    name = f"noise{sigma:g}"
    net = models[name]
    sr = SmoothedRegressor(net, noise=get_noise("gaussian", sigma=sigma))
    rows = []
    k = args.cert_images
    x, y = xt[:k], yt[:k]
    key_d = f"cert/{name}"
    if all(store.get(f"{key_d}/{eps:g}") is not None for eps in args.cert_eps):
        return [store.get(f"{key_d}/{eps:g}") for eps in args.cert_eps]
    draws0 = sr.samples(y, n=args.cert_n0, batch_size=256, generator=args.seed + 10)
    draws = sr.samples(y, n=args.cert_n, batch_size=256, generator=args.seed + 11)
    for eps in args.cert_eps:
        key = f"{key_d}/{eps:g}"
        if store.get(key) is not None:
            rows.append(store.get(key))
            continue
        c = certified_psnr(draws0, draws, x, sigma=sigma, eps=eps, alpha=args.alpha, delta=args.delta)
        box, ball = c.box, c.ball
        rec: dict[str, Any] = {
            "model": name, "sigma": sigma, "eps": eps, "eps_rel": eps / math.sqrt(x[0].numel()), "images": k,
            "n0": args.cert_n0, "n": args.cert_n, "alpha": args.alpha,
            "median_clean_psnr": float(c.median_clean.mean()),
            "median_cert_psnr": float(c.median_certified.mean()),
            "median_cert_psnr_clipped01": float(psnr(worst_mse_box(box.lower, box.upper, x, value_range=(0, 1))).mean()),
            "k_lower": box.k_lower, "k_upper": box.k_upper,
            "center_clean_psnr": float(c.center_clean.mean()),
            "center_radius": float(ball.radius.mean()),
            "center_cert_psnr": float(c.center_certified.mean()),
            "center_abstained": int(ball.abstained.sum()),
        }
        if eps > 0:
            adv = eot_pgd_regression(net, y, x, noise=sr.noise, eps=eps, steps=args.pgd_steps, samples=args.eot_samples,
                                     generator=args.seed + 12)
            d0a = sr.samples(adv, n=args.cert_n0, batch_size=256, generator=args.seed + 13)
            da = sr.samples(adv, n=args.cert_n, batch_size=256, generator=args.seed + 14)
            med_a = median_bounds_from_draws(da, sigma=sigma, eps=eps, alpha=args.alpha).median
            cen_a = center_from_draws(d0a, da, sigma=sigma, eps=eps, alpha=args.alpha, delta=args.delta).center
            inside = (med_a >= box.lower) & (med_a <= box.upper)
            moved = (cen_a - ball.center).flatten(1).norm(dim=1)
            rec.update({
                "median_attacked_psnr": float(psnr(mse(med_a, x)).mean()),
                "median_outside_coords": int((~inside).sum()), "coords": int(inside.numel()),
                "center_attacked_psnr": float(psnr(mse(cen_a, x)).mean()),
                "center_moved_max": float(moved.max()),
                "center_violations": int((moved > ball.radius).sum()),
            })
        store.put(key, rec)
        emit({"kind": "certified", **rec})
        rows.append(rec)
    return rows


def certified_table(rows: list[dict[str, Any]]) -> str:
    """The certified part as a markdown table: means over the images per l2 radius."""
    def f(r: dict[str, Any], key: str, fmt: str = ".2f") -> str:
        v = r.get(key)
        return "–" if v is None else ("∞" if v == math.inf else "−∞" if v == -math.inf else format(v, fmt))

    r0 = rows[0]
    lines = [(f"**Certified** ({r0['model']} smoothed at σ = {r0['sigma']:g}, {r0['images']} test crops, "
              f"n0 = {r0['n0']}, n = {r0['n']}, α = {r0['alpha']:g}; PSNR in dB, means over the images)"), "",
             ("| ε (l2) | ε_rel | median: clean | median of clamp(f): certified worst | median: attacked | outside box "
              "(coords) | center: radius | center: certified worst | center: attacked | max ‖z − z'‖ | violations |"),
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        outside = "–" if "coords" not in r else f"{r['median_outside_coords']} / {r['coords']}"
        viol = "–" if "center_violations" not in r else f"{r['center_violations']} / {r['images']}"
        lines.append(f"| {r['eps']:g} | {r['eps_rel']:.4f} | {f(r, 'median_clean_psnr')} | "
                     f"{f(r, 'median_cert_psnr_clipped01')} | {f(r, 'median_attacked_psnr')} | {outside} | "
                     f"{f(r, 'center_radius')} | {f(r, 'center_cert_psnr')} | {f(r, 'center_attacked_psnr')} | "
                     f"{f(r, 'center_moved_max')} | {viol} |")
    return "\n".join(lines) + "\n"


def plot_certified(rows, work: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = [r["eps"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(eps, [r["median_cert_psnr_clipped01"] for r in rows], "o-", label="median of clamp(f): certified worst case")
    ax.plot(eps, [r["center_cert_psnr"] for r in rows], "s-", label="center: certified worst case")
    ax.plot(eps[1:], [r["median_attacked_psnr"] for r in rows[1:]], "o--", label="median under EOT-PGD")
    ax.plot(eps[1:], [r["center_attacked_psnr"] for r in rows[1:]], "s--", label="center under EOT-PGD")
    ax.set_xlabel("input l2 radius ε")
    ax.set_ylabel("PSNR (dB), mean over images")
    ax.set_title(f"{rows[0]['model']}, σ = {rows[0]['sigma']:g}, n = {rows[0]['n']}, α = {rows[0]['alpha']:g}")
    ax.grid(True, alpha=0.35)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = work / "certified.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    # ../shared/data beside the project's root (or beside a folder above it, for worktrees).
    shared = next((q / "shared" / "data" for q in Path(__file__).resolve().parents[1:] if (q / "shared" / "data").is_dir()),
                  None)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None if shared is None else str(shared),
                   help="folder with photos/ and samples/ (default ../shared/data)")
    p.add_argument("--workdir", default="runs/bench_superres")
    p.add_argument("--val-photos", nargs="+", default=["wood.jpg", "yellowflower.jpg"])
    p.add_argument("--no-skimage", action="store_true", help="train on the photos folder only")
    p.add_argument("--train-crop", type=int, default=64)
    p.add_argument("--test-crop", type=int, default=64)
    p.add_argument("--steps", type=int, default=3000, help="Adam steps of the standard model")
    p.add_argument("--ft-steps", type=int, default=800, help="fine-tuning steps of the other models")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--save-every", type=int, default=50, help="training steps per checkpoint (an epoch of the loop)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--sigmas-f", type=float, nargs="*", default=[0.1, 0.2, 0.5])
    p.add_argument("--adv-eps-rel", type=float, nargs="*", default=[0.05])
    p.add_argument("--train-pgd-steps", type=int, default=2)
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--eot-samples", type=int, default=4)
    p.add_argument("--sigma-g-factors", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5],
                   help="sigma_g candidates as multiples of sigma_f; 0 = the base model without smoothing")
    p.add_argument("--val-crops", type=int, default=16)
    p.add_argument("--n-val", type=int, default=16)
    p.add_argument("--n-eval", type=int, default=32)
    p.add_argument("--test-images", type=int, default=None, help="use the first K test images (default all 20)")
    p.add_argument("--cert-sigma", type=float, default=0.5)
    p.add_argument("--cert-images", type=int, default=10)
    p.add_argument("--cert-eps", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5, 1.0])
    p.add_argument("--cert-n0", type=int, default=32)
    p.add_argument("--cert-n", type=int, default=500)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--grid-image", type=int, default=3)
    p.add_argument("--grid-eps-rel", type=float, default=0.1)
    p.add_argument("--grid-sigma-f", type=float, default=0.5)
    p.add_argument("--plain", action="store_true",
                   help="plain U-Net (the library's default); the benchmark's default is residual, started as the "
                        "identity (the bilinear input): a plain one was at training MSE 0.027 after 120 steps on "
                        "32x32 crops, a residual one at 0.0011 (BENCHMARKS.md)")
    p.add_argument("--pilot-steps", type=int, default=0,
                   help="train only the standard model's first N steps (a multiple of --save-every) and print its "
                        "clean test PSNR beside bilinear's; the full run continues that checkpoint")
    p.add_argument("--progress", action="store_true", help="training progress bars and a line per epoch (stderr)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.data_root is None:
        raise SystemExit("no ../shared/data found: give --data-root")
    if args.grid_sigma_f not in args.sigmas_f or args.cert_sigma not in args.sigmas_f or not args.adv_eps_rel:
        raise SystemExit("--grid-sigma-f and --cert-sigma must be among --sigmas-f, and --adv-eps-rel non-empty")
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    root = Path(args.data_root)
    photos_dir = root / "photos"
    photos = {q.name: im for q, im in zip(sorted(x for x in photos_dir.iterdir() if x.suffix == ".jpg"),
                                           load_folder(photos_dir, pattern="*.jpg"), strict=True)}
    train_images = [im for k, im in photos.items() if k not in args.val_photos]
    if not args.no_skimage:
        train_images += [im for im in skimage_photos() if min(im.shape[-2:]) >= args.train_crop]
    xv = random_crops([photos[k] for k in args.val_photos], size=args.train_crop, count=args.val_crops,
                      generator=torch.Generator().manual_seed(args.seed + 100), flip=False)
    xt = torch.stack([center_crop(im, args.test_crop)
                      for im in load_folder(root / "samples", pattern="imagenet_*", limit=args.test_images)])
    val, test = (xv, degrade(xv)), (xt, degrade(xt))
    emit({"kind": "data", "train_images": len(train_images), "val_crops": len(xv), "test_images": len(xt),
          "test_crop": args.test_crop, "train_crop": args.train_crop, "argv": sys.argv[1:] if argv is None else argv})
    # Everything below resumes from --workdir: finished checkpoints are loaded, interrupted ones
    # continue from their last epoch, and finished (model, budget) cells and radii are read back.
    store = Store(work / "results.json",
                  json.loads(json.dumps({k: v for k, v in vars(args).items() if k not in NOT_RESULTS})))
    if args.pilot_steps:
        return pilot(args, train_images, test, work)
    models = train_all(args, train_images, work)
    evaluate(args, {"bilinear": torch.nn.Identity(), **models}, val, test, store)
    (work / "tables.md").write_text(tables(args, store, {"bilinear": None, **models}, len(xt)))
    emit({"kind": "grid", "path": str(grid(args, models, store, test, work))})
    rows = certified(args, models, test, store, work)
    (work / "tables.md").write_text(tables(args, store, {"bilinear": None, **models}, len(xt)) + "\n" + certified_table(rows))
    emit({"kind": "certified_plot", "path": str(plot_certified(rows, work))})
    return store.data


if __name__ == "__main__":
    main()
