"""Rows per forward pass from memory: the automatic batch size and the per-row memory probe."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..checks import ensure_eval, model_device
from ..errors import InputError
from ..noise import Noise
from .sampling import _model_dtype, noisy_outputs, precision_context

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


