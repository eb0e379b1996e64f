"""Certified accuracy with its own uncertainty over the sample of inputs (issue #16, section 3)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from smoothcert.analysis import accuracy_table, certified_accuracy, certified_accuracy_interval, plot_certified_accuracy
from smoothcert.analysis.load import Results
from smoothcert.cli import main
from smoothcert.errors import InputError


def _results(radius, correct) -> Results:
    radius = np.asarray(radius, dtype=np.float64)
    return Results(idx=np.arange(len(radius)), label=np.zeros(len(radius), dtype=np.int64),
                   predict=np.zeros(len(radius), dtype=np.int64), radius=radius,
                   correct=np.asarray(correct, dtype=np.int64), seconds=np.zeros(len(radius)))


def test_interval_is_the_exact_clopper_pearson_interval_of_the_count():
    # 500 inputs, 300 certified-correct at r = 0.5: the textbook beta quantiles.
    run = _results([1.0] * 300 + [0.0] * 200, [1] * 300 + [0] * 200)
    low, high = certified_accuracy_interval(run, [0.5, 2.0], confidence=0.95)
    assert certified_accuracy(run, 0.5) == pytest.approx(0.6)
    assert low[0] == pytest.approx(beta.ppf(0.025, 300, 201)) and high[0] == pytest.approx(beta.ppf(0.975, 301, 200))
    assert low[1] == 0.0 and high[1] == pytest.approx(1 - 0.025 ** (1 / 500))
    with pytest.raises(InputError, match="confidence"):
        certified_accuracy_interval(run, 0.5, confidence=1.0)


def test_interval_covers_the_population_rate():
    # Samples of 200 inputs from a population certified-correct with q = 0.7: the 90% interval
    # must cover q in about 90% of 400 samples (>= 85%, 3.5 s.d. below).
    rng = np.random.default_rng(0)
    q, covered = 0.7, 0
    for _ in range(400):
        ok = rng.random(200) < q
        low, high = certified_accuracy_interval(_results(np.where(ok, 1.0, 0.0), ok), 0.5, confidence=0.9)
        covered += bool(low <= q <= high)
    assert covered >= 0.85 * 400


def test_tables_plots_and_cli_show_the_interval(tmp_path, capsys):
    run = _results([1.0] * 30 + [0.0] * 20, [1] * 30 + [0] * 20)
    table = accuracy_table([run], [0.5], ci=0.95)
    assert table.ci.shape == (1, 1, 2)
    assert "0.60 [0.45, 0.74]" in table.markdown()
    assert accuracy_table([run], [0.5]).ci is None
    out = plot_certified_accuracy([run], tmp_path / "c.png", ci=0.95)
    assert out.stat().st_size > 0
    path = tmp_path / "r.tsv"
    lines = ["idx\tlabel\tpredict\tradius\tcorrect\ttime"]
    lines += [f"{i}\t0\t0\t{1.0 if i < 30 else 0.0}\t{1 if i < 30 else 0}\t0:00:00.1" for i in range(50)]
    path.write_text("\n".join(lines) + "\n")
    assert main(["analyze", str(path), "--radii", "0.5", "--ci"]) == 0
    assert "0.60 [0.45, 0.74]" in capsys.readouterr().out
    assert main(["plot", str(path), "--out", str(tmp_path / "p.png"), "--ci", "0.9"]) == 0
