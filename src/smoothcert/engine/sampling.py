"""Noisy forward passes: f evaluated on chunks of (input, draw) rows, and the classification counts
and probability sums built on them (see :mod:`smoothcert.engine`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from ..checks import check_sample_sizes, ensure_eval, model_device
from ..errors import InputError
from ..noise import Noise
from ..ops import upcast_logits

#: the network *as evaluated*, so this is part of the classifier and is recorded.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

#: Dtypes the noise may be drawn in (``noise_dtype``). "float64" (the default) is exact far below
#: any alpha: torch's float32 samplers build draws from 24-bit uniforms, so float32 Gaussian noise
#: never exceeds sqrt(48 ln 2) = 5.768 sigma (3e9 draws, issue #16) -- a truncated law whose
#: total-variation distance to N(0, sigma^2 I) is >= 1.2e-3 per sample at d = 150,528, above
#: alpha = 0.001. float64 draws come from 53-bit uniforms (tail to 8.57 sigma). "float32" is the
#: old, faster path, kept as an explicit option (docs/soundness.md).
NOISE_DTYPES = ("float64", "float32")

#: Modes of compilation the engine accepts (``compile_mode``): torch.compile's own modes
#: ("reduce-overhead" uses CUDA graphs) and "frozen": the default mode with inductor's
#: ``freezing``, the weights folded into the graph as constants (Engine docs).
COMPILE_MODES = ("default", "frozen", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def fixed_rows(total: int, batch_size: int, *, multiple: int = 8) -> int:
    """Rows per pass when every pass must have the same shape: as many passes as ``batch_size``
    allows, split evenly and rounded up to ``multiple`` (capped at ``batch_size``), so padding is
    at most ``multiple`` rows per pass instead of up to a whole batch (100,000 draws at a
    16,384-row cap: 7 passes of 14,288, 0.02% padding, not 8 of 16,384, 31%)."""
    passes = -(-total // batch_size)
    rows = -(-total // passes)
    return min(batch_size, -(-rows // multiple) * multiple)


def check_noise_dtype(noise_dtype: str) -> str:
    """``noise_dtype`` if it is one of :data:`NOISE_DTYPES`, else an InputError listing them."""
    if noise_dtype not in NOISE_DTYPES:
        raise InputError(f"unknown noise_dtype {noise_dtype!r}; choose one of {', '.join(NOISE_DTYPES)}")
    return noise_dtype


def noise_work_dtype(noise_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The dtype noise is drawn in and x + delta formed in: float64 for ``noise_dtype="float64"``
    or a float64 model, else float32. (Rows written before issue #16 were drawn in float32; the
    legacy-resume tests patch this function to re-draw them exactly.)"""
    return torch.float64 if noise_dtype == "float64" or model_dtype == torch.float64 else torch.float32


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else an InputError listing them."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """Evaluate in ``precision``: fp32 (TF32 off), tf32 (TF32 matmul/conv on CUDA; same as fp32
    on CPU), bf16 or fp16 (torch.autocast on the device's type).

    The TF32 switches are process-wide: they are set on entry and restored on exit, so keep the
    block around the forward pass only, never around a ``yield`` (code running while a generator
    is suspended would see them).
    """
    check_precision(precision)
    cuda = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (cuda[0].allow_tf32, cuda[1].allow_tf32)
    tf32 = precision == "tf32"
    cuda[0].allow_tf32 = tf32
    cuda[1].allow_tf32 = tf32
    try:
        if precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield
        else:
            yield
    finally:
        cuda[0].allow_tf32, cuda[1].allow_tf32 = saved


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter or buffer; float32 if none."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def noisy_outputs(
    model: nn.Module,
    x: Tensor,
    *,
    noise: Noise,
    n: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    channels_last: bool = True,
    fixed_shape: bool = False,
    forward: Callable[[Tensor], Tensor] | None = None,
    noise_dtype: str = "float64",
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(owner, outputs)`` per chunk of noisy rows: ``owner`` int64 ``[b]`` is the input
    index of row i, ``outputs`` is ``forward(x[owner] + delta)`` ``[b, ...]``, whatever f returns
    (logits, images): no shape is checked here.

    Args:
        model: f, switched to eval mode; its device is where the work runs.
        x: inputs ``[B, ...]`` (already validated), any device; moved to the model's device.
        noise, n, generator: n fresh draws of ``noise`` per input from ``generator`` (on the
            model's device or on the CPU; None: the device's default generator).
        batch_size: rows per forward pass (draws of several inputs may share one).
        precision: arithmetic of the forward pass (:data:`PRECISIONS`), set around each
            forward pass and restored before the chunk is yielded.
        channels_last: draw 4-D batches in channels-last layout (same values).
        fixed_shape: every chunk has exactly :func:`fixed_rows` ``(B * n, batch_size)`` rows (at
            most ``batch_size``); the rows past the B * n real ones (last chunk only) are padding:
            they hold the last input plus noise, are evaluated, and get owner B, which consumers
            drop.
        forward: what evaluates a noisy batch, e.g. a compiled ``model``; default ``model``.
        noise_dtype: "float64" (default): delta is drawn and x + delta formed in float64, then
            rounded once to the model's dtype, so the model sees round(x + delta) with delta
            from 53-bit uniforms (docs/soundness.md: f o round is a fixed base classifier, and
            the certificate holds for it). "float32": the faster float32 draws, whose Gaussian
            tail stops at 5.768 sigma (a truncated law; see :data:`NOISE_DTYPES`).

    A float64 model always gets float64 noise; a half-precision model gets the noisy input cast
    to its own dtype. The noise lives in
    one buffer allocated per call and overwritten by every chunk, so a consumer must use
    ``outputs`` before asking for the next chunk (``forward`` may return a view of its input or a
    reused output buffer). Yielded tensors are inference tensors: consume them under
    ``torch.inference_mode()`` (as the counting functions do) or with out-of-place operations.
    Nothing reads a device value on the host.
    """
    check_sample_sizes(n=n, batch_size=batch_size)
    check_precision(precision)
    check_noise_dtype(noise_dtype)
    ensure_eval(model)
    device = model_device(model)
    forward = model if forward is None else forward
    model_dtype = _model_dtype(model)
    work = noise_work_dtype(noise_dtype, model_dtype)
    x = x.to(device=device, dtype=work)
    count = x.shape[0]
    gen_device = generator.device if generator is not None else device
    total = count * n
    rows = fixed_rows(total, batch_size) if fixed_shape else min(batch_size, total)
    # Images are drawn straight into channels-last layout ([b, H, W, C] viewed as [b, C, H, W]):
    # draws are i.i.d., so the layout is free, and convolutions and pooling run ~1.4x faster on
    # it on CPU (benchmarks/README.md); GPUs favour it for convolutions too (not yet measured here).
    nhwc = channels_last and x.ndim == 4
    shape = (*x.shape[2:], x.shape[1]) if nhwc else tuple(x.shape[1:])
    # Grad mode and precision are thread- and process-wide states: they are entered per chunk and
    # left before each yield, so nothing leaks into the consumer's code between chunks.
    with torch.inference_mode():
        # One noise buffer per call, on the generator's device; a generator on another device
        # than the model (CPU generator, CUDA model) adds a device buffer and a copy per chunk.
        buffer = torch.empty((rows, *shape), device=gen_device, dtype=work)
        staged = buffer if gen_device == device else torch.empty_like(buffer, device=device)
        row_ids = torch.arange(rows, device=device)
    for start in range(0, total, rows):
        with torch.inference_mode():
            b = rows if fixed_shape else min(rows, total - start)
            delta = noise.sample_(buffer[:b], generator=generator)  # a contiguous view
            if staged is not buffer:
                delta = staged[:b].copy_(delta)
            if nhwc:
                delta = delta.permute(0, 3, 1, 2)
            owner = (row_ids[:b] + start).floor_divide_(n)
            first, last = start // n, (start + b - 1) // n  # Python ints: no device sync
            # A chunk inside one input (always, when n >= batch_size) broadcasts x instead of
            # gathering a [b, ...] copy of it. Padding rows gather the last input.
            if first == last and last < count:
                batch = delta.add_(x[first])
            else:
                batch = delta.add_(x[owner.clamp(max=count - 1)])
            if last >= count:
                owner.clamp_(max=count)  # padding rows -> owner B, dropped by the consumers
            with precision_context(precision, device):
                outputs = forward(batch if model_dtype == work else batch.to(model_dtype))
        yield owner, outputs


def _check_logits(logits: Tensor, num_classes: int) -> None:
    if logits.ndim != 2:
        raise InputError(f"the base model must return logits of shape [batch, num_classes]; got {tuple(logits.shape)}")
    if logits.shape[1] != num_classes:
        raise InputError(f"the base model returns {logits.shape[1]} logits per input but num_classes={num_classes}")


def sample_counts(
    model: nn.Module,
    x: Tensor,
    *,
    noise: Noise,
    n: int,
    num_classes: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    channels_last: bool = True,
    fixed_shape: bool = False,
    forward: Callable[[Tensor], Tensor] | None = None,
    on_rows: Callable[[int], None] | None = None,
    noise_dtype: str = "float64",
) -> Tensor:
    """How often each class is the argmax of f(x_i + delta) over n fresh draws per input.

    Args:
        model: base classifier returning logits ``[b, num_classes]``; switched to eval mode.
        x: inputs ``[B, ...]`` (already validated), any device; moved to the model's device.
        noise: the smoothing distribution.
        n: draws per input.
        batch_size: rows per forward pass (draws of several inputs may share one).
        generator: source of the noise; on the model's device or on the CPU.
        precision: arithmetic of the model (see :data:`PRECISIONS`).
        channels_last: lay out 4-D noisy batches channels-last (faster convolutions; the
            model sees the same values).
        fixed_shape: every forward pass gets the same number of rows (the last chunk is
            padded; padding rows are evaluated but never counted), so a compiled graph is reused.
        forward: what evaluates a noisy batch, e.g. a compiled ``model``; default ``model``.
        noise_dtype: "float64" (exact, default) or "float32" (fast, truncated Gaussian tail); see
            :func:`noisy_outputs`.
    Returns:
        int64 tensor ``[B, num_classes]`` on the model's device; each row sums to n. Draws of
        several inputs may share a forward pass (packing); each draw is counted for its own input.

    Nothing in the loop reads a device value on the host: on a GPU all chunks are queued and the
    caller's first read of the counts is the only synchronisation.
    """
    b = x.shape[0]
    # One spare row of counts (owner B) takes the padding rows of a fixed-shape last chunk. Made
    # outside inference mode, so callers get an ordinary tensor they may modify in place.
    counts = torch.zeros((b + 1) * num_classes, dtype=torch.long, device=model_device(model))
    with torch.inference_mode():
        for owner, logits in noisy_outputs(
            model, x, noise=noise, n=n, batch_size=batch_size, generator=generator, precision=precision,
            channels_last=channels_last, fixed_shape=fixed_shape, forward=forward, noise_dtype=noise_dtype,
        ):
            _check_logits(logits, num_classes)
            flat = owner.mul_(num_classes).add_(logits.argmax(dim=1))
            counts.index_add_(0, flat, torch.ones_like(flat))
            if on_rows is not None:  # a Python int from the shape: no device sync
                on_rows(flat.shape[0])
    return counts[: b * num_classes].view(b, num_classes)


def sample_mean_probs(
    model: nn.Module,
    x: Tensor,
    *,
    noise: Noise,
    n: int,
    num_classes: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    precision: str = "fp32",
    channels_last: bool = True,
    fixed_shape: bool = False,
    forward: Callable[[Tensor], Tensor] | None = None,
    noise_dtype: str = "float64",
) -> Tensor:
    """Monte Carlo estimate of the smoothed soft classifier G(x) = E softmax f(x + delta).

    Same arguments as :func:`sample_counts`. Returns float64 ``[B, num_classes]``, rows sum to 1.
    The softmax is taken in float32, or float64 for float64 logits (:func:`~smoothcert.ops.upcast_logits`).
    """
    b = x.shape[0]
    sums = torch.zeros(b + 1, num_classes, dtype=torch.float64, device=model_device(model))
    with torch.inference_mode():
        for owner, logits in noisy_outputs(
            model, x, noise=noise, n=n, batch_size=batch_size, generator=generator, precision=precision,
            channels_last=channels_last, fixed_shape=fixed_shape, forward=forward, noise_dtype=noise_dtype,
        ):
            _check_logits(logits, num_classes)
            sums.index_add_(0, owner, upcast_logits(logits).softmax(dim=1).double())
    return sums[:b] / n


