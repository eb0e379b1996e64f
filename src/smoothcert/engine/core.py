"""The :class:`Engine`: how f is evaluated (precision, layout, compilation, fixed shapes, batch
policy) and the state that goes with it (compiled models, warmed shapes, automatic batch sizes)."""

from __future__ import annotations

import copy
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from ..checks import AUTO, check_batch_size, model_device
from ..errors import CompileError, InputError
from ..noise import Noise
from .memory import (
    AUTO_MAX_ROWS,
    AUTO_MEMORY_FRACTION,
    AUTO_MULTIPLE,
    CPU_BATCH_BYTES,
    auto_batch_size,
    free_device_bytes,
    measure_row_bytes,
)
from .sampling import (
    COMPILE_MODES,
    check_noise_dtype,
    check_precision,
    fixed_rows,
    noisy_outputs,
    sample_counts,
    sample_mean_probs,
)

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


def _frozen_calls(compiled: Callable[[Tensor], Tensor], tensors: Sequence[Tensor]) -> Callable[[Tensor], Tensor]:
    """``compiled`` called with inductor's ``freezing`` switched on, and grad off, for the duration
    of each call.

    Dynamo decides while it traces (inside the first call of each shape, not in
    ``torch.compile``) whether the parameters become graph constants, from the global
    ``torch._inductor.config.freezing`` and only with grad off: ``torch.compile(options={"freezing":
    True})`` alone leaves them graph inputs and nothing is frozen (seen in inductor's output code, torch
    2.13; tests/test_cpu_engine.py). So the flag is patched around every call and restored after it,
    never left changed (whether another thread sees it meanwhile depends on how the installed torch
    keeps its config). ``compiled`` should still be built with that option: it makes the frozen
    graphs' backend differ from the unfrozen ones', so dynamo never hands one kind to a caller of the
    other. The first call after each cache clear records ``tensors`` (the module's parameters and
    buffers) in :data:`_FROZEN_TENSORS`: it may trace, and freeze their present values (a record
    lasts until the next clear, so later calls need none).
    """
    import torch._inductor.config as inductor_config

    recorded = [-1]  # the cache epoch of the last record: records last until the next clear

    def run(batch: Tensor) -> Tensor:
        if recorded[0] != _CACHE_EPOCH[0]:
            _record_frozen(tensors)
            recorded[0] = _CACHE_EPOCH[0]
        with inductor_config.patch(freezing=True), torch.no_grad():
            return compiled(batch)

    return run


#: Parameters and buffers that a frozen graph in dynamo's cache may hold as constants, each with its
#: (storage address, version counter) at its first frozen call since the engines last cleared that
#: cache: a graph traced then holds those values. Weak and by identity (a dropped model leaves;
#: tensors are never compared by value).
_FROZEN_TENSORS = WeakIdKeyDictionary()
#: How often the engines cleared dynamo's cache; a model state built before the last clear warms again.
_CACHE_EPOCH = [0]


def _tensors(module: nn.Module) -> list[Tensor]:
    return [*module.parameters(), *module.buffers()]


def _record_frozen(tensors: Sequence[Tensor]) -> None:
    """Note ``tensors`` as possibly frozen into a cached graph with their present values (the first
    record since the last clear is kept: a graph traced then may still be cached)."""
    for t in tensors:
        if t not in _FROZEN_TENSORS:
            _FROZEN_TENSORS[t] = (t.data_ptr(), t._version)


def _frozen_on_other_values(module: nn.Module) -> bool:
    """Whether a cached frozen graph may hold some tensor of ``module`` with values it no longer has."""
    return any(t in _FROZEN_TENSORS and _FROZEN_TENSORS[t] != (t.data_ptr(), t._version)
               for t in _tensors(module))


def _clear_compiled() -> None:
    """Clear dynamo's process-wide cache (``torch.compiler.reset()``): every compiled model, of any
    engine, compiles again on its next call (engines warm their models again first)."""
    torch.compiler.reset()
    _FROZEN_TENSORS.clear()
    _CACHE_EPOCH[0] += 1


