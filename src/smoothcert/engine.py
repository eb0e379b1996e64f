"""The Monte Carlo engine: evaluate a base classifier f on many noisy copies of each input.

Work is laid out as ``B * n`` (input, draw) pairs cut into chunks of ``batch_size`` rows, so
several inputs share a batch when n is small (packing) and one input spans many batches when n
is large. Each call allocates one noise buffer of ``batch_size`` rows on the generator's device
and every chunk overwrites it in place (:meth:`Noise.sample_`), so memory is bounded by the
batch, never by n. With ``fixed_shape`` every forward pass has exactly ``batch_size`` rows (the
last chunk is padded with rows that are evaluated but never counted), which lets a compiled
graph be reused. Counts and probability sums stay on the model's device; the only host
synchronisation is the final read by the caller. :func:`auto_batch_size` chooses the rows per
pass from memory.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .checks import AUTO, check_batch_size, check_sample_sizes, ensure_eval, model_device
from .errors import InputError
from .noise import Noise

__all__ = [
    "AUTO",
    "PRECISIONS",
    "auto_batch_size",
    "check_batch_size",
    "check_precision",
    "fixed_rows",
    "free_device_bytes",
    "measure_row_bytes",
    "precision_context",
    "sample_counts",
    "sample_mean_probs",
]

#: Arithmetic the base classifier is evaluated in. The certificate is for the smoothed
#: version of the network *as evaluated*, so this is part of the classifier and is recorded.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def fixed_rows(total: int, batch_size: int, *, multiple: int = 8) -> int:
    """Rows per pass when every pass must have the same shape: as many passes as ``batch_size``
    allows, split evenly and rounded up to ``multiple`` (capped at ``batch_size``), so padding is
    at most ``multiple`` rows per pass instead of up to a whole batch (100,000 draws at a
    16,384-row cap: 7 passes of 14,288, 0.02% padding, not 8 of 16,384, 31%)."""
    passes = -(-total // batch_size)
    rows = -(-total // passes)
    return min(batch_size, -(-rows // multiple) * multiple)


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError listing them."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """Evaluate in ``precision``: fp32 (TF32 off), tf32 (TF32 matmul/conv on CUDA; same as fp32
    on CPU), bf16 or fp16 (torch.autocast on the device's type)."""
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


def _logits_per_chunk(
    model: nn.Module,
    x: Tensor,
    *,
    noise: Noise,
    n: int,
    batch_size: int,
    generator: torch.Generator | None,
    precision: str,
    channels_last: bool = True,
    fixed_shape: bool = False,
    forward: Callable[[Tensor], Tensor] | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(owner, logits)`` per chunk: owner[i] is the input index of row i, logits [b, K].

    With ``fixed_shape`` every chunk has exactly :func:`fixed_rows` ``(B * n, batch_size)`` rows (at
    most ``batch_size``, chosen so the passes divide the work up to a few rows); the rows past the
    B * n real ones (last chunk only) are padding: they hold the last input plus noise, are evaluated, and
    get owner B, which callers drop. The noise lives in one buffer allocated per call and
    overwritten by every chunk, so the caller must consume ``logits`` before asking for the next
    chunk (``forward`` may return a view of its input or a reused output buffer).
    """
    check_sample_sizes(n=n, batch_size=batch_size)
    ensure_eval(model)
    device = model_device(model)
    forward = model if forward is None else forward
    x = x.to(device=device, dtype=torch.float32)
    count = x.shape[0]
    # Noise is added in float32; a model stored in half precision gets its own dtype after.
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    gen_device = generator.device if generator is not None else device
    total = count * n
    rows = fixed_rows(total, batch_size) if fixed_shape else min(batch_size, total)
    # Images are drawn straight into channels-last layout ([b, H, W, C] viewed as [b, C, H, W]):
    # draws are i.i.d., so the layout is free, and convolutions and pooling run ~1.4x faster on
    # it on CPU (benchmarks/README.md); GPUs favour it for convolutions too (not yet measured here).
    nhwc = channels_last and x.ndim == 4
    shape = (*x.shape[2:], x.shape[1]) if nhwc else tuple(x.shape[1:])
    with torch.inference_mode(), precision_context(precision, device):
        # One noise buffer per call, on the generator's device; a generator on another device
        # than the model (CPU generator, CUDA model) adds a device buffer and a copy per chunk.
        buffer = torch.empty((rows, *shape), device=gen_device)
        staged = buffer if gen_device == device else torch.empty_like(buffer, device=device)
        row_ids = torch.arange(rows, device=device)
        for start in range(0, total, rows):
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
                owner.clamp_(max=count)  # padding rows -> owner B, dropped by the callers
            logits = forward(batch if dtype == torch.float32 else batch.to(dtype))
            if logits.ndim != 2:
                raise InputError(
                    f"the base model must return logits of shape [batch, num_classes]; got {tuple(logits.shape)}"
                )
            yield owner, logits


def _check_classes(logits: Tensor, num_classes: int) -> None:
    if logits.shape[1] != num_classes:
        raise InputError(
            f"the base model returns {logits.shape[1]} logits per input but num_classes={num_classes}"
        )


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
        fixed_shape: every forward pass gets exactly ``batch_size`` rows (the last chunk is
            padded; padding rows are evaluated but never counted), so a compiled graph is reused.
        forward: what evaluates a noisy batch, e.g. a compiled ``model``; default ``model``.
    Returns:
        int64 tensor ``[B, num_classes]`` on the model's device; each row sums to n. Draws of
        several inputs may share a forward pass (packing); each draw is counted for its own input.

    Nothing in the loop reads a device value on the host: on a GPU all chunks are queued and the
    caller's first read of the counts is the only synchronisation.
    """
    b = x.shape[0]
    # One spare row of counts (owner B) takes the padding rows of a fixed-shape last chunk.
    counts = torch.zeros((b + 1) * num_classes, dtype=torch.long, device=model_device(model))
    for owner, logits in _logits_per_chunk(
        model, x, noise=noise, n=n, batch_size=batch_size, generator=generator, precision=precision,
        channels_last=channels_last, fixed_shape=fixed_shape, forward=forward,
    ):
        _check_classes(logits, num_classes)
        flat = owner.mul_(num_classes).add_(logits.argmax(dim=1))
        counts.index_add_(0, flat, torch.ones_like(flat))
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
) -> Tensor:
    """Monte Carlo estimate of the smoothed soft classifier G(x) = E softmax f(x + delta).

    Same arguments as :func:`sample_counts`. Returns float64 ``[B, num_classes]``, rows sum to 1.
    """
    b = x.shape[0]
    sums = torch.zeros(b + 1, num_classes, dtype=torch.float64, device=model_device(model))
    for owner, logits in _logits_per_chunk(
        model, x, noise=noise, n=n, batch_size=batch_size, generator=generator, precision=precision,
        channels_last=channels_last, fixed_shape=fixed_shape, forward=forward,
    ):
        _check_classes(logits, num_classes)
        sums.index_add_(0, owner, logits.float().softmax(dim=1).double())
    return sums[:b] / n


# ------------------------------------------------------------------------------------------
# Automatic batch size
# ------------------------------------------------------------------------------------------

#: Share of the free device memory an automatic batch may use: the rest is headroom for the
#: allocator's fragmentation, cuDNN workspaces and other processes.
AUTO_MEMORY_FRACTION = 0.7
#: Automatic batches are a multiple of this many rows (whole warps/tiles on GPUs) ...
AUTO_MULTIPLE = 64
#: ... and at most this many (a cap, not a measured optimum; check it with benchmarks/certify_speed.py).
AUTO_MAX_ROWS = 16384
#: Default budget on CPU for the noisy batch plus activations. LeNet on 28x28 inputs needs
#: 0.199 MB per row by :func:`measure_row_bytes`, so 56 MiB gives 295 rows, rounded down to 256
#: (benchmarks/README.md: 125-250 rows were fastest on 2 cores, where the activations stay in a
#: 32 MB L3 cache; 1000 rows were 1.35x slower).
CPU_BATCH_BYTES = 56 * 2**20
#: Activation bytes assumed per input byte when a model hides its layers from forward hooks
#: (TorchScript): LeNet's measured ratio is 62.
OPAQUE_ACTIVATION_FACTOR = 64
#: Activations alive at once in a deep net, in units of its largest layer output (CPU estimate).
LIVE_OUTPUTS = 3
#: Row counts of the two probe passes on CUDA; the per-row memory is the slope between them.
PROBE_ROWS = (16, 64)


def auto_batch_size(
    per_row_bytes: float,
    *,
    free_bytes: float | None = None,
    budget_bytes: float | None = None,
    fraction: float = AUTO_MEMORY_FRACTION,
    multiple: int = AUTO_MULTIPLE,
    max_rows: int = AUTO_MAX_ROWS,
) -> int:
    """Rows per forward pass that fit in memory (a pure function of the measurements).

    The budget is ``fraction * free_bytes`` (free device memory) and ``budget_bytes`` (an explicit
    limit), the smaller of those given. Rows = budget // per_row_bytes, rounded down to a multiple
    of ``multiple`` when there are at least that many, capped at ``max_rows``, and never below 1
    (a model too large for the budget still runs one row at a time).

    Example: 200 kB per row and 56 MiB give 293 rows -> 256.
    """
    if not math.isfinite(per_row_bytes) or per_row_bytes <= 0:
        raise InputError(f"per_row_bytes must be positive and finite, got {per_row_bytes}")
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    if multiple < 1 or max_rows < 1:
        raise InputError("multiple and max_rows must be positive")
    budgets = []
    if free_bytes is not None:
        budgets.append(fraction * max(float(free_bytes), 0.0))
    if budget_bytes is not None:
        if budget_bytes <= 0:
            raise InputError(f"the memory budget must be positive, got {budget_bytes}")
        budgets.append(float(budget_bytes))
    if not budgets:
        raise InputError("give free_bytes (free device memory) or budget_bytes (a limit), or both")
    rows = int(min(budgets) // per_row_bytes)
    if rows >= multiple:
        rows -= rows % multiple
    return max(1, min(rows, max_rows))


def measure_row_bytes(
    model: nn.Module,
    x: Tensor,
    *,
    noise: Noise,
    precision: str = "fp32",
    channels_last: bool = True,
) -> float:
    """Memory one noisy row costs in a forward pass of ``model`` on inputs shaped like ``x[0]``.

    CUDA: measured. Two engine passes of :data:`PROBE_ROWS` rows (noise buffer, gather, model
    at ``precision``, counting) each record their peak of ``torch.cuda.max_memory_allocated``
    above the memory already allocated; the slope between them is the per-row cost (the model's
    weights and fixed workspaces cancel out).
    Other devices: estimated from the distinct tensors the leaf modules output on a 2-row
    forward pass: the float32 noisy row plus the live activations, taken as the smaller of the
    sum of all outputs (everything alive at once: right for shallow nets) and
    :data:`LIVE_OUTPUTS` times the largest output (a layer's input, its output and a kept
    residual: right for deep nets, where the sum would count 100 layers that are never alive
    together). A model whose layers forward hooks cannot see (TorchScript) counts
    :data:`OPAQUE_ACTIVATION_FACTOR` times the row. LeNet: 0.199 MB (sum); CIFAR ResNet-110:
    0.209 MB (3 x 64 kB), where the sum would say 8.5 MB.

    Uses its own generator: the caller's random stream is not advanced. Returns bytes per row.
    """
    ensure_eval(model)
    device = model_device(model)
    x1 = x[:1].to(device=device, dtype=torch.float32)
    row_bytes = 4.0 * x1[0].numel()
    if device.type == "cuda":
        return _probe_cuda(model, x1, noise=noise, precision=precision, channels_last=channels_last, floor=row_bytes)
    outputs: dict[int, int] = {}
    kept: list[Tensor] = []  # held so that freed memory is not reused and counted twice

    def hook(module: nn.Module, args: object, out: object) -> None:
        if isinstance(out, Tensor):
            kept.append(out)
            outputs[out.untyped_storage().data_ptr()] = out.untyped_storage().nbytes()

    handles = []
    try:
        for m in model.modules():
            if next(m.children(), None) is None:
                handles.append(m.register_forward_hook(hook))
    except (AttributeError, RuntimeError, TypeError):  # TorchScript modules take no hooks
        handles, outputs = [], {}
    try:
        probe = x1.expand(2, *x1.shape[1:]).contiguous()
        with torch.inference_mode(), precision_context(precision, device):
            model(probe)
    finally:
        for h in handles:
            h.remove()
    if not outputs:
        return row_bytes * (1 + OPAQUE_ACTIVATION_FACTOR)
    live = min(sum(outputs.values()), LIVE_OUTPUTS * max(outputs.values()))
    return row_bytes + live / 2


def _probe_cuda(
    model: nn.Module, x1: Tensor, *, noise: Noise, precision: str, channels_last: bool, floor: float
) -> float:
    device = model_device(model)
    gen = torch.Generator(device=device).manual_seed(0)
    peaks = []
    for rows in PROBE_ROWS:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _, logits in _logits_per_chunk(
            model, x1, noise=noise, n=rows, batch_size=rows, generator=gen, precision=precision,
            channels_last=channels_last,
        ):
            logits.argmax(dim=1)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - before)
    slope = (peaks[1] - peaks[0]) / (PROBE_ROWS[1] - PROBE_ROWS[0])
    # Allocator rounding can hide a tiny model's slope; never assume less than the average of
    # the larger probe or the noisy row itself. A packed chunk also gathers a copy of the
    # inputs ([b, ...], one more row each), which a one-input probe does not.
    return float(max(slope, peaks[1] / PROBE_ROWS[1], floor) + floor)


def free_device_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA ``device``: the driver's free bytes plus what torch's caching
    allocator holds unused (reserved but not allocated). None on other devices."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
