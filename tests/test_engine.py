"""Engine options: in-place noise, fixed-shape batches, packing, precision, automatic batch size,
compile and warm-up — each checked against exact answers or a plain reference loop."""

import json
import math
import time

import pytest
import torch
from linear import LinearBinary
from scipy.stats import norm as normal
from torch import nn

from smoothcert import ABSTAIN, SmoothedClassifier, get_noise
from smoothcert.engine import (
    CPU_BATCH_BYTES,
    Engine,
    auto_batch_size,
    check_batch_size,
    fixed_rows,
    measure_row_bytes,
    noisy_outputs,
    sample_counts,
    sample_mean_probs,
)
from smoothcert.errors import CompileError
from smoothcert.noise import list_noises

# ---------------------------------------------------------------- helpers


def _z_known(count: int, n: int, p: float) -> float:
    """z statistic of count/n against a known probability p."""
    return (count / n - p) / math.sqrt(p * (1 - p) / n)


def _z_two(k1: int, k2: int, n: int) -> float:
    """Two-proportion z statistic of k1/n against k2/n (0 when both are 0 or n)."""
    p = (k1 + k2) / (2 * n)
    var = 2 * p * (1 - p) / n
    return 0.0 if var == 0 else (k1 - k2) / n / math.sqrt(var)


def _reference_counts(model: nn.Module, x: torch.Tensor, *, noise, n: int, batch: int, seed: int) -> torch.Tensor:
    """The plain path: one input at a time, a fresh noise tensor per batch, fp32, NCHW."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.zeros(x.shape[0], 2, dtype=torch.long)
    with torch.no_grad():
        for i in range(x.shape[0]):
            for start in range(0, n, batch):
                b = min(batch, n - start)
                rows = x[i : i + 1].repeat(b, *([1] * (x.ndim - 1)))
                pred = model(rows + noise.sample(rows.shape, generator=g)).argmax(1)
                counts[i] += torch.bincount(pred, minlength=2)
    return counts


def _image_model_and_inputs(sigma: float):
    """A linear classifier on [4, 3, 4, 4] images that reads one coordinate (channel 2, pixel
    (1, 3)), so pA = Phi(|x_c - 0.5| / sigma) is known exactly; the other pixels vary, so a
    layout mix-up (channels-last, packing) would read the wrong value."""
    w = torch.zeros(3, 4, 4)
    w[2, 1, 3] = 1.0
    model = LinearBinary(w, -0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 4, 4, generator=g)
    x[:, 2, 1, 3] = torch.tensor([0.62, 0.75, 0.30, 0.90])
    p_a = normal.cdf((x[:, 2, 1, 3].double() - 0.5).abs().numpy() / sigma)
    return model, x, p_a


class ShapeRecorder(nn.Module):
    """Wraps a model and records the batch size of every forward pass."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows: list[int] = []
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return self.inner(x)


# ---------------------------------------------------------------- in-place noise


@pytest.mark.parametrize("name", list_noises())
def test_in_place_sampling_fills_only_the_view_with_the_right_statistics(name):
    sigma = 0.5
    noise = get_noise(name, sigma=sigma)
    buffer = torch.full((3, 400_000), float("nan"))
    view = buffer[:2]  # the engine fills a leading slice of its buffer for a short last chunk
    out = noise.sample_(view, generator=torch.Generator().manual_seed(0))
    assert out.data_ptr() == buffer.data_ptr() and out.shape == (2, 400_000)
    assert torch.isnan(buffer[2]).all()  # the row past the view is untouched
    assert torch.isfinite(view).all()
    # 8e5 draws: the sample std has relative s.d. <= sqrt((kurtosis - 1) / 4N) = 1.3e-3 (Laplace,
    # kurtosis 6), so 1% is > 7 s.d.; the mean has s.d. sigma / 894.
    assert abs(view.std().item() / sigma - 1) < 0.01
    assert abs(view.mean().item()) < 5 * sigma / math.sqrt(view.numel())
    # Fourth moment identifies the family: 3 (Gaussian), 6 (Laplace), 1.8 (uniform).
    kurtosis = (view.double() ** 4).mean().item() / sigma**4
    assert kurtosis == pytest.approx({"gaussian": 3.0, "laplace": 6.0, "uniform": 1.8}[name], rel=0.05)