#: ``compile=None`` ("auto") of a run compiles on CPU when the run evaluates at least this many
#: noisy rows (inputs x (n0 + n)). Measured on an idle 2-core AVX-512 CPU (2026-12-05, torch 2.13,
#: float64-exact noise, channels-last weights, automatic rows per pass), first run
#: (docs/benchmark-history.md): the compiled graph saved 0.042-0.067 s (LeNet-small) and 0.057-0.096 s
#: (LeNet) per input at N = 10,000 and cost 17 s on a cold cache (4-8 s warm), a break-even after
#: 1.8-4 M rows; 3 M rows (300 inputs at N = 10,000, 30 at N = 100,000) kept it a gain. A second run
#: (BENCHMARKS.md, CPU engine) saved -0.009 to +0.118 s per input: within the run-to-run spread, so
#: the threshold is kept, not re-derived. The quickstart (550,000 rows) stays eager.
AUTO_COMPILE_MIN_ROWS = 3_000_000

#: Whether ``compile=None`` may choose to compile on CPU at all (on: measured faster above the
#: rows threshold once the weights are kept channels-last; before that change the compiled graph
#: was slower than eager on the quickstart, 49.4 s vs 30.3 s).
AUTO_COMPILE_CPU = True


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would use on CPU (``$CXX``, else g++, c++ or clang++ on PATH), or None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def default_compile(device: torch.device | str, *, rows: int) -> tuple[bool, str]:
    """Whether a run that did not choose should compile (``(decision, one-line reason)``).

    On CPU, while :data:`AUTO_COMPILE_CPU` is on (it is):
    yes when a C++ compiler is present and the run evaluates at least
    :data:`AUTO_COMPILE_MIN_ROWS` noisy rows (``rows``: inputs x (n0 + n)), where the
    compiled graph was measured faster including its compile time; otherwise eager. On other
    devices: eager (compile stays an explicit choice there)."""
    device = torch.device(device)
    if device.type != "cpu":
        return False, f"eager on {device.type} (pass --compile to compile)"
    if not AUTO_COMPILE_CPU:
        return False, "eager: automatic CPU compilation is switched off (AUTO_COMPILE_CPU); pass --compile to compile"
    if rows < AUTO_COMPILE_MIN_ROWS:
        return False, (f"eager: {rows:,} noisy rows is below the {AUTO_COMPILE_MIN_ROWS:,} where a "
                       "compile pays for itself on CPU")
    if cxx_compiler() is None:
        return False, "eager: no C++ compiler found (set CXX), so the CPU model is not compiled"
    return True, f"compiled: {rows:,} noisy rows amortise the compile on CPU"


#: Rows per forward pass of a certify/predict run that does not choose, on devices other than
#: the CPU: the 2019 code's 1000 (the automatic size is unmeasured on GPUs here).
DEFAULT_BATCH_ROWS = 1000


def default_batch_size(device: torch.device | str) -> int | str:
    """Rows per forward pass when a run does not choose: ``"auto"`` on CPU, where the automatic
    size (:func:`~smoothcert.engine.memory.auto_batch_size` of a 56 MiB budget: 256 rows for LeNet
    on 28x28) keeps the activations in cache -- LeNet-small took 34-35 microseconds per row at 256-576
    rows and 55 at 1000 on 2 cores, eager (BENCHMARKS.md, CPU engine); :data:`DEFAULT_BATCH_ROWS` elsewhere."""
    return AUTO if torch.device(device).type == "cpu" else DEFAULT_BATCH_ROWS


