"""The smoothed classifier g(x) = argmax_c P(f(x + delta) = c), with PREDICT and CERTIFY.

Follows Cohen, Rosenfeld, Kolter 2019 (Algorithms "PREDICT" and "CERTIFY"), batch-first, on the
model's device, with any noise from :mod:`smoothcert.noise`. How f is evaluated on the noisy
copies (precision, layout, compilation, batch sizes) is an :class:`~smoothcert.engine.Engine`;
sample sizes planned per input and decisions at given radii are in :mod:`smoothcert.adaptive`,
reached through :meth:`SmoothedClassifier.certify_planned` and :meth:`SmoothedClassifier.certify_at`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import adaptive
from .certificate import ABSTAIN, Certificate, CertifyAtResult, PlannedCertificate, competitor_upper, decide, split_counts
from .checks import as_batch, check_sample_sizes, ensure_eval, model_device
from .engine import COMPILE_MODES, Engine
from .errors import CompileError, InputError, InputTypeError
from .noise import Noise, NoiseAware
from .rng import make_generator
from .stats import (
    binomial_test_pvalue,
    bonferroni,
    check_alpha,
    clopper_pearson_lower,
    clopper_pearson_upper,
    min_samples_to_certify,
)

__all__ = [
    "ABSTAIN",
    "COMPILE_MODES",
    "Certificate",
    "CertifyAtResult",
    "CompileError",
    "Engine",
    "PlannedCertificate",
    "SmoothedClassifier",
    "decide",
    "make_generator",
    "split_counts",
]

#: The engine keywords SmoothedClassifier still takes itself (they build its Engine).
_ENGINE_KEYWORDS = ("precision", "channels_last", "compile", "compile_mode", "fixed_shape", "max_batch_bytes",
                    "noise_dtype")


class SmoothedClassifier:
    """g(x) = argmax_c P(f(x + delta) = c) for a base classifier f and a noise distribution.

    Args:
        base: f, a module mapping inputs in [0, 1] (normalization inside) to logits
            ``[B, num_classes]``; it is put in eval mode and never modified otherwise. A
            :class:`~smoothcert.noise.NoiseAware` base (``smoothcert.denoise.Denoised``) gives a
            UserWarning with its ``noise_mismatch(noise)`` message when it is not empty.
        noise: the smoothing distribution (see :func:`smoothcert.noise.get_noise`).
        num_classes: number of classes K.
        engine: how f is evaluated on noisy copies (:class:`~smoothcert.engine.Engine`: precision,
            channels-last layout, compilation, fixed shapes, memory budget of ``batch_size="auto"``);
            default ``Engine()`` (fp32, channels-last, eager).
        allow_unbounded: accept inputs outside [0, 1] with a warning instead of an error.
        input_shape: the shape of one input f takes, e.g. ``(1, 28, 28)`` (None entries match any
            size). With it a 3-D tensor is read unambiguously: ``[C, H, W]`` of this shape is one
            image, anything else (a ``[B, H, W]`` batch without its channel axis) is refused.
            Without it a 3-D tensor is one ``[C, H, W]`` image.
        precision, channels_last, compile, compile_mode, fixed_shape, max_batch_bytes: the
            :class:`~smoothcert.engine.Engine` settings, accepted here for compatibility: they
            build the engine (giving them together with ``engine`` is an error).

    Batch sizes: ``predict``/``certify`` take ``batch_size`` as rows per forward pass or
    ``"auto"`` (see :meth:`resolve_batch_size`). The engine's settings and measurements are
    readable here too (:attr:`precision`, :meth:`settings`, :attr:`last_batch_size`,
    :attr:`compile_seconds`, :attr:`auto_batch_sizes`).
    """

    def __init__(
        self,
        base: nn.Module,
        *,
        noise: Noise,
        num_classes: int,
        engine: Engine | None = None,
        allow_unbounded: bool = False,
        input_shape: Sequence[int | None] | None = None,
        precision: str | None = None,
        channels_last: bool | None = None,
        compile: bool | None = None,
        compile_mode: str | None = None,
        fixed_shape: bool | None = None,
        max_batch_bytes: int | None = None,
        noise_dtype: str | None = None,
    ) -> None:
        if not isinstance(base, nn.Module):
            raise InputTypeError(f"base must be a torch.nn.Module, got {type(base).__name__}")
        if not isinstance(noise, Noise):
            raise InputTypeError("noise must be a smoothcert Noise; build one with get_noise(name, sigma=...)")
        if int(num_classes) != num_classes or num_classes < 2:
            raise InputError(f"num_classes must be an integer >= 2, got {num_classes}")
        given = {k: v for k, v in zip(_ENGINE_KEYWORDS, (precision, channels_last, compile, compile_mode,
                                                         fixed_shape, max_batch_bytes, noise_dtype)) if v is not None}
        if engine is None:
            engine = Engine(**given)
        elif not isinstance(engine, Engine):
            raise InputTypeError(f"engine must be a smoothcert Engine, got {type(engine).__name__}")
        elif given:
            raise InputError(
                f"give the engine settings either as engine=Engine(...) or as keywords, not both "
                f"(got engine= and {', '.join(given)})"
            )
        self.base = ensure_eval(base)
        self.noise = noise
        # A NoiseAware base (smoothcert.denoise.Denoised) says when it is made for another noise or sigma.
        problem = base.noise_mismatch(noise) if isinstance(base, NoiseAware) else ""
        if problem:
            warnings.warn(problem, UserWarning, stacklevel=2)
        self.num_classes = int(num_classes)
        self.engine = engine
        self.allow_unbounded = allow_unbounded
        self.input_shape = None if input_shape is None else tuple(input_shape)

    def __repr__(self) -> str:
        e = self.engine
        extra = ", compile=True" if e.compile else ""
        extra += f", compile_mode={e.compile_mode!r}" if e.compile_mode is not None else ""
        extra += f", fixed_shape={e.fixed_shape}" if e.fixed_shape != e.compile else ""
        extra += f", max_batch_bytes={e.max_batch_bytes}" if e.max_batch_bytes is not None else ""
        return (
            f"SmoothedClassifier(base={type(self.base).__name__}, noise={self.noise!r}, "
            f"num_classes={self.num_classes}, precision={e.precision!r}, "
            f"channels_last={e.channels_last}{extra})"
        )

    @property
    def device(self) -> torch.device:
        return model_device(self.base)

    # ---- the engine, read through (settings and measurements live on self.engine) ----

    @property
    def precision(self) -> str:
        return self.engine.precision

    @property
    def channels_last(self) -> bool:
        return self.engine.channels_last

    @property
    def compile(self) -> bool:
        return self.engine.compile

    @property
    def compile_mode(self) -> str | None:
        return self.engine.compile_mode

    @property
    def fixed_shape(self) -> bool:
        return self.engine.fixed_shape

    @property
    def max_batch_bytes(self) -> int | None:
        return self.engine.max_batch_bytes

    @property
    def compile_seconds(self) -> float:
        """Seconds spent warming up (torch.compile included), excluded from every timing."""
        return self.engine.compile_seconds

    @property
    def last_batch_size(self) -> int | None:
        """Rows per forward pass of the last sampling call (None before the first)."""
        return self.engine.last_batch_size

    @property
    def auto_batch_sizes(self) -> dict[str, int]:
        """``batch_size="auto"`` choices, keyed by input shape and device ("1x28x28@cpu": 256)."""
        return self.engine.auto_batch_sizes

    def settings(self) -> dict[str, Any]:
        """Every engine setting, as a plain JSON-ready dict for a run's record
        (:meth:`Engine.settings <smoothcert.engine.Engine.settings>`)."""
        return self.engine.settings()

    def as_batch(self, x: Tensor) -> Tensor:
        """``x`` validated and batch-first (:func:`smoothcert.checks.as_batch` with this
        classifier's ``allow_unbounded`` and ``input_shape``)."""
        return as_batch(x, allow_unbounded=self.allow_unbounded, input_shape=self.input_shape, name="x")

    def resolve_batch_size(self, x: Tensor, batch_size: int | str) -> int:
        """Rows per forward pass for inputs shaped like ``x`` (``[B, ...]``, validated): an integer as
        is, ``"auto"`` chosen from memory (:meth:`Engine.resolve_batch_size
        <smoothcert.engine.Engine.resolve_batch_size>`) once per input shape and device."""
        return self.engine.resolve_batch_size(self.base, x, self.noise, batch_size)

    def warmup(self, x_example: Tensor, *, batch_size: int | str) -> float:
        """Run one untimed engine pass of ``batch_size`` rows on inputs shaped like ``x_example``
        (``[B, ...]`` or one input, in [0, 1]), so that compilation happens now; returns the
        seconds spent (0.0 for a compiled shape already warmed). See
        :meth:`Engine.warmup <smoothcert.engine.Engine.warmup>`."""
        x = self.as_batch(x_example)
        return self.engine.warmup(self.base, x, self.noise, batch_size=batch_size)

    def prepare(self, x: Tensor, *, batch_size: int | str, draws: Sequence[int] = ()) -> int:
        """Rows per forward pass for ``x`` (``[B, ...]``, validated), after probing memory for
        ``"auto"`` and warming a compiled model up for the shapes of ``draws`` per input. Call it
        before starting a clock (:meth:`Engine.prepare <smoothcert.engine.Engine.prepare>`)."""
        return self.engine.prepare(self.base, x, self.noise, batch_size=batch_size, draws=draws)

    def counts(
        self, x: Tensor, *, n: int, batch_size: int | str, generator: torch.Generator | None,
        on_rows: Callable[[int], None] | None = None,
    ) -> Tensor:
        """int64 ``[B, num_classes]`` class counts of n fresh draws per input of ``x`` (``[B, ...]``,
        validated), on the model's device. Call :meth:`prepare` first to keep compiling untimed.
        ``on_rows``: called with the rows of each forward pass (progress; no effect on the counts)."""
        return self.engine.counts(self.base, x, self.noise, n=n, num_classes=self.num_classes,
                                  batch_size=batch_size, generator=generator, on_rows=on_rows)

    # ---- the algorithms ----

    def predict(
        self,
        x: Tensor,
        *,
        n: int,
        alpha: float,
        batch_size: int | str,
        generator: int | torch.Generator | None = None,
    ) -> Tensor:
        """PREDICT: the smoothed prediction for each input, or ABSTAIN.

        Draws n noisy copies, takes the two most frequent classes (counts nA >= nB) and answers
        the top one only if a two-sided binomial test of nA against nA + nB rejects pA = pB at
        level alpha. Guarantee: for each input, the answer is a class other than g(x) with
        probability at most alpha (Cohen et al. 2019, Prop. 1).

        Args:
            x: ``[B, C, H, W]`` or ``[C, H, W]`` (or ``[B, D]`` / ``[D]``) in [0, 1].
            batch_size: rows per forward pass, or "auto" (:meth:`resolve_batch_size`).
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
        x = self.as_batch(x)
        gen = make_generator(generator, self.device)
        batch_size = self.prepare(x, batch_size=batch_size, draws=(n,))
        counts = self.counts(x, n=n, batch_size=batch_size, generator=gen).cpu()
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
        batch_size: int | str,
        generator: int | torch.Generator | None = None,
        norm: str | None = None,
        two_class: bool = False,
        target: str = "fixed",
        max_n: int | None = None,
        radius_loss: float = 0.02,
        on_rows: Callable[[int], None] | None = None,
    ) -> Certificate | PlannedCertificate:
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
            batch_size: rows per forward pass, or "auto" (:meth:`resolve_batch_size`).
            generator: a ``torch.Generator`` or int seed; None uses torch's global RNG.
            norm: l1/l2/linf, default the noise's own (l2 Gaussian, l1 Laplace/uniform).
            target, max_n, radius_loss: deprecated. ``target="radius"`` forwards to
                :meth:`certify_planned` (``max_n`` default n) with a DeprecationWarning and returns
                its :class:`~smoothcert.certificate.PlannedCertificate`; call that method instead.
            on_rows: called with the number of noisy rows after each forward pass (n0 + n draws per
                input in all, plus fixed-shape padding): a progress bar inside a long call. No effect
                on the certificate.
        Returns:
            a :class:`~smoothcert.certificate.Certificate`: every input used n estimation draws.
        """
        if target == "radius":
            warnings.warn(
                "certify(target='radius') is deprecated; call certify_planned(x, n0=..., max_n=..., "
                "radius_loss=..., ...), which returns a PlannedCertificate",
                DeprecationWarning,
                stacklevel=2,
            )
            if two_class:
                raise InputError("target='radius' plans the one-class certificate; two_class is not supported")
            return self.certify_planned(x, n0=n0, max_n=n if max_n is None else max_n, alpha=alpha,
                                        batch_size=batch_size, radius_loss=radius_loss, generator=generator,
                                        norm=norm)
        if target != "fixed":
            raise InputError(f"target must be 'fixed' or 'radius', got {target!r}")
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
        x = self.as_batch(x)
        gen = make_generator(generator, self.device)
        dim = math.prod(x.shape[1:])
        batch_size = self.prepare(x, batch_size=batch_size, draws=(n0, n))  # probe and compile: not timed
        start = time.perf_counter()
        selection = self.counts(x, n=n0, batch_size=batch_size, generator=gen, on_rows=on_rows)
        c_a = selection.argmax(dim=1)
        counts = self.counts(x, n=n, batch_size=batch_size, generator=gen, on_rows=on_rows)
        # One host transfer for the whole batch, after all sampling is queued.
        counts, c_a = counts.cpu(), c_a.cpu()
        count_a, count_b, others = split_counts(counts, c_a)
        p_lower = torch.from_numpy(clopper_pearson_lower(count_a.numpy(), n, alpha_a))
        p_upper_b = None
        if two_class:
            alpha_b = bonferroni(alpha / 2, self.num_classes - 1)
            uppers = torch.from_numpy(clopper_pearson_upper(others.clamp_min(0).numpy(), n, alpha_b))
            p_upper_b = competitor_upper(uppers, c_a, p_lower)
        prediction, radius = decide(self.noise, c_a, p_lower, p_upper_b=p_upper_b, norm=norm, dim=dim)
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

    def certify_planned(
        self,
        x: Tensor,
        *,
        n0: int,
        max_n: int,
        alpha: float,
        batch_size: int | str,
        radius_loss: float,
        generator: int | torch.Generator | None = None,
        norm: str | None = None,
        plan_alpha: float = 0.05,
        grid: Sequence[int] | None = None,
    ) -> PlannedCertificate:
        """CERTIFY with the number of estimation draws planned per input: an n0-draw pilot picks
        cA and, per input, the fewest fresh draws (at most ``max_n``) whose radius is within
        ``radius_loss`` of max_n's. Same guarantee as :meth:`certify`; ``n_used`` per input. See
        :func:`smoothcert.adaptive.certify_planned`."""
        return adaptive.certify_planned(self, x, n0=n0, max_n=max_n, alpha=alpha, batch_size=batch_size,
                                        radius_loss=radius_loss, generator=generator, norm=norm,
                                        plan_alpha=plan_alpha, grid=grid)

    def certify_at(
        self,
        x: Tensor,
        radius: float | Sequence[float] | Tensor,
        *,
        n0: int,
        alpha: float,
        batch_size: int | str,
        stages: Sequence[int] | str = (1_000, 10_000, 100_000),
        max_n: int | None = None,
        generator: int | torch.Generator | None = None,
        norm: str | None = None,
    ) -> CertifyAtResult:
        """Is g certified at each of ``radius`` (one or several) for each input? A staged
        sequential test that stops as soon as every radius is decided; with probability at least
        1 - alpha per input every "certified" answer is right. ``stages="auto"`` with ``max_n``
        places the stages where unanimous draws first certify each radius. See
        :func:`smoothcert.adaptive.certify_at`."""
        return adaptive.certify_at(self, x, radius, n0=n0, alpha=alpha, batch_size=batch_size, stages=stages,
                                   max_n=max_n, generator=generator, norm=norm)
