"""smoothcert train --method heat: needs --init, records its hyperparameters and the init checkpoint."""

import pytest

from smoothcert.cli import main
from smoothcert.models import read_checkpoint

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


def test_heat_fine_tunes_and_records(trained, tmp_path):
    out = tmp_path / "heat.pt"
    assert main([*TRAIN, "--method", "heat", "--hparam", "kappa=1", "--lr", "0.01", "--init", str(trained),
                 "--out", str(out)]) == 0
    meta = read_checkpoint(out)["meta"]
    training = meta["training"]
    assert training["method"] == "heat"
    assert training["hparams"] == {"kappa": 1, "delta": 0.1, "steps": 1, "noisy_fraction": 0.5}
    assert "init" in training and meta["sigma"] == 0.25
