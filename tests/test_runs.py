"""The run layer (smoothcert.runs): settings objects check themselves, runs from Python equal runs
from the command line, the CLI reports only the project's own errors, and PREDICT's time column
leaves out batch probing and warm-up like CERTIFY's."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from linear import LinearBinary
from torch.utils.data import TensorDataset

from smoothcert import SmoothedClassifier, cli, get_noise
from smoothcert.cli import main
from smoothcert.engine import sampling
from smoothcert.errors import InputError, MissingFileError, SmoothcertError
from smoothcert.runs import (
    AttackRun,
    CertifyRun,
    ClassifierSpec,
    DataSpec,
    DenoiserSpec,
    DenoiserTrainRun,
    EngineSpec,
    PredictRun,
    Selection,
    TrainRun,
    check_finetune,
    predict_dataset,
    read_init,
    run_certify,
)
from smoothcert.runs import demo as quickstart_module

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"
MODEL = ClassifierSpec(checkpoint="model.pt")


# ------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CertifyRun(model=MODEL, out="r.tsv", n0=100, n=100), r"n0 \(100\) must be smaller than n \(100\)"),
        (lambda: CertifyRun(model=MODEL, out="r.tsv", alpha=1.5), "alpha"),
        (lambda: CertifyRun(model=MODEL, out="r.tsv", target="grid"), "needs the radii"),
        (lambda: CertifyRun(model=MODEL, out="r.tsv", target="radius", two_class=True), "one-class"),
        (lambda: CertifyRun(model=MODEL, out="r.tsv", target="grid", radii=(0.1,), stages=("auto", 100)), "alone"),
        (lambda: CertifyRun(model=MODEL, out="r.tsv", target="sometimes"), "target"),
        (lambda: CertifyRun(model=MODEL, out="r.tsv", pack=0), "pack"),
        (lambda: CertifyRun(model=MODEL, out="r.tsv", dist_timeout=0), "dist_timeout"),
        (lambda: PredictRun(model=MODEL, out="p.tsv", n=0), "n must be a positive integer"),
        (lambda: AttackRun(model=MODEL, out="a.tsv", attack="fgsm"), "attack must be one of"),
        (lambda: AttackRun(model=MODEL, out="a.tsv", eps=(-1.0,)), "eps"),
        (lambda: AttackRun(model=MODEL, out="a.tsv", engine=EngineSpec(compile=True)), "compile"),
        (lambda: EngineSpec(precision="fp8"), "precision"),
        (lambda: EngineSpec(batch_size="many"), "batch"),
        (lambda: DataSpec(dataset="svhn"), "dataset must be one of"),
        (lambda: Selection(skip=0), "skip"),
        (lambda: Selection(start=-1), "start"),
        (lambda: ClassifierSpec(checkpoint="m.pt", noise="cauchy"), "noise must be one of"),
        (lambda: ClassifierSpec(checkpoint="m.pt", sigma=-0.5), "sigma"),
        (lambda: DenoiserSpec(source="d.pt", mode="two-step"), "denoise mode"),
        (lambda: TrainRun(out="m.pt", sigma=0.25, method="smoothadv", hparams={"nope": 1}), "no hyperparameter"),
        (lambda: TrainRun(out="m.pt", sigma=0.25, arch="vgg"), "arch must be one of"),
        (lambda: TrainRun(out="m.pt", sigma=0.0), "sigma"),
        (lambda: DenoiserTrainRun(out="d.pt", kind="dncnn", loss="dsm", sigma=0.25), "dncnn is a denoiser network"),
        (lambda: DenoiserTrainRun(out="d.pt", kind="dncnn"), "pass --sigma"),
        (lambda: DenoiserTrainRun(out="d.pt", kind="scorenet", loss="dsm", ladder=(1.0, 0.1, 2.5)), "whole number"),
    ],
)
def test_settings_refuse_bad_values_with_an_input_error(make, message):
    with pytest.raises(InputError, match=message):
        make()


def test_settings_are_frozen_and_normalised():
    run = CertifyRun(model=MODEL, out="r.tsv", target="grid", radii=[0, 0.5], stages=["auto"],
                     select=Selection(max_count=-1))
    assert run.out == Path("r.tsv") and run.radii == (0.0, 0.5) and run.stages == "auto"
    assert run.select.max_count is None and run.select.indices(5) == [0, 1, 2, 3, 4]
    assert Selection(skip=2, max_count=2, start=1).indices(10) == [1, 3]
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.n = 10  # type: ignore[misc]
    assert DenoiserSpec(source="d.pt", levels=[0.5, 0.1]).levels == (0.5, 0.1)


# ------------------------------------------------------------------------------- python runs


def test_a_certify_run_from_python_writes_the_cli_rows_and_sidecar(tmp_path, monkeypatch):
    # tests/data/legacy/certify.tsv was written by `smoothcert certify --checkpoint model.pt --n0 20
    # --n 200 --alpha 0.01 --max 6 --batch 100 --quiet --out certify.tsv` (README there).
    shutil.copy(LEGACY / "model.pt", tmp_path / "model.pt")
    monkeypatch.chdir(tmp_path)
    # Those rows were drawn with float32 noise, before issue #16 made float64 the default.
    monkeypatch.setattr(sampling, "noise_work_dtype", lambda noise_dtype, model_dtype: model_dtype)
    lines: list[str] = []
    out = run_certify(CertifyRun(model=ClassifierSpec(checkpoint="model.pt", device="cpu"), out="certify.tsv",
                                 n0=20, n=200, alpha=0.01, select=Selection(max_count=6),
                                 engine=EngineSpec(batch_size=100)),
                      progress=False, log=lines.append)
    assert out == Path("certify.tsv")

    def stable(path: Path) -> list[list[str]]:
        rows = [line.split("\t") for line in path.read_text().splitlines()]
        keep = [i for i, c in enumerate(rows[0]) if c not in ("time", "seconds")]
        return [[r[i] for i in keep] for r in rows]

    assert stable(tmp_path / "certify.tsv") == stable(LEGACY / "certify.tsv")
    assert json.loads((tmp_path / "certify.tsv.json").read_text()) == \
        json.loads((LEGACY / "certify.tsv.json").read_text())
    assert lines[0].startswith("certifying 6 inputs of embedded/test") and lines[1].startswith("engine: 100 rows")


def test_a_python_run_without_a_batch_size_gets_the_devices_default(tmp_path, monkeypatch):
    # EngineSpec() leaves the rows per pass to the run's device, as the CLI does without --batch:
    # "auto" on CPU (recorded as asked; the engine reports what it chose).
    shutil.copy(LEGACY / "model.pt", tmp_path / "model.pt")
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    run_certify(CertifyRun(model=ClassifierSpec(checkpoint="model.pt", device="cpu"), out="c.tsv", n0=20, n=200,
                           alpha=0.01, select=Selection(max_count=1), engine=EngineSpec()),
                progress=False, log=lines.append)
    assert json.loads((tmp_path / "c.tsv.json").read_text())["batch_size"] == "auto"
    assert lines[1].startswith("engine: 576 rows")  # lenet-small on 28x28 within the 56 MiB budget


def test_fine_tuning_check_compares_the_networks():
    init = read_init(LEGACY / "model.pt")
    assert init.meta.arch == "lenet-small" and len(init.record["sha256"]) == 64
    check_finetune(init, arch="lenet-small", arch_kwargs={"input_size": 28}, num_classes=10, in_channels=1,
                   dataset_name="mnist")
    with pytest.raises(InputError, match="Fine-tuning needs the same network: pass --arch lenet-small"):
        check_finetune(init, arch="lenet", arch_kwargs={"input_size": 28}, num_classes=10, in_channels=1,
                       dataset_name="mnist")
    with pytest.raises(InputError, match="100 classes"):
        check_finetune(init, arch="lenet-small", arch_kwargs={"input_size": 28}, num_classes=100, in_channels=1,
                       dataset_name="cifar100")


def _quickstart(tmp_path: Path, capsys) -> None:
    assert main(["quickstart", "--out", str(tmp_path / "q"), "--epochs", "1", "--n", "200", "--max", "2",
                 "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ACR" in out and "certify_sigma0.25.tsv" in out
    assert len((tmp_path / "q" / "certify_sigma0.25.tsv").read_text().splitlines()) == 3
    assert (tmp_path / "q" / "certified_accuracy_sigma0.25.png").stat().st_size > 1000


def test_quickstart_calls_the_library_not_main(tmp_path, capsys, monkeypatch):
    trained: list[TrainRun] = []

    def train_stand_in(run, **kw):  # the legacy model stands in for the quickstart's training
        trained.append(run)
        shutil.copy(LEGACY / "model.pt", run.out)
        return []

    monkeypatch.setattr(quickstart_module, "run_train", train_stand_in)
    monkeypatch.setattr(cli, "main", lambda argv=None: pytest.fail("quickstart re-entered main"))
    _quickstart(tmp_path, capsys)
    (run,) = trained
    assert run.arch == "lenet-small" and run.resume and run.config.epochs == 1 and run.config.schedule == "cosine"


@pytest.mark.slow  # trains on the 10,000 embedded images (about a minute on 2 busy cores)
def test_quickstart_end_to_end(tmp_path, capsys):
    _quickstart(tmp_path, capsys)


# --------------------------------------------------------------------------- errors in main


def test_main_reports_the_projects_errors_in_one_line(tmp_path, monkeypatch, capsys):
    def refuse(run, **kw):
        raise MissingFileError("no checkpoint at model.pt")

    monkeypatch.setattr(cli, "run_certify", refuse)
    assert main(["certify", "--checkpoint", "model.pt", "--out", str(tmp_path / "r.tsv")]) == 2
    assert capsys.readouterr().err == "error: no checkpoint at model.pt\n"


@pytest.mark.parametrize("bug", [KeyError("n0"), ValueError("a bug, not a setting"), FileNotFoundError("x")])
def test_main_lets_any_other_exception_keep_its_traceback(bug, tmp_path, monkeypatch):
    def broken(run, **kw):
        raise bug

    monkeypatch.setattr(cli, "run_certify", broken)
    assert not isinstance(bug, SmoothcertError)
    with pytest.raises(type(bug)):
        main(["certify", "--checkpoint", "model.pt", "--out", str(tmp_path / "r.tsv")])


# ------------------------------------------------------------------------ predict's time column


class _SlowFirstCall(LinearBinary):
    """A linear model whose first forward pass (the "auto" batch probe) takes ``delay`` seconds."""

    def __init__(self, w: torch.Tensor, b: float, delay: float) -> None:
        super().__init__(w, b)
        self.delay, self.calls = delay, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.delay)
        return super().forward(x)


@pytest.mark.parametrize("pack", [1, 2])
def test_predict_time_leaves_out_the_batch_probe(tmp_path, pack):
    torch.manual_seed(0)
    w = torch.randn(16)
    x = (0.5 + 0.3 * torch.sign(torch.randn(4, 1)) * w / w.norm()).clamp(0, 1)
    delay = 2.0
    model = _SlowFirstCall(w, b=-float(0.5 * w.sum()), delay=delay)
    smoothed = SmoothedClassifier(model, noise=get_noise("gaussian", sigma=0.25), num_classes=2)
    out = tmp_path / "p.tsv"
    predict_dataset(smoothed, TensorDataset(x, model.label(x)), out, n=100, alpha=0.01, batch_size="auto",
                    pack=pack, progress=False)
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    seconds = [_seconds(r[rows[0].index("time")]) for r in rows[1:]]
    assert model.calls > 1 and len(seconds) == 4
    assert max(seconds) < delay / 2  # the probe's sleep is in no row (it was in the first before the fix)


def _seconds(text: str) -> float:
    h, m, s = text.split(":")
    return 3600 * int(h) + 60 * int(m) + float(s)
