"""The FaRS certificates through the CLI: train sll-small with lipschitz-margin, certify with the
margin certificate and feature-space smoothing, read the rows back with the analysis."""

from __future__ import annotations

import pytest
import torch

from smoothcert.analysis import load_results
from smoothcert.cli import main
from smoothcert.errors import InputError
from smoothcert.models import CheckpointMeta, build_model, save_checkpoint
from smoothcert.results import CERTIFY, MARGIN, read_table
from smoothcert.runs import CertifyRun, ClassifierSpec

TRAIN = ["train", "--dataset", "embedded", "--batch", "64", "--lr", "0.05", "--limit", "128", "--quiet",
         "--device", "cpu", "--epochs", "1", "--method", "lipschitz-margin", "--hparam", "epsilon=0.1"]
CERTIFY_ARGS = ["certify", "--split", "test", "--max", "6", "--quiet", "--device", "cpu"]


def _saved(tmp_path, arch: str, **kw) -> str:
    """An untrained checkpoint of ``arch`` for the embedded MNIST set (no training: fast)."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=1, mean=(0.1307,), std=(0.3081,), **kw)
    meta = CheckpointMeta(arch=arch, arch_kwargs=kw, dataset="embedded", num_classes=10, in_channels=1,
                          input_size=28, mean=[0.1307], std=[0.3081], noise="gaussian", sigma=0.25)
    path = tmp_path / f"{arch}.pt"
    save_checkpoint(path, model, meta=meta)
    return str(path)


def test_certificates_through_the_cli_and_refusal_of_other_models(tmp_path, capsys):
    sll = _saved(tmp_path, "sll-small", width=8, features=16)
    mlp = _saved(tmp_path, "sll-small-mlp", width=8, features=16)
    lenet = _saved(tmp_path, "lenet-small")
    out = tmp_path / "margin.tsv"
    assert main([*CERTIFY_ARGS, "--max", "4", "--checkpoint", sll, "--certificate", "lipschitz-margin",
                 "--out", str(out)]) == 0
    assert tuple(read_table(out).columns) == MARGIN.columns and len(read_table(out)) == 4
    out = tmp_path / "features.tsv"
    assert main([*CERTIFY_ARGS, "--max", "2", "--checkpoint", mlp, "--certificate", "feature-smoothing", "--n0",
                 "10", "--n", "100", "--alpha", "0.01", "--batch", "100", "--out", str(out)]) == 0
    assert tuple(read_table(out).columns) == CERTIFY.columns
    for certificate in ("lipschitz-margin", "feature-smoothing"):
        capsys.readouterr()
        assert main([*CERTIFY_ARGS, "--checkpoint", lenet, "--certificate", certificate,
                     "--out", str(tmp_path / f"{certificate}.tsv")]) == 2
        assert "declares no Lipschitz backbone" in capsys.readouterr().err.strip().splitlines()[-1]
    capsys.readouterr()
    assert main([*CERTIFY_ARGS, "--checkpoint", mlp, "--certificate", "feature-smoothing", "--norm", "l1",
                 "--out", str(tmp_path / "l1.tsv")]) == 2
    assert "l2 only" in capsys.readouterr().err


@pytest.mark.slow
def test_margin_and_feature_smoothing_rows(tmp_path, capsys):
    linear, mlp = tmp_path / "sll.pt", tmp_path / "sll-mlp.pt"
    assert main([*TRAIN, "--arch", "sll-small", "--sigma", "0.25", "--out", str(linear)]) == 0
    assert main([*TRAIN, "--arch", "sll-small-mlp", "--sigma", "0.25", "--hparam", "feature_noise=true",
                 "--out", str(mlp)]) == 0

    margin_out = tmp_path / "margin.tsv"
    assert main([*CERTIFY_ARGS, "--checkpoint", str(linear), "--certificate", "lipschitz-margin",
                 "--out", str(margin_out)]) == 0
    table = read_table(margin_out)
    assert tuple(table.columns) == MARGIN.columns and len(table) == 6
    rows = table.records()
    # The CLI trained with the dataset's normalization (std 0.3081): L = 1 / 0.3081.
    assert all(r["lipschitz"] == pytest.approx(1 / 0.3081) for r in rows)
    assert all(r["radius"] == pytest.approx(r["feature_radius"] / r["lipschitz"]) for r in rows)
    assert len(load_results(margin_out)) == 6  # analysable like every other run
    # Resuming the same command keeps the rows.
    assert main([*CERTIFY_ARGS, "--checkpoint", str(linear), "--certificate", "lipschitz-margin",
                 "--out", str(margin_out)]) == 0
    assert len(read_table(margin_out)) == 6

    fs_out = tmp_path / "features.tsv"
    assert main([*CERTIFY_ARGS, "--checkpoint", str(mlp), "--certificate", "feature-smoothing", "--n0", "10",
                 "--n", "200", "--alpha", "0.01", "--batch", "200", "--out", str(fs_out)]) == 0
    table = read_table(fs_out)
    assert tuple(table.columns) == CERTIFY.columns and len(table) == 6
    assert {r["norm"] for r in table.records()} == {"l2"}

    # A model without a Lipschitz backbone is refused with one line.
    lenet = tmp_path / "lenet.pt"
    assert main([*TRAIN[:-4], "--arch", "lenet-small", "--sigma", "0.25", "--limit", "64", "--out", str(lenet)]) == 0
    for certificate in ("lipschitz-margin", "feature-smoothing"):
        capsys.readouterr()
        assert main([*CERTIFY_ARGS, "--checkpoint", str(lenet), "--certificate", certificate,
                     "--out", str(tmp_path / f"{certificate}.tsv")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "declares no Lipschitz backbone" in err[-1]


def test_certify_run_checks_the_certificate_settings(tmp_path):
    spec = ClassifierSpec(checkpoint="m.pt")
    with pytest.raises(InputError, match="certificate"):
        CertifyRun(model=spec, out=tmp_path / "r.tsv", certificate="sparsemax")
    with pytest.raises(InputError, match="target='fixed'"):
        CertifyRun(model=spec, out=tmp_path / "r.tsv", certificate="lipschitz-margin", target="radius")
    with pytest.raises(InputError, match="l2 only"):
        CertifyRun(model=spec, out=tmp_path / "r.tsv", certificate="feature-smoothing", norm="linf")
