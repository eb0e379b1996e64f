"""benchmarks/denoised.py: the paired comparisons behind its claims table, and a tiny end-to-end run."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from repo_scripts import load_script

from smoothcert import analysis


def _load():
    return load_script("benchmarks/denoised.py")


def _write_rows(path: Path, rows: list[tuple[int, int, int, float, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["idx\tlabel\tpredict\tradius\tcorrect\ttime"]
    lines += [f"{i}\t{y}\t{p}\t{r}\t{c}\t0:00:01" for i, y, p, r, c in rows]
    path.write_text("\n".join(lines) + "\n")


def test_paired_claims_match_a_hand_computation(tmp_path):
    bench = _load()
    # idx: label, and per denoiser (prediction, radius, correct); files in different row orders.
    _write_rows(bench._tsv(tmp_path, "mnist", "laplace", 0.5, "none"),
                [(0, 3, 3, 0.2, 1), (10, 1, -1, 0.0, 0), (20, 7, 2, 0.9, 0), (30, 5, 5, 0.4, 1)])
    _write_rows(bench._tsv(tmp_path, "mnist", "laplace", 0.5, "mse"),
                [(30, 5, 5, 0.1, 1), (20, 7, 7, 0.6, 1), (0, 3, 3, 0.5, 1), (10, 1, 1, 0.3, 1)])
    _write_rows(bench._tsv(tmp_path, "mnist", "laplace", 0.5, "multi-step"),
                [(0, 3, 3, 0.6, 1), (10, 1, 1, 0.4, 1), (20, 7, 7, 0.7, 1), (30, 5, 5, 0.2, 1)])  # mse + 0.1
    rows = [{"dataset": "mnist", "noise": "laplace", "sigma": 0.5, "denoiser": d, "psnr_db": p}
            for d, p in (("none", 6.0), ("mse", 18.25), ("multi-step", 19.0))]
    claims = bench.paired_claims(rows, tmp_path)
    # Only the pairs of CLAIMS whose two runs exist: mse - none, multi-step - mse (no one-step, guided, augmented).
    assert [c["comparison"] for c in claims] == ["mse - none", "multi-step - mse"]
    first = claims[0]
    d = np.array([0.5 - 0.2, 0.3 - 0.0, 0.6 - 0.0, 0.1 - 0.4])  # radius * correct, matched by idx
    assert first["difference"] == pytest.approx(d.mean(), abs=1e-4)
    half = scipy.stats.t.ppf(0.975, df=3) * d.std(ddof=1) / 2  # paired t interval: 4 images, 3 degrees of freedom
    assert (first["low"], first["high"]) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-4)
    assert (first["a_better"], first["b_better"], first["ties"]) == (3, 1, 0)
    assert first["psnr_difference_db"] == pytest.approx(12.25)
    assert (first["dataset"], first["noise"], first["sigma"], first["a"], first["b"]) == (
        "mnist", "laplace", 0.5, "mse", "none")
    second = claims[1]  # 0.1 more on every image: no spread, an interval of one point
    assert (second["difference"], second["low"], second["high"]) == pytest.approx((0.1, 0.1, 0.1))
    assert (second["a_better"], second["psnr_difference_db"]) == (4, pytest.approx(0.75))
    table = bench._claims_markdown(claims)
    # 0 inside the interval: no bold; outside: bold.
    assert "| mnist | laplace | 0.5 | mse - none | +0.225 [-0.376, +0.826] | 3 / 1, 0 | +12.2 |" in table
    assert "| multi-step - mse | **+0.100 [+0.100, +0.100]** | 4 / 0, 0 | +0.8 |" in table


def test_tiny_run_writes_rows_claims_summary_and_grid(tmp_path, capsys):
    bench = _load()
    work = tmp_path / "work"
    args = ["--datasets", "embedded", "--noises", "gaussian", "--sigmas", "0.25", "--n", "100", "--n0", "8", "--max",
            "3", "--epochs", "1", "--limit", "256", "--psnr-images", "8", "--dncnn-depth", "3", "--dncnn-width", "4",
            "--score-width", "4", "--ladder", "1.0", "0.1", "3", "--workdir", str(work)]
    out = bench.main(args)
    assert [r["denoiser"] for r in out] == list(bench.DENOISERS)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    claims = [c for c in lines if "comparison" in c]
    assert [c["comparison"] for c in claims] == [f"{a} - {b}" for a, b, _ in bench.CLAIMS]
    acr = {r["denoiser"]: r["acr"] for r in out}
    assert len(set(acr.values())) > 1  # seeded: the runs differ, so the check below compares real numbers
    for c in claims:  # the same three images in every run: the paired mean is the difference of the ACRs
        assert c["inputs"] == 3
        assert c["difference"] == pytest.approx(acr[c["a"]] - acr[c["b"]], abs=2e-4)
        res = analysis.load_results(bench._tsv(work, "embedded", "gaussian", 0.25, c["a"]))
        assert analysis.acr(res) == pytest.approx(acr[c["a"]], abs=1e-4)
    summary = (work / "summary.md").read_text()
    assert "| embedded | gaussian (l2) | 0.25 | " + " | ".join(f"{acr[d]:.3f}" for d in bench.DENOISERS) in summary
    assert (work / "curves" / "acr_grid.png").stat().st_size > 1000
    # A second run reuses every row (results.jsonl) and certifies nothing again.
    before = {p: p.read_text() for p in (work / "embedded").glob("cert_*.tsv")}
    assert bench.main(args) == out
    assert {p: p.read_text() for p in (work / "embedded").glob("cert_*.tsv")} == before