@pytest.mark.parametrize("name", list_noises())
def test_in_place_sampling_is_seeded_and_matches_sample(name):
    noise = get_noise(name, sigma=0.25)
    buf = torch.empty(5, 3, 8, 8)
    a = noise.sample_(buf, generator=torch.Generator().manual_seed(7)).clone()
    b = noise.sample_(buf, generator=torch.Generator().manual_seed(7)).clone()
    c = noise.sample_(buf, generator=torch.Generator().manual_seed(8)).clone()
    assert torch.equal(a, b) and not torch.equal(a, c)
    # sample() is sample_() on a new tensor: the same stream gives the same values.
    assert torch.equal(noise.sample((5, 3, 8, 8), generator=torch.Generator().manual_seed(7)), a)
    # Reusing the buffer with one generator gives fresh draws, not a copy of the last ones.
    g = torch.Generator().manual_seed(7)
    first = noise.sample_(buf, generator=g).clone()
    second = noise.sample_(buf, generator=g)
    assert not torch.equal(first, second)


def test_laplace_in_place_has_the_right_scale_and_no_inf():
    noise = get_noise("laplace", sigma=0.5)
    d = noise.sample_(torch.empty(2_000_000), generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(d).all()
    # E|X| = lambda = sigma / sqrt(2); s.d. of the mean of |X| is lambda / sqrt(N).
    assert abs(d.abs().mean().item() / noise.scale - 1) < 5 / math.sqrt(d.numel())
    u = get_noise("uniform", sigma=0.5).sample_(torch.empty(100_000), generator=torch.Generator().manual_seed(1))
    assert u.abs().max() <= 0.5 * math.sqrt(3)


# ---------------------------------------------------------------- fixed shapes and packing


@pytest.mark.parametrize("fixed_shape", [False, True])
def test_fixed_shape_pads_the_last_chunk_and_never_counts_padding(fixed_shape):
    # 5 inputs x 37 draws = 185 rows in chunks of 64: 64 + 64 + 57 (padded to 64 when fixed).
    model = ShapeRecorder(LinearBinary(torch.tensor([1.0]), -0.5))
    x = torch.tensor([[0.0], [1.0], [0.0], [1.0], [0.0]])
    counts = sample_counts(model, x, noise=get_noise("gaussian", sigma=0.01), n=37, num_classes=2,
                           batch_size=64, fixed_shape=fixed_shape, generator=torch.Generator().manual_seed(0))
    assert model.rows == ([64, 64, 64] if fixed_shape else [64, 64, 57])
    assert counts.sum(1).tolist() == [37] * 5 and not counts.is_inference()  # callers may add to it in place
    # padding rows copy the last input (class 0): counting them would inflate counts[4, 0]
    assert counts.tolist() == [[37, 0], [0, 37], [37, 0], [0, 37], [37, 0]]


def test_fixed_shape_batch_larger_than_the_work():
    model = ShapeRecorder(LinearBinary(torch.tensor([1.0]), -0.5))
    x = torch.tensor([[1.0], [0.0]])
    counts = sample_counts(model, x, noise=get_noise("uniform", sigma=0.01), n=10, num_classes=2,
                           batch_size=256, fixed_shape=True)
    assert model.rows == [24]  # 20 rows of work in one pass, rounded up to a multiple of 8
    assert counts.tolist() == [[0, 10], [10, 0]]


@pytest.mark.parametrize("fixed_shape", [False, True])
@pytest.mark.parametrize("batch", [7, 36, 37, 100, 1000])
@pytest.mark.parametrize("name", list_noises())
def test_packing_never_mixes_counts_or_probabilities(name, batch, fixed_shape):
    # Image inputs (channels-last path) on alternating sides of a boundary that only channel 1
    # sees; chunk boundaries fall inside inputs (7, 36), on them (37) and span several (100, 1000).
    w = torch.zeros(2, 3, 3)
    w[1] = 1.0
    model = LinearBinary(w, -4.5)  # class 1 iff the channel-1 mean exceeds 0.5
    x = torch.zeros(5, 2, 3, 3)
    x[1::2, 1] = 1.0
    x[:, 0] = torch.rand(5, 3, 3)  # channel 0 is ignored by the model
    kw = dict(noise=get_noise(name, sigma=0.02), n=37, num_classes=2, batch_size=batch,
              fixed_shape=fixed_shape, generator=torch.Generator().manual_seed(3))
    counts = sample_counts(model, x, **kw)
    assert counts.tolist() == [[37, 0], [0, 37], [37, 0], [0, 37], [37, 0]]
    probs = sample_mean_probs(model, x, **kw)
    assert torch.allclose(probs.sum(1), torch.ones(5, dtype=torch.float64))
    assert probs.argmax(1).tolist() == [0, 1, 0, 1, 0] and probs.max(1).values.min() > 0.99


def test_no_host_synchronisation_inside_the_chunk_loop(monkeypatch):
    # On a GPU a host read (.item(), .cpu(), bool(tensor), ...) would stall the queue every
    # chunk. The CPU proxy: make every such read raise while the engine runs.
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x = torch.rand(3, 3, 2, 2)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the engine loop")

    for method in ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, method, forbidden)
    counts = sample_counts(model, x, noise=get_noise("laplace", sigma=0.25), n=50, num_classes=3, batch_size=32,
                           fixed_shape=True, generator=torch.Generator().manual_seed(0))
    monkeypatch.undo()
    assert counts.sum().item() == 150


