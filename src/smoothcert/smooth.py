"""The smoothed classifier g(x) = argmax_c P(f(x + delta) = c), with PREDICT and CERTIFY.

Follows Cohen, Rosenfeld, Kolter 2019 (Algorithms "PREDICT" and "CERTIFY"), batch-first, on the
model's device, with any noise from :mod:`smoothcert.noise`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from .checks import as_batch, check_sample_sizes, ensure_eval, model_device
from .errors import CompileError, InputError, InputTypeError
from .noise import Noise, NoiseAware
from .rng import make_generator
from .sampling import (
    AUTO,
    AUTO_MAX_ROWS,
    AUTO_MEMORY_FRACTION,
    AUTO_MULTIPLE,
    CPU_BATCH_BYTES,
    auto_batch_size,
    check_batch_size,
    check_precision,
    fixed_rows,
    free_device_bytes,
    measure_row_bytes,
    sample_counts,
)
from .stats import (
    binomial_test_pvalue,
    bonferroni,
    check_alpha,
    clopper_pearson_lower,
    clopper_pearson_upper,
    min_samples_to_certify,
)

if TYPE_CHECKING:
    from .adaptive import CertifyAtResult

__all__ = ["ABSTAIN", "COMPILE_MODES", "Certificate", "CompileError", "SmoothedClassifier", "make_generator"]

#: Label returned when the smoothed classifier declines to answer.
ABSTAIN = -1


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
    n_used: Tensor | None = None  #: int64 [B], estimation draws per input when they vary (adaptive)

    def __post_init__(self) -> None:
        if self.n_used is None:
            self.n_used = torch.full_like(self.prediction, self.n)

    def __len__(self) -> int:
        return int(self.prediction.shape[0])

    @property
    def abstained(self) -> Tensor:
        return self.prediction == ABSTAIN


#: Modes of torch.compile the engine accepts (``compile_mode``); "reduce-overhead" uses CUDA graphs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _graph_steps(compiled: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``compiled`` preceded by ``torch.compiler.cudagraph_mark_step_begin()``: each pass is a new
    CUDA-graph step, so replaying a graph may overwrite the previous pass's output (the engine
    has consumed it by then) instead of raising that it is still in use."""

    def run(batch: Tensor) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(batch)

    return run


