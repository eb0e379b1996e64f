"""smoothcert train --method heat: needs --init, records its hyperparameters and the init checkpoint."""

import pytest

from smoothcert.cli import main
from smoothcert.models import read_checkpoint
from smoothcert.train.heat import DEFAULT_GAMMA

TRAIN = ["train", "--dataset", "embedded", "--arch", "lenet-small", "--sigma", "0.25", "--batch", "32",
         "--limit", "64", "--quiet", "--device", "cpu", "--epochs", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("heat") / "base.pt"
    assert main([*TRAIN, "--lr", "0.05", "--out", str(path)]) == 0
    return path


def test_heat_needs_init(tmp_path, capsys):
    out = tmp_path / "heat.pt"
    assert main([*TRAIN, "--method", "heat", "--out", str(out)]) == 2
    assert "--init" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture(scope="module")
def heat_ckpt(trained):
    out = trained.parent / "heat.pt"
    assert main([*TRAIN, "--method", "heat", "--hparam", "kappa=1", "--lr", "0.01", "--init", str(trained),
                 "--out", str(out)]) == 0
    return out


def test_heat_fine_tunes_and_records(heat_ckpt):
    meta = read_checkpoint(heat_ckpt)["meta"]
    training = meta["training"]
    assert training["method"] == "heat"
    assert training["hparams"] == {"kappa": 1, "delta": 0.1, "steps": 1, "noisy_fraction": 0.5,
                                   "gamma": DEFAULT_GAMMA, "distance": "softmax"}
    assert "init" in training and meta["sigma"] == 0.25


def test_certify_certificates_through_the_cli(heat_ckpt, tmp_path, capsys):
    common = ["certify", "--checkpoint", str(heat_ckpt), "--n0", "10", "--n", "200", "--alpha", "0.01", "--batch", "100",
              "--max", "3", "--quiet", "--device", "cpu"]
    for cert in ("soft-phi", "soft-lbound"):
        out = tmp_path / f"{cert}.tsv"
        assert main([*common, "--certificate", cert, "--out", str(out)]) == 0
        assert out.read_text().splitlines()[0].split("\t")[:6] == ["idx", "label", "predict", "radius", "correct",
                                                                    "time"]
        assert main(["analyze", str(out)]) == 0
        assert main([*common, "--certificate", cert, "--out", str(out)]) == 0  # resumes: nothing to do
        assert len(out.read_text().splitlines()) == 4
    clean = tmp_path / "clean.tsv"
    assert main([*common, "--selection", "clean", "--out", str(clean)]) == 0
    assert main(["analyze", str(clean)]) == 0
    det = tmp_path / "det.tsv"
    assert main([*common, "--certificate", "deterministic", "--out", str(det)]) == 0
    header = det.read_text().splitlines()[0].split("\t")
    assert "heuristic_radius" in header and "radius" not in header
    capsys.readouterr()
    assert main(["analyze", str(det)]) == 2
    assert "heuristic" in capsys.readouterr().err
    # Bad settings: a clear error, nothing written.
    bad = tmp_path / "bad.tsv"
    assert main([*common, "--certificate", "soft-phi", "--target", "radius", "--out", str(bad)]) == 2
    assert main([*common, "--certificate", "soft-phi", "--noise", "laplace", "--sigma", "0.5",
                 "--out", str(bad)]) == 2
    assert not bad.exists()


@pytest.mark.parametrize("mode", ["--base", "--smoothed"])
def test_attack_the_deterministic_and_the_stochastic_model(heat_ckpt, tmp_path, mode):
    out = tmp_path / "attack.tsv"
    assert main(["attack", "--checkpoint", str(heat_ckpt), mode, "--attack", "both", "--eps", "0.5", "--steps", "2",
                 "--m", "2", "--n0", "10", "--n", "100", "--alpha", "0.01", "--batch", "100", "--max", "2", "--quiet",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3