# ---------------------------------------------------------------- statistical agreement


@pytest.mark.parametrize("fixed_shape", [False, True])
def test_engine_and_plain_reference_agree_with_the_known_pa(fixed_shape):
    sigma, n = 0.25, 20_000
    model, x, p_a = _image_model_and_inputs(sigma)
    noise = get_noise("gaussian", sigma=sigma)
    ref = _reference_counts(model, x, noise=noise, n=n, batch=1000, seed=11)
    smoothed = SmoothedClassifier(model, noise=noise, num_classes=2, fixed_shape=fixed_shape)
    cert = smoothed.certify(x, n0=100, n=n, alpha=0.001, batch_size=3000, generator=12)
    true_class = model.label(x)
    assert cert.prediction.tolist() == true_class.tolist()
    for i in range(len(x)):
        ours, theirs = int(cert.counts[i, true_class[i]]), int(ref[i, true_class[i]])
        assert abs(_z_known(ours, n, p_a[i])) < 4, (i, ours / n, p_a[i])
        assert abs(_z_known(theirs, n, p_a[i])) < 4, (i, theirs / n, p_a[i])
        assert abs(_z_two(ours, theirs, n)) < 4
    assert torch.all(cert.radius <= model.true_radius(x, "l2") + 1e-9)


def test_bf16_and_fp32_agree_statistically():
    sigma, n = 0.25, 20_000
    model, x, p_a = _image_model_and_inputs(sigma)
    noise = get_noise("gaussian", sigma=sigma)
    certs = {
        p: SmoothedClassifier(model, noise=noise, num_classes=2, precision=p).certify(
            x, n0=100, n=n, alpha=0.001, batch_size=4096, generator=21 if p == "fp32" else 22)
        for p in ("fp32", "bf16")
    }
    assert certs["fp32"].prediction.tolist() == certs["bf16"].prediction.tolist() == model.label(x).tolist()
    for i in range(len(x)):
        a, b = int(certs["fp32"].count_a[i]), int(certs["bf16"].count_a[i])
        # bf16 rounds x + delta to 8 bits of mantissa (~0.002 here): far below the noise's 0.25.
        assert abs(_z_known(b, n, p_a[i])) < 4 and abs(_z_two(a, b, n)) < 4


# ---------------------------------------------------------------- automatic batch size


