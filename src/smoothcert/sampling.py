"""The Monte Carlo engine: evaluate a base classifier f on many noisy copies of each input.

Work is laid out as ``B * n`` (input, draw) pairs cut into chunks of ``batch_size`` rows, so
several inputs share a batch when n is small and one input spans many batches when n is large;
only one chunk of noisy inputs exists at a time (never n copies of x). Counts and probability
sums stay on the model's device; the only host synchronisation is the final read by the caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .noise import Noise
from .validation import check_sample_sizes, ensure_eval, model_device

__all__ = ["PRECISIONS", "check_precision", "precision_context", "sample_counts", "sample_mean_probs"]

#: Arithmetic the base classifier is evaluated in. The certificate is for the smoothed
#: version of the network *as evaluated*, so this is part of the classifier and is recorded.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError listing them."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
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
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(owner, logits)`` per chunk: owner[i] is the input index of row i, logits [b, K]."""
    check_sample_sizes(n=n, batch_size=batch_size)
    ensure_eval(model)
    device = model_device(model)
    x = x.to(device=device, dtype=torch.float32)
    # Noise is added in float32; a model stored in half precision gets its own dtype after.
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    gen_device = generator.device if generator is not None else device
    total = x.shape[0] * n
    # Images are drawn straight into channels-last layout ([b, H, W, C] viewed as [b, C, H, W]):
    # draws are i.i.d., so the layout is free, and convolutions and pooling run ~1.4x faster on
    # it on CPU (benchmarks/README.md) and with tensor cores on GPU.
    nhwc = channels_last and x.ndim == 4
    shape = (*x.shape[2:], x.shape[1]) if nhwc else tuple(x.shape[1:])
    with torch.inference_mode(), precision_context(precision, device):
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            first, last = start // n, (stop - 1) // n
            owner = torch.arange(start, stop, device=device) // n
            delta = noise.sample((stop - start, *shape), generator=generator, device=gen_device)
            if nhwc:
                delta = delta.permute(0, 3, 1, 2)
            delta = delta.to(device, non_blocking=True)
            # A chunk inside one input (always, when n >= batch_size) broadcasts x instead of
            # gathering a [b, ...] copy of it.
            batch = delta.add_(x[first]) if first == last else delta.add_(x[owner])
            logits = model(batch if dtype == torch.float32 else batch.to(dtype))
            if logits.ndim != 2:
                raise ValueError(
                    f"the base model must return logits of shape [batch, num_classes]; got {tuple(logits.shape)}"
                )
            yield owner, logits


def _check_classes(logits: Tensor, num_classes: int) -> None:
    if logits.shape[1] != num_classes:
        raise ValueError(
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
    Returns:
        int64 tensor ``[B, num_classes]`` on the model's device; each row sums to n.
    """
    b = x.shape[0]
    counts = torch.zeros(b * num_classes, dtype=torch.long, device=model_device(model))
    for owner, logits in _logits_per_chunk(
        model, x, noise=noise, n=n, batch_size=batch_size, generator=generator, precision=precision,
        channels_last=channels_last,
    ):
        _check_classes(logits, num_classes)
        flat = owner * num_classes + logits.argmax(dim=1)
        counts.index_add_(0, flat, torch.ones_like(flat))
    return counts.view(b, num_classes)


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
) -> Tensor:
    """Monte Carlo estimate of the smoothed soft classifier G(x) = E softmax f(x + delta).

    Same arguments as :func:`sample_counts`. Returns float64 ``[B, num_classes]``, rows sum to 1.
    """
    b = x.shape[0]
    sums = torch.zeros(b, num_classes, dtype=torch.float64, device=model_device(model))
    for owner, logits in _logits_per_chunk(
        model, x, noise=noise, n=n, batch_size=batch_size, generator=generator, precision=precision,
        channels_last=channels_last,
    ):
        _check_classes(logits, num_classes)
        sums.index_add_(0, owner, logits.float().softmax(dim=1).double())
    return sums / n
