"""The smoothed classifier g(x) = argmax_c P(f(x + delta) = c), with PREDICT and CERTIFY.

Follows Cohen, Rosenfeld, Kolter 2019 (Algorithms "PREDICT" and "CERTIFY"), batch-first, on the
model's device, with any noise from :mod:`smoothcert.noise`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .noise import Noise
from .sampling import check_precision, sample_counts
from .stats import (
    binomial_test_pvalue,
    bonferroni,
    check_alpha,
    clopper_pearson_lower,
    clopper_pearson_upper,
    min_samples_to_certify,
)
from .validation import as_batch, check_sample_sizes, ensure_eval, model_device

__all__ = ["ABSTAIN", "Certificate", "SmoothedClassifier", "make_generator"]

#: Label returned when the smoothed classifier declines to answer.
ABSTAIN = -1


def make_generator(
    seed_or_generator: int | torch.Generator | None, device: torch.device | str
) -> torch.Generator | None:
    """A generator on ``device`` seeded with an int; a generator is passed through; None stays None
    (then torch's global RNG is used)."""
    if seed_or_generator is None or isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    g = torch.Generator(device=device)
    g.manual_seed(int(seed_or_generator))
    return g


@dataclass
class Certificate:
    """Result of :meth:`SmoothedClassifier.certify` for a batch of B inputs (tensors on the CPU).

    With probability at least 1 - alpha (over the Monte Carlo draws, for each input separately),
    every input whose ``prediction`` is not ABSTAIN has g(x') = prediction for all x' with
    ||x' - x||_norm < radius[i].
    """

    prediction: Tensor  #: int64 [B], ABSTAIN (-1) where nothing is certified
    radius: Tensor  #: float64 [B], 0 where abstaining
    p_lower: Tensor  #: float64 [B], lower confidence bound on pA
    counts: Tensor  #: int64 [B, K], class counts of the n estimation draws
    count_a: Tensor  #: int64 [B], draws (of n) that gave the selected class
    count_b: Tensor  #: int64 [B], draws (of n) that gave the most frequent other class
    n: int
    n0: int
    alpha: float
    norm: str
    seconds: Tensor  #: float64 [B], wall time per input (a shared batch's time split evenly)
    p_upper_b: Tensor | None = None  #: float64 [B], upper bound on pB (two-class certificates)

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    @property
    def abstained(self) -> Tensor:
        return self.prediction == ABSTAIN


class SmoothedClassifier:
    """g(x) = argmax_c P(f(x + delta) = c) for a base classifier f and a noise distribution.

    Args:
        base: f, a module mapping inputs in [0, 1] (normalization inside) to logits
            ``[B, num_classes]``; it is put in eval mode and never modified otherwise.
        noise: the smoothing distribution (see :func:`smoothcert.noise.get_noise`).
        num_classes: number of classes K.
        precision: arithmetic of f (fp32, tf32, bf16, fp16); part of the certified classifier.
        channels_last: feed image batches in channels-last memory layout (same values, faster
            convolutions); turn off for models that cannot take it.
        allow_unbounded: accept inputs outside [0, 1] with a warning instead of an error.
    """

    def __init__(
        self,
        base: nn.Module,
        *,
        noise: Noise,
        num_classes: int,
        precision: str = "fp32",
        channels_last: bool = True,
        allow_unbounded: bool = False,
    ) -> None:
        if not isinstance(base, nn.Module):
            raise TypeError(f"base must be a torch.nn.Module, got {type(base).__name__}")
        if not isinstance(noise, Noise):
            raise TypeError("noise must be a smoothcert Noise; build one with get_noise(name, sigma=...)")
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
        self.base = ensure_eval(base)
        self.noise = noise
        self.num_classes = int(num_classes)
        self.precision = check_precision(precision)
        self.channels_last = bool(channels_last)
        self.allow_unbounded = allow_unbounded

    def __repr__(self) -> str:
        return (
            f"SmoothedClassifier(base={type(self.base).__name__}, noise={self.noise!r}, "
            f"num_classes={self.num_classes}, precision={self.precision!r}, channels_last={self.channels_last})"
        )

    @property
    def device(self) -> torch.device:
        return model_device(self.base)

    def _counts(self, x: Tensor, n: int, batch_size: int, generator: torch.Generator | None) -> Tensor:
        return sample_counts(
            self.base,
            x,
            noise=self.noise,
            n=n,
            num_classes=self.num_classes,
            batch_size=batch_size,
            generator=generator,
            precision=self.precision,
            channels_last=self.channels_last,
        )

    def _prepare(self, x: Tensor, seed: int | torch.Generator | None) -> tuple[Tensor, torch.Generator | None]:
        ensure_eval(self.base)
        x = as_batch(x, allow_unbounded=self.allow_unbounded)
        return x, make_generator(seed, self.device)

    def predict(
        self,
        x: Tensor,
        *,
        n: int,
        alpha: float,
        batch_size: int,
        generator: int | torch.Generator | None = None,
    ) -> Tensor:
        """PREDICT: the smoothed prediction for each input, or ABSTAIN.

        Draws n noisy copies, takes the two most frequent classes (counts nA >= nB) and answers
        the top one only if a two-sided binomial test of nA against nA + nB rejects pA = pB at
        level alpha. Guarantee: for each input, the answer is a class other than g(x) with
        probability at most alpha (Cohen et al. 2019, Prop. 1).

        Args:
            x: ``[B, C, H, W]`` or ``[C, H, W]`` (or ``[B, D]`` / ``[D]``) in [0, 1].
            generator: a ``torch.Generator`` or an int seed; None uses torch's global RNG.
        Returns:
            int64 ``[B]`` on the CPU, ABSTAIN (-1) where the test does not reject.
        """
        alpha = check_alpha(alpha)
        check_sample_sizes(n=n, batch_size=batch_size)
        # Even n agreeing draws give p-value 2 * 0.5^n: below that n the test never rejects.
        n_min = math.floor(math.log2(2 / alpha)) + 1 if 2 * 0.5**n > alpha else n
        if n < n_min:
            warnings.warn(
                f"n={n} can never answer at alpha={alpha:g} (the binomial test cannot reject); "
                f"use n >= {n_min}",
                stacklevel=2,
            )
        x, gen = self._prepare(x, generator)
        counts = self._counts(x, n, batch_size, gen).cpu()
        top2 = counts.topk(2, dim=1)
        n_a, n_b = top2.values[:, 0], top2.values[:, 1]
        pvalue = torch.from_numpy(binomial_test_pvalue(n_a, n_a + n_b))
        return torch.where(pvalue <= alpha, top2.indices[:, 0], torch.full_like(n_a, ABSTAIN))

    def certify(
        self,
        x: Tensor,
        *,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        generator: int | torch.Generator | None = None,
        norm: str | None = None,
        two_class: bool = False,
    ) -> Certificate:
        """CERTIFY: a prediction and a certified radius for each input.

        n0 selection draws pick the class cA; n *independent* estimation draws count it (nA);
        the one-sided Clopper–Pearson bound pA_lower at level alpha gives the radius from the
        noise's formula. ABSTAIN when pA_lower <= 1/2.

        With ``two_class=True`` alpha is split (Bonferroni): alpha/2 for the lower bound on pA
        and alpha/2 shared by upper bounds on every other class (alpha/(2(K-1)) each, so the
        maximum over classes — a valid pB — holds jointly); the radius then uses the two-class
        form. Abstain when pA_lower <= pB_upper.

        Guarantee: for each input, with probability at least 1 - alpha over the draws, either the
        answer is ABSTAIN or g(x') = prediction for every x' within ``radius`` in ``norm``.

        Args:
            x: ``[B, C, H, W]`` or ``[C, H, W]`` (or ``[B, D]`` / ``[D]``) in [0, 1].
            n0: selection draws; n: estimation draws (n0 < n).
            alpha: failure probability per input, in (0, 1).
            batch_size: rows per forward pass.
            generator: a ``torch.Generator`` or int seed; None uses torch's global RNG.
            norm: l1/l2/linf, default the noise's own (l2 Gaussian, l1 Laplace/uniform).
        """
        alpha = check_alpha(alpha)
        check_sample_sizes(n=n, n0=n0, batch_size=batch_size)
        norm = self.noise.check_norm(norm)
        alpha_a = alpha / 2 if two_class else alpha
        if n < min_samples_to_certify(alpha_a):
            warnings.warn(
                f"n={n} can never certify anything at alpha={alpha_a:g}: even if every draw agrees "
                f"the lower bound stays <= 1/2; use n >= {min_samples_to_certify(alpha_a)}",
                stacklevel=2,
            )
        x, gen = self._prepare(x, generator)
        dim = math.prod(x.shape[1:])
        start = time.perf_counter()
        selection = self._counts(x, n0, batch_size, gen)
        c_a = selection.argmax(dim=1)
        counts = self._counts(x, n, batch_size, gen)
        # One host transfer for the whole batch, after all sampling is queued.
        counts, c_a = counts.cpu(), c_a.cpu()
        count_a = counts.gather(1, c_a[:, None]).squeeze(1)
        others = counts.scatter(1, c_a[:, None], -1)
        count_b = others.max(dim=1).values.clamp_min(0)
        p_lower = torch.from_numpy(clopper_pearson_lower(count_a.numpy(), n, alpha_a))
        p_upper_b = None
        if two_class:
            alpha_b = bonferroni(alpha / 2, self.num_classes - 1)
            uppers = clopper_pearson_upper(others.clamp_min(0).numpy(), n, alpha_b)
            uppers[np.arange(len(c_a)), c_a.numpy()] = -np.inf  # cA is not a competitor
            p_upper_b = torch.from_numpy(np.minimum(uppers.max(axis=1), 1.0 - p_lower.numpy()))
            certified = p_lower > p_upper_b
        else:
            certified = p_lower > 0.5
        radius = self.noise.radius(p_lower, norm=norm, p_upper_b=p_upper_b, dim=dim)
        radius = torch.where(certified, radius, torch.zeros_like(radius))
        prediction = torch.where(certified, c_a, torch.full_like(c_a, ABSTAIN))
        elapsed = time.perf_counter() - start
        return Certificate(
            prediction=prediction,
            radius=radius,
            p_lower=p_lower,
            counts=counts,
            count_a=count_a,
            count_b=count_b,
            n=n,
            n0=n0,
            alpha=alpha,
            norm=norm,
            seconds=torch.full((len(c_a),), elapsed / len(c_a), dtype=torch.float64),
            p_upper_b=p_upper_b,
        )