@pytest.mark.parametrize(
    ("kwargs", "rows"),
    [
        ({"per_row_bytes": 200e3, "budget_bytes": CPU_BATCH_BYTES}, 256),  # LeNet on CPU: 293 -> 256
        ({"per_row_bytes": 1e6, "free_bytes": 100e6}, 64),  # 70% of free: 70 rows -> 64
        ({"per_row_bytes": 1e6, "free_bytes": 100e6, "budget_bytes": 30e6}, 30),  # budget wins; < 64 kept
        ({"per_row_bytes": 1e6, "free_bytes": 10e6, "budget_bytes": 30e6}, 7),  # free memory wins
        ({"per_row_bytes": 100.0, "free_bytes": 80e9}, 16384),  # capped
        ({"per_row_bytes": 1e9, "budget_bytes": 1e6}, 1),  # never below one row
        ({"per_row_bytes": 1e6, "free_bytes": 1e9, "fraction": 0.5}, 448),  # 500 -> 448
        ({"per_row_bytes": 1e3, "budget_bytes": 1e6, "multiple": 100, "max_rows": 550}, 550),
    ],
)
def test_auto_batch_size_pure_cases(kwargs, rows):
    assert auto_batch_size(**kwargs) == rows


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"per_row_bytes": 0.0, "free_bytes": 1e9}, "per_row_bytes"),
        ({"per_row_bytes": float("nan"), "free_bytes": 1e9}, "per_row_bytes"),
        ({"per_row_bytes": 1e3}, "free_bytes"),
        ({"per_row_bytes": 1e3, "budget_bytes": -1}, "budget"),
        ({"per_row_bytes": 1e3, "free_bytes": 1e9, "fraction": 1.5}, "fraction"),
    ],
)
def test_auto_batch_size_rejects_bad_measurements(kwargs, match):
    with pytest.raises(ValueError, match=match):
        auto_batch_size(**kwargs)


def test_check_batch_size():
    assert check_batch_size(64) == 64 and check_batch_size("auto") == "auto"
    for bad in (0, -3, 2.5, "big", True):
        with pytest.raises(ValueError, match="positive integer or 'auto'"):
            check_batch_size(bad)


def _lenet():
    from smoothcert.models import build_model

    torch.manual_seed(0)
    return build_model("lenet", num_classes=10, in_channels=1, mean=[0.1307], std=[0.3081]).eval()


def test_cpu_row_estimate_gives_lenet_256_rows_and_respects_the_budget():
    model = _lenet()
    x = torch.rand(1, 1, 28, 28)
    per_row = measure_row_bytes(model, x, noise=get_noise("gaussian", sigma=0.25))
    # noisy row 3,136 B + conv1 100,352 + pool 25,088 + conv2 50,176 + pool 12,544 + ... = 0.199 MB
    assert 1.5e5 < per_row < 2.5e5
    s = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=10)
    assert s.resolve_batch_size(x, "auto") == 256
    assert s.auto_batch_sizes == {"1x28x28@cpu": 256}
    tight = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=10, max_batch_bytes=1000)
    assert tight.resolve_batch_size(x, "auto") == 1
    assert tight.settings()["max_batch_bytes"] == 1000


def test_auto_batch_certifies_like_the_chosen_integer_and_keeps_random_streams():
    model, x, _ = _image_model_and_inputs(0.25)
    s = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=2, max_batch_bytes=64 * 2**10)
    state = torch.get_rng_state()
    rows = s.resolve_batch_size(x, "auto")
    assert torch.equal(torch.get_rng_state(), state)  # the probe draws nothing from torch's RNG
    assert 1 < rows < 1000
    a = s.certify(x, n0=50, n=1000, alpha=0.01, batch_size="auto", generator=4)
    assert s.last_batch_size == rows
    b = s.certify(x, n0=50, n=1000, alpha=0.01, batch_size=rows, generator=4)
    assert torch.equal(a.counts, b.counts) and torch.equal(a.radius, b.radius)


# ---------------------------------------------------------------- settings, compile and warm-up


def test_settings_are_plain_and_complete():
    s = SmoothedClassifier(nn.Linear(4, 2).eval(), noise=get_noise("gaussian", sigma=0.25), num_classes=2,
                           precision="bf16", channels_last=False)
    settings = s.settings()
    assert json.loads(json.dumps(settings)) == settings
    assert {k: settings[k] for k in ("precision", "channels_last", "compile", "fixed_shape", "max_batch_bytes")} == {
        "precision": "bf16", "channels_last": False, "compile": False, "fixed_shape": False, "max_batch_bytes": None}
    assert s.compile_seconds == 0.0 and s.last_batch_size is None


