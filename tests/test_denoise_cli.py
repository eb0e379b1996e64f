"""The command line of denoised smoothing on tiny data: train-denoiser, certify/predict/attack --denoiser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smoothcert.analysis import load_results
from smoothcert.cli import main
from smoothcert.data import get_dataset
from smoothcert.denoise import (
    Denoised,
    MultiStepDenoiser,
    load_denoiser,
    read_denoiser_checkpoint,
    trained_noise,
)
from smoothcert.models import load_checkpoint
from smoothcert.noise import get_noise
from smoothcert.rng import input_seed
from smoothcert.smooth import SmoothedClassifier

COMMON = ["--dataset", "embedded", "--quiet", "--device", "cpu"]
DNCNN = ["train-denoiser", *COMMON, "--kind", "dncnn", "--arch-arg", "depth=3", "--arch-arg", "width=8",
         "--limit", "64", "--batch", "32", "--epochs", "1"]
SCORE = ["train-denoiser", *COMMON, "--kind", "scorenet", "--loss", "dsm", "--ladder", "1.0", "0.01", "3",
         "--arch-arg", "width=8", "--limit", "64", "--batch", "32", "--epochs", "1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("denoise_cli")
    out = {"clf": d / "clf.pt", "dncnn": d / "dncnn.pt", "score": d / "score.pt"}
    assert main(["train", *COMMON, "--arch", "lenet-small", "--sigma", "0.25", "--batch", "64", "--lr", "0.05",
                 "--limit", "128", "--epochs", "1", "--out", str(out["clf"])]) == 0
    assert main([*DNCNN, "--sigma", "0.25", "--out", str(out["dncnn"])]) == 0
    assert main([*SCORE, "--out", str(out["score"])]) == 0
    return out


def _certify(files: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["certify", "--checkpoint", str(files["clf"]), "--n0", "10", "--n", "32", "--alpha", "0.01",
                 "--batch", "32", "--max", "2", "--quiet", "--device", "cpu", "--out", str(out), *extra])


def test_train_denoiser_writes_checkpoints_with_their_settings(files) -> None:
    _, meta = load_denoiser(files["dncnn"])
    assert meta.arch == "dncnn" and meta.arch_kwargs == {"depth": 3, "width": 8} and meta.kind == "denoiser"
    assert (meta.noise, meta.sigma, meta.epoch, meta.dataset) == ("gaussian", 0.25, 1, "embedded")
    assert meta.training["loss"] == "mse" and meta.training["lr"] == 1e-3 and meta.training["train_size"] == 64
    _, smeta = load_denoiser(files["score"])
    assert smeta.kind == "score" and smeta.noise == "none" and smeta.training["loss"] == "dsm"
    assert smeta.ladder == pytest.approx([1.0, 0.1, 0.01])


def test_train_denoiser_guided_query_access_and_resume(files, tmp_path) -> None:
    out = tmp_path / "guided.pt"
    guided = [*DNCNN, "--loss", "stability", "--access", "query", "--queries", "2", "--sigma", "0.5",
              "--noise", "laplace", "--classifier", str(files["clf"]), "--out", str(out)]
    assert main(guided) == 0
    training = read_denoiser_checkpoint(out)["meta"]["training"]
    assert training["loss"] == "stability" and training["access"] == "query" and training["queries"] == 2
    assert len(training["classifier_sha256"]) == 64
    assert main(guided) == 2  # exists: needs --resume
    assert main([*guided[:-2], "--epochs", "2", "--resume", "--out", str(out)]) == 0
    assert read_denoiser_checkpoint(out)["meta"]["epoch"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "dncnn", "--loss", "dsm", "--sigma", "0.25"], "dncnn is a denoiser network"),
        (["--kind", "scorenet", "--loss", "mse"], "scorenet is a score network"),
        (["--kind", "scorenet", "--loss", "dsm", "--sigma", "0.25"], "trains over a ladder"),
        (["--kind", "dncnn", "--loss", "mse"], "pass --sigma"),
        (["--kind", "dncnn", "--loss", "stability", "--sigma", "0.25"], "--classifier"),
        (["--kind", "dncnn", "--sigma", "0.25", "--arch-arg", "nope=1"], "--arch-arg for dncnn"),
        (["--kind", "scorenet", "--loss", "dsm", "--ladder", "1", "0.1", "2.5"], "whole number"),
    ],
)
def test_train_denoiser_argument_errors(args, message, tmp_path, capsys) -> None:
    assert main(["train-denoiser", *COMMON, "--limit", "8", *args, "--out", str(tmp_path / "x.pt")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_certify_with_a_dncnn_equals_the_library_and_records_the_denoiser(files, tmp_path) -> None:
    out = tmp_path / "dn.tsv"
    assert _certify(files, out, "--denoiser", str(files["dncnn"])) == 0
    config = json.loads(out.with_name("dn.tsv.json").read_text())
    den = config["denoiser"]
    assert den["arch"] == "dncnn" and den["trained_sigma"] == 0.25 and len(den["sha256"]) == 64
    rows = load_results(out)
    # Same seeds through the library: SmoothedClassifier(Denoised(f, D)) gives the same certificates.
    model, _ = load_checkpoint(files["clf"])
    net, _ = load_denoiser(files["dncnn"])
    smoothed = SmoothedClassifier(Denoised(model, net), noise=get_noise("gaussian", sigma=0.25), num_classes=10)
    data = get_dataset("embedded", split="test")
    for i in (0, 1):
        cert = smoothed.certify(data[i][0], n0=10, n=32, alpha=0.01, batch_size=32, generator=input_seed(0, i))
        assert int(cert.prediction[0]) == rows.predict[i]
        assert float(cert.radius[0]) == pytest.approx(rows.radius[i], abs=1e-12)
    # Another denoiser (or none) never appends to these rows.
    assert _certify(files, out, "--denoiser", str(files["score"])) == 2
    assert _certify(files, out) == 2
    assert _certify(files, out, "--denoiser", str(files["dncnn"])) == 0  # same one: resumes


def test_certify_with_a_score_network_multi_step_laplace(files, tmp_path) -> None:
    out = tmp_path / "ms.tsv"
    assert _certify(files, out, "--denoiser", str(files["score"]), "--noise", "laplace", "--sigma", "0.5",
                    "--denoise-steps", "2", "--denoise-step-size", "1e-5") == 0
    den = json.loads(out.with_name("ms.tsv.json").read_text())["denoiser"]
    assert den["denoiser"] == "multi-step" and den["noise"] == "laplace" and den["steps_per_level"] == 2
    assert den["step_size"] == 1e-5 and den["ladder"] == pytest.approx([0.5, 0.1, 0.01])  # sigma, then trained levels
    assert len(load_results(out)) == 2
    # The library object the CLI builds, for the record.
    net, meta = load_denoiser(files["score"])
    from smoothcert.denoise import denoiser_for_noise

    d = denoiser_for_noise(net, meta, get_noise("laplace", sigma=0.5), steps_per_level=2, step_size=1e-5)
    assert isinstance(d, MultiStepDenoiser) and not d.training


def test_denoiser_option_errors(files, tmp_path, capsys) -> None:
    out = tmp_path / "e.tsv"
    assert _certify(files, out, "--denoiser", str(files["score"]), "--noise", "uniform", "--denoise", "one-step") == 2
    assert "Gaussian noise only" in capsys.readouterr().err
    assert _certify(files, out, "--denoise", "multi-step") == 2
    assert "need --denoiser" in capsys.readouterr().err
    assert _certify(files, out, "--denoiser", str(files["dncnn"]), "--denoise-steps", "2") == 2
    assert "settings of score networks" in capsys.readouterr().err
    assert _certify(files, out, "--denoiser", "ffdnet") == 2
    assert "colour" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="trained for gaussian noise sigma 0.25"), \
            pytest.warns(UserWarning, match="made for gaussian noise sigma 0.25, but smoothing uses gaussian noise sigma 0.5"):
        assert _certify(files, tmp_path / "w.tsv", "--denoiser", str(files["dncnn"]), "--sigma", "0.5") == 0


def test_predict_and_attack_take_a_denoiser(files, tmp_path) -> None:
    pred = tmp_path / "p.tsv"
    assert main(["predict", "--checkpoint", str(files["clf"]), "--denoiser", str(files["score"]), "--n", "16",
                 "--alpha", "0.1", "--batch", "16", "--max", "2", "--quiet", "--device", "cpu",
                 "--out", str(pred)]) == 0
    assert json.loads(pred.with_name("p.tsv.json").read_text())["denoiser"]["denoiser"] == "one-step"
    att = tmp_path / "a.tsv"
    assert main(["attack", "--checkpoint", str(files["clf"]), "--denoiser", str(files["dncnn"]), "--base",
                 "--attack", "pgd", "--eps", "0.5", "--steps", "2", "--max", "2", "--quiet", "--device", "cpu",
                 "--out", str(att)]) == 0
    assert json.loads(att.with_name("a.tsv.json").read_text())["denoiser"]["arch"] == "dncnn"
    assert len(att.read_text().splitlines()) == 3  # header + one row per input


def test_multistep_ladder_and_denoiser_for_noise(files) -> None:
    from smoothcert.denoise import OneStepDenoiser, denoiser_for_noise, multistep_ladder

    assert multistep_ladder([1.0, 0.1, 0.01], sigma=0.5) == [0.5, 0.1, 0.01]
    assert multistep_ladder([1.0, 0.1, 0.01], sigma=0.1) == [0.1, 0.01]  # a trained level is not repeated
    assert multistep_ladder([1.0, 0.1, 0.01], sigma=0.005) == [0.005]
    with pytest.raises(ValueError, match="positive"):
        multistep_ladder([1.0, 0.1], sigma=0.0)
    net, meta = load_denoiser(files["score"])
    one = denoiser_for_noise(net, meta, get_noise("gaussian", sigma=0.5))
    assert isinstance(one, OneStepDenoiser) and one.sigma == 0.5 and not one.training
    multi = denoiser_for_noise(net, meta, get_noise("uniform", sigma=0.5))
    assert isinstance(multi, MultiStepDenoiser) and multi.steps_per_level == 1
    assert multi.ladder[-1] == pytest.approx(0.01) and multi.step_size == pytest.approx(0.01**2, rel=1e-12)
    # The default alpha follows the ladder's last level (alpha / sigma_L^2 = 1 on any ladder) ...
    short = denoiser_for_noise(net, meta, get_noise("laplace", sigma=0.5), ladder=[0.5, 0.2, 0.05])
    assert short.step_size == pytest.approx(0.05**2, rel=1e-12)
    # ... and an explicit one is kept as given.
    assert denoiser_for_noise(net, meta, get_noise("laplace", sigma=0.5), step_size=3e-6).step_size == 3e-6
    with pytest.warns(UserWarning, match="above the score network's largest trained level"):
        denoiser_for_noise(net, meta, get_noise("laplace", sigma=2.0))
    with pytest.raises(ValueError, match="mode must be"):
        denoiser_for_noise(net, meta, get_noise("laplace", sigma=0.5), mode="two-step")
    with pytest.raises(ValueError, match="multi-step"):
        denoiser_for_noise(net, meta, get_noise("gaussian", sigma=0.5), mode="one-step", steps_per_level=2)
    dncnn, dmeta = load_denoiser(files["dncnn"])
    assert denoiser_for_noise(dncnn, dmeta, get_noise("gaussian", sigma=0.25)) is dncnn
    # The loaded DnCNN's training noise is in its metadata (nothing is noted on the network); passed to
    # Denoised, smoothing it at another sigma warns.
    assert "noise" not in vars(dncnn) and trained_noise(dmeta) == get_noise("gaussian", sigma=0.25)
    model, _ = load_checkpoint(files["clf"])
    with pytest.warns(UserWarning, match="made for gaussian noise sigma 0.25, but smoothing uses gaussian noise sigma 0.5"):
        SmoothedClassifier(Denoised(model, dncnn, trained_for=trained_noise(dmeta)),
                           noise=get_noise("gaussian", sigma=0.5), num_classes=10)
