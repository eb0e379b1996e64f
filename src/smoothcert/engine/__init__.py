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


from ..checks import AUTO, check_batch_size
from .core import AUTO_COMPILE_MIN_ROWS, DEFAULT_BATCH_ROWS, Engine, cxx_compiler, default_batch_size, default_compile
from .memory import (
    AUTO_MAX_ROWS,
    AUTO_MEMORY_FRACTION,
    AUTO_MULTIPLE,
    CPU_BATCH_BYTES,
    LIVE_OUTPUTS,
    OPAQUE_ACTIVATION_FACTOR,
    PROBE_ROWS,
    auto_batch_size,
    free_device_bytes,
    measure_row_bytes,
)
from .sampling import (
    COMPILE_MODES,
    NOISE_DTYPES,
    PRECISIONS,
    check_noise_dtype,
    check_precision,
    fixed_rows,
    noisy_outputs,
    precision_context,
    sample_counts,
    sample_mean_probs,
)

__all__ = [
    "AUTO",
    "AUTO_COMPILE_MIN_ROWS",
    "AUTO_MAX_ROWS",
    "AUTO_MEMORY_FRACTION",
    "AUTO_MULTIPLE",
    "DEFAULT_BATCH_ROWS",
    "COMPILE_MODES",
    "CPU_BATCH_BYTES",
    "LIVE_OUTPUTS",
    "OPAQUE_ACTIVATION_FACTOR",
    "NOISE_DTYPES",
    "PRECISIONS",
    "PROBE_ROWS",
    "Engine",
    "auto_batch_size",
    "check_batch_size",
    "check_noise_dtype",
    "check_precision",
    "cxx_compiler",
    "default_batch_size",
    "default_compile",
    "fixed_rows",
    "free_device_bytes",
    "measure_row_bytes",
    "noisy_outputs",
    "precision_context",
    "sample_counts",
    "sample_mean_probs",
]

#: Arithmetic the base model is evaluated in. The certificate is for the smoothed version of