def test_the_default_path_never_compiles(monkeypatch):
    def no_compile(*args, **kwargs):
        raise AssertionError("torch.compile called with compile=False")

    monkeypatch.setattr(torch, "compile", no_compile)
    s = SmoothedClassifier(nn.Linear(4, 2).eval(), noise=get_noise("gaussian", sigma=0.25), num_classes=2)
    cert = s.certify(torch.rand(2, 4), n0=10, n=100, alpha=0.01, batch_size=64, generator=0)
    assert cert.counts.sum().item() == 200 and s.compile_seconds == 0.0


def _fake_compile(calls: list, delay: float):
    """Stands in for torch.compile: returns the module wrapped in a function that sleeps on its
    first call (the "compilation") and counts how often compile itself is called."""

    def compile_(module, *, dynamic=None, **kwargs):
        calls.append(dynamic)
        state = {"first": True}

        def run(x):
            if state["first"]:
                time.sleep(delay)
                state["first"] = False
            return module(x)

        return run

    return compile_


def test_compile_is_built_once_warmed_per_shape_and_excluded_from_timings(monkeypatch):
    calls: list = []
    # The fake compiler's delay is far above what 4 inputs x 1,050 draws of a tiny model take even on a
    # loaded 2-core machine (0.36 s seen with 7 processes running), so the comparison cannot flake.
    monkeypatch.setattr(torch, "compile", _fake_compile(calls, delay=3.0))
    model, x, _ = _image_model_and_inputs(0.25)
    noise = get_noise("gaussian", sigma=0.25)
    s = SmoothedClassifier(model, noise=noise, num_classes=2, compile=True)
    assert s.fixed_shape and "compile=True" in repr(s)
    cert = s.certify(x, n0=50, n=1000, alpha=0.01, batch_size=256, generator=4)
    assert calls == [False]  # compiled once, static shapes
    assert s.compile_seconds >= 3.0 > cert.seconds.sum().item()
    again = s.certify(x, n0=50, n=1000, alpha=0.01, batch_size=256, generator=4)
    assert s.warmup(x, batch_size=256) == 0.0 and calls == [False]
    assert torch.equal(cert.counts, again.counts)
    # Warm-up draws from its own generator: same certificate as an uncompiled fixed-shape run.
    plain = SmoothedClassifier(model, noise=noise, num_classes=2, fixed_shape=True)
    assert torch.equal(plain.certify(x, n0=50, n=1000, alpha=0.01, batch_size=256, generator=4).counts, cert.counts)


def test_compile_mode_reaches_torch_compile_and_is_recorded(monkeypatch):
    modes: list = []

    def compile_(module, *, dynamic=None, mode=None):
        modes.append((dynamic, mode))
        return module

    monkeypatch.setattr(torch, "compile", compile_)
    model, x, _ = _image_model_and_inputs(0.25)
    noise = get_noise("gaussian", sigma=0.25)
    s = SmoothedClassifier(model, noise=noise, num_classes=2, compile_mode="reduce-overhead")
    assert s.compile and s.fixed_shape and s.settings()["compile_mode"] == "reduce-overhead"
    assert "compile_mode='reduce-overhead'" in repr(s)
    cert = s.certify(x, n0=20, n=200, alpha=0.01, batch_size=64, generator=1)
    assert modes == [(False, "reduce-overhead")]  # CPU: no CUDA-graph step marking, one warm-up pass
    plain = SmoothedClassifier(model, noise=noise, num_classes=2, fixed_shape=True)
    assert torch.equal(plain.certify(x, n0=20, n=200, alpha=0.01, batch_size=64, generator=1).counts, cert.counts)
    assert SmoothedClassifier(model, noise=noise, num_classes=2, compile=True).settings()["compile_mode"] is None
    with pytest.raises(ValueError, match="compile_mode"):
        SmoothedClassifier(model, noise=noise, num_classes=2, compile_mode="fastest")