def _weights_fingerprint(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Where each parameter and buffer lives and its version counter: changes when weights are
    replaced or modified in place (``load_state_dict``, an optimizer step)."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


def _needs_layout_copy(model: nn.Module) -> bool:
    """Whether ``model`` has a 4-D parameter or buffer not stored channels-last."""
    return any(t.ndim == 4 and not t.is_contiguous(memory_format=torch.channels_last)
               for t in (*model.parameters(), *model.buffers()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _ModelState:
    """What an :class:`Engine` keeps per model it serves (held strongly, so an id is never reused)."""

    model: nn.Module
    compiled: Callable[[Tensor], Tensor] | None = None
    compiled_source: nn.Module | None = None  #: the module ``compiled`` wraps (the model or its copy)
    layout_copy: nn.Module | None = None  #: channels-last copy of the model (CPU), made for ``copy_fingerprint``
    copy_fingerprint: tuple[tuple[int, int], ...] = ()
    fingerprint: tuple[tuple[int, int], ...] = ()  #: the weights the compiled graph was built (frozen) on
    cache_epoch: int = 0  #: :data:`_CACHE_EPOCH` when ``warm`` was last valid
    warm: set[tuple[Any, ...]] = field(default_factory=set)  #: (rows, input shape, device) warmed
    auto: dict[str, int] = field(default_factory=dict)  #: "1x28x28@cpu" -> rows


class Engine:
    """How a base model f is evaluated on noisy copies: the settings and what they cost.

    Args:
        precision: arithmetic of f (:data:`PRECISIONS`: fp32, tf32, bf16, fp16). Part of the
            certified classifier: the certificate holds for the network as evaluated.
        channels_last: feed image batches in channels-last memory layout; on CPU also evaluate a
            channels-last copy of the model (made on first use, made again when the weights
            change; the caller's model is not modified). Both are needed there: with
            channels-last inputs but contiguous weights LeNet-small ran 2.2x slower on 2 CPU
            cores (75 vs 34 microseconds per row at 256 rows, BENCHMARKS.md, CPU engine). On GPUs only the
            inputs (weight layout unmeasured there). Turn off for models that cannot take it.
        compile: evaluate f through ``torch.compile(model, dynamic=False)``, built once per model
            and kept. Each batch shape compiles once, on first use, in :meth:`warmup` (which
            :meth:`prepare` calls before any clock starts); warm-up time goes to
            :attr:`compile_seconds`. Needs a C++ compiler on CPU and Triton on GPU; a failure
            raises :class:`~smoothcert.errors.CompileError`. The weights stay graph inputs, read
            at every call. Per pass on an idle 2-core CPU (BENCHMARKS.md, CPU engine; 256-1000 rows,
            1-2 threads): 1.0-1.7x faster than eager for LeNet-small, 1.1-1.25x for LeNet.
        compile_mode: torch.compile's ``mode`` (:data:`COMPILE_MODES`), or ``"frozen"``; implies
            ``compile``. ``"reduce-overhead"`` replays each shape's kernels as one CUDA graph (GPU
            only; on CPU it compiles like ``"default"``); the engine marks a new graph step before
            every pass and uses each pass's output before the next (the graph reuses its output
            buffer). ``"frozen"``: the default mode with inductor's ``freezing``: the weights become
            constants of the graph (batchnorm folded into convolutions, oneDNN-packed convolutions
            with fused ReLU on CPU). Not the default: on 2 idle CPU cores it was no faster end to
            end than the unfrozen graph (LeNet) or slower (LeNet-small; BENCHMARKS.md). The
            global ``torch._inductor.config.freezing`` is set only around each call of the frozen
            graph (dynamo reads it while tracing), with grad off, and restored after it. Frozen
            weights are a precondition: the engine fingerprints the parameters and buffers (storage
            and version counter) and recompiles, with fresh warm-ups, when they have changed since
            (changes made through ``.data``, which bypasses the version counter, or to tensors that
            are neither parameters nor buffers are not seen).
            Before it freezes tensors that an earlier frozen graph may hold (these weights changed,
            or another engine froze the same model) it clears torch's compile cache
            (``torch.compiler.reset()``, process-wide: every compiled model, of any engine,
            compiles again, at its next warm-up). Never train through an engine.
        fixed_shape: all forward passes of a sampling call get the same number of rows
            (:func:`fixed_rows`: the work split into equal passes of at most ``batch_size`` rows,
            padded by under 8 rows per pass with rows that are evaluated but never counted), so
            one compiled graph serves every pass of the call. Default: on when ``compile`` is on.
        max_batch_bytes: memory budget of ``batch_size="auto"``: on CUDA the batch uses at most
            this and at most 70% of the free device memory; elsewhere this (default
            :data:`CPU_BATCH_BYTES`, 56 MiB).
        noise_dtype: "float64" (default): noise drawn and added in float64, rounded once to the
            model's dtype -- exact far below any alpha for every input size (docs/soundness.md).
            "float32": the faster float32 draws (Gaussian tail truncated at 5.768 sigma); recorded
            in :meth:`settings`, so its result rows are marked.

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
        noise_dtype: str = "float64",
    ) -> None:
        if max_batch_bytes is not None and (
            isinstance(max_batch_bytes, bool) or int(max_batch_bytes) != max_batch_bytes or max_batch_bytes < 1
        ):
            raise InputError(f"max_batch_bytes must be a positive integer (bytes), got {max_batch_bytes}")
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise InputError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
        self.precision = check_precision(precision)
        self.noise_dtype = check_noise_dtype(noise_dtype)
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
        extra += f", noise_dtype={self.noise_dtype!r}" if self.noise_dtype != "float64" else ""
        return f"Engine(precision={self.precision!r}, channels_last={self.channels_last}{extra})"

    def settings(self) -> dict[str, Any]:
        """Every engine setting, as a plain JSON-ready dict for a run's record. These decide the
        classifier evaluated (precision) or only the speed; measurements (the rows an automatic
        batch chose, compile time) are in :attr:`auto_batch_sizes`, :attr:`last_batch_size` and
        :attr:`compile_seconds`. ``noise_dtype`` is recorded only when it is not the exact default
        ("float64"), so records written before it existed (float32 noise, docs/soundness.md)
        compare equal to a default engine's and their runs resume."""
        record = {
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
        if self.noise_dtype != "float64":
            record["noise_dtype"] = self.noise_dtype
        return record

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

    def _runner(self, model: nn.Module, state: _ModelState) -> nn.Module:
        """The module that evaluates ``model``'s noisy batches: on CPU with ``channels_last``, a
        channels-last copy when the model's 4-D weights are not stored so (kept, and made again
        when the weights change); else the model itself. A copy, not an in-place change: the
        caller's model (attacked, trained, saved elsewhere) keeps its own layout and rounding."""
        if not (self.channels_last and model_device(model).type == "cpu" and _needs_layout_copy(model)):
            return model
        fingerprint = _weights_fingerprint(model)
        if state.layout_copy is None or state.copy_fingerprint != fingerprint:
            try:
                with torch.no_grad():
                    state.layout_copy = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
            except (TypeError, RuntimeError, copy.Error):  # a model that cannot be copied runs as it is
                return model
            state.copy_fingerprint = fingerprint
        return state.layout_copy

    def forward(self, model: nn.Module) -> Callable[[Tensor], Tensor] | None:
        """What evaluates ``model`` on noisy batches: None (the model itself), its channels-last
        copy (CPU, see ``channels_last``), or the compiled one of these (built on first use, then
        kept; with ``compile``)."""
        state = self._state(model)
        runner = self._runner(model, state)
        if not self.compile:
            return None if runner is model else runner
        if state.compiled is not None and state.cache_epoch != _CACHE_EPOCH[0]:
            state.warm = set()  # dynamo's cache was cleared since: the graph compiles again at the next warm-up
        stale = state.compiled is not None and (
            state.compiled_source is not runner
            or (self._frozen() and state.fingerprint != _weights_fingerprint(model)))
        if stale:  # new weights (a frozen graph holds the old ones), or a new channels-last copy
            state.compiled, state.warm = None, set()
        if state.compiled is None and self._frozen() and _frozen_on_other_values(runner):
            # Dynamo's cache is process-wide and its guards on a frozen graph check which parameter
            # objects it was built on, not their values: it would hand back a graph frozen on the
            # old values of these same tensors (traced here or by another engine), so it is cleared.
            _clear_compiled()
        if state.compiled is None:
            try:
                if self._frozen():
                    mode: dict[str, Any] = {"options": {"freezing": True}}
                else:
                    mode = {} if self.compile_mode is None else {"mode": self.compile_mode}
                compiled = torch.compile(runner, dynamic=False, **mode)
                if self._frozen():
                    compiled = _frozen_calls(compiled, _tensors(runner))
            except Exception as e:  # e.g. "Dynamo is not supported on Python 3.x"
                raise CompileError(
                    f"torch.compile cannot wrap the base model ({type(e).__name__}: {e}); "
                    "use compile=False to run it uncompiled"
                ) from e
            if self.compile_mode == "reduce-overhead" and model_device(model).type == "cuda":
                compiled = _graph_steps(compiled)
            state.compiled, state.compiled_source = compiled, runner
            state.fingerprint = _weights_fingerprint(model)
        state.cache_epoch = _CACHE_EPOCH[0]
        return state.compiled

    def _frozen(self) -> bool:
        """Whether the compiled graphs hold the weights as constants (``compile_mode="frozen"``)."""
        return self.compile_mode == "frozen"

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
        forward = self.forward(model)  # first: a recompile for changed weights clears the warmed shapes
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
                self._run_through(model, x[:1], noise, rows, gen, forward=forward)
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
                noise_dtype=self.noise_dtype,
            ):
                outputs.flatten(1).argmax(dim=1)

    def prepare(
        self, model: nn.Module, x: Tensor, noise: Noise, *, batch_size: int | str, draws: Sequence[int] = ()
    ) -> int:
        """Rows per forward pass for ``x`` (``[B, ...]``, validated; "auto" resolved), after
        warming up a compiled model for the pass shapes that ``draws`` per input will use (with
        fixed shapes, one per distinct :func:`fixed_rows`; none given: the full batch). Call it
        *before* starting a clock: it may probe memory, copy the model (channels-last, CPU) and
        compile. Without ``compile`` it runs no forward pass (only the "auto" probe)."""
        rows = self.resolve_batch_size(model, x, noise, batch_size)
        self.forward(model)  # the channels-last copy (and the compiled wrapper) now, not in a timed call
        if self.compile:
            shapes = {fixed_rows(len(x) * d, rows) if self.fixed_shape else rows for d in draws} or {rows}
            for shape in sorted(shapes):
                self.warmup(model, x, noise, batch_size=shape)
        return rows

    # ---- sampling ----

    def _pass_options(self, model: nn.Module, x: Tensor, noise: Noise, batch_size: int | str) -> dict[str, Any]:
        """The keywords every sampling function takes from this engine: rows per pass (resolved,
        and kept as :attr:`last_batch_size`), precision, layout, fixed shapes, the forward (compiled
        or channels-last copy) and the noise dtype."""
        rows = self.resolve_batch_size(model, x, noise, batch_size)
        self.last_batch_size = rows
        return {"batch_size": rows, "precision": self.precision, "channels_last": self.channels_last,
                "fixed_shape": self.fixed_shape, "forward": self.forward(model), "noise_dtype": self.noise_dtype}

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
        on_rows: Callable[[int], None] | None = None,
    ) -> Tensor:
        """:func:`sample_counts` with this engine's settings: int64 ``[B, num_classes]`` class
        counts of n draws per input, on the model's device. ``x``: ``[B, ...]``, validated. Call
        :meth:`prepare` first so that probing and compiling stay outside timings."""
        return sample_counts(model, x, noise=noise, n=n, num_classes=num_classes, generator=generator,
                             on_rows=on_rows, **self._pass_options(model, x, noise, batch_size))

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
        return sample_mean_probs(model, x, noise=noise, n=n, num_classes=num_classes, generator=generator,
                                 **self._pass_options(model, x, noise, batch_size))

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
        return noisy_outputs(model, x, noise=noise, n=n, generator=generator,
                             **self._pass_options(model, x, noise, batch_size))
