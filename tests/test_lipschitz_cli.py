"""The FaRS certificates through the CLI: train sll-small with lipschitz-margin, certify with the
margin certificate and feature-space smoothing, read the rows back with the analysis."""

from __future__ import annotations

import pytest

from smoothcert.analysis import load_results
from smoothcert.cli import main
from smoothcert.results import CERTIFY, MARGIN, read_table

TRAIN = ["train", "--dataset", "embedded", "--batch", "64", "--lr", "0.05", "--limit", "128", "--quiet",
         "--device", "cpu", "--epochs", "1", "--method", "lipschitz-margin", "--hparam", "epsilon=0.1"]
CERTIFY_ARGS = ["certify", "--split", "test", "--max", "6", "--quiet", "--device", "cpu"]


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