def split_counts(counts: Tensor, c_a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(count_a, count_b, others)`` from class counts ``[B, K]`` and the tested classes ``[B]``:
    the count of cA, the largest count of any other class, and the counts with cA's set to -1."""
    count_a = counts.gather(1, c_a[:, None]).squeeze(1)
    others = counts.scatter(1, c_a[:, None], -1)
    return count_a, others.max(dim=1).values.clamp_min(0), others


def decide(
    noise: Noise, c_a: Tensor, p_lower: Tensor, *, p_upper_b: Tensor | None = None, norm: str, dim: int
) -> tuple[Tensor, Tensor]:
    """``(prediction, radius)``: cA where pA_lower > 1/2 (or > pB_upper), else ABSTAIN; the
    noise's radius there and 0 elsewhere (:meth:`Noise.radius` already returns 0 where the bounds
    certify nothing)."""
    certified = p_lower > (0.5 if p_upper_b is None else p_upper_b)
    prediction = torch.where(certified, c_a, torch.full_like(c_a, ABSTAIN))
    return prediction, noise.radius(p_lower, norm=norm, p_upper_b=p_upper_b, dim=dim)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SmoothedClassifier:
    """g(x) = argmax_c P(f(x + delta) = c) for a base classifier f and a noise distribution.

    Args:
        base: f, a module mapping inputs in [0, 1] (normalization inside) to logits
            ``[B, num_classes]``; it is put in eval mode and never modified otherwise. A
            :class:`~smoothcert.noise.NoiseAware` base (``smoothcert.denoise.Denoised``) gives a
            UserWarning with its ``noise_mismatch(noise)`` message when it is not empty.
        noise: the smoothing distribution (see :func:`smoothcert.noise.get_noise`).
        num_classes: number of classes K.
        precision: arithmetic of f (fp32, tf32, bf16, fp16); part of the certified classifier.
        channels_last: feed image batches in channels-last memory layout (same values, faster
            convolutions); turn off for models that cannot take it.
        compile: evaluate f through ``torch.compile(base, dynamic=False)``, built once and kept.
            Each batch shape compiles once, on first use, in :meth:`warmup` (which certify and
            predict call themselves); warm-up time goes to :attr:`compile_seconds`, never into
            ``Certificate.seconds``. Needs a C++ compiler on CPU (5-20 s for LeNet) and Triton on
            GPU; a failure raises :class:`CompileError`. Meant for GPUs: on 2 CPU cores the
            compiled LeNet ran 1.5x *slower* than the eager channels-last one (84 vs 57 ms per
            256 rows; inductor's weight prepacking needs ``freezing``, which would bake the
            weights in and is not used).
        compile_mode: torch.compile's ``mode`` (:data:`COMPILE_MODES`); implies ``compile``.
            ``"reduce-overhead"`` replays each shape's kernels as one CUDA graph (GPU only; on
            CPU it compiles like ``"default"``), which saves the per-kernel launch cost that
            dominates small models at large batches; the engine marks a new graph step before
            every pass and uses each pass's output before the next (the graph reuses its output
            buffer). Recorded in :meth:`settings`.
        fixed_shape: all forward passes of a sampling call get the same number of rows
            (:func:`~smoothcert.sampling.fixed_rows`: the work split into equal passes of at most
            ``batch_size`` rows, padded by under 8 rows per pass with rows that are evaluated but
            never counted), so one compiled graph serves every pass of the call; CERTIFY uses two
            shapes (n0 and n draws), both compiled during the untimed warm-up. Default: on when
            ``compile`` is on.
        max_batch_bytes: memory budget of ``batch_size="auto"``: on CUDA the batch uses at most
            this and at most 70% of the free device memory; elsewhere this (default 56 MiB,
            which gives LeNet 256 rows, the fastest measured on 2 CPU cores).
        allow_unbounded: accept inputs outside [0, 1] with a warning instead of an error.
        bounded_inputs: False for a base whose inputs are unbounded vectors by design rather than
            images in [0, 1] (a head over a backbone's features, :mod:`smoothcert.lipschitz`):
            no range check and no warning; NaN/inf are still refused.

    Batch sizes: ``predict``/``certify`` take ``batch_size`` as rows per forward pass or
    ``"auto"`` (see :meth:`resolve_batch_size`); the rows used last are in
    :attr:`last_batch_size`. :meth:`settings` lists every engine setting for the run record.
    """

    def __init__(
        self,
        base: nn.Module,
        *,
        noise: Noise,
        num_classes: int,
        precision: str = "fp32",
        channels_last: bool = True,
        compile: bool = False,
        compile_mode: str | None = None,
        fixed_shape: bool | None = None,
        max_batch_bytes: int | None = None,
        allow_unbounded: bool = False,
        bounded_inputs: bool = True,
    ) -> None:
        if not isinstance(base, nn.Module):
            raise InputTypeError(f"base must be a torch.nn.Module, got {type(base).__name__}")
        if not isinstance(noise, Noise):
            raise InputTypeError("noise must be a smoothcert Noise; build one with get_noise(name, sigma=...)")
        if int(num_classes) != num_classes or num_classes < 2:
            raise InputError(f"num_classes must be an integer >= 2, got {num_classes}")
        if max_batch_bytes is not None and (int(max_batch_bytes) != max_batch_bytes or max_batch_bytes < 1):
            raise InputError(f"max_batch_bytes must be a positive integer (bytes), got {max_batch_bytes}")
        self.base = ensure_eval(base)
        self.noise = noise
        # A NoiseAware base (smoothcert.denoise.Denoised) says when it is made for another noise or sigma.
        problem = base.noise_mismatch(noise) if isinstance(base, NoiseAware) else ""
        if problem:
            warnings.warn(problem, UserWarning, stacklevel=2)
        self.num_classes = int(num_classes)
        self.precision = check_precision(precision)
        self.channels_last = bool(channels_last)
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise InputError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
        self.compile_mode = compile_mode
        self.compile = bool(compile) or compile_mode is not None
        self.fixed_shape = self.compile if fixed_shape is None else bool(fixed_shape)
        self.max_batch_bytes = None if max_batch_bytes is None else int(max_batch_bytes)
        self.allow_unbounded = allow_unbounded
        self.bounded_inputs = bool(bounded_inputs)
        if self.compile and not self.fixed_shape:
            warnings.warn(
                "compile=True with fixed_shape=False: every distinct last-chunk size compiles a new "
                "graph during the timed calls (torch stops recompiling after 8); keep fixed_shape on",
                stacklevel=2,
            )
        #: Seconds spent in :meth:`warmup` passes (torch.compile included), excluded from timings.
        self.compile_seconds = 0.0
        #: Rows per forward pass of the last sampling call (None before the first).
        self.last_batch_size: int | None = None
        #: ``batch_size="auto"`` choices, keyed by input shape and device ("1x28x28@cpu": 256).
        self.auto_batch_sizes: dict[str, int] = {}
        self._compiled: Callable[[Tensor], Tensor] | None = None
        self._warm: set[tuple[Any, ...]] = set()

    def __repr__(self) -> str:
        extra = ", compile=True" if self.compile else ""
        extra += f", compile_mode={self.compile_mode!r}" if self.compile_mode is not None else ""
        extra += f", fixed_shape={self.fixed_shape}" if self.fixed_shape != self.compile else ""
        extra += f", max_batch_bytes={self.max_batch_bytes}" if self.max_batch_bytes is not None else ""
        return (
            f"SmoothedClassifier(base={type(self.base).__name__}, noise={self.noise!r}, "
            f"num_classes={self.num_classes}, precision={self.precision!r}, "
            f"channels_last={self.channels_last}{extra})"
        )

    @property
    def device(self) -> torch.device:
        return model_device(self.base)

    def settings(self) -> dict[str, Any]:
        """Every engine setting, as a plain JSON-ready dict for a run's record. These decide the
        classifier evaluated (precision) or only the speed; measurements (the rows an automatic
        batch chose, compile time) are in :attr:`auto_batch_sizes`, :attr:`last_batch_size` and
        :attr:`compile_seconds`."""
        return {
            "precision": self.precision,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "compile_mode": self.compile_mode,
            "fixed_shape": self.fixed_shape,
            "max_batch_bytes": self.max_batch_bytes,
            "auto_batch_memory_fraction": AUTO_MEMORY_FRACTION,
            "auto_batch_multiple": AUTO_MULTIPLE,
            "auto_batch_max_rows": AUTO_MAX_ROWS,
        }

    # ---- engine ----

    def resolve_batch_size(self, x: Tensor, batch_size: int | str) -> int:
        """Rows per forward pass for inputs shaped like ``x`` (``[B, ...]``, validated).

        An integer is returned as is. ``"auto"``: on CUDA, :func:`smoothcert.sampling.auto_batch_size`
        of the per-row peak memory measured by two probe passes and of the free device memory
        (at most 70% of it, and at most ``max_batch_bytes``); elsewhere of an estimate of the
        noisy row plus activations and ``max_batch_bytes`` (default 56 MiB). A multiple of 64
        (when at least 64), at most 16,384, at least 1. Chosen once per input shape and device,
        then kept (:attr:`auto_batch_sizes`). The probes draw from their own generator.
        """
        batch_size = check_batch_size(batch_size)
        if batch_size != AUTO:
            return int(batch_size)
        device = self.device
        key = "x".join(str(d) for d in x.shape[1:]) + f"@{device}"
        if key not in self.auto_batch_sizes:
            per_row = measure_row_bytes(self.base, x, noise=self.noise, precision=self.precision,
                                        channels_last=self.channels_last)
            free = free_device_bytes(device)
            budget = self.max_batch_bytes
            if free is None and budget is None:
                budget = CPU_BATCH_BYTES
            self.auto_batch_sizes[key] = auto_batch_size(per_row, free_bytes=free, budget_bytes=budget)
        return self.auto_batch_sizes[key]

    def _forward(self) -> Callable[[Tensor], Tensor] | None:
        """The compiled base model (built on first use), or None for the plain one."""
        if not self.compile:
            return None
        if self._compiled is None:
            try:
                mode = {} if self.compile_mode is None else {"mode": self.compile_mode}
                compiled = torch.compile(self.base, dynamic=False, **mode)
            except Exception as e:  # e.g. "Dynamo is not supported on Python 3.x"
                raise CompileError(
                    f"torch.compile cannot wrap the base model ({type(e).__name__}: {e}); "
                    "construct the SmoothedClassifier with compile=False to run it uncompiled"
                ) from e
            if self.compile_mode == "reduce-overhead" and self.device.type == "cuda":
                self._compiled = _graph_steps(compiled)
            else:
                self._compiled = compiled
        return self._compiled

    def warmup(self, x_example: Tensor, *, batch_size: int | str) -> float:
        """Run one engine pass of ``batch_size`` rows on inputs shaped like ``x_example`` (three
        with CUDA graphs), so that torch.compile, CUDA-graph recording and cuDNN's algorithm
        choice happen now and not inside a timed call.

        ``x_example``: ``[B, ...]`` or one input, in [0, 1]; only its first input and its shape
        are used. Draws from a private generator: no caller's random stream is advanced. With
        compile on, a shape already warmed is skipped (returns 0.0). Returns the seconds spent,
        also added to :attr:`compile_seconds`. Raises :class:`CompileError` if torch.compile
        fails on a model that runs uncompiled.
        """
        x = as_batch(x_example, allow_unbounded=self.allow_unbounded, bounded=self.bounded_inputs)
        rows = self.resolve_batch_size(x, batch_size)
        key = (rows, tuple(x.shape[1:]), str(self.device))
        if self.compile and key in self._warm:
            return 0.0
        device = self.device
        gen = torch.Generator(device=device).manual_seed(0)
        _sync(device)
        start = time.perf_counter()
        # CUDA graphs (compile_mode "reduce-overhead") are recorded on a shape's second pass and
        # replayed from the third: all three belong to the warm-up.
        passes = 3 if self.compile_mode == "reduce-overhead" and device.type == "cuda" else 1
        try:
            for _ in range(passes):
                self._sample(x[:1], rows, rows, gen, fixed_shape=True)
            _sync(device)
        except CompileError:
            raise
        except Exception as e:
            if not self.compile:
                raise
            # The plain model raising too means the error is the model's, not the compiler's.
            self._sample(x[:1], 1, 1, gen, fixed_shape=True, compiled=False)
            first_line = (str(e).strip().splitlines() or [""])[0]
            raise CompileError(
                f"torch.compile failed on the base model ({type(e).__name__}: {first_line}); "
                "on CPU it needs a working C++ compiler (set CXX), on GPU Triton. "
                "Construct the SmoothedClassifier with compile=False to run it uncompiled."
            ) from e
        seconds = time.perf_counter() - start
        self._warm.add(key)
        self.compile_seconds += seconds
        return seconds

    def _start_engine(self, x: Tensor, batch_size: int | str, draws: Sequence[int] = ()) -> int:
        """Rows per forward pass for ``x`` (resolving "auto"), after warming up a compiled model
        for the pass shapes that ``draws`` per input will use (with fixed shapes, one per distinct
        :func:`~smoothcert.sampling.fixed_rows`). Call it *before* starting a clock: it may probe
        and compile."""
        rows = self.resolve_batch_size(x, batch_size)
        if self.compile:
            shapes = {fixed_rows(len(x) * d, rows) if self.fixed_shape else rows for d in draws} or {rows}
            for shape in sorted(shapes):
                self.warmup(x, batch_size=shape)
        return rows

    def _sample(
        self,
        x: Tensor,
        n: int,
        rows: int,
        generator: torch.Generator | None,
        *,
        fixed_shape: bool | None = None,
        compiled: bool = True,
    ) -> Tensor:
        """Engine call: counts ``[B, K]`` of n draws per input at ``rows`` rows per pass."""
        self.last_batch_size = rows
        return sample_counts(
            self.base,
            x,
            noise=self.noise,
            n=n,
            num_classes=self.num_classes,
            batch_size=rows,
            generator=generator,
            precision=self.precision,
            channels_last=self.channels_last,
            fixed_shape=self.fixed_shape if fixed_shape is None else fixed_shape,
            forward=self._forward() if compiled else None,
        )

    def _counts(self, x: Tensor, n: int, batch_size: int | str, generator: torch.Generator | None) -> Tensor:
        """Class counts ``[B, K]`` (on the model's device) of n draws per input. Call
        :meth:`_start_engine` first so that probing and compiling stay outside timings."""
        return self._sample(x, n, self.resolve_batch_size(x, batch_size), generator)

    def _prepare(self, x: Tensor, seed: int | torch.Generator | None) -> tuple[Tensor, torch.Generator | None]:
        ensure_eval(self.base)
        x = as_batch(x, allow_unbounded=self.allow_unbounded, bounded=self.bounded_inputs)
        return x, make_generator(seed, self.device)

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
        x, gen = self._prepare(x, generator)
        batch_size = self._start_engine(x, batch_size, draws=(n,))
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
        batch_size: int | str,
        generator: int | torch.Generator | None = None,
        norm: str | None = None,
        two_class: bool = False,
        target: str = "fixed",
        max_n: int | None = None,
        radius_loss: float = 0.02,
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
            batch_size: rows per forward pass, or "auto" (:meth:`resolve_batch_size`).
            generator: a ``torch.Generator`` or int seed; None uses torch's global RNG.
            norm: l1/l2/linf, default the noise's own (l2 Gaussian, l1 Laplace/uniform).
            target: "fixed" (n estimation draws) or "radius": an n0-draw pilot plans, per input,
                the smallest number of fresh draws (at most ``max_n``, default n) whose radius is
                within ``radius_loss`` of max_n's; same guarantee (see
                :func:`smoothcert.adaptive.certify_planned`; ``Certificate.n_used`` per input).
        """
        if target == "radius":
            if two_class:
                raise InputError("target='radius' plans the one-class certificate; two_class is not supported")
            from .adaptive import certify_planned  # adaptive builds on this module

            return certify_planned(self, x, n0=n0, max_n=n if max_n is None else max_n, alpha=alpha,
                                   batch_size=batch_size, radius_loss=radius_loss, generator=generator, norm=norm)
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
        x, gen = self._prepare(x, generator)
        dim = math.prod(x.shape[1:])
        batch_size = self._start_engine(x, batch_size, draws=(n0, n))  # probe and compile: not timed
        start = time.perf_counter()
        selection = self._counts(x, n0, batch_size, gen)
        c_a = selection.argmax(dim=1)
        counts = self._counts(x, n, batch_size, gen)
        # One host transfer for the whole batch, after all sampling is queued.
        counts, c_a = counts.cpu(), c_a.cpu()
        count_a, count_b, others = split_counts(counts, c_a)
        p_lower = torch.from_numpy(clopper_pearson_lower(count_a.numpy(), n, alpha_a))
        p_upper_b = None
        if two_class:
            alpha_b = bonferroni(alpha / 2, self.num_classes - 1)
            uppers = clopper_pearson_upper(others.clamp_min(0).numpy(), n, alpha_b)
            uppers[np.arange(len(c_a)), c_a.numpy()] = -np.inf  # cA is not a competitor
            p_upper_b = torch.from_numpy(np.minimum(uppers.max(axis=1), 1.0 - p_lower.numpy()))
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
        from .adaptive import certify_at

        return certify_at(self, x, radius, n0=n0, alpha=alpha, batch_size=batch_size, stages=stages,
                          max_n=max_n, generator=generator, norm=norm)