def test_compile_failure_is_a_clear_error(monkeypatch):
    def broken_compile(module, **kwargs):
        def run(x):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    s = SmoothedClassifier(nn.Linear(4, 2).eval(), noise=get_noise("gaussian", sigma=0.25), num_classes=2,
                           compile=True)
    with pytest.raises(CompileError, match="C\\+\\+ compiler.*compile=False"):
        s.certify(torch.rand(1, 4), n0=10, n=100, alpha=0.01, batch_size=64, generator=0)
    # A model that fails by itself keeps its own error, not a compile one.
    bad = SmoothedClassifier(nn.Linear(4, 3).eval(), noise=get_noise("gaussian", sigma=0.25), num_classes=2,
                             compile=True)
    monkeypatch.setattr(torch, "compile", _fake_compile([], delay=0.0))
    with pytest.raises(ValueError, match="num_classes=2"):
        bad.predict(torch.rand(1, 4), n=100, alpha=0.01, batch_size=64)


def test_compile_without_fixed_shape_warns():
    with pytest.warns(UserWarning, match="fixed_shape"):
        SmoothedClassifier(nn.Linear(4, 2).eval(), noise=get_noise("gaussian", sigma=0.25), num_classes=2,
                           compile=True, fixed_shape=False)


@pytest.mark.slow
def test_torch_compile_on_cpu_certifies_like_the_plain_model():
    # Real torch.compile (inductor, needs a C++ compiler): ~20-40 s on 2 cores.
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 3)).eval()
    x = torch.rand(2, 1, 8, 8)
    noise = get_noise("gaussian", sigma=0.25)
    compiled = SmoothedClassifier(model, noise=noise, num_classes=3, compile=True)
    seconds = compiled.warmup(x, batch_size=512)
    assert seconds > 0 and compiled.compile_seconds == seconds
    a = compiled.certify(x, n0=100, n=5000, alpha=0.001, batch_size=512, generator=9)
    plain = SmoothedClassifier(model, noise=noise, num_classes=3, fixed_shape=True)
    b = plain.certify(x, n0=100, n=5000, alpha=0.001, batch_size=512, generator=9)
    # Same draws; fused kernels may round a near-tie logit differently, nothing more.
    assert a.prediction.tolist() == b.prediction.tolist()
    assert (a.counts - b.counts).abs().max().item() <= 5
    assert a.seconds.sum().item() < seconds
    assert ABSTAIN not in a.prediction.tolist() or ABSTAIN in b.prediction.tolist()


