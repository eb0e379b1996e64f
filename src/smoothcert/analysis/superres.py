"""Super-resolution result files -> tables: :func:`sr_evaluate_table` (the rows of
``smoothcert sr evaluate``, :func:`smoothcert.results.superres.sr_evaluate_schema`)."""

from __future__ import annotations

import math
import os

from ..results import read_table

__all__ = ["sr_evaluate_table"]


def sr_evaluate_table(path: str | os.PathLike[str]) -> str:
    """A markdown table of an ``sr evaluate`` result file: per output (bilinear, base U-Net, each
    sigma_g) the mean MSE, the mean of the per-image PSNRs and the mean SSIM over its images; the
    validation-chosen sigma_g is marked."""
    t = read_table(path)
    keys = [c[4:] for c in t.columns if c.startswith("mse@")]
    chosen = t.values["sigma_g_chosen"][0] if len(t) else math.nan
    lines = [f"{len(t)} images; PSNR in dB (mean of per-image PSNRs)", "",
             "| output | MSE | PSNR | SSIM |", "| --- | ---: | ---: | ---: |"]
    for k in keys:
        label = k if k in ("bilinear", "base") else f"smoothed σ_g={float(k):g}"
        if k not in ("bilinear", "base") and isinstance(chosen, float) and float(k) == chosen:
            label += " (chosen on validation)"
        mean = {m: sum(t.values[f"{m}@{k}"]) / max(len(t), 1) for m in ("mse", "psnr", "ssim")}
        lines.append(f"| {label} | {mean['mse']:.5f} | {mean['psnr']:.2f} | {mean['ssim']:.4f} |")
    return "\n".join(lines)
