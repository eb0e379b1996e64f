"""The CPU engine: frozen compilation (scoped, recompiled when weights change) and the automatic
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


def test_cpu_compile_freezes_the_weights_in_this_compilation_only(monkeypatch):
    calls: list = []
    monkeypatch.setattr(torch, "compile", _recording_compile(calls))
    engine = Engine(compile=True)
    model = _model()
    engine.forward(model)
    assert calls == [{"dynamic": False, "options": {"freezing": True}}]
    # Another mode is passed as given (torch.compile takes mode or options, not both).
    Engine(compile_mode="max-autotune").forward(_model())
    assert calls[-1] == {"dynamic": False, "mode": "max-autotune"}


def test_changed_weights_are_compiled_again_with_fresh_warm_ups(monkeypatch):
    calls: list = []
    monkeypatch.setattr(torch, "compile", _recording_compile(calls))
    noise = get_noise("gaussian", sigma=0.25)
    model = _model()
    s = SmoothedClassifier(model, noise=noise, num_classes=3, compile=True)
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


def test_default_compile_is_eager_on_cpu_while_measured_slower():
    decision, why = default_compile("cpu", rows=10**9)
    assert decision is False and "measured slower" in why and "\n" not in why


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
    assert "below the 500,000" in lines[-1]
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
    engine = Engine(compile=True)
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