def test_fixed_rows_divide_the_work():
    assert fixed_rows(100_000, 16_384) == 14_288  # 7 passes, 16 padding rows in all
    assert fixed_rows(100, 16_384) == 104
    assert fixed_rows(64, 64) == 64 and fixed_rows(7, 3) == 3
    for total, batch in [(100_000, 16_384), (10_100, 1000), (37, 64), (5 * 37, 64)]:
        rows = fixed_rows(total, batch)
        passes = -(-total // rows)
        assert rows <= batch and passes * rows - total < 8 * passes


# ---------------------------------------------------------------- the Engine object


def test_engine_settings_record_and_repr():
    engine = Engine(precision="bf16", channels_last=False, max_batch_bytes=2**20)
    settings = engine.settings()
    assert json.loads(json.dumps(settings)) == settings
    assert set(settings) == {"precision", "channels_last", "compile", "compile_mode", "fixed_shape", "max_batch_bytes",
                             "auto_batch_memory_fraction", "auto_batch_multiple", "auto_batch_max_rows"}
    assert settings["precision"] == "bf16" and settings["max_batch_bytes"] == 2**20 and not settings["fixed_shape"]
    assert repr(engine) == "Engine(precision='bf16', channels_last=False, max_batch_bytes=1048576)"
    s = SmoothedClassifier(nn.Linear(4, 2).eval(), noise=get_noise("gaussian", sigma=0.25), num_classes=2,
                           engine=engine)
    assert s.engine is engine and s.settings() == settings and s.precision == "bf16" and not s.channels_last
    # The old keywords build the same engine.
    old = SmoothedClassifier(nn.Linear(4, 2).eval(), noise=get_noise("gaussian", sigma=0.25), num_classes=2,
                             precision="bf16", channels_last=False, max_batch_bytes=2**20)
    assert old.settings() == settings and repr(old) == repr(s)
    for bad, match in [({"precision": "fp8"}, "precision"), ({"compile_mode": "fast"}, "compile_mode"),
                       ({"max_batch_bytes": 0}, "max_batch_bytes")]:
        with pytest.raises(ValueError, match=match):
            Engine(**bad)


def test_engine_and_engine_keywords_together_are_refused():
    noise = get_noise("gaussian", sigma=0.25)
    model = nn.Linear(4, 2).eval()
    with pytest.raises(ValueError, match="not both.*precision, compile"):
        SmoothedClassifier(model, noise=noise, num_classes=2, engine=Engine(), precision="fp32", compile=False)
    with pytest.raises(TypeError, match="Engine"):
        SmoothedClassifier(model, noise=noise, num_classes=2, engine={"precision": "fp32"})


def test_an_injected_engine_does_the_sampling(monkeypatch):
    calls: list = []
    monkeypatch.setattr(torch, "compile", _fake_compile(calls, delay=0.0))
    model, x, _ = _image_model_and_inputs(0.25)
    recorder = ShapeRecorder(model)
    noise = get_noise("gaussian", sigma=0.25)
    engine = Engine(compile=True)
    s = SmoothedClassifier(recorder, noise=noise, num_classes=2, engine=engine)
    cert = s.certify(x, n0=50, n=1000, alpha=0.01, batch_size=256, generator=4)
    assert calls == [False] and engine.last_batch_size == s.last_batch_size == 256
    assert engine.compile_seconds == s.compile_seconds > 0
    # fixed shapes: the warm-up passes (one row of each shape) then the certify passes, all one of two shapes
    assert set(recorder.rows) == {fixed_rows(4 * 50, 256), fixed_rows(4 * 1000, 256)}
    # Same draws as the engine's own functions with the same settings.
    plain = SmoothedClassifier(model, noise=noise, num_classes=2, fixed_shape=True)
    assert torch.equal(plain.certify(x, n0=50, n=1000, alpha=0.01, batch_size=256, generator=4).counts, cert.counts)
    # One engine, two models: each gets its own compiled function.
    other = SmoothedClassifier(nn.Sequential(nn.Flatten(), nn.Linear(48, 2)).eval(), noise=noise, num_classes=2,
                               engine=engine)
    other.certify(x, n0=50, n=1000, alpha=0.01, batch_size=256, generator=4)
    assert calls == [False, False] and engine.forward(recorder) is not engine.forward(other.base)


def test_prepare_runs_no_forward_pass_without_compile():
    model = ShapeRecorder(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))
    s = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=3)
    x = torch.rand(2, 3, 2, 2)
    assert s.prepare(x, batch_size=64, draws=(10, 100)) == 64 and model.rows == []
    assert s.counts(x, n=100, batch_size=64, generator=torch.Generator().manual_seed(0)).sum().item() == 200


def test_noisy_outputs_serve_models_that_return_images():
    # f = identity: the outputs are the noisy images themselves, so each input's mean output is x.
    x = torch.rand(3, 2, 4, 4)
    identity = nn.Identity().eval()
    engine = Engine()
    total = torch.zeros(4, 2, 4, 4, dtype=torch.float64)
    seen = torch.zeros(4, dtype=torch.long)
    with torch.inference_mode():
        for owner, out in engine.outputs(identity, x, get_noise("gaussian", sigma=0.1), n=2000, batch_size=700,
                                         generator=torch.Generator().manual_seed(0)):
            assert out.shape == (len(owner), 2, 4, 4)
            total.index_add_(0, owner, out.double())
            seen += torch.bincount(owner, minlength=4)
    assert seen[:3].tolist() == [2000] * 3 and engine.last_batch_size == 700
    mean = total[:3] / 2000
    assert (mean - x.double()).abs().max() < 5 * 0.1 / math.sqrt(2000)


# ---------------------------------------------------------------- bugs fixed in the refactor


class Float64Probe(nn.Module):
    """A float64 model: logits (0, m) with a margin m far below float32 resolution, and a record
    of the input dtype and of whether the input carries more than float32's 24 bits."""

    def __init__(self) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.tensor(1e-9, dtype=torch.float64), requires_grad=False)
        self.dtypes: list[torch.dtype] = []
        self.wide: list[bool] = []
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.dtypes.append(x.dtype)
        self.wide.append(bool((x.float().double() != x).any()))
        zeros = torch.zeros(x.shape[0], dtype=x.dtype)
        return torch.stack([zeros, zeros + self.m], dim=1)


