"""The CPU engine: compilation (frozen on request: scoped, recompiled when weights change) and the automatic
``compile`` default of certify/predict runs (decided by work size, a C++ compiler, and a resumed
file's record)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import smoothcert.engine.core as engine_core
from smoothcert.engine import AUTO_COMPILE_MIN_ROWS, Engine, default_compile
from smoothcert.noise import get_noise
from smoothcert.runs import EngineSpec
from smoothcert.runs.launch import resolve_compile
from smoothcert.smooth import SmoothedClassifier


def _recording_compile(calls: list):
    def compile_(module, **kwargs):
        calls.append(kwargs)
        return lambda x: module(x)

    return compile_


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


def test_compile_modes_reach_torch_compile(monkeypatch):
    calls: list = []
    monkeypatch.setattr(torch, "compile", _recording_compile(calls))
    Engine(compile=True).forward(_model())
    assert calls == [{"dynamic": False}]  # the default: weights stay graph inputs
    Engine(compile_mode="frozen").forward(_model())
    # and inductor's global flag around each call (see the real-compile tests below)
    assert calls[-1] == {"dynamic": False, "options": {"freezing": True}}
    Engine(compile_mode="max-autotune").forward(_model())
    assert calls[-1] == {"dynamic": False, "mode": "max-autotune"}


def test_the_frozen_graph_runs_with_inductors_flag_on_and_grad_off_and_leaves_both(monkeypatch):
    import torch._inductor.config as inductor_config

    seen: list = []

    def compile_(module, **kwargs):
        def graph(x):
            seen.append((inductor_config.freezing, torch.is_grad_enabled()))
            return module(x)
        return graph

    monkeypatch.setattr(torch, "compile", compile_)
    before = inductor_config.freezing
    x = torch.rand(2, 1, 4, 4)
    Engine(compile_mode="frozen").forward(_model())(x)
    Engine(compile=True).forward(_model())(x)
    assert seen == [(True, False), (before, True)]
    assert inductor_config.freezing == before and torch.is_grad_enabled()


def _counting_reset(monkeypatch) -> list:
    resets: list = []
    monkeypatch.setattr(torch.compiler, "reset", lambda: resets.append(1))
    return resets


def test_frozen_models_side_by_side_keep_their_graphs(monkeypatch):
    # Two models of one frozen engine, used in turn: each compiled once, dynamo's cache never cleared
    # (a first version cleared it on every first build, and the two models rebuilt each other forever).
    calls: list = []
    monkeypatch.setattr(torch, "compile", _recording_compile(calls))
    resets = _counting_reset(monkeypatch)
    engine = Engine(compile_mode="frozen")
    a, b = _model(), _model()
    for _ in range(3):
        engine.forward(a), engine.forward(b)
    assert len(calls) == 2 and resets == []
    # Another frozen engine on a's tensors, unchanged: the graph cached for them holds their values.
    noise, x = get_noise("gaussian", sigma=0.25), torch.rand(1, 1, 4, 4)
    engine.warmup(a, x, noise, batch_size=8), engine.warmup(b, x, noise, batch_size=8)
    Engine(compile_mode="frozen").forward(a)
    assert resets == []
    # The same model frozen again by another engine after an in-place change: the cache is cleared
    # once (it may hold a graph frozen on the old values), and this engine's models warm again.
    with torch.no_grad():
        a[1].weight.add_(1.0)
    Engine(compile_mode="frozen").forward(a)
    assert len(resets) == 1
    engine.forward(b)  # unchanged, but its graph was dropped with the cache: warmed again before use
    assert engine.warmup(b, x, noise, batch_size=8) > 0.0  # warmed before the clear, warmed again
    assert len(calls) == 4 and len(resets) == 1  # b's wrapper is kept (it retraces), not rebuilt
    Engine(compile_mode="frozen").forward(_model())  # tensors no frozen graph holds: no clearing
    assert len(resets) == 1


def test_a_graph_called_after_a_clear_is_recorded_with_the_values_it_froze(monkeypatch):
    # A caller keeping the frozen graph and calling it after a clear retraces it on the present
    # values; a later change of those weights must clear again before anyone freezes them anew.
    monkeypatch.setattr(torch, "compile", _recording_compile([]))
    resets = _counting_reset(monkeypatch)
    model, x = _model(), torch.rand(2, 1, 4, 4)
    graph = Engine(compile_mode="frozen").forward(model)
    graph(x)
    engine_core._clear_compiled()
    graph(x)  # traced again, on these values
    with torch.no_grad():
        model[1].weight.add_(1.0)
    Engine(compile_mode="frozen").forward(model)
    assert len(resets) == 2


def test_the_default_graph_reads_new_weights_without_recompiling(monkeypatch):
    calls: list = []
    monkeypatch.setattr(torch, "compile", _recording_compile(calls))
    resets = _counting_reset(monkeypatch)
    engine = Engine(compile=True)
    model = _model()
    engine.forward(model)
    with torch.no_grad():
        model[1].weight.mul_(2.0)
    engine.forward(model)
    assert len(calls) == 1 and resets == []


def test_changed_weights_are_compiled_again_with_fresh_warm_ups(monkeypatch):
    calls: list = []
    monkeypatch.setattr(torch, "compile", _recording_compile(calls))
    noise = get_noise("gaussian", sigma=0.25)
    model = _model()
    s = SmoothedClassifier(model, noise=noise, num_classes=3, compile_mode="frozen")
    x = torch.rand(2, 1, 4, 4)
    s.predict(x, n=64, alpha=0.01, batch_size=64, generator=0)
    assert len(calls) == 1
    s.predict(x, n=64, alpha=0.01, batch_size=64, generator=0)
    assert len(calls) == 1  # same weights: the frozen graph is kept
    with torch.no_grad():
        model[1].weight.mul_(2.0)  # in place: the version counter moves
    assert s.engine.warmup(model, x, noise, batch_size=64) > 0.0  # warmed again, not skipped
    assert len(calls) == 2
    model.load_state_dict(_model().state_dict())  # copied in place too
    s.predict(x, n=64, alpha=0.01, batch_size=64, generator=0)
    assert len(calls) == 3


def test_default_compile_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(engine_core, "AUTO_COMPILE_CPU", False)
    decision, why = default_compile("cpu", rows=10**9)
    assert decision is False and "switched off" in why and "\n" not in why


def test_default_compile_decision(monkeypatch):
    monkeypatch.setattr(engine_core, "AUTO_COMPILE_CPU", True)
    assert default_compile("cpu", rows=AUTO_COMPILE_MIN_ROWS - 1)[0] is False
    decision, why = default_compile("cpu", rows=AUTO_COMPILE_MIN_ROWS)
    assert decision is (engine_core.cxx_compiler() is not None) and why
    assert default_compile("cuda", rows=10**9)[0] is False
    assert default_compile("meta", rows=10**9)[0] is False


def test_no_cxx_compiler_falls_back_to_eager_with_one_line(monkeypatch):
    monkeypatch.setattr(engine_core, "AUTO_COMPILE_CPU", True)
    monkeypatch.setenv("CXX", "/nonexistent/c++-compiler")
    assert engine_core.cxx_compiler() is None
    decision, why = default_compile("cpu", rows=10**8)
    assert decision is False and "no C++ compiler" in why and "\n" not in why


def test_resolve_compile_follows_an_existing_file_then_the_work(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_core, "AUTO_COMPILE_CPU", True)
    lines: list[str] = []
    cpu = torch.device("cpu")
    # explicit choices are kept whatever the file says
    assert resolve_compile(EngineSpec(compile=True), out=None, device=cpu, rows=1).compile is True
    assert resolve_compile(EngineSpec(compile=False), out=None, device=cpu, rows=10**9).compile is False
    # a file written before the automatic default recorded compile=false: a resume keeps it
    out = tmp_path / "certify.tsv"
    out.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")
    (tmp_path / "certify.tsv.json").write_text(json.dumps({"compile": False, "n": 100000}))
    spec = resolve_compile(EngineSpec(), out=out, device=cpu, rows=10**9, log=lines.append)
    assert spec.compile is False and "as recorded by certify.tsv" in lines[-1]
    (tmp_path / "certify.tsv.json").write_text(json.dumps({"compile": True}))
    assert resolve_compile(EngineSpec(), out=out, device=cpu, rows=1).compile is True
    # a new file: by the work
    new = tmp_path / "new.tsv"
    assert resolve_compile(EngineSpec(), out=new, device=cpu, rows=1, log=lines.append).compile is False
    assert f"below the {AUTO_COMPILE_MIN_ROWS:,}" in lines[-1]
    assert resolve_compile(EngineSpec(), out=new, device=cpu, rows=10**9).compile is (
        engine_core.cxx_compiler() is not None)
    assert resolve_compile(EngineSpec(compile_mode="max-autotune"), out=new, device=cpu, rows=1).compile is True
    with pytest.raises(TypeError, match="compile must be True, False or None"):
        EngineSpec(compile="yes")


@pytest.mark.slow
def test_real_frozen_compile_leaves_the_global_flag_and_follows_new_weights():
    # Real inductor on CPU (C++ compiler): ~10-40 s on a loaded 2-core machine.
    import torch._inductor.config as inductor_config

    before = inductor_config.freezing
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 3)).eval()
    engine = Engine(compile_mode="frozen")
    x = torch.rand(32, 1, 8, 8)
    with torch.inference_mode():
        out = engine.forward(model)(x)
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)
    assert inductor_config.freezing == before
    with torch.no_grad():
        model[0].weight.mul_(-1.5)
    with torch.inference_mode():
        torch.testing.assert_close(engine.forward(model)(x), model(x), rtol=1e-4, atol=1e-4)
    model[4].weight = nn.Parameter(torch.randn_like(model[4].weight))  # a new tensor, not in place
    with torch.inference_mode():
        torch.testing.assert_close(engine.forward(model)(x), model(x), rtol=1e-4, atol=1e-4)
    assert inductor_config.freezing == before


@pytest.mark.slow
@pytest.mark.parametrize("mode", [None, "frozen"])
def test_only_the_frozen_mode_holds_the_weights_as_constants(mode):
    # A graph compiled by the engine, called directly after a batchnorm changes in place: the frozen
    # graph folded the batchnorm into the convolution's constants and still answers with the old
    # one; the default graph reads the new weights. This failed while the engine passed
    # torch.compile(options={"freezing": True}), which dynamo ignores when it lifts parameters
    # (nothing was frozen). Real inductor: ~10-30 s.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3)).eval()
    engine = Engine(compile=True, compile_mode=mode, channels_last=False)  # no copy: the graph reads model
    x = torch.rand(8, 1, 4, 4)
    with torch.inference_mode():
        graph = engine.forward(model)
        before = graph(x).clone()
    with torch.no_grad():
        model[1].weight.mul_(-2.0)
        model[1].bias.add_(1.0)
    with torch.inference_mode():
        after, expected_new = graph(x), model(x)
    assert not torch.allclose(before, expected_new, atol=1e-3)
    if mode == "frozen":
        torch.testing.assert_close(after, before, rtol=0, atol=0)
    else:
        torch.testing.assert_close(after, expected_new, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_no_engine_is_handed_a_graph_frozen_on_old_weights():
    # Dynamo's cache is process-wide and its guards on a frozen graph check which parameter objects
    # it was built on, not their values: without the engine's reset before a frozen build, a new
    # frozen engine on the same model (changed in place since) got the old graph. Real inductor.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3)).eval()
    x = torch.rand(8, 1, 4, 4)
    with torch.inference_mode():
        Engine(compile_mode="frozen", channels_last=False).forward(model)(x)
    with torch.no_grad():
        model[1].weight.mul_(-2.0)
    # the unfrozen engine first: after the frozen one below the cache is clear, and it would prove nothing
    for later in (Engine(compile=True, channels_last=False), Engine(compile_mode="frozen", channels_last=False)):
        with torch.inference_mode():
            torch.testing.assert_close(later.forward(model)(x), model(x), rtol=1e-5, atol=1e-5)


# ---- the CPU fast paths of issue #17: vectorised float64 Gaussian, channels-last weights, rows per pass


@pytest.mark.parametrize("numel", [16, 17, 31, 784 * 3, 3 * 32 * 32 * 5 + 7])
def test_vectorised_float64_gaussian_draws_what_normal_draws(numel):
    # Same generator consumption and the same values up to the rounding of log/cos/sin: the fast
    # path is torch's own float64 Box-Muller, so the exactness argument of docs/soundness.md holds.
    from smoothcert.noise import standard_normal_f64_

    g1, g2 = torch.Generator().manual_seed(numel), torch.Generator().manual_seed(numel)
    ours = standard_normal_f64_(torch.empty(numel, dtype=torch.float64), generator=g1)
    theirs = torch.empty(numel, dtype=torch.float64).normal_(generator=g2)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-13)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))  # same stream position after


def test_gaussian_noise_uses_the_fast_path_for_float64_cpu_buffers_only():
    from smoothcert.noise import standard_normal_f64_

    noise = get_noise("gaussian", sigma=0.5)
    buf = torch.empty(8, 100, dtype=torch.float64)
    noise.sample_(buf[:5], generator=torch.Generator().manual_seed(3))  # a contiguous view: 500 values
    expected = standard_normal_f64_(torch.empty(5, 100, dtype=torch.float64),
                                    generator=torch.Generator().manual_seed(3)).mul_(0.5)
    assert torch.equal(buf[:5], expected)
    small = noise.sample_(torch.empty(7, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    assert torch.equal(small, torch.empty(7, dtype=torch.float64).normal_(0, 0.5, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="needs >= 16 float64"):
        standard_normal_f64_(torch.empty(32, dtype=torch.float32))


def _conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()


def test_engine_evaluates_a_channels_last_copy_and_leaves_the_model_alone():
    model, reference = _conv_model(), _conv_model()
    x = torch.rand(3, 2, 8, 8)
    engine = Engine()
    s = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=3, engine=engine)
    with torch.inference_mode():
        s.predict(x[0], n=16, alpha=0.01, batch_size=16, generator=0)
    runner = engine.forward(model)
    assert runner is not None and runner is not model
    assert runner[0].weight.is_contiguous(memory_format=torch.channels_last) and not runner[0].weight.is_contiguous()
    assert model[0].weight.is_contiguous() and not model[0].weight.is_inference()  # the caller's model as it was
    with torch.inference_mode():
        assert torch.allclose(runner(x), reference(x), atol=1e-6)  # same values, another stride order
        assert engine.forward(model) is runner  # kept while the weights stay
        model.load_state_dict({k: v + 1 for k, v in model.state_dict().items()})  # new weights, copied in place
        renewed = engine.forward(model)
        assert renewed is not runner and torch.allclose(renewed(x), model(x), atol=1e-5)
    # off: nothing is copied
    assert Engine(channels_last=False).forward(_conv_model()) is None


def test_runs_default_to_automatic_rows_on_cpu_and_1000_elsewhere():
    from smoothcert.cli import _engine, build_parser
    from smoothcert.engine import DEFAULT_BATCH_ROWS, default_batch_size

    assert default_batch_size("cpu") == "auto" and default_batch_size("cuda") == DEFAULT_BATCH_ROWS == 1000
    parser = build_parser()
    base = ["certify", "--checkpoint", "m.pt", "--out", "o.tsv", "--device", "cpu"]
    spec = _engine(parser.parse_args(base))
    assert spec.batch_size is None  # the run decides, from its device (the Python runs layer alike)
    assert spec.for_device("cpu").batch_size == "auto" and spec.for_device("cuda:0").batch_size == 1000
    assert EngineSpec().for_device(torch.device("cpu")).batch_size == "auto"
    explicit = _engine(parser.parse_args([*base, "--batch", "1000"]))
    assert explicit.batch_size == 1000 and explicit.for_device("cpu") is explicit


def test_prepare_makes_the_channels_last_copy_before_any_clock():
    # Without compile the copy used to be made inside the first timed sampling call.
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    engine = Engine()
    engine.prepare(model, torch.rand(1, 2, 8, 8), get_noise("gaussian", sigma=0.25), batch_size=8)
    copy_ = engine._state(model).layout_copy
    assert copy_ is not None and copy_[0].weight.is_contiguous(memory_format=torch.channels_last)
