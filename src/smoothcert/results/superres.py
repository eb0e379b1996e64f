"""Row schemas of super-resolution (regression) runs: one row per test image, resumable like every
result file (:class:`~smoothcert.results.writer.ResultWriter`).

Regression rows have no label, prediction or certified class radius, so they do not start with
Cohen et al.'s ``idx label predict radius correct time``; they start with ``idx`` and ``image``
(the file name) and end with how the row was obtained.
"""

from __future__ import annotations

from collections.abc import Sequence

from .schema import RowSchema, eps_key

__all__ = ["SR_ATTACK_KIND", "SR_CERTIFY_KIND", "SR_EVALUATE_KIND", "sr_attack_schema", "sr_certify_schema",
           "sr_evaluate_schema"]

SR_ATTACK_KIND = "sr_attack"
SR_CERTIFY_KIND = "sr_certify"
SR_EVALUATE_KIND = "sr_evaluate"


def sr_attack_schema(eps_rel: Sequence[float]) -> RowSchema:
    """``idx image``, then per relative budget ``mse@E psnr@E ssim@E l2@E`` (the output's metrics
    against the reference under the attack of budget sqrt(d)·E, and the perturbation's l2 norm;
    E = ``repr`` of eps_rel, 0.0 = clean), then ``model smoothing sigma_g n attack steps samples seconds``
    (``smoothing``: none or mean; ``attack``: pgd on f, or eot on the smoothed estimate)."""
    cols = ["idx", "image"]
    for e in eps_rel:
        k = eps_key(e)
        cols += [f"mse@{k}", f"psnr@{k}", f"ssim@{k}", f"l2@{k}"]
    return RowSchema(SR_ATTACK_KIND, (*cols, "model", "smoothing", "sigma_g", "n", "attack", "steps", "samples",
                                      "seconds"))


def sr_certify_schema(eps: Sequence[float]) -> RowSchema:
    """``idx image clean_psnr_median clean_psnr_center``, then per l2 radius E
    ``median_cert_psnr@E`` (certified worst-case PSNR over the median-bound box, clipped to [0, 1]
    only when the run says the model's outputs lie there), ``center_radius@E`` (the certified output
    radius) and ``center_cert_psnr@E``, then ``model sigma n0 n alpha delta seconds``."""
    cols = ["idx", "image", "clean_psnr_median", "clean_psnr_center"]
    for e in eps:
        k = eps_key(e)
        cols += [f"median_cert_psnr@{k}", f"center_radius@{k}", f"center_cert_psnr@{k}"]
    return RowSchema(SR_CERTIFY_KIND, (*cols, "model", "sigma", "n0", "n", "alpha", "delta", "seconds"))


def sr_evaluate_schema(sigma_g: Sequence[float]) -> RowSchema:
    """``idx image``, then ``mse@bilinear psnr@bilinear ssim@bilinear`` (the bilinear ×factor upsampling
    of the input, i.e. no model), ``mse@base psnr@base ssim@base`` (the U-Net f on the clean input),
    then per smoothing level S in ``sigma_g`` ``mse@S psnr@S ssim@S`` (the smoothed mean ĝ; S =
    ``repr`` of sigma_g; sigma_g = 0 is f itself), then ``model sigma_g_chosen n seconds``
    (``sigma_g_chosen``: the level chosen on the validation images, nan without them)."""
    cols = ["idx", "image"]
    for k in ("bilinear", "base", *(eps_key(s) for s in sigma_g)):
        cols += [f"mse@{k}", f"psnr@{k}", f"ssim@{k}"]
    return RowSchema(SR_EVALUATE_KIND, (*cols, "model", "sigma_g_chosen", "n", "seconds"))
