"""The Monte Carlo engine: evaluate a base model f on many noisy copies of each input.

Work is laid out as ``B * n`` (input, draw) pairs cut into chunks of ``batch_size`` rows, so
several inputs share a batch when n is small (packing) and one input spans many batches when n
is large. Each call allocates one noise buffer of ``batch_size`` rows on the generator's device
and every chunk overwrites it in place (:meth:`Noise.sample_`), so memory is bounded by the
batch, never by n. With ``fixed_shape`` every forward pass has exactly the same number of rows
(the last chunk is padded with rows that are evaluated but never counted), which lets a compiled
graph be reused. Counts and probability sums stay on the model's device; the only host
synchronisation is the final read by the caller.

Layers: :func:`noisy_outputs` yields ``(owner, outputs)`` per chunk for any model (logits or
images); :func:`sample_counts` and :func:`sample_mean_probs` are the classification consumers.
:class:`Engine` holds the settings that decide how f is evaluated (precision, layout,
compilation, fixed shapes, memory budget of ``batch_size="auto"``) and their state (the compiled
model, shapes already warmed, automatic batch sizes, compile time).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .checks import AUTO, check_batch_size, check_sample_sizes, ensure_eval, model_device
from .errors import CompileError, InputError
from .noise import Noise
from .ops import upcast_logits

__all__ = [
    "AUTO",
    "COMPILE_MODES",
    "PRECISIONS",
    "Engine",
    "auto_batch_size",
    "check_batch_size",
    "check_precision",
    "fixed_rows",
    "free_device_bytes",
    "measure_row_bytes",
    "noisy_outputs",
    "precision_context",
    "sample_counts",
    "sample_mean_probs",
]

#: Arithmetic the base model is evaluated in. The certificate is for the smoothed version of
#: the network *as evaluated*, so this is part of the classifier and is recorded.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

#: Modes of torch.compile the engine accepts (``compile_mode``); "reduce-overhead" uses CUDA graphs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def fixed_rows(total: int, batch_size: int, *, multiple: int = 8) -> int:
    """Rows per pass when every pass must have the same shape: as many passes as ``batch_size``
    allows, split evenly and rounded up to ``multiple`` (capped at ``batch_size``), so padding is
    at most ``multiple`` rows per pass instead of up to a whole batch (100,000 draws at a
    16,384-row cap: 7 passes of 14,288, 0.02% padding, not 8 of 16,384, 31%)."""
    passes = -(-total // batch_size)
    rows = -(-total // passes)
    return min(batch_size, -(-rows // multiple) * multiple)


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

    The noisy input is formed in float32, or float64 for a float64 model (so its input is not
    rounded to 24 bits); a half-precision model gets it cast to its own dtype. The noise lives in
    one buffer allocated per call and overwritten by every chunk, so a consumer must use
    ``outputs`` before asking for the next chunk (``forward`` may return a view of its input or a
    reused output buffer). Yielded tensors are inference tensors: consume them under
    ``torch.inference_mode()`` (as the counting functions do) or with out-of-place operations.
    Nothing reads a device value on the host.
    """
    check_sample_sizes(n=n, batch_size=batch_size)
    check_precision(precision)
    ensure_eval(model)
    device = model_device(model)
    forward = model if forward is None else forward
    model_dtype = _model_dtype(model)
    work = torch.float64 if model_dtype == torch.float64 else torch.float32
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
            channels_last=channels_last, fixed_shape=fixed_shape, forward=forward,
        ):
            _check_logits(logits, num_classes)
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
    The softmax is taken in float32, or float64 for float64 logits (:func:`~smoothcert.ops.upcast_logits`).
    """
    b = x.shape[0]
    sums = torch.zeros(b + 1, num_classes, dtype=torch.float64, device=model_device(model))
    with torch.inference_mode():
        for owner, logits in noisy_outputs(
            model, x, noise=noise, n=n, batch_size=batch_size, generator=generator, precision=precision,
            channels_last=channels_last, fixed_shape=fixed_shape, forward=forward,
        ):
            _check_logits(logits, num_classes)
            sums.index_add_(0, owner, upcast_logits(logits).softmax(dim=1).double())
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
    forward pass: the noisy row (float32; float64 for a float64 model) plus the live activations,
    taken as the smaller of the sum of all outputs (everything alive at once: right for shallow nets) and
    :data:`LIVE_OUTPUTS` times the largest output (a layer's input, its output and a kept
    residual: right for deep nets, where the sum would count 100 layers that are never alive
    together). A model whose layers forward hooks cannot see (TorchScript) counts
    :data:`OPAQUE_ACTIVATION_FACTOR` times the row. LeNet: 0.199 MB (sum); CIFAR ResNet-110:
    0.209 MB (3 x 64 kB), where the sum would say 8.5 MB.

    Uses its own generator: the caller's random stream is not advanced. Returns bytes per row.
    """
    ensure_eval(model)
    device = model_device(model)
    dtype = _model_dtype(model)
    x1 = x[:1].to(device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    row_bytes = float(x1.element_size() * x1[0].numel())
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
        probe = x1.expand(2, *x1.shape[1:]).to(dtype).contiguous()
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
        with torch.inference_mode():
            for _, outputs in noisy_outputs(
                model, x1, noise=noise, n=rows, batch_size=rows, generator=gen, precision=precision,
                channels_last=channels_last,
            ):
                outputs.flatten(1).argmax(dim=1)  # what counting allocates per row
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


# ------------------------------------------------------------------------------------------
# The engine object: settings and state
# ------------------------------------------------------------------------------------------


def _graph_steps(compiled: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``compiled`` preceded by ``torch.compiler.cudagraph_mark_step_begin()``: each pass is a new
    CUDA-graph step, so replaying a graph may overwrite the previous pass's output (the engine
    has consumed it by then) instead of raising that it is still in use."""

    def run(batch: Tensor) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(batch)

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _ModelState:
    """What an :class:`Engine` keeps per model it serves (held strongly, so an id is never reused)."""

    model: nn.Module
    compiled: Callable[[Tensor], Tensor] | None = None
    warm: set[tuple[Any, ...]] = field(default_factory=set)  #: (rows, input shape, device) warmed
    auto: dict[str, int] = field(default_factory=dict)  #: "1x28x28@cpu" -> rows


class Engine:
    """How a base model f is evaluated on noisy copies: the settings and what they cost.

    Args:
        precision: arithmetic of f (:data:`PRECISIONS`: fp32, tf32, bf16, fp16). Part of the
            certified classifier: the certificate holds for the network as evaluated.
        channels_last: feed image batches in channels-last memory layout (same values, faster
            convolutions); turn off for models that cannot take it.
        compile: evaluate f through ``torch.compile(model, dynamic=False)``, built once per model
            and kept. Each batch shape compiles once, on first use, in :meth:`warmup` (which
            :meth:`prepare` calls before any clock starts); warm-up time goes to
            :attr:`compile_seconds`. Needs a C++ compiler on CPU and Triton on GPU; a failure
            raises :class:`~smoothcert.errors.CompileError`. Meant for GPUs: on 2 CPU cores the
            compiled LeNet ran 1.5x slower than the eager channels-last one (benchmarks/README.md).
        compile_mode: torch.compile's ``mode`` (:data:`COMPILE_MODES`); implies ``compile``.
            ``"reduce-overhead"`` replays each shape's kernels as one CUDA graph (GPU only; on CPU
            it compiles like ``"default"``); the engine marks a new graph step before every pass
            and uses each pass's output before the next (the graph reuses its output buffer).
        fixed_shape: all forward passes of a sampling call get the same number of rows
            (:func:`fixed_rows`: the work split into equal passes of at most ``batch_size`` rows,
            padded by under 8 rows per pass with rows that are evaluated but never counted), so
            one compiled graph serves every pass of the call. Default: on when ``compile`` is on.
        max_batch_bytes: memory budget of ``batch_size="auto"``: on CUDA the batch uses at most
            this and at most 70% of the free device memory; elsewhere this (default
            :data:`CPU_BATCH_BYTES`, 56 MiB).

    State (measurements, not settings): :attr:`compile_seconds`, :attr:`last_batch_size`,
    :attr:`auto_batch_sizes`; compiled models and warmed shapes are kept per model, so one
    engine may serve several models.
    """

    def __init__(
        self,
        *,
        precision: str = "fp32",
        channels_last: bool = True,
        compile: bool = False,
        compile_mode: str | None = None,
        fixed_shape: bool | None = None,
        max_batch_bytes: int | None = None,
    ) -> None:
        if max_batch_bytes is not None and (
            isinstance(max_batch_bytes, bool) or int(max_batch_bytes) != max_batch_bytes or max_batch_bytes < 1
        ):
            raise InputError(f"max_batch_bytes must be a positive integer (bytes), got {max_batch_bytes}")
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise InputError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
        self.precision = check_precision(precision)
        self.channels_last = bool(channels_last)
        self.compile_mode = compile_mode
        self.compile = bool(compile) or compile_mode is not None
        self.fixed_shape = self.compile if fixed_shape is None else bool(fixed_shape)
        self.max_batch_bytes = None if max_batch_bytes is None else int(max_batch_bytes)
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
        self._models: dict[int, _ModelState] = {}

    def __repr__(self) -> str:
        extra = ", compile=True" if self.compile else ""
        extra += f", compile_mode={self.compile_mode!r}" if self.compile_mode is not None else ""
        extra += f", fixed_shape={self.fixed_shape}" if self.fixed_shape != self.compile else ""
        extra += f", max_batch_bytes={self.max_batch_bytes}" if self.max_batch_bytes is not None else ""
        return f"Engine(precision={self.precision!r}, channels_last={self.channels_last}{extra})"

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

    def _state(self, model: nn.Module) -> _ModelState:
        state = self._models.get(id(model))
        if state is None:
            state = self._models[id(model)] = _ModelState(model)
        return state

    # ---- batch size, compilation, warm-up ----

    def resolve_batch_size(self, model: nn.Module, x: Tensor, noise: Noise, batch_size: int | str) -> int:
        """Rows per forward pass for inputs shaped like ``x`` (``[B, ...]``, validated).

        An integer is returned as is. ``"auto"``: on CUDA, :func:`auto_batch_size` of the per-row
        peak memory measured by two probe passes (:func:`measure_row_bytes`) and of the free device
        memory (at most 70% of it, and at most ``max_batch_bytes``); elsewhere of an estimate of the
        noisy row plus activations and ``max_batch_bytes`` (default 56 MiB). A multiple of 64
        (when at least 64), at most 16,384, at least 1. Chosen once per model, input shape and
        device, then kept (:attr:`auto_batch_sizes`). The probes draw from their own generator.
        """
        batch_size = check_batch_size(batch_size)
        if batch_size != AUTO:
            return int(batch_size)
        device = model_device(model)
        key = "x".join(str(d) for d in x.shape[1:]) + f"@{device}"
        state = self._state(model)
        if key not in state.auto:
            per_row = measure_row_bytes(model, x, noise=noise, precision=self.precision,
                                        channels_last=self.channels_last)
            free = free_device_bytes(device)
            budget = self.max_batch_bytes
            if free is None and budget is None:
                budget = CPU_BATCH_BYTES
            state.auto[key] = auto_batch_size(per_row, free_bytes=free, budget_bytes=budget)
        self.auto_batch_sizes[key] = state.auto[key]
        return state.auto[key]

    def forward(self, model: nn.Module) -> Callable[[Tensor], Tensor] | None:
        """The compiled ``model`` (built on first use, then kept), or None without ``compile``."""
        if not self.compile:
            return None
        state = self._state(model)
        if state.compiled is None:
            try:
                mode = {} if self.compile_mode is None else {"mode": self.compile_mode}
                compiled = torch.compile(model, dynamic=False, **mode)
            except Exception as e:  # e.g. "Dynamo is not supported on Python 3.x"
                raise CompileError(
                    f"torch.compile cannot wrap the base model ({type(e).__name__}: {e}); "
                    "use compile=False to run it uncompiled"
                ) from e
            if self.compile_mode == "reduce-overhead" and model_device(model).type == "cuda":
                compiled = _graph_steps(compiled)
            state.compiled = compiled
        return state.compiled

    def warmup(self, model: nn.Module, x: Tensor, noise: Noise, *, batch_size: int | str) -> float:
        """Run one engine pass of ``batch_size`` rows on inputs shaped like ``x`` (three with CUDA
        graphs), so that torch.compile, CUDA-graph recording and cuDNN's algorithm choice happen
        now and not inside a timed call.

        ``x``: ``[B, ...]``, validated; only its first input and its shape are used. Draws from a
        private generator: no caller's random stream is advanced. With compile on, a shape already
        warmed for this model is skipped (returns 0.0). Returns the seconds spent, also added to
        :attr:`compile_seconds`. Raises :class:`CompileError` if torch.compile fails on a model
        that runs uncompiled.
        """
        rows = self.resolve_batch_size(model, x, noise, batch_size)
        device = model_device(model)
        state = self._state(model)
        key = (rows, tuple(x.shape[1:]), str(device))
        if self.compile and key in state.warm:
            return 0.0
        gen = torch.Generator(device=device).manual_seed(0)
        _sync(device)
        start = time.perf_counter()
        # CUDA graphs (compile_mode "reduce-overhead") are recorded on a shape's second pass and
        # replayed from the third: all three belong to the warm-up.
        passes = 3 if self.compile_mode == "reduce-overhead" and device.type == "cuda" else 1
        try:
            for _ in range(passes):
                self._run_through(model, x[:1], noise, rows, gen, forward=self.forward(model))
            _sync(device)
        except CompileError:
            raise
        except Exception as e:
            if not self.compile:
                raise
            # The plain model raising too means the error is the model's, not the compiler's.
            self._run_through(model, x[:1], noise, 1, gen, forward=None)
            first_line = (str(e).strip().splitlines() or [""])[0]
            raise CompileError(
                f"torch.compile failed on the base model ({type(e).__name__}: {first_line}); "
                "on CPU it needs a working C++ compiler (set CXX), on GPU Triton. "
                "Use compile=False to run it uncompiled."
            ) from e
        seconds = time.perf_counter() - start
        state.warm.add(key)
        self.compile_seconds += seconds
        return seconds

    def _run_through(
        self, model: nn.Module, x1: Tensor, noise: Noise, rows: int, gen: torch.Generator,
        *, forward: Callable[[Tensor], Tensor] | None,
    ) -> None:
        """One fixed-shape pass of ``rows`` draws of one input, outputs read on the device only."""
        with torch.inference_mode():
            for _, outputs in noisy_outputs(
                model, x1, noise=noise, n=rows, batch_size=rows, generator=gen, precision=self.precision,
                channels_last=self.channels_last, fixed_shape=True, forward=forward,
            ):
                outputs.flatten(1).argmax(dim=1)

    def prepare(
        self, model: nn.Module, x: Tensor, noise: Noise, *, batch_size: int | str, draws: Sequence[int] = ()
    ) -> int:
        """Rows per forward pass for ``x`` (``[B, ...]``, validated; "auto" resolved), after
        warming up a compiled model for the pass shapes that ``draws`` per input will use (with
        fixed shapes, one per distinct :func:`fixed_rows`; none given: the full batch). Call it
        *before* starting a clock: it may probe memory and compile. Without ``compile`` it runs
        no forward pass (only the "auto" probe)."""
        rows = self.resolve_batch_size(model, x, noise, batch_size)
        if self.compile:
            shapes = {fixed_rows(len(x) * d, rows) if self.fixed_shape else rows for d in draws} or {rows}
            for shape in sorted(shapes):
                self.warmup(model, x, noise, batch_size=shape)
        return rows

    # ---- sampling ----

    def counts(
        self,
        model: nn.Module,
        x: Tensor,
        noise: Noise,
        *,
        n: int,
        num_classes: int,
        batch_size: int | str,
        generator: torch.Generator | None,
    ) -> Tensor:
        """:func:`sample_counts` with this engine's settings: int64 ``[B, num_classes]`` class
        counts of n draws per input, on the model's device. ``x``: ``[B, ...]``, validated. Call
        :meth:`prepare` first so that probing and compiling stay outside timings."""
        rows = self.resolve_batch_size(model, x, noise, batch_size)
        self.last_batch_size = rows
        return sample_counts(
            model, x, noise=noise, n=n, num_classes=num_classes, batch_size=rows, generator=generator,
            precision=self.precision, channels_last=self.channels_last, fixed_shape=self.fixed_shape,
            forward=self.forward(model),
        )

    def mean_probs(
        self,
        model: nn.Module,
        x: Tensor,
        noise: Noise,
        *,
        n: int,
        num_classes: int,
        batch_size: int | str,
        generator: torch.Generator | None,
    ) -> Tensor:
        """:func:`sample_mean_probs` with this engine's settings: float64 ``[B, num_classes]``."""
        rows = self.resolve_batch_size(model, x, noise, batch_size)
        self.last_batch_size = rows
        return sample_mean_probs(
            model, x, noise=noise, n=n, num_classes=num_classes, batch_size=rows, generator=generator,
            precision=self.precision, channels_last=self.channels_last, fixed_shape=self.fixed_shape,
            forward=self.forward(model),
        )

    def outputs(
        self,
        model: nn.Module,
        x: Tensor,
        noise: Noise,
        *,
        n: int,
        batch_size: int | str,
        generator: torch.Generator | None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """:func:`noisy_outputs` with this engine's settings, for models whose outputs are not
        logits (e.g. a regression model's images): ``(owner [b], outputs [b, ...])`` per chunk."""
        rows = self.resolve_batch_size(model, x, noise, batch_size)
        self.last_batch_size = rows
        return noisy_outputs(
            model, x, noise=noise, n=n, batch_size=rows, generator=generator, precision=self.precision,
            channels_last=self.channels_last, fixed_shape=self.fixed_shape, forward=self.forward(model),
        )