def test_a_float64_model_gets_float64_noise_and_softmax():
    model = Float64Probe()
    x = torch.full((2, 3), 1 / 3, dtype=torch.float64)
    probs = sample_mean_probs(model, x, noise=get_noise("gaussian", sigma=0.25), n=50, num_classes=2,
                              batch_size=64, generator=torch.Generator().manual_seed(0))
    assert set(model.dtypes) == {torch.float64} and all(model.wide)
    # softmax(0, 1e-9)[1] = 1/2 + 2.5e-10 in float64; a float32 softmax rounds it to exactly 1/2.
    assert probs[:, 1].tolist() == pytest.approx([0.5 + 2.5e-10] * 2, abs=1e-12)
    assert (probs[:, 1] > 0.5).all()
    counts = sample_counts(model, x, noise=get_noise("gaussian", sigma=0.25), n=50, num_classes=2, batch_size=64)
    assert counts[:, 1].tolist() == [50, 50]  # the tiny margin decides in float64
    assert measure_row_bytes(model, x, noise=get_noise("gaussian", sigma=0.25)) > 0  # the probe runs float64 too


@pytest.mark.parametrize("precision", ["tf32", "fp32", "bf16"])
def test_precision_is_scoped_to_each_forward_pass(precision):
    # The TF32 switches are process-wide and autocast is thread-wide: while the chunk generator is
    # suspended between yields, the consumer's code must see them as they were.
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    inside: list = []

    class Spy(nn.Module):
        def forward(self, x):
            inside.append((torch.backends.cuda.matmul.allow_tf32, torch.is_autocast_enabled("cpu")))
            return torch.stack([x.sum(1), -x.sum(1)], dim=1)

    chunks = 0
    for _, out in noisy_outputs(Spy().eval(), torch.rand(2, 3), noise=get_noise("gaussian", sigma=0.25), n=10,
                                batch_size=4, precision=precision):
        chunks += 1
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
        assert not torch.is_autocast_enabled("cpu") and not torch.is_inference_mode_enabled()
    assert chunks == 5
    assert inside == [(precision == "tf32", precision == "bf16")] * 5


def test_on_rows_reports_every_forward_pass_without_changing_the_certificate():
    model, x, _ = _image_model_and_inputs(0.25)
    noise = get_noise("gaussian", sigma=0.25)
    s = SmoothedClassifier(model, noise=noise, num_classes=2)
    seen: list[int] = []
    cert = s.certify(x, n0=50, n=1000, alpha=0.01, batch_size=256, generator=4, on_rows=seen.append)
    plain = s.certify(x, n0=50, n=1000, alpha=0.01, batch_size=256, generator=4)
    assert torch.equal(cert.counts, plain.counts) and torch.equal(cert.radius, plain.radius)
    # one call per forward pass, never larger than a batch, adding up to the draws (no fixed-shape padding here)
    assert sum(seen) == len(x) * (50 + 1000) and max(seen) <= 256 and len(seen) >= len(x) * 1050 // 256


def test_the_dataset_run_shows_a_bar_inside_a_long_engine_call(tmp_path, monkeypatch, capsys):
    from smoothcert.runs import certify as certify_run
    from smoothcert.runs.certify import certify_dataset

    model, x, _ = _image_model_and_inputs(0.25)
    data = torch.utils.data.TensorDataset(x[:2], torch.zeros(2, dtype=torch.long))
    s = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=2)
    steps: list[int] = []
    real = certify_run._InnerBar.step
    monkeypatch.setattr(certify_run._InnerBar, "step", lambda self, rows: (steps.append(rows), real(self, rows)))
    monkeypatch.setattr(certify_run, "INNER_BAR_MIN_DRAWS", 1_000)
    certify_dataset(s, data, tmp_path / "r.tsv", n0=50, n=1000, alpha=0.01, batch_size=256, progress=True)
    assert sum(steps) == 2 * 1050  # one engine call per input, each of 1,050 draws
    steps.clear()
    monkeypatch.setattr(certify_run, "INNER_BAR_MIN_DRAWS", 100_000)
    certify_dataset(s, data, tmp_path / "q.tsv", n0=50, n=1000, alpha=0.01, batch_size=256, progress=True)
    assert steps == []  # short calls: no inner bar
