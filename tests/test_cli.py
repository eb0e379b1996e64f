"""The command line end to end on tiny data: train, certify (with resume), predict, analyze, plot."""

import json
from pathlib import Path

import pytest
import torch

from smoothcert.analysis import load_results
from smoothcert.cli import main
from smoothcert.models import read_checkpoint

TRAIN = ["train", "--dataset", "embedded", "--arch", "lenet-small", "--sigma", "0.25", "--batch", "64",
         "--lr", "0.05", "--limit", "256", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "lenet.pt"
    assert main([*TRAIN, "--epochs", "1", "--out", str(path)]) == 0
    return path


def _certify(ckpt: Path, out: Path, *extra: str) -> int:
    return main(["certify", "--checkpoint", str(ckpt), "--n0", "10", "--n", "64", "--alpha", "0.01",
                 "--batch", "50", "--quiet", "--device", "cpu", "--out", str(out), *extra])


def _idx(path: Path) -> list[int]:
    return [int(line.split("\t")[0]) for line in path.read_text().splitlines()[1:]]


def test_train_writes_a_checkpoint_with_metadata(checkpoint):
    payload = read_checkpoint(checkpoint)
    meta = payload["meta"]
    assert meta["arch"] == "lenet-small" and meta["dataset"] == "embedded"
    assert meta["noise"] == "gaussian" and meta["sigma"] == 0.25 and meta["epoch"] == 1
    assert meta["training"]["method"] == "gaussian" and meta["training"]["lr"] == 0.05
    assert meta["mean"] == [pytest.approx(0.1307)]


def test_train_refuses_to_overwrite_without_resume(checkpoint, capsys):
    assert main([*TRAIN, "--epochs", "1", "--out", str(checkpoint)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    assert main([*TRAIN, "--epochs", "2", "--out", str(a)]) == 0
    assert main([*TRAIN, "--epochs", "1", "--out", str(b)]) == 0
    assert main([*TRAIN, "--epochs", "2", "--out", str(b), "--resume"]) == 0
    sa, sb = read_checkpoint(a), read_checkpoint(b)
    assert sb["meta"]["epoch"] == 2
    for k in sa["state_dict"]:
        torch.testing.assert_close(sa["state_dict"][k], sb["state_dict"][k], rtol=0, atol=0)


def test_certify_rows_resume_and_extend(checkpoint, tmp_path):
    out = tmp_path / "r.tsv"
    assert _certify(checkpoint, out, "--max", "3", "--skip", "2") == 0
    first = out.read_text()
    assert _idx(out) == [0, 2, 4]
    # simulate a kill in the middle of writing row 4, then re-run a longer selection
    out.write_text(first[: first.rindex("\n", 0, len(first) - 1) + 6])
    assert _certify(checkpoint, out, "--max", "5", "--skip", "2") == 0
    assert _idx(out) == [0, 2, 4, 6, 8]
    # rows do not depend on what ran before: row 4 recomputed equals the original row 4
    # except for its timing columns
    def stable(line: str) -> list[str]:
        f = line.split("\t")
        return f[:5] + f[6:-1]

    assert stable(out.read_text().splitlines()[3]) == stable(first.splitlines()[3])
    res = load_results(out)
    assert res.sigma == 0.25 and len(res.idx) == 5


def test_certify_refuses_a_different_configuration(checkpoint, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert _certify(checkpoint, out, "--max", "1") == 0
    before = out.read_text()
    assert _certify(checkpoint, out, "--max", "1", "--sigma", "0.5") == 2
    err = capsys.readouterr().err
    assert "sigma: file has 0.25, now 0.5" in err
    assert out.read_text() == before


def test_predict_analyze_plot(checkpoint, tmp_path, capsys):
    pred = tmp_path / "p.tsv"
    assert main(["predict", "--checkpoint", str(checkpoint), "--n", "64", "--alpha", "0.01", "--max", "4",
                 "--quiet", "--device", "cpu", "--out", str(pred)]) == 0
    assert pred.read_text().splitlines()[0].startswith("idx\tlabel\tpredict\tcorrect\ttime")
    assert len(_idx(pred)) == 4
    out = tmp_path / "r.tsv"
    assert _certify(checkpoint, out, "--max", "4") == 0
    capsys.readouterr()
    assert main(["analyze", str(out), "--radii", "0", "0.25"]) == 0
    table = capsys.readouterr().out
    assert "0.25" in table and "ACR" in table
    png = tmp_path / "curve.png"
    assert main(["plot", str(out), "--out", str(png)]) == 0
    assert png.stat().st_size > 1000


def test_analyze_paired_reports_the_difference_on_common_inputs(tmp_path, capsys):
    head = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    a = tmp_path / "a.tsv"
    a.write_text(head + "0\t1\t1\t0.5\t1\t1.0\n1\t2\t2\t0.25\t1\t1.0\n")
    b = tmp_path / "b.tsv"
    b.write_text(head + "1\t2\t2\t0.75\t1\t1.0\n0\t1\t3\t0.9\t0\t1.0\n2\t0\t0\t1.0\t1\t1.0\n")
    capsys.readouterr()
    with pytest.warns(UserWarning, match="different inputs"):  # the table's warning; --paired matches by idx
        assert main(["analyze", str(a), str(b), "--labels", "A", "B", "--paired"]) == 0
    out = capsys.readouterr().out
    # B - A on idx 0 and 1: (0 - 0.5 + 0.75 - 0.25) / 2 = 0.
    assert "B: +0.0000" in out and "on 2 inputs" in out and "larger radius on 1, smaller on 1" in out
    assert main(["analyze", str(a), "--paired"]) == 2
    assert "at least two" in capsys.readouterr().err


def test_clear_errors(tmp_path, capsys):
    bogus = tmp_path / "bogus.pt"
    torch.save({"weight": torch.zeros(2)}, bogus)
    assert _certify(bogus, tmp_path / "r.tsv") == 2
    assert "metadata" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert main([*TRAIN, "--dataset", "mnist", "--data-root", str(missing), "--epochs", "1",
                 "--out", str(tmp_path / "m.pt")]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["certify", "--checkpoint", "x.pt", "--out", "r.tsv", "--precision", "fp8"])


def test_a_refused_argument_does_not_block_the_corrected_run(checkpoint, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert _certify(checkpoint, out, "--max", "1", "--n0", "100") == 2  # n0 >= n
    assert "n0 (100) must be smaller than n (64)" in capsys.readouterr().err
    assert _certify(checkpoint, out, "--max", "1") == 0
    assert _idx(out) == [0]


def test_training_is_seeded_whatever_the_global_rng(tmp_path):
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for global_seed, path in zip((123, 456), paths):
        torch.manual_seed(global_seed)  # --seed, not the caller's RNG state, decides the weights
        assert main([*TRAIN, "--epochs", "1", "--out", str(path)]) == 0
    sa, sb = (read_checkpoint(p)["state_dict"] for p in paths)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_adaptive_target_and_engine_options(checkpoint, tmp_path):
    out = tmp_path / "r.tsv"
    assert _certify(checkpoint, out, "--max", "2", "--target", "radius", "--radius-loss", "0.5",
                    "--batch", "auto", "--no-channels-last") == 0
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    n_col = rows[0].index("n")
    assert all(0 < int(r[n_col]) <= 64 for r in rows[1:])
    config = (tmp_path / "r.tsv.json").read_text()
    assert '"target": "radius"' in config and '"channels_last": false' in config and '"batch_size": "auto"' in config


def test_compile_mode_and_pack_reach_the_engine_and_the_record(checkpoint, tmp_path, monkeypatch):
    modes: list = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: modes.append(kw.get("mode")) or module)
    out = tmp_path / "r.tsv"
    assert _certify(checkpoint, out, "--max", "3", "--compile-mode", "reduce-overhead", "--pack", "2") == 0
    assert modes == ["reduce-overhead"] and _idx(out) == [0, 1, 2]
    config = json.loads((tmp_path / "r.tsv.json").read_text())
    assert config["compile"] is True and config["compile_mode"] == "reduce-overhead" and config["pack"] == 2


def test_grid_target_rows_give_exact_certified_accuracy_at_the_grid(checkpoint, tmp_path, capsys):
    out = tmp_path / "g.tsv"
    assert _certify(checkpoint, out, "--max", "4", "--target", "grid", "--radii", "0", "0.1", "0.2",
                    "--stages", "16") == 0
    res = load_results(out)
    assert set(res.radius.tolist()) <= {0.0, 0.1, 0.2}
    assert all(n in (16, 64) for n in res.extra["n"].tolist())
    assert '"stages": [\n    16,\n    64\n  ]' in (tmp_path / "g.tsv.json").read_text()
    # two looks (16 and 64 draws): each at alpha / 2, and alpha itself stays the level of the whole input
    alpha = res.extra["alpha"][0]
    assert res.extra["alpha_look"].tolist() == [alpha / 2] * 4
    capsys.readouterr()
    assert main(["analyze", str(out), "--radii", "0", "0.1", "0.2"]) == 0
    assert "r = 0.1" in capsys.readouterr().out


def test_grid_target_with_auto_stages(checkpoint, tmp_path, capsys):
    out = tmp_path / "a.tsv"
    assert _certify(checkpoint, out, "--max", "3", "--target", "grid", "--radii", "0", "0.1", "0.2",
                    "--stages", "auto") == 0
    res = load_results(out)
    assert len(res.radius) == 3 and set(res.radius.tolist()) <= {0.0, 0.1, 0.2}
    assert all(0 < n <= 64 for n in res.extra["n"].tolist())
    assert json.loads((tmp_path / "a.tsv.json").read_text())["stages"] == "auto"
    capsys.readouterr()
    assert _certify(checkpoint, tmp_path / "b.tsv", "--target", "grid", "--radii", "0.1", "--stages", "auto",
                    "100") == 2
    assert "alone" in capsys.readouterr().err
